//! The client side of DATA (RFC 5321 4.5.2): dot-stuffing and the
//! end-of-data line. Whatever the input, the output has CRLF line ends
//! only, so Tern never sends a bare CR or LF: the bytes a smuggling attack
//! needs (`\n.\n`, `\r.\r`, ...) cannot leave this function.

/// Dot-stuffs a body that arrives in pieces: the state between pieces is
/// whether the next octet starts a line and whether a CR is pending.
#[derive(Debug, Default)]
pub struct Stuffer {
    mid_line: bool,
    pending_cr: bool,
}

impl Stuffer {
    pub fn new() -> Stuffer {
        Stuffer::default()
    }

    /// Appends the stuffed form of `chunk` to `out`. Runs of text between
    /// line ends are copied whole (found with `memchr`): this is the hot
    /// loop of every delivery.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64 + 2);
        while let Some(&first) = chunk.first() {
            if self.pending_cr {
                self.pending_cr = false;
                // CRLF is one line end; a lone CR becomes one too.
                out.extend_from_slice(b"\r\n");
                self.mid_line = false;
                if first == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            if !self.mid_line && first == b'.' {
                out.push(b'.');
            }
            match memchr::memchr2(b'\r', b'\n', chunk) {
                Some(end) => {
                    out.extend_from_slice(&chunk[..end]);
                    if chunk[end] == b'\r' {
                        self.pending_cr = true;
                        self.mid_line |= end > 0;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.mid_line = false;
                    }
                    chunk = &chunk[end + 1..];
                }
                None => {
                    out.extend_from_slice(chunk);
                    self.mid_line = true;
                    return;
                }
            }
        }
    }

    /// Ends the body: a last line without its CRLF gets one, then `.\r\n`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || self.mid_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Appends `body`, dot-stuffed and with every line ending normalised to
/// CRLF, then the end-of-data line `.\r\n`, to `out`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut s = Stuffer::new();
    s.push(body, out);
    s.finish(out);
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
    fn pieces_give_the_same_result_as_the_whole() {
        let body = b"a\r\n.b\r\n\r\n..c\rd\ne\r\n.";
        let whole = stuffed(body);
        for split in 0..body.len() {
            let mut s = Stuffer::new();
            let mut out = Vec::new();
            s.push(&body[..split], &mut out);
            s.push(&body[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
    }

    /// The byte-at-a-time definition the fast `push` must agree with.
    fn reference(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut mid_line, mut pending_cr) = (false, false);
        for &b in body {
            if pending_cr {
                pending_cr = false;
                out.extend_from_slice(b"\r\n");
                mid_line = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    mid_line = false;
                }
                _ => {
                    if !mid_line && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    mid_line = true;
                }
            }
        }
        if pending_cr || mid_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn agrees_with_the_byte_at_a_time_definition() {
        // Every string of up to 6 octets over the alphabet that matters.
        let alphabet = [b'.', b'\r', b'\n', b'x'];
        let mut bodies = vec![Vec::new()];
        for _ in 0..6 {
            let longer: Vec<Vec<u8>> = bodies
                .iter()
                .filter(|b| b.len() == bodies.last().map_or(0, |l: &Vec<u8>| l.len()))
                .flat_map(|b| {
                    alphabet.iter().map(move |c| {
                        let mut n = b.clone();
                        n.push(*c);
                        n
                    })
                })
                .collect();
            bodies.extend(longer);
        }
        for body in &bodies {
            assert_eq!(stuffed(body), reference(body), "{body:?}");
            for split in 0..=body.len() {
                let mut s = Stuffer::new();
                let mut out = Vec::new();
                s.push(&body[..split], &mut out);
                s.push(&body[split..], &mut out);
                s.finish(&mut out);
                assert_eq!(out, reference(body), "{body:?} split at {split}");
            }
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
