//! The DATA body reader (RFC 5321 4.1.1.4, 4.5.2).
//!
//! Stricter than what RFC 5321 requires of receivers in practice: the only
//! end of data is CRLF "." CRLF, and a body carrying a bare CR, a bare LF or a
//! NUL is refused. Lenient end-of-data detection (accepting LF "." LF and the
//! like) is what SMTP smuggling exploits: a sender hides a second message
//! behind a terminator that an outbound server ignores but we would honour.
//! Refusing is not enough on its own; reading must also continue up to the
//! real terminator, so that whatever followed the fake one is swallowed as
//! part of the refused message instead of being run as commands.

use crate::reply::Reply;

/// Why a message body must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A CR not followed by LF.
    #[error("bare CR in message")]
    BareCr,
    /// An LF not preceded by CR.
    #[error("bare LF in message")]
    BareLf,
    /// A NUL octet.
    #[error("NUL in message")]
    Nul,
    /// A text line longer than the limit (RFC 5321 4.5.3.1.6).
    #[error("line too long")]
    LineTooLong,
    /// The message exceeds the size limit (RFC 1870).
    #[error("message too big")]
    TooBig,
}

impl DataError {
    /// The reply that refuses the message.
    pub fn reply(&self) -> Reply {
        match self {
            // RFC 5321 2.3.8: CR and LF only ever appear together, as CRLF.
            DataError::BareCr => Reply::new(
                550,
                "5.6.0",
                "Message contains a bare CR; lines must end with CRLF",
            ),
            DataError::BareLf => Reply::new(
                550,
                "5.6.0",
                "Message contains a bare LF; lines must end with CRLF",
            ),
            DataError::Nul => Reply::new(550, "5.6.0", "Message contains a NUL character"),
            DataError::LineTooLong => Reply::line_too_long(),
            DataError::TooBig => Reply::message_too_big(),
        }
    }
}

/// Where the reader stands in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF, or at the very start of the data: a "." here is
    /// either dot-stuffing or the start of the terminator.
    LineStart,
    /// Saw "." at the start of a line.
    Dot,
    /// Saw "." CR at the start of a line: LF next ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// Saw CR inside a line: LF next ends the line.
    Cr,
    /// Saw the terminator.
    Done,
}

/// Reads a DATA body: un-dot-stuffs it, finds its end and checks it.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    max_size: u64,
    max_line: usize,
    /// Message octets so far, after un-stuffing, CRLFs included.
    size: u64,
    /// Octets of the current line so far, CRLF and stuffing dot excluded.
    line_len: usize,
    error: Option<DataError>,
}

impl DataReader {
    /// `max_size` bounds the whole message (RFC 1870); `max_line` bounds each
    /// text line, CRLF included (RFC 5321 4.5.3.1.6 gives 1000).
    pub fn new(max_size: u64, max_line: usize) -> Self {
        DataReader {
            state: State::LineStart,
            max_size,
            max_line,
            size: 0,
            line_len: 0,
            error: None,
        }
    }

    /// Consumes input; appends un-dot-stuffed message bytes (with CRLF line
    /// ends, without the final ".\r\n") to `out`.
    ///
    /// Returns `Some(consumed)` when the end-of-data line was seen: the first
    /// `consumed` bytes of `input` belonged to the message, the rest is the
    /// next pipelined command(s). Returns `None` when all of `input` was
    /// consumed and more is needed. Once the message is known to be refused
    /// nothing more is appended, so `out` stays bounded; what it holds is
    /// then of no use. After the end was seen, further calls consume nothing
    /// and return `Some(0)`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        if self.state == State::Done {
            return Some(0);
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Text => {
                    let rest = &input[i..];
                    let run = find_special(rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.content(&rest[..run], out);
                        i += run;
                        continue;
                    }
                    match input[i] {
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.fail(DataError::BareLf),
                        _ => self.fail(DataError::Nul),
                    }
                    i += 1;
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        // Either the terminator or a stuffed dot; in both
                        // cases it is not message content (RFC 5321 4.5.2).
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return Some(i + 1);
                    }
                    // "." CR followed by anything but LF: the CR is bare and
                    // the byte is read again as ordinary text.
                    self.fail(DataError::BareCr);
                    self.state = State::Text;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.end_line(out);
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        self.fail(DataError::BareCr);
                        self.state = State::Text;
                    }
                }
                State::Done => unreachable!("feed returns as soon as the data ends"),
            }
        }
        None
    }

    /// Why the message must be refused, if it must. Meaningful once `feed`
    /// returned `Some`; before that it is the first problem seen so far.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// True once the terminating CRLF "." CRLF was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Message octets accepted so far (CRLFs included, stuffing dots not).
    /// Stops growing once an error is recorded.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&mut self, error: DataError) {
        // The first problem is the one reported.
        self.error.get_or_insert(error);
    }

    /// A run of ordinary octets inside a line.
    fn content(&mut self, run: &[u8], out: &mut Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        match check_run(
            run.len(),
            self.line_len,
            self.max_line,
            self.size,
            self.max_size,
        ) {
            Some(error) => self.fail(error),
            None => {
                self.line_len += run.len();
                self.size += run.len() as u64;
                out.extend_from_slice(run);
            }
        }
    }

    /// A CRLF ending a text line.
    fn end_line(&mut self, out: &mut Vec<u8>) {
        self.line_len = 0;
        if self.error.is_some() {
            return;
        }
        if self.max_size.saturating_sub(self.size) < 2 {
            self.fail(DataError::TooBig);
        } else {
            self.size += 2;
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Checks a run of `len` ordinary octets against both limits, and names the
/// one crossed first when the run crosses either (the line limit on a tie).
/// The answer does not depend on how the input was split into runs.
pub(crate) fn check_run(
    len: usize,
    line_len: usize,
    max_line: usize,
    size: u64,
    max_size: u64,
) -> Option<DataError> {
    // Octets that still fit: the line limit counts the CRLF still to come.
    let line_room = max_line.saturating_sub(2).saturating_sub(line_len) as u64;
    let size_room = max_size.saturating_sub(size);
    let len = len as u64;
    if len <= line_room && len <= size_room {
        None
    } else if line_room <= size_room {
        Some(DataError::LineTooLong)
    } else {
        Some(DataError::TooBig)
    }
}

/// Position of the first CR, LF or NUL: the end of a run of ordinary
/// octets. `memchr3` compares many octets per instruction; this is the hot
/// path of every message received.
#[inline]
pub(crate) fn find_special(s: &[u8]) -> Option<usize> {
    memchr::memchr3(b'\r', b'\n', 0, s)
}

#[cfg(test)]
mod tests;
