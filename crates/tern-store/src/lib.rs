//! Storage for Tern: the `Store` trait and its embedded backend.
//!
//! The trait is the contract every backend keeps (the PostgreSQL one
//! included); it holds no business rules: the queue decides *when* and *what*,
//! the store only makes it durable.

mod api;
mod postgres;
mod spool;
mod sqlite;
mod staged;
pub mod testkit;
mod types;

use async_trait::async_trait;
use tern_core::{MessageId, QueuedMessage, RetryPolicy};

pub use api::ApiStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use staged::{copy_file_part, StagedFile, STAGED_ROOM};
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("spool: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} already exists")]
    Exists(String),
    #[error("the store is shutting down")]
    Closed,
    #[error(
        "node name {0:?} is in use by another running node: give each node \
         its own [store] node_id (it defaults to the hostname)"
    )]
    NodeInUse(String),
}

/// What keeps a node's name this process's (see `Store::hold_node_name`);
/// the name is let go when it is dropped, or when the process ends.
#[derive(Debug)]
pub struct NodeHold {
    task: Option<tokio::task::JoinHandle<()>>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl Default for NodeHold {
    /// A hold on nothing (the embedded store): never lost.
    fn default() -> NodeHold {
        NodeHold {
            task: None,
            lost: tokio::sync::watch::channel(false).1,
        }
    }
}

impl NodeHold {
    /// Told when another node took the name (after the database
    /// restarted, say): this node must stop, for its claims on work are
    /// no longer its own.
    pub fn lost(&self) -> NodeLost {
        NodeLost(self.lost.clone())
    }
}

/// See `NodeHold::lost`.
pub struct NodeLost(tokio::sync::watch::Receiver<bool>);

impl NodeLost {
    /// Returns once the name is lost; never for a hold on nothing.
    pub async fn wait(&mut self) {
        if self.0.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for NodeHold {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The size of the pieces bodies are read (and, in PostgreSQL, stored) in.
pub const BODY_CHUNK: usize = 1 << 20;

/// Everything Tern keeps. Each method is all-or-nothing.
#[async_trait]
pub trait Store: ApiStore + Send + Sync + 'static {
    // --- queue ---

    /// Makes a message durable: body and metadata are on disk (fsync) when
    /// this returns `Ok`, and nothing is left behind when it returns `Err`.
    /// Commits from concurrent callers may share one fsync (group commit).
    /// Recipients on the suppression list, looked up in the same
    /// transaction, are stored final (as are those in `msg.suppressed`);
    /// the answer is every suppressed recipient, by index, with its reason.
    async fn commit_message(&self, msg: NewMessage) -> Result<Vec<(usize, String)>>;

    /// Takes up to `limit` recipients due at `now` and not in flight (or
    /// whose lease has run out: its holder died), in due order. Before
    /// returning it counts the attempt and writes the next one per `policy`,
    /// so a crash during the attempt never causes a retry storm, and leases
    /// them to this node until `lease_until`. Concurrent claimers, in this
    /// process or another, never get the same recipient.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        policy: &RetryPolicy,
        limit: usize,
    ) -> Result<Vec<DueRecipient>>;

    /// Makes this process the only live one with this node's name (its
    /// leases' owner) for as long as the returned hold lives: an error
    /// (`NodeInUse`) when another running process has the name. Taken by
    /// the server at start, before `release_leases`, so that a node never
    /// ends another live node's leases. The embedded store has one node
    /// (its data directory is locked), so it holds nothing.
    async fn hold_node_name(&self) -> Result<NodeHold>;

    /// Ends this node's leases: for a node starting up, whose earlier
    /// process can no longer be delivering.
    async fn release_leases(&self) -> Result<u64>;

    /// Extends this node's leases on these recipients (its attempts still
    /// running) to `until`. Leases of attempts that ended without their
    /// result being recorded are left to run out, so the work is retried.
    async fn renew_leases(&self, until: i64, recipients: &[(MessageId, u32)]) -> Result<u64>;

    /// The earliest next attempt among pending recipients.
    async fn next_due(&self) -> Result<Option<i64>>;

    /// Records attempt outcomes in one transaction, with an event for each,
    /// and ends their in-flight marks.
    /// Returns the messages that now have every recipient final; their
    /// bodies have been released.
    async fn record_results(&self, results: &[RecipientResult]) -> Result<Vec<MessageId>>;

    async fn list_messages(&self, limit: usize) -> Result<Vec<QueuedMessage>>;
    async fn get_message(&self, id: MessageId) -> Result<Option<QueuedMessage>>;
    async fn message_events(&self, id: MessageId) -> Result<Vec<EventRecord>>;
    /// Takes a message out of the queue: its pending recipients become
    /// failed ("deleted from the queue", a `deleted` event each, no
    /// bounce) and its body goes; its history stays. False when it had no
    /// pending recipient.
    async fn delete_message(&self, id: MessageId) -> Result<bool>;
    /// Makes pending recipients due now (one message, or all); returns how many.
    async fn retry_now(&self, id: Option<MessageId>, now: i64) -> Result<u64>;

    // --- bodies ---

    /// Piece `index` of a body (pieces of at most `BODY_CHUNK` octets), or
    /// `None` past its end; a body that does not exist is an error. Bodies
    /// are read this way so a large one is never held whole.
    async fn body_chunk(&self, id: MessageId, index: u32) -> Result<Option<Vec<u8>>>;

    /// The stored size of a body, `None` when it is gone: compared with the
    /// size recorded at commit, it tells a truncated body.
    async fn body_size(&self, id: MessageId) -> Result<Option<u64>>;

    /// The bodies kept in the database itself (the small ones) of these
    /// messages, read with one query: delivery reads them with its claim
    /// instead of one query per message. A message missing from the answer
    /// is read with `body_head`. By default, none.
    async fn small_bodies(&self, ids: &[MessageId]) -> Result<Vec<(MessageId, Vec<u8>)>> {
        let _ = ids;
        Ok(Vec::new())
    }

    /// The stored size of a body and its first piece, `None` when it is
    /// gone. Most bodies fit one piece, so delivery reads them with this
    /// one call instead of a size check and a read per pass over the body.
    async fn body_head(&self, id: MessageId) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(size) = self.body_size(id).await? else {
            return Ok(None);
        };
        Ok(self.body_chunk(id, 0).await?.map(|piece| (size, piece)))
    }

