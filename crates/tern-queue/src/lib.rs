//! The queue: the durable-commit rule on the way in, the scheduler on the
//! way out, retries, expiry and bounces.

mod dsn;
mod scheduler;

use std::sync::Arc;

use tern_core::{Envelope, MessageId};
use tern_store::{NewMessage, Store, StoreError};
use tokio::sync::Notify;

pub use dsn::{build_dsn, Report, ReportedRecipient};
pub use scheduler::{Scheduler, SchedulerConfig};

/// The way into the queue for every source (SMTP, later HTTP and bounces).
#[derive(Clone)]
pub struct Queue {
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
}

impl Queue {
    pub fn new(store: Arc<dyn Store>) -> Queue {
        Queue {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Makes a message durable. Only after this returns `Ok` may the client
    /// hear `250` (RFC 5321 4.1.1.4: the receiver accepts responsibility);
    /// on `Err` nothing is left behind and the client hears `451 4.3.0`.
    pub async fn enqueue(
        &self,
        envelope: Envelope,
        body: Vec<u8>,
        auth_user: Option<String>,
    ) -> Result<MessageId, StoreError> {
        self.enqueue_with_id(MessageId::generate(), envelope, body, auth_user)
            .await
    }

    /// As `enqueue`, with an id chosen in advance (it appears in the
    /// Received header written before the commit).
    pub async fn enqueue_with_id(
        &self,
        id: MessageId,
        envelope: Envelope,
        body: Vec<u8>,
        auth_user: Option<String>,
    ) -> Result<MessageId, StoreError> {
        self.store
            .commit_message(NewMessage {
                id,
                envelope,
                body,
                created_at: tern_core::unix_now(),
                auth_user,
            })
            .await?;
        self.wake.notify_one();
        Ok(id)
    }

    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}
