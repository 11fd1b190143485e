//! The PostgreSQL backend, for several nodes sharing one queue. Bodies live
//! in the database (chunked), so any node can deliver any message and a
//! node's disk holds nothing that matters. Nodes claim work with
//! `FOR UPDATE SKIP LOCKED` and hold it with a lease that they renew while
//! the attempt runs; a dead node's leases run out and another node takes
//! the work.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};
use tern_core::{DeliveryStatus, MessageId, QueuedMessage, RecipientState, RetryPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::types::*;
use crate::{Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Most commits taken into one transaction.
const MAX_BATCH: usize = 256;

struct Commit {
    msg: NewMessage,
    /// Told the suppressed recipients once the commit is durable.
    done: oneshot::Sender<Result<Vec<(usize, String)>>>,
}

pub struct PgStore {
    pool: PgPool,
    node: String,
    writer: mpsc::Sender<Commit>,
    /// Whether this node holds its name (see `hold_node_name`).
    name: Arc<AtomicU8>,
}

/// `PgStore::name`: no hold was taken (the CLI, tests of the store).
const NAME_NOT_TAKEN: u8 = 0;
const NAME_HELD: u8 = 1;
/// The connection holding the name was lost: no work is claimed until
/// the name is held again.
const NAME_REGAINING: u8 = 2;

impl PgStore {
    /// Connects, brings the schema up to date, and identifies this node's
    /// leases by `node` (stable across restarts, distinct between nodes).
    pub async fn connect(url: &str, node: &str) -> Result<PgStore> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(pool.clone(), rx));
        Ok(PgStore {
            pool,
            node: node.to_string(),
            writer: tx,
            name: Arc::new(AtomicU8::new(NAME_NOT_TAKEN)),
        })
    }

    async fn load_message(&self, row: PgRow) -> Result<Option<QueuedMessage>> {
        let Ok(id) = row.get::<String, _>("id").parse::<MessageId>() else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT address, status, detail, attempts, next_attempt FROM recipients
             WHERE message_id = $1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let recipients = rows
            .into_iter()
            .map(|r| RecipientState {
                address: r.get("address"),
                status: DeliveryStatus::from_parts(r.get("status"), r.get("detail"))
                    .unwrap_or(DeliveryStatus::Queued),
                attempts: r.get::<i32, _>("attempts") as u32,
                next_attempt: r.get("next_attempt"),
            })
            .collect();
        Ok(Some(QueuedMessage {
            id,
            sender: row.get("sender"),
            created_at: row.get("created_at"),
            size: row.get::<i64, _>("size") as u64,
            recipients,
        }))
    }
}

/// Group commit: every commit waiting goes into one transaction, bodies
/// included, so the client's 250 follows one WAL flush for the batch.
async fn writer(pool: PgPool, mut rx: mpsc::Receiver<Commit>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = commit_batch(&pool, &mut batch).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, messages = batch.len(), "commit failed");
        }
        for c in batch.drain(..) {
            let r = match &result {
                Ok(()) => Ok(c.msg.suppressed),
                Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                    "commit failed: {e}"
                )))),
            };
            let _ = c.done.send(r);
        }
    }
}

