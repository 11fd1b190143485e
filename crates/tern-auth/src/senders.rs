//! Sender identity: which domains an authenticated user may send as, in
//! MAIL FROM and in the From header. Without it any user could send mail
//! in the name of any domain the server signs for.

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_core::Config;
use tern_store::{Store, StoreError};

#[derive(Clone)]
pub struct SenderPolicy {
    store: Arc<dyn Store>,
    local_domains: Vec<String>,
    /// `None`: the registered and local domains. `Some(["*"])`: anything.
    configured: Option<Vec<String>>,
    users: BTreeMap<String, Vec<String>>,
    keys: BTreeMap<String, Vec<String>>,
}

/// Who is sending: an SMTP user or an API key, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender<'a> {
    User(&'a str),
    Key(&'a str),
}

impl std::fmt::Display for Sender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::User(n) => write!(f, "{n}"),
            Sender::Key(n) => write!(f, "API key {n}"),
        }
    }
}

fn lower(map: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    map.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.iter().map(|d| d.to_ascii_lowercase()).collect(),
            )
        })
        .collect()
}

impl SenderPolicy {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> SenderPolicy {
        SenderPolicy {
            store,
            local_domains: config.local_domains(),
            configured: config
                .senders
                .domains
                .as_ref()
                .map(|d| d.iter().map(|d| d.to_ascii_lowercase()).collect()),
            users: lower(&config.senders.users),
            keys: lower(&config.senders.keys),
        }
    }

    /// Whether `who` may send as `domain`: its own list when it has one,
    /// else the server-wide rule.
    pub async fn allows(&self, who: Sender<'_>, domain: &str) -> Result<bool, StoreError> {
        let domain = domain.to_ascii_lowercase();
        let own = match who {
            Sender::User(n) => self.users.get(n),
            Sender::Key(n) => self.keys.get(n),
        };
        if let Some(list) = own.or(self.configured.as_ref()) {
            return Ok(list.iter().any(|d| d == "*" || *d == domain));
        }
        if self.local_domains.contains(&domain) {
            return Ok(true);
        }
        Ok(self.store.list_domains().await?.contains(&domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn own_lists_replace_the_server_wide_rule() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tern_store::SqliteStore::open(dir.path()).await.unwrap());
        store.add_domain("registered.test", 0).await.unwrap();
        let mut config = Config::default();
        config.domains.local = Some(vec!["local.test".into()]);
        config
            .senders
            .users
            .insert("alice".into(), vec!["Alice.test".into()]);
        config
            .senders
            .keys
            .insert("billing".into(), vec!["*".into()]);
        let p = SenderPolicy::new(&config, store);
        let ok = |who, d| {
            let p = p.clone();
            async move { p.allows(who, d).await.unwrap() }
        };
        // Everyone else: local and registered domains.
        assert!(ok(Sender::User("bob"), "local.test").await);
        assert!(ok(Sender::Key("app"), "REGISTERED.test").await);
        assert!(!ok(Sender::Key("app"), "other.test").await);
        // alice: her own list only.
        assert!(ok(Sender::User("alice"), "alice.test").await);
        assert!(!ok(Sender::User("alice"), "local.test").await);
        // The key named billing may send as anything; a user of that name
        // is not the key.
        assert!(ok(Sender::Key("billing"), "anything.test").await);
        assert!(!ok(Sender::User("billing"), "anything.test").await);
    }
}
