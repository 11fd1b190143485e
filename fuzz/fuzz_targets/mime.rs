//! The message path: what Tern does to a message it accepts, on any
//! message. mail-parser reads its header (as for the `From:` check, the
//! HTTP API's raw messages and the subject kept for search), forged
//! Authentication-Results fields are stripped, the From domains and header
//! counts are read, Date and Message-ID are added, and it is DKIM-signed.
//!
//! Checked: no panic anywhere; stripping only removes whole header fields
//! (never grows the message, leaves the body alone, and is idempotent on
//! messages with CRLF line ends, as SMTP delivers them); the added header
//! fields are CRLF-terminated lines.
//!
//! Tern never runs mail-parser's full MIME parse (`MessageParser::parse`),
//! only `parse_headers`, so neither does this target.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mail_parser::{Message, MessageParser};
use tern_auth::dkim::{self, Algorithm};
use tern_auth::inbound::strip_own_results;
use tern_fuzz::crlf_clean;
use tern_smtp::headers;
use tern_store::DkimKeyRecord;

const HOSTNAME: &str = "mx.example.test";

fn key() -> &'static DkimKeyRecord {
    static KEY: OnceLock<DkimKeyRecord> = OnceLock::new();
    KEY.get_or_init(|| {
        dkim::generate("example.test", "fuzz", Algorithm::Ed25519, 0).expect("Ed25519 key")
    })
}

/// Touches everything a reader of the parsed header may look at.
fn walk(message: &Message<'_>) {
    for header in message.headers() {
        let _ = header.name();
        let _ = format!("{:?}", header.value());
    }
    let _ = (
        message.subject(),
        message.from(),
        message.to(),
        message.cc(),
        message.reply_to(),
        message.sender(),
        message.date(),
        message.message_id(),
        message.return_address(),
    );
    if let Some(from) = message.from() {
        for addr in from.iter() {
            let _ = (addr.name(), addr.address());
        }
    }
}

/// Where the header block ends, as Tern's header code finds it.
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len())
}

fn crlf_lines(s: &str) {
    let b = s.as_bytes();
    assert!(b.is_empty() || b.ends_with(b"\r\n"), "{s:?}");
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            assert!(i > 0 && b[i - 1] == b'\r', "{s:?}");
        }
        if c == b'\r' {
            assert_eq!(b.get(i + 1), Some(&b'\n'), "{s:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(message) = MessageParser::new().parse_headers(data) {
        walk(&message);
    }

    let stripped = strip_own_results(data, HOSTNAME);
    assert!(stripped.len() <= data.len());
    assert!(
        stripped.ends_with(&data[header_end(data)..]),
        "body changed"
    );
    // Stripped once is stripped for good, for messages as SMTP delivers
    // them (the only ones stripped). With a bare LF before a CRLF line the
    // header's end moves once a field is removed, and a second pass reads
    // on into what was the body.
    if crlf_clean(data) {
        assert_eq!(
            strip_own_results(&stripped, HOSTNAME),
            stripped,
            "not idempotent"
        );
    }

    for domain in dkim::from_domains(&stripped) {
        assert_eq!(domain, domain.to_ascii_lowercase());
    }
    let _ = headers::count_header(&stripped, "from");
    let fixes = headers::submission_fixes(&stripped, tern_core::MessageId::generate(), HOSTNAME);
    crlf_lines(&fixes);
    if let Some(subject) = tern_queue::subject_of(&stripped) {
        assert!(subject.chars().count() <= 998);
    }
    if let Ok(signature) = dkim::sign_with(key(), &stripped) {
        assert!(signature.starts_with("DKIM-Signature:"), "{signature:?}");
        crlf_lines(&signature);
    }
});
