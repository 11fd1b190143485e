//! Mailbox addresses as Tern uses them: `local@domain`, domain lowercased.

use std::fmt;

/// A validated mailbox `local@domain` (RFC 5321 4.1.2 Mailbox).
///
/// The local part is kept exactly as received (it is case-sensitive in
/// principle, RFC 5321 2.4); the domain is lowercased because it is not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address has no @domain")]
    NoDomain,
    #[error("address has an empty local part")]
    EmptyLocal,
    #[error("address domain is not a valid host name")]
    BadDomain,
    #[error("address contains a control character")]
    ControlChar,
    #[error("address is longer than 254 octets")]
    TooLong,
}

impl Address {
    /// Parses `local@domain`, splitting at the last `@`. Control characters
    /// (CR, LF, NUL...) are never accepted anywhere in an address.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(AddressError::ControlChar);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::NoDomain)?;
        if local.is_empty() {
            return Err(AddressError::EmptyLocal);
        }
        if !is_domain(domain) {
            return Err(AddressError::BadDomain);
        }
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True when the local part is a plain dot-atom: no quoting, no `%`, `!`
    /// or `@` hidden in it. Anything else is how relay tricks are spelled
    /// (RFC 2505 2.6, "percent hack" and bang paths), so policy treats it with
    /// suspicion.
    pub fn is_plain(&self) -> bool {
        !self.local.is_empty()
            && self.local.split('.').all(|atom| {
                !atom.is_empty()
                    && atom.chars().all(|c| {
                        c.is_ascii_alphanumeric()
                            || "#$&'*+-/=?^_`{|}~".contains(c)
                            || (!c.is_ascii() && !c.is_control())
                    })
            })
    }
}

/// A host name (RFC 5321 4.1.2 Domain) or an address literal `[...]`.
fn is_domain(d: &str) -> bool {
    if d.starts_with('[') {
        return d.ends_with(']') && d.len() > 2;
    }
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases_domain() {
        let a = Address::parse("Joe.User@Example.COM").unwrap();
        assert_eq!(a.local(), "Joe.User");
        assert_eq!(a.domain(), "example.com");
        assert!(a.is_plain());
    }

    #[test]
    fn refuses_bad_forms() {
        assert_eq!(Address::parse("nodomain"), Err(AddressError::NoDomain));
        assert_eq!(Address::parse("@x.com"), Err(AddressError::EmptyLocal));
        assert_eq!(Address::parse("a@"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a@b..c"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a\r\n@b.c"), Err(AddressError::ControlChar));
        assert_eq!(Address::parse("a\0@b.c"), Err(AddressError::ControlChar));
    }

    #[test]
    fn relay_tricks_are_not_plain() {
        for s in [
            "a%b.com@x.com",
            "b.com!a@x.com",
            "a@b.com@x.com",
            "\"a b\"@x.com",
            "a..b@x.com",
        ] {
            let a = Address::parse(s).unwrap();
            assert!(!a.is_plain(), "{s}");
        }
        assert!(Address::parse("a@[127.0.0.1]").is_ok());
    }
}
