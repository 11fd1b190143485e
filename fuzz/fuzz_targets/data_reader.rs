//! The DATA reader on any input, with limits and the split into pieces
//! taken from the first bytes.
//!
//! Checked: the data ends exactly at the first CRLF "." CRLF (nothing
//! else ends it: SMTP smuggling); how the input is split changes nothing;
//! the output never exceeds the size limit; once done, the reader takes
//! nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{data_end, read_data, Params};

fuzz_target!(|data: &[u8]| {
    let mut params = Params::new(data);
    let max_size = params.max_size();
    let max_line = params.max_line();
    let piece = params.piece();
    let input = params.rest();

    let (end, out, mut reader) = read_data(input, input.len().max(1), max_size, max_line);
    assert_eq!(end, data_end(input));
    assert_eq!(reader.is_done(), end.is_some());
    assert!(out.len() as u64 <= max_size);
    if reader.error().is_none() {
        assert_eq!(out.len() as u64, reader.size());
    }
    if end.is_some() {
        let mut more = Vec::new();
        assert_eq!(reader.feed(b"QUIT\r\n", &mut more), Some(0));
        assert!(more.is_empty());
    }

    let (split_end, split_out, split_reader) = read_data(input, piece, max_size, max_line);
    assert_eq!(split_end, end);
    assert_eq!(split_reader.error(), reader.error());
    if reader.error().is_none() {
        assert_eq!(split_out, out);
    }
});
