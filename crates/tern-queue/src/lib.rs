//! The queue: the durable-commit rule on the way in, the scheduler on the
//! way out, retries, expiry and bounces.

mod dsn;
mod scheduler;

use std::sync::Arc;

use tern_core::{Envelope, MessageId};
use tern_store::{MessageInfo, NewMessage, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Notify};

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
    lookups: mpsc::Sender<Lookup>,
}

/// One submission's question to the suppression list, and where the
/// answer goes.
struct Lookup {
    addresses: Vec<String>,
    answer: oneshot::Sender<Result<Vec<(String, String)>, StoreError>>,
}

/// Lookups answered by one query, and most addresses in that query.
const LOOKUP_BATCH: usize = 256;
const LOOKUP_ADDRESSES: usize = 1000;

/// Answers the suppression lookups of concurrent submissions with one
/// query for all of them, as the group commit writes their messages in one
/// transaction: under load, a query per message was one of the last
/// per-message round trips to the database.
async fn suppression_lookups(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Lookup>) {
    let mut batch = Vec::with_capacity(LOOKUP_BATCH);
    while rx.recv_many(&mut batch, LOOKUP_BATCH).await > 0 {
        let mut addresses: Vec<String> = batch
            .iter()
            .flat_map(|l| l.addresses.iter().map(|a| a.to_lowercase()))
            .collect();
        addresses.sort();
        addresses.dedup();
        let mut listed = Vec::new();
        let mut failed = None;
        for part in addresses.chunks(LOOKUP_ADDRESSES) {
            match store.suppressed(part).await {
                Ok(found) => listed.extend(found),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        for l in batch.drain(..) {
            let answer = match &failed {
                Some(e) => Err(StoreError::Io(std::io::Error::other(e.clone()))),
                None => Ok(listed
                    .iter()
                    .filter(|(a, _)| l.addresses.iter().any(|mine| mine.eq_ignore_ascii_case(a)))
                    .cloned()
                    .collect()),
            };
            let _ = l.answer.send(answer);
        }
    }
}

impl Queue {
    /// Needs a Tokio runtime: the suppression lookups run in a task.
    pub fn new(store: Arc<dyn Store>) -> Queue {
        let (lookups, rx) = mpsc::channel(4096);
        tokio::spawn(suppression_lookups(store.clone(), rx));
        Queue {
            store,
            wake: Arc::new(Notify::new()),
            lookups,
        }
    }

    /// The entries of the suppression list for these addresses.
    async fn suppressed(&self, addresses: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, wait) = oneshot::channel();
        let lookup = Lookup {
            addresses: addresses.to_vec(),
            answer,
        };
        self.lookups
            .send(lookup)
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
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
        self.submit(id, envelope, body, auth_user, info)
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
        body: Vec<u8>,
        auth_user: Option<String>,
        info: MessageInfo,
    ) -> Result<Queued, StoreError> {
        let addresses: Vec<String> = envelope.recipients.iter().map(|r| r.to_string()).collect();
        let listed = self.suppressed(&addresses).await?;
        let suppressed: Vec<(usize, String)> = addresses
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let a = a.to_lowercase();
                listed
                    .iter()
                    .find(|(s, _)| *s == a)
                    .map(|(_, reason)| (i, format!("suppressed: {reason}")))
            })
            .collect();
        let all_suppressed = suppressed.len() == addresses.len();
        self.store
            .commit_message(NewMessage {
                id,
                envelope,
                body,
                created_at: tern_core::unix_now(),
                auth_user,
                info,
                suppressed: suppressed.clone(),
            })
            .await?;
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
