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
