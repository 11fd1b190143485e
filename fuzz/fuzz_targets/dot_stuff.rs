//! The outbound client's dot-stuffing on any body.
//!
//! Checked: the stuffed form has no bare CR or LF, one end-of-data line
//! (the last), does not depend on how the body was pushed, and the strict
//! DATA reader reads it to its very end as the body with every line end
//! made CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{data_end, read_data, Params};
use tern_proto::{dot_stuff, DataError, Stuffer};

fn normalized(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut params = Params::new(data);
    let piece = params.piece();
    let body = params.rest();

    let mut stuffed = Vec::new();
    dot_stuff(body, &mut stuffed);
    let mut stuffer = Stuffer::new();
    let mut pieces = Vec::new();
    for chunk in body.chunks(piece) {
        stuffer.push(chunk, &mut pieces);
    }
    stuffer.finish(&mut pieces);
    assert_eq!(pieces, stuffed);

    for (i, &b) in stuffed.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(stuffed.get(i + 1), Some(&b'\n'), "bare CR");
        }
        if b == b'\n' {
            assert!(i > 0 && stuffed[i - 1] == b'\r', "bare LF");
        }
    }
    assert_eq!(data_end(&stuffed), Some(stuffed.len()), "early end of data");

    let (end, out, reader) = read_data(&stuffed, piece, u64::MAX, usize::MAX);
    assert_eq!(end, Some(stuffed.len()));
    if body.contains(&0) {
        assert_eq!(reader.error(), Some(DataError::Nul));
    } else {
        assert_eq!(reader.error(), None);
        assert_eq!(out, normalized(body));
    }
});
