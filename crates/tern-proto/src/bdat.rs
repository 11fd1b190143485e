//! Checks on BDAT chunks (RFC 3030).
//!
//! BDAT data has no dot-stuffing and no terminator: its length comes from
//! the command. The same hygiene as for DATA still applies (CRLF-only line
//! ends, no NUL, bounded lines and size), so a message cannot be accepted
//! through BDAT that DATA would refuse.

use crate::data::{check_run, find_special, DataError};

/// Validates the chunks of one BDAT message as they arrive. It does not copy
/// them: the caller stores the bytes itself, and must stop storing once
/// [`too_big`](ChunkChecker::too_big) says so.
#[derive(Debug)]
pub struct ChunkChecker {
    max_size: u64,
    max_line: usize,
    /// All chunk octets seen, whether or not an error was found.
    size: u64,
    /// Octets of the current line so far, CRLF excluded.
    line_len: usize,
    /// The last octet checked was a CR whose LF may start the next chunk.
    pending_cr: bool,
    error: Option<DataError>,
}

impl ChunkChecker {
    /// `max_size` bounds the whole message (RFC 1870); `max_line` bounds each
    /// line, CRLF included (RFC 5321 4.5.3.1.6).
    pub fn new(max_size: u64, max_line: usize) -> Self {
        ChunkChecker {
            max_size,
            max_line,
            size: 0,
            line_len: 0,
            pending_cr: false,
            error: None,
        }
    }

    /// Checks the next chunk. A CR ending one chunk and the LF starting the
    /// next form a normal CRLF.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.error.is_none() {
            // Only the octets that still fit are examined: the first one
            // beyond the limit is where the message became too big.
            let room = self.max_size.saturating_sub(self.size);
            let fits = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.scan(&chunk[..fits]);
            if self.error.is_none() && fits < chunk.len() {
                self.error = Some(DataError::TooBig);
            }
        }
        self.size = self.size.saturating_add(chunk.len() as u64);
    }

    /// To be called after the LAST chunk: the verdict on the whole message.
    /// A CR as the very last octet is bare, since no LF can follow it.
    pub fn finish(&self) -> Option<DataError> {
        self.error.or(self.pending_cr.then_some(DataError::BareCr))
    }

    /// The first problem seen so far.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// True once the chunks exceed the size limit: the caller must stop
    /// storing them (it keeps reading them to stay in sync).
    pub fn too_big(&self) -> bool {
        self.size > self.max_size
    }

    /// Octets received in all chunks so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn scan(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            if self.pending_cr {
                if bytes[i] != b'\n' {
                    // RFC 5321 2.3.8: CR only as part of CRLF.
                    self.error = Some(DataError::BareCr);
                    return;
                }
                self.pending_cr = false;
                self.line_len = 0;
                i += 1;
                continue;
            }
            let rest = &bytes[i..];
            let run = find_special(rest).unwrap_or(rest.len());
            if run > 0 {
                // Size was checked by the caller, so only the line limit can
                // be crossed here.
                if let Some(error) = check_run(run, self.line_len, self.max_line, 0, u64::MAX) {
                    self.error = Some(error);
                    return;
                }
                self.line_len += run;
                i += run;
                continue;
            }
            match bytes[i] {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    self.error = Some(DataError::BareLf);
                    return;
                }
                _ => {
                    self.error = Some(DataError::Nul);
                    return;
                }
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `chunks` as one message, then again byte by byte, asserting
    /// both agree, and returns the verdict from `finish`.
    fn check(chunks: &[&[u8]], max_size: u64, max_line: usize) -> Option<DataError> {
        let mut c = ChunkChecker::new(max_size, max_line);
        for chunk in chunks {
            c.feed(chunk);
        }
        let verdict = c.finish();
        let mut b = ChunkChecker::new(max_size, max_line);
        for byte in chunks.concat() {
            b.feed(&[byte]);
        }
        assert_eq!(b.finish(), verdict, "byte by byte");
        assert_eq!(b.too_big(), c.too_big());
        verdict
    }

    #[test]
    fn clean_message() {
        assert_eq!(check(&[b"Subject: x\r\n\r\nbody\r\n"], 1000, 1000), None);
        assert_eq!(check(&[b""], 1000, 1000), None);
        // No dot-stuffing and no terminator: dots are plain content.
        assert_eq!(check(&[b".\r\n..\r\n"], 1000, 1000), None);
        // The last line need not end in CRLF.
        assert_eq!(check(&[b"a\r\nb"], 1000, 1000), None);
    }

    #[test]
    fn crlf_across_chunks() {
        assert_eq!(check(&[b"line\r", b"\nnext\r", b"\n"], 1000, 1000), None);
    }

    #[test]
    fn bare_cr_lf_nul() {
        assert_eq!(check(&[b"a\rb\r\n"], 1000, 1000), Some(DataError::BareCr));
        assert_eq!(
            check(&[b"a\r", b"b\r\n"], 1000, 1000),
            Some(DataError::BareCr)
        );
        assert_eq!(check(&[b"a\nb\r\n"], 1000, 1000), Some(DataError::BareLf));
        assert_eq!(
            check(&[b"a\r\n", b"\n"], 1000, 1000),
            Some(DataError::BareLf)
        );
        assert_eq!(check(&[b"a\0b\r\n"], 1000, 1000), Some(DataError::Nul));
    }

    #[test]
    fn trailing_cr_is_bare_only_at_the_end() {
        let mut c = ChunkChecker::new(1000, 1000);
        c.feed(b"text\r");
        assert_eq!(c.error(), None);
        assert_eq!(c.finish(), Some(DataError::BareCr));
        assert_eq!(check(&[b"text\r"], 1000, 1000), Some(DataError::BareCr));
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(check(&[b"\0\n\r"], 1000, 1000), Some(DataError::Nul));
        assert_eq!(check(&[b"a\nb\0"], 1000, 1000), Some(DataError::BareLf));
        assert_eq!(
            check(&[b"12345678901\0"], 1000, 10),
            Some(DataError::LineTooLong)
        );
        assert_eq!(check(&[b"12345678901\0"], 5, 1000), Some(DataError::TooBig));
    }

    #[test]
    fn line_limit_counts_crlf() {
        assert_eq!(check(&[b"12345678\r\n"], 1000, 10), None);
        assert_eq!(
            check(&[b"123456789\r\n"], 1000, 10),
            Some(DataError::LineTooLong)
        );
        assert_eq!(
            check(&[b"1234", b"56789\r\n"], 1000, 10),
            Some(DataError::LineTooLong)
        );
    }

    #[test]
    fn size_limit() {
        let mut c = ChunkChecker::new(10, 1000);
        c.feed(b"12345\r\n");
        c.feed(b"abc");
        assert!(!c.too_big());
        assert_eq!(c.error(), None);
        c.feed(b"d");
        assert!(c.too_big());
        assert_eq!(c.error(), Some(DataError::TooBig));
        // Later chunks are still counted so the caller can tell how much
        // it skipped; the verdict does not change.
        c.feed(&[b'\n'; 100]);
        assert_eq!(c.size(), 111);
        assert_eq!(c.finish(), Some(DataError::TooBig));
    }

    #[test]
    fn too_big_is_reported_even_after_another_error() {
        let mut c = ChunkChecker::new(4, 1000);
        c.feed(b"\0");
        c.feed(b"12345");
        assert_eq!(c.error(), Some(DataError::Nul));
        assert!(c.too_big());
    }
}