    /// Sets a damaged message aside: its pending recipients become failed
    /// with `reason` (no bounce), and what is left of its body is kept for
    /// inspection (the embedded backend moves it to `quarantine/`).
    async fn quarantine(&self, id: MessageId, reason: &str) -> Result<()>;

    /// A whole body, for callers that need it whole (tests, tools).
    async fn read_body(&self, id: MessageId) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut i = 0;
        while let Some(chunk) = self.body_chunk(id, i).await? {
            body.extend_from_slice(&chunk);
            i += 1;
        }
        Ok(body)
    }

    /// Removes what a crash left half-written: bodies with no committed
    /// message. Run at start-up, before anything is accepted.
    async fn sweep(&self) -> Result<usize>;

    // --- accounts ---

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<()>;
    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool>;
    async fn user_hash(&self, name: &str) -> Result<Option<String>>;
    async fn list_users(&self) -> Result<Vec<String>>;
    async fn remove_user(&self, name: &str) -> Result<bool>;

    // --- sender domains ---

    async fn add_domain(&self, name: &str, now: i64) -> Result<()>;
    /// Removes a domain and its keys; false when it did not exist.
    async fn remove_domain(&self, name: &str) -> Result<bool>;
    async fn list_domains(&self) -> Result<Vec<String>>;
    async fn add_dkim_key(&self, key: &DkimKeyRecord) -> Result<()>;
    /// Keys of one domain (or all), oldest first.
    async fn dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyRecord>>;
    async fn set_dkim_key_active(&self, domain: &str, selector: &str, active: bool)
        -> Result<bool>;
    async fn remove_dkim_key(&self, domain: &str, selector: &str) -> Result<bool>;
}
