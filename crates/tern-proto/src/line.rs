//! Splitting the command stream into lines, with a hard length bound
//! (RFC 5321 4.5.3.1.4).

/// Why a command line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than the limit, CRLF included (RFC 5321 4.5.3.1.4).
    #[error("line too long")]
    TooLong,
    /// Ended by LF alone: lines end in CRLF only (RFC 5321 2.3.8).
    #[error("line ended by a bare LF")]
    BareLf,
}

/// Accumulates bytes read from the client and hands out complete command
/// lines.
///
/// Memory stays bounded as long as the caller drains [`next_line`] until it
/// returns `None` after every [`push`]: what remains buffered is then shorter
/// than `max_len`, plus at most one push. An over-long line is dropped as it
/// arrives, whatever its total length.
///
/// [`next_line`]: LineBuffer::next_line
/// [`push`]: LineBuffer::push
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    pos: usize,
    max_len: usize,
    /// Dropping the rest of an over-long line up to and including its LF.
    discarding: bool,
}

impl LineBuffer {
    /// `max_len` counts the CRLF: RFC 5321 4.5.3.1.4 gives 512 for command
    /// lines, RFC 4954 4 raises it to 12288 for AUTH.
    pub fn new(max_len: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            pos: 0,
            max_len: max_len.max(2),
            discarding: false,
        }
    }

    /// Changes the limit for the lines not yet returned (e.g. while an AUTH
    /// exchange is in progress).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.max(2);
    }

    /// Appends bytes received from the client.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.discarding {
            match bytes.iter().position(|&b| b == b'\n') {
                None => return,
                Some(i) => {
                    self.discarding = false;
                    bytes = &bytes[i + 1..];
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line without its CRLF, an error for a line that
    /// must be refused (reported once per line), or `None` when no complete
    /// line is buffered yet.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        let pending = &self.buf[self.pos..];
        match pending.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let start = self.pos;
                self.pos += lf + 1;
                if lf + 1 > self.max_len {
                    return Some(Err(LineError::TooLong));
                }
                // RFC 5321 2.3.8: a line ends with CRLF; LF alone is not a
                // line end we accept (it is how command injection through
                // lenient servers starts).
                if lf == 0 || self.buf[start + lf - 1] != b'\r' {
                    return Some(Err(LineError::BareLf));
                }
                Some(Ok(self.buf[start..start + lf - 1].to_vec()))
            }
            // Even if the very next byte were LF this line would exceed the
            // limit: report it now and drop the rest of it as it arrives,
            // without storing it.
            None if pending.len() >= self.max_len => {
                self.buf.clear();
                self.pos = 0;
                self.discarding = true;
                Some(Err(LineError::TooLong))
            }
            None => None,
        }
    }

    /// Removes and returns everything buffered beyond the lines already
    /// returned. After DATA or BDAT these bytes belong to the message; after
    /// STARTTLS they must be thrown away, since they arrived before the TLS
    /// handshake (RFC 3207 6, the STARTTLS command injection attack).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        self.discarding = false;
        rest
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains every available result, lines shown as strings.
    fn drain(lb: &mut LineBuffer) -> Vec<Result<String, LineError>> {
        std::iter::from_fn(|| lb.next_line())
            .map(|r| r.map(|l| String::from_utf8(l).unwrap()))
            .collect()
    }

    fn ok(s: &str) -> Result<String, LineError> {
        Ok(s.to_string())
    }

    #[test]
    fn splits_crlf_lines() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"EHLO a\r\nMAIL FROM:<>\r\nRC");
        assert_eq!(drain(&mut lb), vec![ok("EHLO a"), ok("MAIL FROM:<>")]);
        assert!(!lb.is_empty());
        lb.push(b"PT TO:<b@c>\r");
        assert_eq!(drain(&mut lb), vec![]);
        lb.push(b"\n");
        assert_eq!(drain(&mut lb), vec![ok("RCPT TO:<b@c>")]);
        assert!(lb.is_empty());
    }

    #[test]
    fn empty_line_is_a_line() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"\r\n");
        assert_eq!(drain(&mut lb), vec![ok("")]);
    }

    #[test]
    fn bare_lf_is_refused() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"NOOP\nQUIT\r\n\n");
        assert_eq!(
            drain(&mut lb),
            vec![Err(LineError::BareLf), ok("QUIT"), Err(LineError::BareLf)]
        );
    }

    #[test]
    fn bare_cr_stays_inside_the_line() {
        // The command parser refuses the CR; the line splitter only cuts at LF.
        let mut lb = LineBuffer::new(512);
        lb.push(b"NOOP\rQUIT\r\n");
        assert_eq!(drain(&mut lb), vec![ok("NOOP\rQUIT")]);
    }

    #[test]
    fn limit_counts_the_crlf() {
        let mut lb = LineBuffer::new(8);
        lb.push(b"123456\r\n1234567\r\n");
        assert_eq!(drain(&mut lb), vec![ok("123456"), Err(LineError::TooLong)]);
    }

    #[test]
    fn over_long_line_in_one_push_is_reported_once() {
        let mut lb = LineBuffer::new(8);
        lb.push(b"NOOP\r\n0123456789abcdef\r\nQUIT\r\n");
        assert_eq!(
            drain(&mut lb),
            vec![ok("NOOP"), Err(LineError::TooLong), ok("QUIT")]
        );
    }

    #[test]
    fn over_long_line_across_pushes_is_discarded_unstored() {
        let mut lb = LineBuffer::new(8);
        lb.push(b"NOOP\r\n01234");
        assert_eq!(drain(&mut lb), vec![ok("NOOP")]);
        lb.push(b"56789");
        assert_eq!(drain(&mut lb), vec![Err(LineError::TooLong)]);
        assert!(lb.is_empty());
        // A megabyte more of the same line: dropped on arrival.
        for _ in 0..1024 {
            lb.push(&[b'x'; 1024]);
            assert!(lb.is_empty());
            assert_eq!(drain(&mut lb), vec![]);
        }
        // Even a fake "command" inside it is dropped; the line ends at LF.
        lb.push(b"\rQUIT\r");
        assert!(lb.is_empty());
        lb.push(b"\nRSET\r\n");
        assert_eq!(drain(&mut lb), vec![ok("RSET")]);
    }

    #[test]
    fn tail_exactly_at_limit_is_too_long() {
        let mut lb = LineBuffer::new(8);
        lb.push(b"1234567\r");
        assert_eq!(drain(&mut lb), vec![Err(LineError::TooLong)]);
        lb.push(b"\nNOOP\r\n");
        assert_eq!(drain(&mut lb), vec![ok("NOOP")]);
    }

    #[test]
    fn tail_one_short_of_limit_may_still_end_well() {
        let mut lb = LineBuffer::new(8);
        lb.push(b"123456\r");
        assert_eq!(drain(&mut lb), vec![]);
        lb.push(b"\n");
        assert_eq!(drain(&mut lb), vec![ok("123456")]);
    }

    #[test]
    fn byte_by_byte() {
        let input = b"EHLO x\r\nNOOP\nDATA\r\n";
        let mut lb = LineBuffer::new(512);
        let mut got = vec![];
        for b in input {
            lb.push(std::slice::from_ref(b));
            got.extend(drain(&mut lb));
        }
        assert_eq!(got, vec![ok("EHLO x"), Err(LineError::BareLf), ok("DATA")]);
    }

    #[test]
    fn take_rest_after_data_or_bdat() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"BDAT 5 LAST\r\nhello\r\nQUIT\r\n");
        assert_eq!(lb.next_line(), Some(Ok(b"BDAT 5 LAST".to_vec())));
        assert_eq!(lb.take_rest(), b"hello\r\nQUIT\r\n");
        assert!(lb.is_empty());
        assert_eq!(lb.next_line(), None);
        // Binary chunk data may hold no LF at all and exceed the line limit:
        // it is only judged as a line if the caller asks for one.
        let mut lb = LineBuffer::new(16);
        lb.push(b"BDAT 20\r\n01234567890123456789");
        assert_eq!(lb.next_line(), Some(Ok(b"BDAT 20".to_vec())));
        assert_eq!(lb.take_rest(), b"01234567890123456789");
    }

    #[test]
    fn take_rest_after_starttls_drops_injected_commands() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"STARTTLS\r\nRSET\r\nMAIL FROM:<x@y>\r\n");
        assert_eq!(lb.next_line(), Some(Ok(b"STARTTLS".to_vec())));
        let injected = lb.take_rest();
        assert_eq!(injected, b"RSET\r\nMAIL FROM:<x@y>\r\n");
        assert!(lb.is_empty());
        lb.push(b"EHLO x\r\n");
        assert_eq!(drain(&mut lb), vec![ok("EHLO x")]);
    }

    #[test]
    fn raised_limit_for_auth() {
        let mut lb = LineBuffer::new(8);
        lb.set_max_len(64);
        lb.push(b"dGVzdAB0ZXN0AHRlc3Q=\r\n");
        assert_eq!(drain(&mut lb), vec![ok("dGVzdAB0ZXN0AHRlc3Q=")]);
    }
}
