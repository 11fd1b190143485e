//! The BDAT chunk checker on any message, cut into chunks as the first
//! bytes say.
//!
//! Checked: how the message is cut never changes the verdict; the size
//! counts every octet and `too_big` is exact; and the same body sent
//! through DATA (dot-stuffed) gets the same verdict, so nothing gets
//! through BDAT that DATA refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{raw_stuff, read_data, Params};
use tern_proto::ChunkChecker;

fuzz_target!(|data: &[u8]| {
    let mut params = Params::new(data);
    let max_size = params.max_size();
    let max_line = params.max_line();
    let piece = params.piece();
    let body = params.rest();

    let mut whole = ChunkChecker::new(max_size, max_line);
    whole.feed(body);
    let mut split = ChunkChecker::new(max_size, max_line);
    for chunk in body.chunks(piece) {
        split.feed(chunk);
    }
    assert_eq!(whole.finish(), split.finish());
    assert_eq!(split.size(), body.len() as u64);
    assert_eq!(split.too_big(), body.len() as u64 > max_size);
    if split.too_big() {
        assert!(split.finish().is_some());
    }

    // DATA, with no size limit (the two count size differently when the
    // last line has no CRLF).
    let mut unlimited = ChunkChecker::new(u64::MAX, max_line);
    unlimited.feed(body);
    let stuffed = raw_stuff(body);
    let (end, out, reader) = read_data(&stuffed, stuffed.len(), u64::MAX, max_line);
    assert_eq!(end, Some(stuffed.len()), "premature end of data");
    assert_eq!(unlimited.finish(), reader.error());
    if reader.error().is_none() {
        let mut expected = body.to_vec();
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(out, expected);
    }
});
