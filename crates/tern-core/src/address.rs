//! Mailbox addresses as Tern uses them: `local@domain`, domain lowercased.

use std::borrow::Cow;
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

/// `local@domain` as it is written in an SMTP path (RFC 5321 4.1.2) or a
/// header's addr-spec (RFC 5322 3.4.1): the local part as is when it is a
/// Dot-string, else as a Quoted-string. Tern keeps local parts unquoted
/// (`"john doe"@x` is stored as `john doe@x`), so every address it writes
/// for another program goes through here. An address without `@` (the
/// null reverse-path, `postmaster`) is returned as it is.
pub fn smtp_path(address: &str) -> Cow<'_, str> {
    match address.rsplit_once('@') {
        Some((local, domain)) if !is_dot_string(local) => {
            Cow::Owned(format!("{}@{domain}", quote_local(local)))
        }
        _ => Cow::Borrowed(address),
    }
}

/// RFC 5321 4.1.2 Dot-string: atoms of atext separated by single dots;
/// with SMTPUTF8, atext also takes any non-ASCII character (RFC 6531 3.3).
fn is_dot_string(local: &str) -> bool {
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
            })
    })
}

/// RFC 5321 4.1.2 Quoted-string: `"` and `\` escaped with a backslash
/// (quoted-pairSMTP), everything else as it is (qtextSMTP, and non-ASCII
/// with SMTPUTF8). Control characters never get this far: `Address::parse`
/// refuses them.
fn quote_local(local: &str) -> String {
    let mut q = String::with_capacity(local.len() + 2);
    q.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
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
    fn paths_quote_local_parts_that_are_not_dot_strings() {
        for (stored, path) in [
            ("joe.user@x.test", "joe.user@x.test"),
            ("a%b!c@x.test", "a%b!c@x.test"),
            ("jörg@x.test", "jörg@x.test"),
            ("john doe@x.test", "\"john doe\"@x.test"),
            ("a@b@x.test", "\"a@b\"@x.test"),
            ("a..b@x.test", "\"a..b\"@x.test"),
            (".a@x.test", "\".a\"@x.test"),
            ("say \"hi\"@x.test", "\"say \\\"hi\\\"\"@x.test"),
            ("back\\slash@x.test", "\"back\\\\slash\"@x.test"),
            ("", ""),
            ("postmaster", "postmaster"),
        ] {
            assert_eq!(smtp_path(stored), path, "{stored}");
        }
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
