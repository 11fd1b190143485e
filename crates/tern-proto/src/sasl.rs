//! Decoding of SASL client responses for AUTH (RFC 4954) with the PLAIN
//! (RFC 4616) and LOGIN mechanisms. Checking the credentials is not done
//! here.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::reply::Reply;

/// Base64 of "Username:", the first AUTH LOGIN challenge.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// Base64 of "Password:", the second AUTH LOGIN challenge.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Why a client response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not canonical base64 (standard alphabet, with padding).
    #[error("invalid base64 data")]
    BadBase64,
    /// The decoded data holds a CR or LF (or a NUL outside PLAIN's
    /// separators).
    #[error("control character in credentials")]
    ControlChar,
    /// The decoded data is not UTF-8 (RFC 4616 2 requires it).
    #[error("credentials are not valid UTF-8")]
    BadUtf8,
    /// A PLAIN message that is not `authzid NUL authcid NUL passwd` with a
    /// non-empty authcid and passwd.
    #[error("malformed PLAIN message")]
    Malformed,
}

impl SaslError {
    /// The reply that ends the AUTH exchange (RFC 4954 6).
    pub fn reply(&self) -> Reply {
        match self {
            SaslError::BadBase64 => Reply::new(501, "5.5.2", "Invalid base64 data"),
            SaslError::ControlChar => Reply::new(501, "5.5.2", "Invalid characters in credentials"),
            SaslError::BadUtf8 => Reply::new(501, "5.5.2", "Credentials are not valid UTF-8"),
            SaslError::Malformed => Reply::new(501, "5.5.2", "Malformed PLAIN credentials"),
        }
    }
}

/// The three fields of a PLAIN message (RFC 4616 2).
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Identity to act as; empty means the same as `username`.
    pub authzid: String,
    /// The authentication identity (authcid).
    pub username: String,
    pub password: String,
}

/// Leaves the password out, so credentials can never end up in a log.
impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Strict base64 decoding of a client response. A lone "=" is the empty
/// initial response (RFC 4954 4).
pub fn decode_base64(b64: &str) -> Result<Vec<u8>, SaslError> {
    if b64 == "=" {
        return Ok(Vec::new());
    }
    // The STANDARD engine requires canonical padding and rejects whitespace
    // and non-zero trailing bits, so each input has one decoding only.
    STANDARD.decode(b64).map_err(|_| SaslError::BadBase64)
}

