//! Headers Tern adds to the messages it accepts.

use tern_core::MessageId;

/// Facts about the connection for the Received header.
pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub peer: std::net::IpAddr,
    pub hostname: &'a str,
    pub id: MessageId,
    /// RFC 3848 protocol: ESMTP, ESMTPS, ESMTPA, ESMTPSA, SMTP.
    pub protocol: &'a str,
    pub tls: Option<&'a str>,
    /// Named only when there is exactly one recipient, so one copy never
    /// reveals the others (RFC 5321 4.4, 7.2).
    pub single_recipient: Option<String>,
}

/// The trace header (RFC 5321 4.4), folded, with the client's HELO name
/// reduced to characters that cannot break the header.
pub fn received(t: &TraceInfo<'_>) -> String {
    let helo: String = t
        .helo
        .chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-:[]_".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    // No HELO (the HTTP API): the address alone.
    let from = if helo.is_empty() {
        format!("[{}]", t.peer)
    } else {
        format!("{helo} ([{}])", t.peer)
    };
    let mut h = format!(
        "Received: from {from}\r\n\tby {} (Tern) with {} id {}",
        t.hostname, t.protocol, t.id
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t(using {tls})"));
    }
    if let Some(r) = &t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!("; {}\r\n", chrono::Utc::now().to_rfc2822()));
    h
}

/// What is wrong with the start of a message, found before its header is
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The header section is longer than this limit: reading it takes many
    /// times its size in memory.
    TooLarge(usize),
    /// The first line is folded (starts with a space or a tab): there is
    /// no field for it to continue (RFC 5322 2.2.3), and behind the header
    /// fields Tern puts in front it would continue the last of them.
    StartsFolded,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::TooLarge(max) => {
                write!(f, "Message header section larger than {max} octets")
            }
            HeaderError::StartsFolded => write!(
                f,
                "Message starts with a folded line; its header must begin with a field name (RFC 5322 2.2)"
            ),
        }
    }
}

/// Checks the start of a message (RFC 5322 2.1: a header section, an
/// empty line, a body) before anything reads its header.
pub fn check_header_section(msg: &[u8], max: usize) -> Result<(), HeaderError> {
    if msg.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(HeaderError::StartsFolded);
    }
    if msg.starts_with(b"\r\n") || msg.len() <= max {
        return Ok(());
    }
    // The empty line that ends the header section must come within `max`.
    let window = &msg[..(max + 4).min(msg.len())];
    match memchr::memmem::find(window, b"\r\n\r\n") {
        Some(_) => Ok(()),
        None => Err(HeaderError::TooLarge(max)),
    }
}

/// Whether the message's header block has a field of this name.
pub fn has_header(msg: &[u8], name: &str) -> bool {
    count_header(msg, name) > 0
}

/// How many fields of this name the header block has.
pub fn count_header(msg: &[u8], name: &str) -> usize {
    header_lines(msg)
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter_map(|line| line.iter().position(|b| *b == b':').map(|c| &line[..c]))
        .filter(|field| field.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        .count()
}

/// The lines of the header block (up to the first empty line).
fn header_lines(msg: &[u8]) -> impl Iterator<Item = &[u8]> {
    msg.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// Message-ID and Date for submitted mail that lacks them (RFC 6409 8.2,
/// 8.3): a submission server may add what the client left out.
pub fn submission_fixes(msg: &[u8], id: MessageId, hostname: &str) -> String {
    let mut h = String::new();
    if !has_header(msg, "date") {
        h.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    }
    if !has_header(msg, "message-id") {
        h.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_limits() {
        let ok = |m: &[u8], max| check_header_section(m, max);
        assert_eq!(ok(b"Subject: x\r\n\r\nbody\r\n", 20), Ok(()));
        assert_eq!(ok(b"\r\nno header at all\r\n", 5), Ok(()));
        assert_eq!(ok(b"Subject: x\r\n", 20), Ok(()), "only a header, short");
        let big = format!("{}\r\nbody\r\n", "X-A: b\r\n".repeat(100));
        assert_eq!(ok(big.as_bytes(), 800), Ok(()));
        assert_eq!(
            ok(big.as_bytes(), 500),
            Err(HeaderError::TooLarge(500)),
            "the empty line comes too late"
        );
        let no_end = "X-A: b\r\n".repeat(100);
        assert_eq!(ok(no_end.as_bytes(), 500), Err(HeaderError::TooLarge(500)));
        assert_eq!(
            ok(b" folded\r\nSubject: x\r\n\r\n", 100),
            Err(HeaderError::StartsFolded)
        );
        assert_eq!(ok(b"\tfolded\r\n\r\n", 100), Err(HeaderError::StartsFolded));
    }

    #[test]
    fn finds_headers_only_in_the_header_block() {
        let m = b"Subject: x\r\nMessage-Id: <a@b>\r\n\r\nDate: not a header\r\n";
        assert!(has_header(m, "message-id"));
        assert!(!has_header(m, "date"));
        let fix = submission_fixes(m, MessageId::generate(), "mx.test");
        assert!(fix.starts_with("Date: "));
        assert!(!fix.contains("Message-ID"));
    }

    #[test]
    fn received_header_cannot_be_broken_by_helo() {
        let h = received(&TraceInfo {
            helo: "evil\r\nBcc: x",
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "mx.test",
            id: MessageId::generate(),
            protocol: "ESMTPS",
            tls: Some("TLSv1_3"),
            single_recipient: Some("a@b.test".into()),
        });
        assert!(h.starts_with(
            "Received: from evil??Bcc:?x ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTPS id "
        ));
        assert_eq!(h.matches("\r\n").count(), 4);
        assert!(h.contains("for <a@b.test>;"));
    }
}
