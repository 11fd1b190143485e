//! The queue: the durable-commit rule on the way in, the scheduler on the
//! way out, retries, expiry and bounces.

mod dsn;
mod scheduler;

use std::sync::Arc;

use tern_core::{Envelope, MessageId};
use tern_store::{MessageBody, MessageInfo, NewMessage, Store, StoreError};
use tokio::sync::Notify;

pub use dsn::{build_dsn, Report, ReportedRecipient};
pub use scheduler::{Scheduler, SchedulerConfig};

/// What `submit` did: the message's id, and which recipients were on the
/// suppression list (stored, never attempted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: MessageId,
    pub suppressed: Vec<String>,
}

/// The subject of a message, decoded (RFC 2047), for search.
pub fn subject_of(body: &[u8]) -> Option<String> {
    let headers = mail_parser::MessageParser::new().parse_headers(body)?;
    headers.subject().map(|s| s.chars().take(998).collect())
}

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
        let info = MessageInfo {
            subject: subject_of(&body),
            ..MessageInfo::default()
        };
        self.submit(id, envelope, body.into(), auth_user, info)
            .await
            .map(|q| q.id)
    }

    /// Makes a message durable with what it was sent with. Recipients on
    /// the suppression list are stored as final (`suppressed` event) and
    /// never attempted; the answer names them.
    pub async fn submit(
        &self,
        id: MessageId,
        envelope: Envelope,
        body: MessageBody,
        auth_user: Option<String>,
        info: MessageInfo,
    ) -> Result<Queued, StoreError> {
        let addresses: Vec<String> = envelope.recipients.iter().map(|r| r.to_string()).collect();
        // The store looks the recipients up on the suppression list in the
        // commit's own transaction.
        let suppressed = self
            .store
            .commit_message(NewMessage {
                id,
                envelope,
                body,
                created_at: tern_core::unix_now(),
                auth_user,
                info,
                suppressed: Vec::new(),
            })
            .await?;
        let all_suppressed = suppressed.len() == addresses.len();
        tern_core::metrics::inc(&tern_core::metrics::METRICS.messages_accepted);
        tern_core::metrics::METRICS.recipients_suppressed.fetch_add(
            suppressed.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !all_suppressed {
            self.wake.notify_one();
        }
        Ok(Queued {
            id,
            suppressed: suppressed
                .into_iter()
                .map(|(i, _)| addresses[i].clone())
                .collect(),
        })
    }

    /// Tells the scheduler to look for due work now (after a retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}
