//! What happened to a message: the event kinds the store records, the API
//! shows and webhooks send, and how a bounce is classed.

/// Every kind of event, as stored and shown.
pub const EVENT_KINDS: &[&str] = &[
    "accepted",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "rejected",
    "suppressed",
    "quarantined",
    "deleted",
];

/// A hard bounce says the address itself is bad (RFC 3463 class X.1.X
/// "addressing status", e.g. 5.1.1 no such user) and suppresses it; any
/// other permanent failure (mailbox full 5.2.2, policy 5.7.x, too big
/// 5.3.4) is soft: the next message may well get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceClass {
    Hard,
    Soft,
}

impl BounceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
        }
    }

    /// Classes a permanent failure by its reply: the enhanced status code
    /// when there is one (RFC 3463), else the basic code (RFC 5321 4.2.3:
    /// 550 and 551 name a mailbox, 553 its syntax).
    pub fn of(reason: &str) -> BounceClass {
        let mut words = reason.split_whitespace();
        let basic = words.next().unwrap_or("");
        if let Some(enhanced) = words.next().filter(|w| is_enhanced(w)) {
            return if enhanced.starts_with("5.1.") {
                BounceClass::Hard
            } else {
                BounceClass::Soft
            };
        }
        match basic.trim_end_matches('-') {
            "550" | "551" | "553" => BounceClass::Hard,
            _ => BounceClass::Soft,
        }
    }
}

fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The remote host a reply came from: delivery replies end in
/// `(host[address])`.
pub fn reply_host(reply: &str) -> Option<&str> {
    let reply = reply.trim_end();
    let inner = reply.strip_suffix(')')?;
    let start = inner.rfind('(')?;
    // `name[address]`: a local delivery's `(file name)` is no host.
    Some(&inner[start + 1..])
        .filter(|h| !h.contains(' ') && !h.starts_with('[') && h.ends_with(']') && h.contains('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(
            BounceClass::of("550 5.1.1 no such user (mx)"),
            BounceClass::Hard
        );
        assert_eq!(BounceClass::of("552 5.2.2 mailbox full"), BounceClass::Soft);
        assert_eq!(BounceClass::of("550 5.7.1 policy"), BounceClass::Soft);
        assert_eq!(BounceClass::of("550 no such user"), BounceClass::Hard);
        assert_eq!(BounceClass::of("554 transaction failed"), BounceClass::Soft);
        assert_eq!(BounceClass::of("no MX: 5.1.10 null MX"), BounceClass::Soft);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            reply_host("250 2.0.0 Ok (mx.example.net[127.0.0.2])"),
            Some("mx.example.net[127.0.0.2]")
        );
        assert_eq!(reply_host("250 ok"), None);
        assert_eq!(
            reply_host("250 2.0.0 delivered to maildir (1795984413.M6P3Q0R5.mx.test,S=781)"),
            None
        );
    }
}
