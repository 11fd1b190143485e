//! API keys: `tern_<id>_<secret>`. The id finds the key; only a SHA-256 of
//! the secret is stored. A fast hash is right here, unlike for passwords:
//! the secret is 190 random bits, not something a person chose, so there is
//! nothing to guess and every request can afford the check.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use tern_store::{ApiKeyRecord, Store, StoreError};

/// What a key may do. `admin` may do everything; `send` only sends;
/// `read` only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Send,
    Read,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether a key of this scope may do what `needed` guards.
    pub fn permits(self, needed: Scope) -> bool {
        self == Scope::Admin || self == needed
    }
}

/// A new key: the record to store and the key to show once.
pub fn generate(name: &str, scope: Scope, now: i64) -> (ApiKeyRecord, String) {
    let mut rng = rand::thread_rng();
    let id: String = (0..12)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect();
    let secret: String = (&mut rng)
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        secret_hash: hash(&secret),
        created_at: now,
        revoked_at: None,
    };
    (record, format!("tern_{id}_{secret}"))
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The live key `token` names, with its scope; `None` for anything else
/// (malformed, unknown, wrong secret, revoked).
pub async fn verify(
    store: &dyn Store,
    token: &str,
) -> Result<Option<(ApiKeyRecord, Scope)>, StoreError> {
    let Some((id, secret)) = token
        .strip_prefix("tern_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(key) = store.api_key(id).await? else {
        return Ok(None);
    };
    // Compared without an early exit, so timing says nothing of the hash.
    let given = hash(secret);
    let same = given.len() == key.secret_hash.len()
        && given
            .bytes()
            .zip(key.secret_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || key.revoked_at.is_some() {
        return Ok(None);
    }
    let Some(scope) = Scope::parse(&key.scope) else {
        return Ok(None);
    };
    Ok(Some((key, scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_store::ApiStore;

    #[test]
    fn scopes() {
        assert!(Scope::Admin.permits(Scope::Send));
        assert!(Scope::Admin.permits(Scope::Read));
        assert!(Scope::Send.permits(Scope::Send));
        assert!(!Scope::Send.permits(Scope::Read));
        assert!(!Scope::Read.permits(Scope::Send));
        assert!(!Scope::Read.permits(Scope::Admin));
    }

    #[tokio::test]
    async fn keys_verify_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = tern_store::SqliteStore::open(dir.path()).await.unwrap();
        let (record, key) = generate("app", Scope::Send, 1);
        store.add_api_key(&record).await.unwrap();
        let (found, scope) = verify(&store, &key).await.unwrap().unwrap();
        assert_eq!((found.name.as_str(), scope), ("app", Scope::Send));
        let wrong = format!("{}x", &key[..key.len() - 1]);
        assert!(verify(&store, &wrong).await.unwrap().is_none());
        assert!(verify(&store, "tern_zz_y").await.unwrap().is_none());
        assert!(verify(&store, "Bearer").await.unwrap().is_none());
        assert!(!key.contains(&record.secret_hash));
        store.revoke_api_key("app", 2).await.unwrap();
        assert!(verify(&store, &key).await.unwrap().is_none());
    }
}
