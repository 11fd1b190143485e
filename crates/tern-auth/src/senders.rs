//! Sender identity: which domains an authenticated user may send as, in
//! MAIL FROM and in the From header. Without it any user could send mail
//! in the name of any domain the server signs for.

use std::sync::Arc;

use tern_core::Config;
use tern_store::{Store, StoreError};

#[derive(Clone)]
pub struct SenderPolicy {
    store: Arc<dyn Store>,
    local_domains: Vec<String>,
    /// `None`: the registered and local domains. `Some(["*"])`: anything.
    configured: Option<Vec<String>>,
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
        }
    }

    /// Whether an authenticated user may send as `domain`.
    pub async fn allows(&self, domain: &str) -> Result<bool, StoreError> {
        let domain = domain.to_ascii_lowercase();
        if let Some(list) = &self.configured {
            return Ok(list.iter().any(|d| d == "*" || *d == domain));
        }
        if self.local_domains.contains(&domain) {
            return Ok(true);
        }
        Ok(self.store.list_domains().await?.contains(&domain))
    }
}
