//! Delivery status notifications (bounces): RFC 3464 inside an RFC 6522
//! multipart/report, sent with the null reverse-path (RFC 5321 4.5.5) so
//! that a bounce is never bounced.

use std::fmt::Write;

use tern_core::{smtp_path, MessageId};

/// One recipient for the report.
pub struct ReportedRecipient<'a> {
    pub address: &'a str,
    /// The reason, usually the remote reply (`550 5.1.1 ...`).
    pub reason: &'a str,
}

/// What the report says happened (RFC 3464 2.3.3 Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Given up: a bounce.
    Failed,
    /// Still being retried until the given time (a delay warning).
    Delayed { retry_until: i64 },
}

fn rfc2822(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc2822())
        .unwrap_or_default()
}

/// Builds the report for `sender` about `original` (its full text; only
/// the header block is returned to the sender).
pub fn build_dsn(
    hostname: &str,
    id: MessageId,
    sender: &str,
    arrival: i64,
    report: Report,
    recipients: &[ReportedRecipient<'_>],
    original: &[u8],
) -> Vec<u8> {
    let boundary = format!("{id}/{hostname}");
    let now = chrono::Utc::now().to_rfc2822();
    let arrival = rfc2822(arrival);
    let (subject, intro, action) = match report {
        Report::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.".to_string(),
            "failed",
        ),
        Report::Delayed { retry_until } => (
            "Delayed Mail (still being retried)",
            format!(
                "Your message has not been delivered yet to one or more recipients.\r\n\
                 Delivery will be retried until {}; you do not need to resend it.",
                rfc2822(retry_until)
            ),
            "delayed",
        ),
    };
    let to = smtp_path(sender);
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {now}\r\n\
         Message-ID: <{id}.{action}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n"
    );
    for r in recipients {
        let _ = write!(m, "<{}>: {}\r\n", smtp_path(r.address), one_line(r.reason));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Tern-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n"
    );
    for r in recipients {
        let reason = one_line(r.reason);
        let status = match report {
            Report::Failed => status_code(&reason),
            Report::Delayed { .. } => format!("4{}", &status_code(&reason)[1..]),
        };
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\n\
             Action: {action}\r\n\
             Status: {status}\r\n",
            smtp_path(r.address),
        );
        // RFC 3464 2.3.6: the remote reply, when there was one.
        if reason.len() > 3 && reason.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            let _ = write!(m, "Diagnostic-Code: smtp; {reason}\r\n");
        } else {
            let _ = write!(m, "Diagnostic-Code: X-Tern; {reason}\r\n");
        }
        if let Report::Delayed { retry_until } = report {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", rfc2822(retry_until));
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(header_block(original));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The header block of a message, including the blank line that ends it.
fn header_block(msg: &[u8]) -> &[u8] {
    if msg.starts_with(b"\r\n") {
        return &msg[..0];
    }
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &msg[..p + 2],
        None => msg,
    }
}

/// The RFC 3463 status for the report: 5.4.7 for an expired message (RFC
/// 3463 3.5), else the first enhanced code in the reason made permanent, else
/// a generic permanent failure.
fn status_code(reason: &str) -> String {
    if reason.starts_with("expired") {
        return "5.4.7".to_string();
    }
    reason
        .split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && (parts[0] == "5" || parts[0] == "4")
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|w| format!("5{}", &w[1..]))
        .unwrap_or_else(|| "5.0.0".to_string())
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_parts_rfc_3464_asks_for() {
        let id = MessageId::generate();
        let dsn = build_dsn(
            "mx.test",
            id,
            "alice@example.com",
            0,
            Report::Failed,
            &[ReportedRecipient {
                address: "bob@remote.test",
                reason: "550 5.1.1 no such user",
            }],
            b"Subject: hello\r\nFrom: alice@example.com\r\n\r\nsecret body\r\n",
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Subject: hello\r\n"));
        assert!(!text.contains("secret body"));
        assert_eq!(status_code("451 4.4.1 timeout"), "5.4.1");
        let delayed = build_dsn(
            "mx.test",
            id,
            "alice@example.com",
            0,
            Report::Delayed {
                retry_until: 432000,
            },
            &[ReportedRecipient {
                address: "bob@remote.test",
                reason: "451 4.7.1 greylisted",
            }],
            b"Subject: hello\r\n\r\nx\r\n",
        );
        let text = String::from_utf8(delayed).unwrap();
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.7.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Will-Retry-Until: "), "{text}");
        assert_eq!(
            status_code("expired after 3 attempts; last: 451 4.4.1 x"),
            "5.4.7"
        );
        assert_eq!(status_code("no code here"), "5.0.0");
    }

    #[test]
    fn addresses_are_quoted_where_their_local_part_needs_it() {
        let dsn = build_dsn(
            "mx.test",
            MessageId::generate(),
            "mary smith@example.com",
            0,
            Report::Failed,
            &[ReportedRecipient {
                address: "john doe@remote.test",
                reason: "550 5.1.1 no such user",
            }],
            b"Subject: hello\r\n\r\nx\r\n",
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(
            text.contains("To: <\"mary smith\"@example.com>\r\n"),
            "{text}"
        );
        assert!(text.contains("<\"john doe\"@remote.test>: 550"), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; \"john doe\"@remote.test\r\n"),
            "{text}"
        );
    }
}
