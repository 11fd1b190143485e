//! SMTP replies (RFC 5321 4.2) carrying enhanced status codes (RFC 2034,
//! RFC 3463).

use std::fmt;

/// Longest reply line we emit, CRLF included (RFC 5321 4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;

/// One SMTP reply, possibly spanning several lines.
///
/// `enhanced` is the RFC 3463 status code (`"2.0.0"`), or empty for replies
/// that must not carry one: the greeting, 354 and 334 intermediate replies,
/// and the EHLO capability list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply: every line but the last is written `code-text`,
    /// the last `code text` (RFC 5321 4.2.1). The enhanced code, when not
    /// empty, is repeated on every line (RFC 2034 3).
    pub fn multiline(code: u16, enhanced: &str, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            lines,
        }
    }

    /// The reply as it goes on the wire, each line ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * self.lines.len().max(1));
        self.render(|line| {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
        out
    }

    /// 2xx and 3xx (RFC 5321 4.2.1).
    pub fn is_positive(&self) -> bool {
        matches!(self.code / 100, 2 | 3)
    }

    /// 4xx: the client may try again later.
    pub fn is_transient(&self) -> bool {
        self.code / 100 == 4
    }

    /// 5xx: the client must not repeat the same request.
    pub fn is_permanent(&self) -> bool {
        self.code / 100 == 5
    }

    /// Calls `emit` with each rendered line, without its CRLF.
    fn render(&self, mut emit: impl FnMut(&str)) {
        debug_assert!((200..=599).contains(&self.code), "bad reply code");
        let enhanced = sanitize(&self.enhanced);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, text) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let mut line = format!("{:03}{sep}", self.code);
            if !enhanced.is_empty() {
                line.push_str(&enhanced);
                line.push(' ');
            }
            // Text is often built from client input (parameter names,
            // addresses): a CR or LF in it would let the client forge reply
            // lines, so every control character becomes '?'.
            let text = sanitize(text);
            let room = (MAX_REPLY_LINE - 2).saturating_sub(line.len());
            line.push_str(truncate(&text, room));
            let trimmed = line.trim_end_matches(' ').len();
            line.truncate(trimmed);
            emit(&line);
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut result = Ok(());
        self.render(|line| {
            if result.is_ok() {
                if !first {
                    result = f.write_str("\n");
                }
                if result.is_ok() {
                    result = f.write_str(line);
                }
            }
            first = false;
        });
        result
    }
}

/// The replies Tern sends most often, so their wording and codes stay the
/// same everywhere.
impl Reply {
    /// `220 <text>`: the greeting (RFC 5321 4.2); no enhanced code, EHLO has
    /// not happened yet.
    pub fn greeting(text: impl Into<String>) -> Reply {
        Reply::new(220, "", text)
    }

    /// `221 2.0.0 Bye` in answer to QUIT (RFC 5321 4.1.1.10).
    pub fn bye() -> Reply {
        Reply::new(221, "2.0.0", "Bye")
    }

