//! Who lives here: local domains, users and aliases.

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_core::{Address, Config};
use tern_store::{Store, StoreError};

/// What a recipient address means to this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Not a local domain: it would be relayed.
    Remote,
    /// A local domain; these are the addresses to deliver to (mailboxes
    /// here, or forwarding targets elsewhere, after alias expansion).
    Local(Vec<Address>),
    /// A local domain with no such user or alias (550 5.1.1 at RCPT).
    Unknown,
}

/// Aliases point at most this many levels deep; deeper is a loop.
const MAX_ALIAS_DEPTH: usize = 8;

#[derive(Clone)]
pub struct Directory {
    local_domains: Vec<String>,
    aliases: BTreeMap<String, Vec<Address>>,
    store: Arc<dyn Store>,
}

impl Directory {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Directory {
        let aliases = config
            .aliases
            .iter()
            .map(|(k, v)| {
                let targets = v.iter().filter_map(|t| Address::parse(t).ok()).collect();
                (k.to_lowercase(), targets)
            })
            .collect();
        Directory {
            local_domains: config.local_domains(),
            aliases,
            store,
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Resolves a recipient. Local parts match case-insensitively, as every
    /// mail user expects even though RFC 5321 2.4 allows otherwise.
    pub async fn resolve(&self, rcpt: &Address) -> Result<Resolution, StoreError> {
        if !self.is_local_domain(rcpt.domain()) {
            return Ok(Resolution::Remote);
        }
        let mut out = Vec::new();
        if !self.expand(rcpt, 0, &mut out).await? {
            return Ok(Resolution::Unknown);
        }
        out.sort();
        out.dedup();
        Ok(Resolution::Local(out))
    }

    /// Appends the final addresses of `addr`; false when it names nobody.
    async fn expand(
        &self,
        addr: &Address,
        depth: usize,
        out: &mut Vec<Address>,
    ) -> Result<bool, StoreError> {
        if !self.is_local_domain(addr.domain()) {
            out.push(addr.clone());
            return Ok(true);
        }
        let local = addr.local().to_lowercase();
        let canonical = Address::parse(&format!("{local}@{}", addr.domain()))
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        if let Some(targets) = self.aliases.get(&canonical.to_string()) {
            return self
                .expand_alias(&canonical.to_string(), targets, depth, out)
                .await;
        }
        if !addr.is_plain() {
            return Ok(false);
        }
        let is_user = self
            .store
            .user_hash(&canonical.to_string())
            .await?
            .is_some()
            || self.store.user_hash(&local).await?.is_some();
        // RFC 5321 4.5.1: postmaster must be accepted in every local domain.
        if is_user || local == "postmaster" {
            out.push(canonical);
            return Ok(true);
        }
        let catch_all = format!("@{}", addr.domain());
        if let Some(targets) = self.aliases.get(&catch_all) {
            return self.expand_alias(&catch_all, targets, depth, out).await;
        }
        Ok(false)
    }

    /// Expands every target of an alias. One target that names nobody (or a
    /// loop) makes the whole alias unknown: the sender hears 550 at RCPT
    /// rather than mail vanishing after a 250.
    async fn expand_alias(
        &self,
        alias: &str,
        targets: &[Address],
        depth: usize,
        out: &mut Vec<Address>,
    ) -> Result<bool, StoreError> {
        if depth >= MAX_ALIAS_DEPTH {
            tracing::warn!(%alias, "alias nesting too deep (a loop?)");
            return Ok(false);
        }
        for t in targets {
            if !Box::pin(self.expand(t, depth + 1, out)).await? {
                tracing::warn!(%alias, target = %t, "alias target names no user");
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Directory {
    /// The domain `RCPT TO:<postmaster>` means: the hostname when it is
    /// local, else the first local domain.
    pub fn local_domain_for_postmaster(&self, hostname: &str) -> String {
        if self.is_local_domain(hostname) {
            return hostname.to_ascii_lowercase();
        }
        self.local_domains
            .first()
            .cloned()
            .unwrap_or_else(|| hostname.to_ascii_lowercase())
    }
}
