//! Users and their passwords. Hashes are argon2id (RFC 9106) in PHC string
//! form; verification runs on a blocking thread because it is meant to be slow.
//! Sender domains (DKIM keys, sender identity) live here too.

pub mod dkim;
pub mod inbound;
pub mod keys;
mod senders;

use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use tern_store::{Store, StoreError};

pub use senders::{Sender, SenderPolicy};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid user name {0:?}: use letters, digits and . _ - + @ only")]
    BadName(String),
    #[error("the password is empty")]
    EmptyPassword,
}

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored hash. A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Users are looked up case-insensitively (as mail users expect), so names
/// are stored in lower case.
pub fn normalize_user_name(name: &str) -> Result<String, AuthError> {
    validate_user_name(name)?;
    Ok(name.to_ascii_lowercase())
}

/// User names are also mailbox names and log fields, so they stay boring:
/// no path separators, no leading dot, no control or space characters.
pub fn validate_user_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_string()))
    }
}

/// Answers "is this user/password pair valid?" for SMTP AUTH.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
}

/// A hash of a password nobody has, verified when the user does not exist so
/// that a wrong user name takes as long as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3fu5PjLMqA4UQx3NlVbJfQNh8l4H3jAVp2hbZK5U0A8";

/// The password checks that may run at once.
fn hash_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(n)
    })
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Authenticator { store }
    }

    /// `Ok(true)` for valid credentials, `Ok(false)` for wrong ones, `Err`
    /// when the store could not be asked (a temporary failure, 454 4.7.0).
    pub async fn verify(&self, username: &str, password: &str) -> Result<bool, AuthError> {
        let hash = self.store.user_hash(&username.to_ascii_lowercase()).await?;
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let password = password.to_string();
        // argon2id uses 19 MiB for each check: as many at once as there are
        // cores, so a crowd of clients authenticating together waits its
        // turn instead of taking a 19 MiB block each.
        let _turn = hash_slots().acquire().await.expect("never closed");
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        Ok(exists && ok)
    }

    pub async fn user_exists(&self, username: &str) -> Result<bool, AuthError> {
        Ok(self
            .store
            .user_hash(&username.to_ascii_lowercase())
            .await?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "not a hash"));
        assert!(hash_password("").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_user_name("alice").is_ok());
        assert!(validate_user_name("alice@example.com").is_ok());
        for bad in ["", ".x", "a/b", "a b", "a\nb", "a..b", "../x"] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
    }
}
