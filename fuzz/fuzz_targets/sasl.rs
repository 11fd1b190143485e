//! AUTH responses: base64, PLAIN and LOGIN decoding of any text.
//!
//! Checked: no panic; a successful base64 decoding is the only one
//! (canonical form); decoded credentials hold no CR, LF or stray NUL.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tern_proto::{decode_base64, decode_login_field, decode_plain};

fn check(text: &str) {
    if let Ok(bytes) = decode_base64(text) {
        if text != "=" {
            assert_eq!(STANDARD.encode(&bytes), text);
        }
    }
    if let Ok(field) = decode_login_field(text) {
        assert!(!field.contains(['\0', '\r', '\n']));
    }
    if let Ok(creds) = decode_plain(text) {
        for field in [&creds.authzid, &creds.username, &creds.password] {
            assert!(!field.contains(['\0', '\r', '\n']));
        }
        assert!(!creds.username.is_empty() && !creds.password.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as the client's text, and as the bytes it encoded.
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&STANDARD.encode(data));
});