/// Decodes an AUTH PLAIN response: `[authzid] NUL authcid NUL passwd`
/// (RFC 4616 2).
pub fn decode_plain(b64: &str) -> Result<PlainCredentials, SaslError> {
    let bytes = decode_base64(b64)?;
    // RFC 4616 2: SAFE excludes NUL, CR and LF; NUL only as separator.
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(SaslError::ControlChar);
    }
    let text = String::from_utf8(bytes).map_err(|_| SaslError::BadUtf8)?;
    let mut fields = text.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    // RFC 4616 2: authcid and passwd are 1*SAFE.
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(PlainCredentials {
        authzid: authzid.to_string(),
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Decodes one AUTH LOGIN response (the username or the password line).
pub fn decode_login_field(b64: &str) -> Result<String, SaslError> {
    let bytes = decode_base64(b64)?;
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(SaslError::ControlChar);
    }
    String::from_utf8(bytes).map_err(|_| SaslError::BadUtf8)
}

/// True for the client's "*" line, which cancels the exchange; the answer is
/// `501 5.0.0` (RFC 4954 4), see [`Reply::auth_cancelled`].
pub fn is_cancel(line: &str) -> bool {
    line == "*"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> String {
        STANDARD.encode(raw)
    }

    #[test]
    fn login_challenges() {
        assert_eq!(b64(b"Username:"), LOGIN_USERNAME_CHALLENGE);
        assert_eq!(b64(b"Password:"), LOGIN_PASSWORD_CHALLENGE);
    }

    #[test]
    fn plain_with_and_without_authzid() {
        // C: AUTH PLAIN AHRlc3QAdGVzdHBhc3M=
        let creds = decode_plain("AHRlc3QAdGVzdHBhc3M=").unwrap();
        assert_eq!(creds.authzid, "");
        assert_eq!(creds.username, "test");
        assert_eq!(creds.password, "testpass");

        let creds = decode_plain(&b64("admin\0jörg\0pä ss\tword".as_bytes())).unwrap();
        assert_eq!(creds.authzid, "admin");
        assert_eq!(creds.username, "jörg");
        assert_eq!(creds.password, "pä ss\tword");
    }

    #[test]
    fn plain_debug_hides_password() {
        let creds = decode_plain(&b64(b"\0user\0hunter2")).unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("user"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn plain_structure() {
        for raw in [
            &b"user\0pass"[..],
            b"\0\0pass",
            b"\0user\0",
            b"\0user\0pass\0",
            b"\0user\0pa\0ss",
            b"",
            b"userpass",
        ] {
            assert_eq!(
                decode_plain(&b64(raw)),
                Err(SaslError::Malformed),
                "{raw:?}"
            );
        }
        assert_eq!(decode_plain("="), Err(SaslError::Malformed));
    }

    #[test]
    fn plain_refuses_cr_lf_and_bad_utf8() {
        assert_eq!(
            decode_plain(&b64(b"\0user\0pass\r\nQUIT")),
            Err(SaslError::ControlChar)
        );
        assert_eq!(
            decode_plain(&b64(b"\0us\ner\0pass")),
            Err(SaslError::ControlChar)
        );
        assert_eq!(
            decode_plain(&b64(b"\0user\0pa\xffss")),
            Err(SaslError::BadUtf8)
        );
    }

    #[test]
    fn strict_base64() {
        for bad in [
            "dGVzdA",     // missing padding
            "dGVzdA=",    // short padding
            "dGVzdA===",  // extra padding
            "dGV zdA==",  // whitespace
            "dGVzdA==\r", // trailing CR
            "dGVzdB==",   // non-zero trailing bits
            "dGVz_A==",   // URL-safe alphabet
            "*",
            "abc",
        ] {
            assert_eq!(decode_base64(bad), Err(SaslError::BadBase64), "{bad:?}");
            assert_eq!(
                decode_login_field(bad),
                Err(SaslError::BadBase64),
                "{bad:?}"
            );
            assert_eq!(decode_plain(bad), Err(SaslError::BadBase64), "{bad:?}");
        }
        assert_eq!(decode_base64("dGVzdA==").unwrap(), b"test");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("=").unwrap(), b"");
    }

    #[test]
    fn login_fields() {
        // S: 334 VXNlcm5hbWU6   C: dXNlcg==
        assert_eq!(decode_login_field("dXNlcg==").unwrap(), "user");
        assert_eq!(
            decode_login_field(&b64("pässwörd".as_bytes())).unwrap(),
            "pässwörd"
        );
        assert_eq!(decode_login_field(""), Ok(String::new()));
        assert_eq!(
            decode_login_field(&b64(b"us\r\ner")),
            Err(SaslError::ControlChar)
        );
        assert_eq!(
            decode_login_field(&b64(b"us\0er")),
            Err(SaslError::ControlChar)
        );
        assert_eq!(
            decode_login_field(&b64(b"\xc3\x28")),
            Err(SaslError::BadUtf8)
        );
    }

    #[test]
    fn cancel() {
        assert!(is_cancel("*"));
        assert!(!is_cancel("* "));
        assert!(!is_cancel("dXNlcg=="));
        assert_eq!(
            Reply::auth_cancelled().to_string(),
            "501 5.0.0 Authentication cancelled"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            SaslError::BadBase64.reply().to_string(),
            "501 5.5.2 Invalid base64 data"
        );
        for e in [
            SaslError::ControlChar,
            SaslError::BadUtf8,
            SaslError::Malformed,
        ] {
            assert_eq!(e.reply().code, 501);
        }
    }
}
