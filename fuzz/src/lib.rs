//! Helpers shared by the fuzz targets: how a target turns its input into
//! limits and split points, and the simple statements of the rules that
//! the readers are checked against.

/// Reads the first bytes of a fuzz input as parameters.
pub struct Params<'a> {
    bytes: &'a [u8],
}

impl<'a> Params<'a> {
    pub fn new(bytes: &'a [u8]) -> Params<'a> {
        Params { bytes }
    }

    /// The next byte, or 0 when the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// A size limit: small ones (where limits bite), or none.
    pub fn max_size(&mut self) -> u64 {
        match self.byte() {
            255 => u64::MAX,
            b => u64::from(b) * 4,
        }
    }

    /// A line limit (CRLF included): small ones, SMTP's 1000, or none.
    pub fn max_line(&mut self) -> usize {
        match self.byte() {
            255 => usize::MAX,
            254 => 1000,
            b => usize::from(b % 80),
        }
    }

    /// A piece length for feeding input in pieces (at least 1).
    pub fn piece(&mut self) -> usize {
        usize::from(self.byte() % 64) + 1
    }

    /// What is left: the data itself.
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// Where DATA must end: just after the first CRLF "." CRLF, or after "."
/// CRLF at the very start. Nothing else ends it (SMTP smuggling).
pub fn data_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5)
}

/// Dot-stuffs `body` as a client does, leaving everything else (bare CR,
/// bare LF) as it is, and terminates it.
pub fn raw_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    for (i, &b) in body.iter().enumerate() {
        if b == b'.' && (i == 0 || body[..i].ends_with(b"\r\n")) {
            out.push(b'.');
        }
        out.push(b);
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Feeds `input` to a fresh DATA reader `piece` bytes at a time; returns
/// how much of `input` belonged to the message, the output and the reader.
pub fn read_data(
    input: &[u8],
    piece: usize,
    max_size: u64,
    max_line: usize,
) -> (Option<usize>, Vec<u8>, tern_proto::DataReader) {
    let mut reader = tern_proto::DataReader::new(max_size, max_line);
    let mut out = Vec::new();
    let mut start = 0;
    for chunk in input.chunks(piece.max(1)) {
        if let Some(n) = reader.feed(chunk, &mut out) {
            return (Some(start + n), out, reader);
        }
        start += chunk.len();
    }
    (None, out, reader)
}

/// True when `s` holds a control character (C0, DEL or C1).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// True for bytes as the DATA reader accepts them: CR and LF only as CRLF,
/// no NUL. Messages received over SMTP are always like this.
pub fn crlf_clean(data: &[u8]) -> bool {
    data.iter().enumerate().all(|(i, &b)| match b {
        0 => false,
        b'\r' => data.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && data[i - 1] == b'\r',
        _ => true,
    })
}