    /// `250 2.0.0 OK`.
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }

    /// `250 2.1.0 Sender OK` (RFC 3463 3.2: X.1.0 other address status).
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Sender OK")
    }

    /// `250 2.1.5 Recipient OK` (RFC 3463 3.2: X.1.5 destination valid).
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5", "Recipient OK")
    }

    /// `250 2.0.0 OK queued as <id>`.
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("OK queued as {id}"))
    }

    /// `252 2.5.0`: VRFY is answered without confirming anything, so it
    /// cannot be used to harvest addresses (RFC 5321 3.5.3, 7.3).
    pub fn cannot_vrfy() -> Reply {
        Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `214 2.0.0 <text>` for HELP (RFC 5321 4.1.1.8).
    pub fn help(text: impl Into<String>) -> Reply {
        Reply::new(214, "2.0.0", text)
    }

    /// `354` go-ahead for DATA (RFC 5321 4.1.1.4); intermediate replies
    /// carry no enhanced code (RFC 2034 3).
    pub fn start_data() -> Reply {
        Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
    }

    /// `220 2.0.0 Ready to start TLS` (RFC 3207 4).
    pub fn ready_to_start_tls() -> Reply {
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }

    /// `454 4.7.0 TLS not available` (RFC 3207 4).
    pub fn tls_not_available() -> Reply {
        Reply::new(454, "4.7.0", "TLS not available due to temporary reason")
    }

    /// `530 5.7.0 Must issue a STARTTLS command first` (RFC 3207 4).
    pub fn starttls_required() -> Reply {
        Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }

    /// `334 <base64>`: a SASL challenge (RFC 4954 4).
    pub fn auth_challenge(b64: &str) -> Reply {
        Reply::new(334, "", b64)
    }

    /// `235 2.7.0 Authentication successful` (RFC 4954 6).
    pub fn auth_succeeded() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }

    /// `535 5.7.8 Authentication credentials invalid` (RFC 4954 6).
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }

    /// `530 5.7.0 Authentication required` (RFC 4954 6).
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }

    /// `501 5.0.0 Authentication cancelled`: the client sent "*" (RFC 4954 4).
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0", "Authentication cancelled")
    }

    /// `504 5.5.4 Unrecognized authentication type` (RFC 4954 6).
    pub fn auth_mechanism_unsupported() -> Reply {
        Reply::new(504, "5.5.4", "Unrecognized authentication type")
    }

    /// `538 5.7.11 Encryption required for requested authentication
    /// mechanism` (RFC 4954 6): plaintext passwords only over TLS.
    pub fn auth_encryption_required() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }

    /// `500 5.5.2 Command not recognized` (RFC 5321 4.2.4).
    pub fn unknown_command() -> Reply {
        Reply::new(500, "5.5.2", "Command not recognized")
    }

    /// `500 5.5.2 Line too long` (RFC 5321 4.5.3.1.4, 4.5.3.1.6).
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.2", "Line too long")
    }

    /// `501 5.5.4 <text>`: the command is known but its arguments are not
    /// (RFC 3463 3.6: X.5.4 invalid command arguments).
    pub fn syntax(text: impl Into<String>) -> Reply {
        Reply::new(501, "5.5.4", text)
    }

    /// `501 5.5.2`: a command line carrying control characters. Lines end
    /// in CRLF and nothing else (RFC 5321 2.3.8); anything else in a command
    /// is a smuggling attempt or garbage.
    pub fn control_characters() -> Reply {
        Reply::new(501, "5.5.2", "Control characters are not allowed")
    }

    /// `501 5.5.2`: a command line that is not valid UTF-8 (RFC 6531 3.3
    /// allows UTF-8, nothing else).
    pub fn invalid_utf8() -> Reply {
        Reply::new(501, "5.5.2", "Invalid UTF-8 in command")
    }

    /// `502 5.5.1 Command not implemented` (RFC 5321 4.2.4).
    pub fn not_implemented() -> Reply {
        Reply::new(502, "5.5.1", "Command not implemented")
    }

    /// `503 5.5.1 <text>`: bad sequence of commands (RFC 5321 4.2.4).
    pub fn bad_sequence(text: impl Into<String>) -> Reply {
        Reply::new(503, "5.5.1", text)
    }

    /// `553 5.1.7 Bad sender address syntax` (RFC 3463 3.2).
    pub fn bad_sender_syntax() -> Reply {
        Reply::new(553, "5.1.7", "Bad sender address syntax")
    }

    /// `553 5.1.3 Bad recipient address syntax` (RFC 3463 3.2).
    pub fn bad_recipient_syntax() -> Reply {
        Reply::new(553, "5.1.3", "Bad recipient address syntax")
    }

    /// `555 5.5.4`: a MAIL or RCPT parameter Tern does not implement
    /// (RFC 5321 4.1.1.11).
    pub fn unsupported_parameter(name: &str) -> Reply {
        Reply::new(
            555,
            "5.5.4",
            format!("Unsupported parameter {}", truncate(name, 40)),
        )
    }

    /// `550 5.7.1 Relaying denied`.
    pub fn relay_denied() -> Reply {
        Reply::new(550, "5.7.1", "Relaying denied")
    }

    /// `550 5.1.1 No such user` (RFC 3463 3.2: X.1.1 bad destination
    /// mailbox).
    pub fn no_such_user() -> Reply {
        Reply::new(550, "5.1.1", "No such user")
    }

    /// `452 4.5.3 Too many recipients` (RFC 5321 4.5.3.1.10).
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, "4.5.3", "Too many recipients")
    }

    /// `554 5.5.1 No valid recipients` in answer to DATA/BDAT
    /// (RFC 5321 3.3).
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, "5.5.1", "No valid recipients")
    }

    /// `552 5.3.4` (RFC 1870 6.1, RFC 3463 3.4).
    pub fn message_too_big() -> Reply {
        Reply::new(
            552,
            "5.3.4",
            "Message size exceeds fixed maximum message size",
        )
    }

    /// `451 4.3.0 <text>`: a local problem; the client should retry.
    pub fn temporary_failure(text: impl Into<String>) -> Reply {
        Reply::new(451, "4.3.0", text)
    }

    /// `421 4.3.2 <host> Service shutting down` (RFC 5321 3.8).
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(421, "4.3.2", format!("{host} Service shutting down"))
    }

    /// `421 4.4.2 <host> Timeout, closing connection` (RFC 5321 4.5.3.2).
    pub fn timeout(host: &str) -> Reply {
        Reply::new(421, "4.4.2", format!("{host} Timeout, closing connection"))
    }

    /// `421 4.7.0 <host> Too many errors, closing connection`.
    pub fn too_many_errors(host: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{host} Too many errors, closing connection"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        String::from_utf8(r.to_bytes()).unwrap()
    }

    #[test]
    fn single_line() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 OK\r\n");
        assert_eq!(Reply::ok().to_string(), "250 2.0.0 OK");
        assert_eq!(
            wire(&Reply::start_data()),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(wire(&Reply::new(250, "", "")), "250\r\n");
        assert_eq!(
            wire(&Reply::multiline(250, "2.0.0", vec![])),
            "250 2.0.0\r\n"
        );
    }

    #[test]
    fn ehlo_style_multiline_has_no_enhanced_code() {
        let r = Reply::multiline(
            250,
            "",
            vec![
                "mx.example.org".into(),
                "PIPELINING".into(),
                "8BITMIME".into(),
            ],
        );
        assert_eq!(
            wire(&r),
            "250-mx.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
        assert_eq!(
            r.to_string(),
            "250-mx.example.org\n250-PIPELINING\n250 8BITMIME"
        );
    }

    #[test]
    fn multiline_repeats_enhanced_code() {
        let r = Reply::multiline(214, "2.0.0", vec!["a".into(), "b".into()]);
        assert_eq!(wire(&r), "214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::syntax("evil\r\n250 2.0.0 OK\0\x7f\u{85}");
        assert_eq!(wire(&r), "501 5.5.4 evil??250 2.0.0 OK???\r\n");
        let r = Reply::multiline(250, "", vec!["a\nb".into(), "c\rd".into()]);
        assert_eq!(wire(&r), "250-a?b\r\n250 c?d\r\n");
    }

    #[test]
    fn long_text_is_cut_to_512_octets() {
        let r = Reply::new(250, "2.0.0", "é".repeat(400));
        let bytes = r.to_bytes();
        assert!(bytes.len() <= 512);
        assert!(bytes.ends_with(b"\r\n"));
        assert!(String::from_utf8(bytes).is_ok());
    }

    #[test]
    fn classes() {
        assert!(Reply::ok().is_positive());
        assert!(Reply::start_data().is_positive());
        assert!(Reply::too_many_recipients().is_transient());
        assert!(!Reply::too_many_recipients().is_permanent());
        assert!(Reply::unknown_command().is_permanent());
        assert!(!Reply::unknown_command().is_positive());
    }

    #[test]
    fn named_replies() {
        assert_eq!(
            Reply::bad_sequence("Need MAIL first").to_string(),
            "503 5.5.1 Need MAIL first"
        );
        assert_eq!(Reply::syntax("x").to_string(), "501 5.5.4 x");
        assert_eq!(
            Reply::unknown_command().to_string(),
            "500 5.5.2 Command not recognized"
        );
        assert_eq!(
            Reply::line_too_long().to_string(),
            "500 5.5.2 Line too long"
        );
        assert_eq!(
            Reply::auth_challenge("VXNlcm5hbWU6").to_string(),
            "334 VXNlcm5hbWU6"
        );
    }
}
