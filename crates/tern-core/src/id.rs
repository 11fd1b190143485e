//! Queue ids: sortable by creation time, unique without coordination.

use std::fmt;
use std::str::FromStr;

/// A queue id: 48 bits of milliseconds since the epoch, then 32 random bits,
/// printed as 20 lowercase hex digits. Sorting ids sorts by arrival, which is
/// what an operator reading `tern queue list` expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u128);

impl MessageId {
    pub fn generate() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            & 0xffff_ffff_ffff;
        let random: u32 = rand::random();
        MessageId((millis << 32) | random as u128)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020x}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a queue id (expected 20 hex digits): {0:?}")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadMessageId(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(MessageId)
            .map_err(|_| BadMessageId(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::generate();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        assert!("xyz".parse::<MessageId>().is_err());
        assert!("0123456789abcdef012g".parse::<MessageId>().is_err());
    }
}