async fn commit_batch(pool: &PgPool, batch: &mut [Commit]) -> Result<()> {
    let mut tx = pool.begin().await?;
    // The suppression list, looked up in the same transaction: one query
    // for the batch.
    let mut addresses: Vec<String> = batch
        .iter()
        .flat_map(|c| c.msg.lookup_addresses())
        .collect();
    addresses.sort();
    addresses.dedup();
    let listed: std::collections::BTreeMap<String, String> =
        sqlx::query("SELECT address, reason FROM suppressions WHERE address = ANY($1)")
            .bind(&addresses)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| (r.get("address"), r.get("reason")))
            .collect();
    if !listed.is_empty() {
        for c in batch.iter_mut() {
            c.msg.apply_suppressions(&listed);
        }
    }
    for c in batch.iter() {
        let m = &c.msg;
        let id = m.id.to_string();
        sqlx::query("INSERT INTO messages (id, sender, created_at, size, auth_user, subject, tags, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&id)
            .bind(m.envelope.sender_string())
            .bind(m.created_at)
            .bind(m.body.len() as i64)
            .bind(&m.auth_user)
            .bind(&m.info.subject)
            .bind(m.info.tags_json())
            .bind(m.info.metadata_json())
            .execute(&mut *tx)
            .await?;
        // An empty body is one empty piece, so that piece 0 always exists.
        // Suppressed recipients are final at once: with no other, the body
        // is never read.
        let pieces = if m.suppressed.len() >= m.envelope.recipients.len() {
            0
        } else {
            m.body.len().div_ceil(crate::BODY_CHUNK as u64).max(1)
        };
        for seq in 0..pieces {
            // One piece in memory at a time: a staged body is read from
            // its file as it goes in.
            let piece = match &m.body {
                MessageBody::Memory(b) => {
                    let start = (seq as usize * crate::BODY_CHUNK).min(b.len());
                    std::borrow::Cow::Borrowed(&b[start..(start + crate::BODY_CHUNK).min(b.len())])
                }
                staged => std::borrow::Cow::Owned(staged.piece(seq).await?),
            };
            sqlx::query("INSERT INTO bodies (message_id, seq, data) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(seq as i32)
                .bind(piece.as_ref())
                .execute(&mut *tx)
                .await?;
        }
        for (idx, rcpt) in m.envelope.recipients.iter().enumerate() {
            let address = rcpt.to_string();
            let suppressed = m
                .suppressed
                .iter()
                .find(|(i, _)| *i == idx)
                .map(|(_, reason)| reason.as_str());
            sqlx::query(
                "INSERT INTO recipients (message_id, idx, address, domain, status, detail, attempts, next_attempt)
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
            )
            .bind(&id)
            .bind(idx as i32)
            .bind(&address)
            .bind(rcpt.domain())
            .bind(if suppressed.is_some() { "suppressed" } else { "queued" })
            .bind(suppressed)
            .bind(m.created_at)
            .execute(&mut *tx)
            .await?;
            let (kind, detail) = match suppressed {
                Some(reason) => ("suppressed", Some(reason)),
                None => ("accepted", None),
            };
            insert_event(
                &mut tx,
                &id,
                Some(&address),
                kind,
                detail,
                None,
                m.created_at,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::PgConnection,
    message_id: &str,
    recipient: Option<&str>,
    kind: &str,
    detail: Option<&str>,
    data: Option<&str>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (message_id, recipient, kind, detail, data, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message_id)
    .bind(recipient)
    .bind(kind)
    .bind(detail)
    .bind(data)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Takes `node` on `conn`: a session advisory lock, which PostgreSQL lets
/// go when the connection ends, however the process ends. `false` when
/// another session has it.
async fn lock_node_name(conn: &mut sqlx::PgConnection, node: &str) -> Result<bool> {
    // If this node's machine dies, PostgreSQL learns that its connection
    // is gone (and lets the name go) from TCP keepalives: after about 25 s
    // instead of the system's default two hours. No effect over a Unix
    // socket, where a dead peer is seen at once.
    // `tcp_user_timeout` likewise ends the session when what the server
    // sends goes unacknowledged for 25 s (keepalives do not run then).
    sqlx::query(
        "SELECT set_config('tcp_keepalives_idle', '10', false),
                set_config('tcp_keepalives_interval', '5', false),
                set_config('tcp_keepalives_count', '3', false),
                set_config('tcp_user_timeout', '25000', false)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("tern node {node}"))
            .fetch_one(conn)
            .await?,
    )
}

/// Keeps the connection that holds the node's name alive, and when it is
/// lost (the database restarted) takes the name again on a new one. While
/// it does, the node claims no work; if another node has taken the name,
/// the node is told to stop.
struct Keeper {
    pool: PgPool,
    node: String,
    name: Arc<AtomicU8>,
    lost: tokio::sync::watch::Sender<bool>,
}

impl Keeper {
    /// How often the connection is checked: a lost name stops claims
    /// within about this long.
    const EVERY: Duration = Duration::from_secs(2);
    /// A check that takes longer counts as a lost connection (a
    /// half-open one would otherwise hang for the TCP retransmission
    /// time, many minutes).
    const CHECK: Duration = Duration::from_secs(5);

    async fn run(self, mut conn: sqlx::PgConnection) {
        loop {
            tokio::time::sleep(Self::EVERY).await;
            let check = sqlx::query("SELECT 1").execute(&mut conn);
            if matches!(tokio::time::timeout(Self::CHECK, check).await, Ok(Ok(_))) {
                continue;
            }
            self.name.store(NAME_REGAINING, Ordering::Release);
            tracing::warn!(node = %self.node, "lost the connection holding this node's name; claiming no work until it is held again");
            match self.regain().await {
                Some(c) => {
                    conn = c;
                    self.name.store(NAME_HELD, Ordering::Release);
                    tracing::info!(node = %self.node, "holding this node's name again");
                }
                None => {
                    tracing::error!(node = %self.node, "another running node has this node's name: give each node its own [store] node_id");
                    let _ = self.lost.send(true);
                    return;
                }
            }
        }
    }

    /// A new connection holding the name, or `None` when another node
    /// holds it. Waits for the database for as long as it takes.
    async fn regain(&self) -> Option<sqlx::PgConnection> {
        // Refused, the name may still be held by this node's own lost
        // session, until the database sees that connection gone (its
        // keepalives and user timeout: about 25 s). Refused for longer, it
        // is another node's.
        const OWN_SESSION: Duration = Duration::from_secs(40);
        let mut refused_since = None;
        loop {
            let attempt = async {
                let mut c = self.pool.acquire().await?.detach();
                lock_node_name(&mut c, &self.node)
                    .await
                    .map(|held| (c, held))
            };
            match tokio::time::timeout(Self::CHECK, attempt).await {
                Ok(Ok((c, true))) => return Some(c),
                Ok(Ok((_, false))) => {
                    let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= OWN_SESSION {
                        return None;
                    }
                }
                // The database is not there (yet): wait for it.
                _ => {}
            }
            tokio::time::sleep(Self::EVERY).await;
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn commit_message(&self, msg: NewMessage) -> Result<Vec<(usize, String)>> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Commit { msg, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        policy: &RetryPolicy,
        limit: usize,
    ) -> Result<Vec<DueRecipient>> {
        if self.name.load(Ordering::Acquire) == NAME_REGAINING {
            // Another node may have the name now: claims made under it
            // might be that node's to end.
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: rows another node is claiming right now are passed
        // over, not waited for; the lease keeps them from being claimed
        // again once that node commits.
        let rows = sqlx::query(
            "SELECT r.message_id, r.idx, r.address, r.domain, r.attempts, r.warned, m.sender, m.created_at, m.size
             FROM recipients r JOIN messages m ON m.id = r.message_id
             WHERE r.status IN ('queued', 'deferred') AND r.next_attempt <= $1
               AND (r.leased_until IS NULL OR r.leased_until <= $1)
             ORDER BY r.next_attempt LIMIT $2
             FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(message_id) = r.get::<String, _>("message_id").parse::<MessageId>() else {
                continue;
            };
            let d = DueRecipient {
                message_id,
                idx: r.get::<i32, _>("idx") as u32,
                address: r.get("address"),
                domain: r.get("domain"),
                sender: r.get("sender"),
                created_at: r.get("created_at"),
                attempts: r.get::<i32, _>("attempts") as u32,
                warned: r.get::<i32, _>("warned") != 0,
                size: r.get::<i64, _>("size") as u64,
            };
            let next = now + policy.delay_after(d.attempts + 1).as_secs() as i64;
            sqlx::query(
                "UPDATE recipients SET attempts = attempts + 1, next_attempt = $1,
                     leased_until = $2, leased_by = $3
                 WHERE message_id = $4 AND idx = $5",
            )
            .bind(next)
            .bind(lease_until)
            .bind(&self.node)
            .bind(message_id.to_string())
            .bind(d.idx as i32)
            .execute(&mut *tx)
            .await?;
            due.push(d);
        }
        tx.commit().await?;
        due.sort_by_key(|d| (d.message_id, d.idx));
        Ok(due)
    }

    async fn hold_node_name(&self) -> Result<crate::NodeHold> {
        // A node that has just stopped lets its name go when PostgreSQL
        // sees its connection close: at once when the process ended, within
        // the keepalive time below when its machine died. Worth a short
        // wait before taking the name for another node's.
        const WAIT: Duration = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut conn = self.pool.acquire().await?.detach();
        let mut said = false;
        while !lock_node_name(&mut conn, &self.node).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::NodeInUse(self.node.clone()));
            }
            if !said {
                said = true;
                tracing::warn!(node = %self.node, "this node's name is held by another connection; waiting for it (up to 10 s)");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.name.store(NAME_HELD, Ordering::Release);
        let (lost, told) = tokio::sync::watch::channel(false);
        let keeper = Keeper {
            pool: self.pool.clone(),
            node: self.node.clone(),
            name: self.name.clone(),
            lost,
        };
        let task = tokio::spawn(keeper.run(conn));
        Ok(crate::NodeHold {
            task: Some(task),
            lost: told,
        })
    }

    async fn release_leases(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE recipients SET leased_until = NULL, leased_by = NULL WHERE leased_by = $1",
        )
        .bind(&self.node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn renew_leases(&self, until: i64, recipients: &[(MessageId, u32)]) -> Result<u64> {
        if recipients.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = recipients.iter().map(|(id, _)| id.to_string()).collect();
        let idxs: Vec<i32> = recipients.iter().map(|(_, i)| *i as i32).collect();
        Ok(sqlx::query(
            "UPDATE recipients SET leased_until = $1
             WHERE leased_by = $2 AND leased_until IS NOT NULL
               AND (message_id, idx) IN (SELECT * FROM unnest($3::text[], $4::int[]))",
        )
        .bind(until)
        .bind(&self.node)
        .bind(&ids)
        .bind(&idxs)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt) AS t FROM recipients WHERE status IN ('queued', 'deferred')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>("t"))
    }

    async fn record_results(&self, results: &[RecipientResult]) -> Result<Vec<MessageId>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        for r in results {
            let id = r.message_id.to_string();
            let status = r.outcome.status();
            let next = match &r.outcome {
                Outcome::Deferred { retry_at, .. } => *retry_at,
                _ => r.at,
            };
            let updated = sqlx::query(
                "UPDATE recipients SET status = $1, detail = $2, next_attempt = $3,
                     leased_until = NULL, leased_by = NULL, warned = GREATEST(warned, $4)
                 WHERE message_id = $5 AND idx = $6 AND status IN ('queued', 'deferred')
                   AND (leased_by IS NULL OR leased_by = $7)",
            )
            .bind(status.kind())
            .bind(status.detail())
            .bind(next)
            .bind(r.warned as i32)
            .bind(&id)
            .bind(r.idx as i32)
            .bind(&self.node)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A late result (this node's lease ran out and another node
            // took the work) changes nothing and leaves no history line.
            if updated == 0 {
                continue;
            }
            let (kind, data) = r.outcome.event();
            insert_event(
                &mut tx,
                &id,
                Some(&r.address),
                kind,
                status.detail(),
                data.as_deref(),
                r.at,
            )
            .await?;
            if r.outcome.suppresses() {
                sqlx::query(
                    "INSERT INTO suppressions (address, reason, source, created_at) VALUES ($1, $2, 'bounce', $3)
                     ON CONFLICT (address) DO NOTHING",
                )
                .bind(r.address.to_lowercase())
                .bind(status.detail())
                .bind(r.at)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut ids: Vec<MessageId> = results.iter().map(|r| r.message_id).collect();
        ids.sort();
        ids.dedup();
        let mut finished = Vec::new();
        for id in ids {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM recipients WHERE message_id = $1 AND status IN ('queued', 'deferred')",
            )
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            if pending == 0 {
                // The body goes in the same transaction that makes the
                // message final: nothing to sweep later.
                sqlx::query("DELETE FROM bodies WHERE message_id = $1")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                finished.push(id);
            }
        }
        tx.commit().await?;
        Ok(finished)
    }

    async fn list_messages(&self, limit: usize) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(
            "SELECT id, sender, created_at, size FROM messages m
             WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                           AND r.status IN ('queued', 'deferred'))
             ORDER BY id LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(self.load_message(row).await?);
        }
        Ok(out)
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<QueuedMessage>> {
        let row = sqlx::query("SELECT id, sender, created_at, size FROM messages WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => self.load_message(row).await,
            None => Ok(None),
        }
    }

    async fn message_events(&self, id: MessageId) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT at, recipient, kind, detail, data FROM events WHERE message_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| EventRecord {
                at: r.get("at"),
                recipient: r.get("recipient"),
                kind: r.get("kind"),
                detail: r.get("detail"),
                data: r.get("data"),
            })
            .collect())
    }

    async fn delete_message(&self, id: MessageId) -> Result<bool> {
        const DELETED: &str = "deleted from the queue";
        let now = tern_core::unix_now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE recipients SET status = 'failed', detail = $1, leased_until = NULL, leased_by = NULL
             WHERE message_id = $2 AND status IN ('queued', 'deferred') RETURNING address",
        )
        .bind(DELETED)
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let address: String = r.get("address");
            insert_event(
                &mut tx,
                &id.to_string(),
                Some(&address),
                "deleted",
                Some(DELETED),
                None,
                now,
            )
            .await?;
        }
        if !rows.is_empty() {
            sqlx::query("DELETE FROM bodies WHERE message_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(!rows.is_empty())
    }

    async fn retry_now(&self, id: Option<MessageId>, now: i64) -> Result<u64> {
        let q = match id {
            Some(id) => sqlx::query(
                "UPDATE recipients SET next_attempt = $1 WHERE message_id = $2 AND status IN ('queued', 'deferred')",
            )
            .bind(now)
            .bind(id.to_string()),
            None => sqlx::query(
                "UPDATE recipients SET next_attempt = $1 WHERE status IN ('queued', 'deferred')",
            )
            .bind(now),
        };
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn body_chunk(&self, id: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
        let chunk: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM bodies WHERE message_id = $1 AND seq = $2")
                .bind(id.to_string())
                .bind(index as i32)
                .fetch_optional(&self.pool)
                .await?;
        if chunk.is_none() && index == 0 {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no body for {id}"),
            )));
        }
        Ok(chunk)
    }

    async fn body_size(&self, id: MessageId) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(LENGTH(data))::BIGINT FROM bodies WHERE message_id = $1 HAVING COUNT(*) > 0",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(size.map(|s| s as u64))
    }

    async fn quarantine(&self, id: MessageId, reason: &str) -> Result<()> {
        let now = tern_core::unix_now();
        let detail = format!("quarantined: {reason}");
        let mut tx = self.pool.begin().await?;
        let addresses: Vec<String> = sqlx::query_scalar(
            "UPDATE recipients SET status = 'failed', detail = $1, leased_until = NULL, leased_by = NULL
             WHERE message_id = $2 AND status IN ('queued', 'deferred') RETURNING address",
        )
        .bind(&detail)
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        for address in addresses {
            insert_event(
                &mut tx,
                &id.to_string(),
                Some(&address),
                "quarantined",
                Some(reason),
                None,
                now,
            )
            .await?;
        }
        // The body rows stay, for inspection.
        tx.commit().await?;
        Ok(())
    }

    async fn sweep(&self) -> Result<usize> {
        // Bodies are committed and released in the same transactions as
        // their rows, so a crash leaves nothing behind to sweep.
        Ok(0)
    }

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        let r =
            sqlx::query("INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(password_hash)
                .bind(now)
                .execute(&self.pool)
                .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Exists(format!("user {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
                .bind(password_hash)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn user_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn list_users(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn remove_user(&self, name: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }
    async fn add_domain(&self, name: &str, now: i64) -> Result<()> {
        let r = sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Exists(format!("domain {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_domain(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM dkim_keys WHERE domain = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM domains WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        tx.commit().await?;
        Ok(gone)
    }

    async fn list_domains(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn add_dkim_key(&self, key: &DkimKeyRecord) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, created_at, active)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.domain)
        .bind(&key.selector)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.created_at)
        .bind(key.active as i32)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Exists(
                format!("selector {} of {}", key.selector, key.domain),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyRecord>> {
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, private_key, public_key, created_at, active
             FROM dkim_keys WHERE ($1 IS NULL OR domain = $1) ORDER BY domain, created_at, selector",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DkimKeyRecord {
                domain: r.get("domain"),
                selector: r.get("selector"),
                algorithm: r.get("algorithm"),
                private_key: r.get("private_key"),
                public_key: r.get("public_key"),
                created_at: r.get("created_at"),
                active: r.get::<i32, _>("active") != 0,
            })
            .collect())
    }

    async fn set_dkim_key_active(
        &self,
        domain: &str,
        selector: &str,
        active: bool,
    ) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE dkim_keys SET active = $1 WHERE domain = $2 AND selector = $3")
                .bind(active as i32)
                .bind(domain)
                .bind(selector)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn remove_dkim_key(&self, domain: &str, selector: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2")
                .bind(domain)
                .bind(selector)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }
}

crate::api::impl_api_store!(
    PgStore,
    sqlx::Postgres,
    pool,
    pool,
    crate::api::numbered,
    "BEGIN",
    " FOR UPDATE OF d SKIP LOCKED"
);
