//! The client side of DATA (RFC 5321 4.5.2): dot-stuffing and the
//! end-of-data line. Whatever the input, the output has CRLF line ends
//! only, so Tern never sends a bare CR or LF: the bytes a smuggling attack
//! needs (`\n.\n`, `\r.\r`, ...) cannot leave this function.

/// Appends `body`, dot-stuffed and with every line ending normalised to
/// CRLF, then the end-of-data line `.\r\n`, to `out`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                // CRLF is one line end; a lone CR becomes one too.
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataReader;

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(body, &mut out);
        out
    }

    #[test]
    fn stuffs_leading_dots_and_terminates() {
        assert_eq!(stuffed(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(stuffed(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"no final newline"), b"no final newline\r\n.\r\n");
    }

    #[test]
    fn never_emits_bare_cr_or_lf() {
        for body in [
            &b"x\n.\nMAIL FROM:<a@b>\n"[..],
            b"x\r.\rMAIL FROM:<a@b>\r",
            b"x\n.\r\nevil",
            b"x\r.\nevil",
            b"x\r\n.\revil",
            b"x\r\n.\nevil",
        ] {
            let out = stuffed(body);
            for (i, b) in out.iter().enumerate() {
                if *b == b'\n' {
                    assert_eq!(out[i - 1], b'\r', "{body:?}");
                }
                if *b == b'\r' {
                    assert_eq!(out[i + 1], b'\n', "{body:?}");
                }
            }
            // A strict receiver reads exactly one message, ending at the end.
            let mut reader = DataReader::new(1 << 20, 1000);
            let mut got = Vec::new();
            assert_eq!(reader.feed(&out, &mut got), Some(out.len()), "{body:?}");
            assert!(reader.error().is_none());
        }
    }

    #[test]
    fn round_trips_through_the_reader() {
        let body = b"Subject: x\r\n\r\n.one\r\n..two\r\nthree\r\n";
        let out = stuffed(body);
        let mut reader = DataReader::new(1 << 20, 1000);
        let mut got = Vec::new();
        reader.feed(&out, &mut got);
        assert_eq!(got, body);
    }
}
