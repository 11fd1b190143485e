//! The sender identity check on submitted mail: `From:` fields are counted
//! by Tern's own header reader (`count_header`) and by mail-parser
//! (`from_fields`), the larger count wins, and the domains checked are
//! those of every `From:` field mail-parser sees; a message passes when it
//! has at most one `From:` field and every domain is one the user may send
//! as.
//!
//! Checked, for messages as DATA delivers them (CRLF line ends, no NUL):
//! whenever the check counts at most one `From:` field, every address in
//! every `From:` field mail-parser sees is in a domain that was checked, so
//! no `From:` address escapes the check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_parser::{HeaderName, HeaderValue, MessageParser};
use tern_auth::dkim::from_fields;
use tern_fuzz::crlf_clean;
use tern_smtp::headers::count_header;

fuzz_target!(|data: &[u8]| {
    if !crlf_clean(data) {
        return;
    }
    let (parsed_count, checked) = from_fields(data);
    if count_header(data, "from").max(parsed_count) > 1 {
        return; // refused
    }
    let Some(parsed) = MessageParser::new().parse_headers(data) else {
        return;
    };
    for header in parsed.headers() {
        if header.name != HeaderName::From {
            continue;
        }
        let HeaderValue::Address(list) = &header.value else {
            continue;
        };
        for addr in list.iter() {
            let Some(domain) = addr
                .address()
                .and_then(|a| a.rsplit_once('@'))
                .map(|(_, d)| d)
            else {
                continue;
            };
            assert!(
                checked.contains(&domain.to_ascii_lowercase()),
                "From: domain {domain:?} not checked (checked: {checked:?})"
            );
        }
    }
});
