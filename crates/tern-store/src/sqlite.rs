//! The embedded backend: SQLite (WAL, synchronous=FULL) for metadata,
//! events and small bodies, spool files for large bodies. One writer task
//! batches the commits of concurrent sessions, and the scheduler's claims
//! and delivery results, into one transaction (group commit), so many
//! messages share one fsync of the WAL and one of the spool directory.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tern_core::{DeliveryStatus, MessageId, QueuedMessage, RecipientState, RetryPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::spool::Spool;
use crate::types::*;
use crate::{Result, Store, StoreError};

/// The reason a recipient deleted from the queue shows.
const DELETED: &str = "deleted from the queue";

/// Most commits taken into one transaction.
const MAX_BATCH: usize = 512;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The in-process queue for SQLite's write lock (see `SqliteStore::gate`).
type WriteGate = Arc<tokio::sync::Mutex<()>>;

/// The hot-path writes, all made by one task (`writer`): the commits,
/// claims and delivery results waiting when it comes round go into one
/// transaction, so accepting and delivering share each fsync and never
/// wait for each other's turn at SQLite's write lock.
enum Work {
    Commit(Commit),
    Claim(Claim),
    Results(ResultsWork),
}

/// Delivery results, and where the messages they made final are told.
type ResultsWork = (Vec<RecipientResult>, oneshot::Sender<Result<Finished>>);

struct Commit {
    msg: NewMessage,
    /// The body goes into the `bodies` table, not the spool.
    inline: bool,
    /// Told the suppressed recipients once the commit is durable.
    done: oneshot::Sender<Result<Vec<(usize, String)>>>,
}

struct Claim {
    now: i64,
    lease_until: i64,
    policy: RetryPolicy,
    limit: usize,
    reply: oneshot::Sender<Result<Vec<DueRecipient>>>,
}

/// Bodies up to this size are kept in the database by default.
pub const DEFAULT_INLINE_MAX: usize = 64 * 1024;

pub struct SqliteStore {
    pool: SqlitePool,
    /// For delivery bookkeeping (claims, leases, results) when no new
    /// message shares its transaction: commits without waiting for fsync (synchronous=NORMAL, still atomic and safe across a
    /// process crash). Power loss can only undo the last of these, which
    /// means an attempt made again: a duplicate at worst, never a lost
    /// message, whose acceptance is always committed with a full fsync.
    state: SqlitePool,
    spool: Spool,
    /// Bodies of final messages, removed once their final state is on disk.
    to_release: Arc<Mutex<Vec<MessageId>>>,
    writer: mpsc::Sender<Work>,
    /// Taken around every hot write transaction of this process. SQLite has
    /// one writer at a time, and a connection that finds the lock taken
    /// polls for it with sleeps of up to 100 ms (its busy handler): under
    /// load, the group commit's back-to-back transactions then starved the
    /// delivery bookkeeping, and nothing was delivered while mail was being
    /// accepted. Waiting here instead is first come, first served.
    gate: WriteGate,
    /// Largest body kept in the database instead of the spool.
    inline_max: usize,
}

impl SqliteStore {
    /// Opens (creating when missing) the store under `data_dir` and brings
    /// the schema up to date.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(data_dir, DEFAULT_INLINE_MAX).await
    }

    /// As `open`, keeping bodies of up to `inline_max` octets in the
    /// database (0: every body in the spool).
    pub async fn open_with(data_dir: &Path, inline_max: usize) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir)?;
        let spool = Spool::open(data_dir.join("spool"))?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(data_dir.join("tern.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit fsyncs the WAL, so 250 means on disk.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Other processes (the CLI) write to the same file while the
            // server runs; wait for their lock rather than fail.
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await?;
        let state = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await?;
        MIGRATOR.run(&pool).await?;
        let (tx, rx) = mpsc::channel(4096);
        let gate = WriteGate::default();
        tokio::spawn(writer(
            pool.clone(),
            state.clone(),
            spool.clone(),
            gate.clone(),
            rx,
        ));
        let to_release = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(releaser(
            pool.clone(),
            spool.clone(),
            gate.clone(),
            Arc::downgrade(&to_release),
        ));
        Ok(SqliteStore {
            pool,
            state,
            spool,
            to_release,
            writer: tx,
            gate,
            inline_max,
        })
    }

    async fn load_recipients(&self, id: MessageId) -> Result<Vec<RecipientState>> {
        let rows = sqlx::query(
            "SELECT address, status, detail, attempts, next_attempt FROM recipients
             WHERE message_id = ? ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RecipientState {
                address: r.get("address"),
                status: DeliveryStatus::from_parts(r.get("status"), r.get("detail"))
                    .unwrap_or(DeliveryStatus::Queued),
                attempts: r.get::<i64, _>("attempts") as u32,
                next_attempt: r.get("next_attempt"),
            })
            .collect())
    }

    async fn load_message(&self, row: sqlx::sqlite::SqliteRow) -> Result<Option<QueuedMessage>> {
        let Ok(id) = row.get::<String, _>("id").parse::<MessageId>() else {
            return Ok(None);
        };
        Ok(Some(QueuedMessage {
            id,
            sender: row.get("sender"),
            created_at: row.get("created_at"),
            size: row.get::<i64, _>("size") as u64,
            recipients: self.load_recipients(id).await?,
        }))
    }
}

/// The group-commit loop: takes all the work waiting, makes the names of
/// spooled bodies durable with one directory fsync, writes everything in
/// one transaction, then answers each caller. A cycle with new messages
/// commits with a full fsync (synchronous=FULL: a 250 means on disk); one
/// with only delivery bookkeeping does not need to (see `state`).
async fn writer(
    pool: SqlitePool,
    state: SqlitePool,
    spool: Spool,
    gate: WriteGate,
    mut rx: mpsc::Receiver<Work>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut commits = Vec::new();
        let mut claims = Vec::new();
        let mut results = Vec::new();
        for work in batch.drain(..) {
            match work {
                Work::Commit(c) => commits.push(c),
                Work::Claim(c) => claims.push(c),
                Work::Results(r) => results.push(r),
            }
        }
        let durable = if commits.is_empty() { &state } else { &pool };
        let cycle = write_cycle(durable, &spool, &gate, &mut commits, &claims, &results).await;
        let (claimed, finished) = match cycle {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, messages = commits.len(), "commit failed");
                let failed =
                    || StoreError::Io(std::io::Error::other(format!("commit failed: {e}")));
                for c in commits {
                    // Nothing half-written stays behind: the rows rolled
                    // back, so the body goes too.
                    spool.recycle(c.msg.id);
                    let _ = c.done.send(Err(failed()));
                }
                for c in claims {
                    let _ = c.reply.send(Err(failed()));
                }
                for (_, reply) in results {
                    let _ = reply.send(Err(failed()));
                }
                continue;
            }
        };
        for c in commits {
            let _ = c.done.send(Ok(c.msg.suppressed));
        }
        for (c, due) in claims.into_iter().zip(claimed) {
            let _ = c.reply.send(Ok(due));
        }
        for (r, reply) in results {
            let mine = |ids: &[MessageId]| -> Vec<MessageId> {
                ids.iter()
                    .filter(|id| r.iter().any(|x| x.message_id == **id))
                    .copied()
                    .collect()
            };
            let _ = reply.send(Ok(Finished {
                all: mine(&finished.all),
                spooled: mine(&finished.spooled),
            }));
        }
    }
}

/// One transaction for one cycle of the writer: the claims' due
/// recipients, and the messages final after the results.
type Cycle = (Vec<Vec<DueRecipient>>, Finished);

async fn write_cycle(
    pool: &SqlitePool,
    spool: &Spool,
    gate: &WriteGate,
    commits: &mut [Commit],
    claims: &[Claim],
    results: &[ResultsWork],
) -> Result<Cycle> {
    if commits.iter().any(|c| !c.inline) {
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.sync_dir())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    let results: Vec<RecipientResult> = results
        .iter()
        .flat_map(|(r, _)| r.iter().cloned())
        .collect();
    let _turn = gate.lock().await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if !commits.is_empty() {
        apply_suppression_list(&mut tx, commits).await?;
        insert_messages(&mut tx, commits).await?;
    }
    let finished = if results.is_empty() {
        Finished::default()
    } else {
        record_in(&mut tx, &results).await?
    };
    let mut claimed = Vec::with_capacity(claims.len());
    for c in claims {
        claimed.push(claim_in(&mut tx, c).await?);
    }
    tx.commit().await?;
    Ok((claimed, finished))
}

/// Every half second, makes the final states recorded since durable with
/// one fsync'd commit (a WAL commit covers every frame before it), then
/// removes those messages' bodies: one fsync for many deliveries.
async fn releaser(
    pool: SqlitePool,
    spool: Spool,
    gate: WriteGate,
    pending: std::sync::Weak<Mutex<Vec<MessageId>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(pending) = pending.upgrade() else {
            return;
        };
        let ids = std::mem::take(&mut *pending.lock().expect("not poisoned"));
        let Some(first) = ids.first() else { continue };
        // A real write, so that the commit has a frame to fsync.
        let _turn = gate.lock().await;
        let durable = sqlx::query("UPDATE messages SET size = size WHERE id = ?")
            .bind(first.to_string())
            .execute(&pool)
            .await;
        match durable {
            // Unlinking is file system work: off the runtime's threads.
            Ok(_) => {
                let spool = spool.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    ids.iter().for_each(|id| spool.recycle(*id))
                })
                .await;
            }
            // Try again on the next tick; `sweep` also catches them at start.
            Err(_) => pending.lock().expect("not poisoned").extend(ids),
        }
    }
}

/// Looks up the recipients of new messages on the suppression list, in the
/// writer's transaction: one query per cycle instead of one per message,
/// and no entry added or removed in between can be missed.
async fn apply_suppression_list(
    tx: &mut sqlx::SqliteConnection,
    commits: &mut [Commit],
) -> Result<()> {
    let mut addresses: Vec<String> = commits
        .iter()
        .flat_map(|c| c.msg.lookup_addresses())
        .collect();
    addresses.sort();
    addresses.dedup();
    let mut listed = std::collections::BTreeMap::new();
    for part in addresses.chunks(ROWS * 4) {
        let mut q = in_list(
            "SELECT address, reason FROM suppressions WHERE address IN ",
            part.iter().map(|a| a.as_str()),
            "",
        );
        for r in q.build().fetch_all(&mut *tx).await? {
            listed.insert(r.get::<String, _>("address"), r.get::<String, _>("reason"));
        }
    }
    if !listed.is_empty() {
        for c in commits.iter_mut() {
            c.msg.apply_suppressions(&listed);
        }
    }
    Ok(())
}

/// Inserts the rows of newly accepted messages in the writer's transaction.
async fn insert_messages(tx: &mut sqlx::SqliteConnection, batch: &[Commit]) -> Result<()> {
    // Every row of the batch is built first, and written with a few
    // multi-row statements: the write lock is held for a few round trips
    // to SQLite's thread per batch, not four per message.
    let ids: Vec<String> = batch.iter().map(|c| c.msg.id.to_string()).collect();
    let mut recipients = Vec::new();
    for (c, id) in batch.iter().zip(&ids) {
        let m = &c.msg;
        for (idx, rcpt) in m.envelope.recipients.iter().enumerate() {
            let suppressed = m
                .suppressed
                .iter()
                .find(|(i, _)| *i == idx)
                .map(|(_, reason)| reason.as_str());
            recipients.push(NewRecipient {
                id,
                idx: idx as i64,
                address: rcpt.to_string(),
                domain: rcpt.domain(),
                suppressed,
                at: m.created_at,
            });
        }
    }
    let events: Vec<EventRow<'_>> = recipients
        .iter()
        .map(|r| EventRow {
            message_id: r.id,
            recipient: Some(&r.address),
            kind: if r.suppressed.is_some() {
                "suppressed"
            } else {
                "accepted"
            },
            detail: r.suppressed,
            data: None,
            at: r.at,
        })
        .collect();
    // Suppressed recipients are final at once: with no other, the body is
    // never read, so it is not kept.
    let bodies: Vec<(&str, &[u8])> = batch
        .iter()
        .zip(&ids)
        .filter(|(c, _)| c.inline && c.msg.suppressed.len() < c.msg.envelope.recipients.len())
        .filter_map(|(c, id)| match &c.msg.body {
            MessageBody::Memory(b) => Some((id.as_str(), b.as_slice())),
            MessageBody::Staged { .. } => None,
        })
        .collect();

    // All of it goes as one run of statements: one hand-off to SQLite's
    // thread instead of one per statement (sqlx binds each statement's
    // marks from where the previous one's ended).
    let messages: Vec<(&Commit, &String)> = batch.iter().zip(&ids).collect();
    let mut q = QueryBuilder::<Sqlite>::new("");
    for part in messages.chunks(ROWS) {
        q.push(
            "INSERT INTO messages (id, sender, created_at, size, auth_user, subject, tags, metadata) ",
        );
        q.push_values(part, |mut b, (c, id)| {
            let m = &c.msg;
            b.push_bind(id.as_str())
                .push_bind(m.envelope.sender_string())
                .push_bind(m.created_at)
                .push_bind(m.body.len() as i64)
                .push_bind(m.auth_user.as_deref())
                .push_bind(m.info.subject.as_deref())
                .push_bind(m.info.tags_json())
                .push_bind(m.info.metadata_json());
        });
        q.push(";\n");
    }
    for part in bodies.chunks(ROWS) {
        q.push("INSERT INTO bodies (message_id, data) ");
        q.push_values(part, |mut b, (id, data)| {
            b.push_bind(*id).push_bind(*data);
        });
        q.push(";\n");
    }
    for part in recipients.chunks(ROWS) {
        q.push(
            "INSERT INTO recipients (message_id, idx, address, domain, status, detail, attempts, next_attempt) ",
        );
        q.push_values(part, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.idx)
                .push_bind(r.address.as_str())
                .push_bind(r.domain)
                .push_bind(if r.suppressed.is_some() {
                    "suppressed"
                } else {
                    "queued"
                })
                .push_bind(r.suppressed)
                .push("0")
                .push_bind(r.at);
        });
        q.push(";\n");
    }
    push_events(&mut q, &events);
    q.build().execute(&mut *tx).await?;
    Ok(())
}

/// Claims due recipients (see `Store::claim_due`) in the writer's
/// transaction. IMMEDIATE takes SQLite's write lock first, so two
/// processes never both claim the same rows.
async fn claim_in(tx: &mut sqlx::SqliteConnection, c: &Claim) -> Result<Vec<DueRecipient>> {
    let (now, lease_until, policy, limit) = (c.now, c.lease_until, &c.policy, c.limit);
    let rows = sqlx::query(
        "SELECT r.message_id, r.idx, r.address, r.domain, r.attempts, r.warned, m.sender, m.created_at, m.size
         FROM recipients r JOIN messages m ON m.id = r.message_id
         WHERE r.status IN ('queued', 'deferred') AND r.next_attempt <= ?
           AND (r.leased_until IS NULL OR r.leased_until <= ?)
         ORDER BY r.next_attempt LIMIT ?",
    )
    .bind(now)
    .bind(now)
    .bind(limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    let mut due = Vec::with_capacity(rows.len());
    for r in rows {
        let Ok(message_id) = r.get::<String, _>("message_id").parse::<MessageId>() else {
            continue;
        };
        due.push(DueRecipient {
            message_id,
            idx: r.get::<i64, _>("idx") as u32,
            address: r.get("address"),
            domain: r.get("domain"),
            sender: r.get("sender"),
            created_at: r.get("created_at"),
            attempts: r.get::<i64, _>("attempts") as u32,
            warned: r.get::<i64, _>("warned") != 0,
            size: r.get::<i64, _>("size") as u64,
        });
    }
    // One UPDATE for the whole claim (UPDATE FROM a VALUES list).
    let claims: Vec<(String, i64, i64)> = due
        .iter()
        .map(|d| {
            let next = now + policy.delay_after(d.attempts + 1).as_secs() as i64;
            (d.message_id.to_string(), d.idx as i64, next)
        })
        .collect();
    for part in claims.chunks(ROWS) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v(mid, i, nxt) AS (");
        q.push_values(part, |mut b, (id, idx, next)| {
            b.push_bind(id.as_str()).push_bind(*idx).push_bind(*next);
        });
        q.push(
            ") UPDATE recipients SET attempts = recipients.attempts + 1, next_attempt = v.nxt, leased_until = ",
        )
        .push_bind(lease_until)
        .push(" FROM v WHERE recipients.message_id = v.mid AND recipients.idx = v.i");
        q.build().execute(&mut *tx).await?;
    }
    due.sort_by_key(|d| (d.message_id, d.idx));
    Ok(due)
}

/// Records delivery results (see `Store::record_results`) in the
/// writer's transaction; returns the messages now final.
async fn record_in(
    tx: &mut sqlx::SqliteConnection,
    results: &[RecipientResult],
) -> Result<Finished> {
    // A few statements for the whole batch, however many results.
    let rows: Vec<ResultRow<'_>> = results
        .iter()
        .map(|r| {
            let status = r.outcome.status();
            let (kind, data) = r.outcome.event();
            ResultRow {
                id: r.message_id.to_string(),
                result: r,
                next: match &r.outcome {
                    Outcome::Deferred { retry_at, .. } => *retry_at,
                    _ => r.at,
                },
                status,
                kind,
                data,
            }
        })
        .collect();
    let mut updated = std::collections::HashSet::new();
    for part in rows.chunks(ROWS) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v(mid, i, st, det, nxt, w) AS (");
        q.push_values(part, |mut b, row| {
            b.push_bind(row.id.as_str())
                .push_bind(row.result.idx as i64)
                .push_bind(row.status.kind())
                .push_bind(row.status.detail())
                .push_bind(row.next)
                .push_bind(row.result.warned as i64);
        });
        // Only a pending recipient takes a result: one deleted from
        // the queue meanwhile keeps its state and gets no event.
        q.push(
            ") UPDATE recipients SET status = v.st, detail = v.det, next_attempt = v.nxt,
                 leased_until = NULL, warned = MAX(recipients.warned, v.w)
             FROM v WHERE recipients.message_id = v.mid AND recipients.idx = v.i
               AND recipients.status IN ('queued', 'deferred')
             RETURNING message_id, idx",
        );
        for r in q.build().fetch_all(&mut *tx).await? {
            updated.insert((r.get::<String, _>("message_id"), r.get::<i64, _>("idx")));
        }
    }
    let taken: Vec<&ResultRow<'_>> = rows
        .iter()
        .filter(|row| updated.contains(&(row.id.clone(), row.result.idx as i64)))
        .collect();
    let events: Vec<EventRow<'_>> = taken
        .iter()
        .map(|row| EventRow {
            message_id: &row.id,
            recipient: Some(&row.result.address),
            kind: row.kind,
            detail: row.status.detail(),
            data: row.data.as_deref(),
            at: row.result.at,
        })
        .collect();
    // Which of these messages have nothing left to deliver, and the
    // inline bodies of those: one run of statements with the events and
    // suppressions, one hand-off to SQLite's thread. An inline body goes
    // in this transaction: it and the final state survive a power loss
    // together or not at all. The others are files.
    let mut ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    let mut q = QueryBuilder::<Sqlite>::new("");
    push_events(&mut q, &events);
    for row in taken.iter().filter(|row| row.result.outcome.suppresses()) {
        q.push("INSERT INTO suppressions (address, reason, source, created_at) VALUES (")
            .push_bind(row.result.address.to_lowercase())
            .push(", ")
            .push_bind(row.status.detail())
            .push(", 'bounce', ")
            .push_bind(row.result.at)
            .push(") ON CONFLICT (address) DO NOTHING;\n");
    }
    for part in ids.chunks(ROWS) {
        q.push("SELECT DISTINCT message_id AS pending FROM recipients WHERE status IN ('queued', 'deferred') AND message_id IN ");
        push_list(&mut q, part.iter().copied());
        q.push(";\nDELETE FROM bodies WHERE message_id IN ");
        push_list(&mut q, part.iter().copied());
        q.push(
            " AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = bodies.message_id
                 AND r.status IN ('queued', 'deferred'))
             RETURNING message_id AS inline;\n",
        );
    }
    let mut pending = std::collections::HashSet::new();
    let mut inline = std::collections::HashSet::new();
    for r in q.build().fetch_all(&mut *tx).await? {
        match r.try_get::<String, _>("pending") {
            Ok(id) => pending.insert(id),
            Err(_) => inline.insert(r.get::<String, _>("inline")),
        };
    }
    let done: Vec<&str> = ids
        .into_iter()
        .filter(|id| !pending.contains(*id))
        .collect();
    Ok(Finished {
        all: done.iter().filter_map(|id| id.parse().ok()).collect(),
        spooled: done
            .iter()
            .filter(|id| !inline.contains(**id))
            .filter_map(|id| id.parse().ok())
            .collect(),
    })
}

/// Messages made final by a batch of results, and those of them whose
/// body is a spool file (to remove once the final state is durable).
#[derive(Default)]
struct Finished {
    all: Vec<MessageId>,
    spooled: Vec<MessageId>,
}

/// Fails a message's pending recipients with `detail`, one `kind` event
/// each (saying `event_detail`); returns how many there were.
async fn fail_pending(
    tx: &mut sqlx::SqliteConnection,
    id: MessageId,
    detail: &str,
    kind: &str,
    event_detail: &str,
    now: i64,
) -> Result<usize> {
    let id_text = id.to_string();
    let addresses: Vec<String> = sqlx::query_scalar(
        "UPDATE recipients SET status = 'failed', detail = ?, leased_until = NULL
         WHERE message_id = ? AND status IN ('queued', 'deferred') RETURNING address",
    )
    .bind(detail)
    .bind(&id_text)
    .fetch_all(&mut *tx)
    .await?;
    let events: Vec<EventRow<'_>> = addresses
        .iter()
        .map(|a| EventRow {
            message_id: &id_text,
            recipient: Some(a),
            kind,
            detail: Some(event_detail),
            data: None,
            at: now,
        })
        .collect();
    insert_events(&mut *tx, &events).await?;
    Ok(addresses.len())
}

/// `head (?, ?, ...) tail` with `values` bound to the marks: a statement
/// on a list of keys (callers keep the list under `ROWS` or so).
fn in_list<'a>(
    head: &str,
    values: impl IntoIterator<Item = &'a str>,
    tail: &str,
) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(head);
    push_list(&mut q, values);
    q.push(tail);
    q
}

/// `(?, ?, ...)` with `values` bound to the marks.
fn push_list<'a>(q: &mut QueryBuilder<'a, Sqlite>, values: impl IntoIterator<Item = &'a str>) {
    q.push("(");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
    q.push(")");
}

/// Rows per multi-row statement: SQLite takes up to 32766 bound values
/// per statement, and 100 rows of at most 8 stay well below.
const ROWS: usize = 100;

/// A recipient row of a batch being committed.
struct NewRecipient<'a> {
    id: &'a str,
    idx: i64,
    address: String,
    domain: &'a str,
    /// The suppression list's reason, when the address is on it.
    suppressed: Option<&'a str>,
    at: i64,
}

/// A delivery result on its way into `recipients` and `events`.
struct ResultRow<'a> {
    id: String,
    result: &'a RecipientResult,
    next: i64,
    status: DeliveryStatus,
    kind: &'static str,
    data: Option<String>,
}

/// One row of `events`.
struct EventRow<'a> {
    message_id: &'a str,
    recipient: Option<&'a str>,
    kind: &'a str,
    detail: Option<&'a str>,
    data: Option<&'a str>,
    at: i64,
}

/// Inserts events with as few statements as the bound-value limit allows.
async fn insert_events(tx: &mut sqlx::SqliteConnection, events: &[EventRow<'_>]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<Sqlite>::new("");
    push_events(&mut q, events);
    q.build().execute(&mut *tx).await?;
    Ok(())
}

/// Appends the statements that insert `events` to a run of statements.
fn push_events<'a>(q: &mut QueryBuilder<'a, Sqlite>, events: &[EventRow<'a>]) {
    for part in events.chunks(ROWS) {
        q.push("INSERT INTO events (message_id, recipient, kind, detail, data, at) ");
        q.push_values(part, |mut b, e| {
            b.push_bind(e.message_id)
                .push_bind(e.recipient)
                .push_bind(e.kind)
                .push_bind(e.detail)
                .push_bind(e.data)
                .push_bind(e.at);
        });
        q.push(";\n");
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn hold_node_name(&self) -> Result<crate::NodeHold> {
        Ok(crate::NodeHold::default())
    }

    async fn commit_message(&self, msg: NewMessage) -> Result<Vec<(usize, String)>> {
        let id = msg.id;
        let recipients = msg.envelope.recipients.len();
        let inline = match &msg.body {
            MessageBody::Memory(b) => b.len() <= self.inline_max,
            MessageBody::Staged { .. } => false,
        };
        let msg = if inline {
            msg
        } else {
            // A large body goes to the spool first (its own fsync, in
            // parallel with other sessions'); the row that makes it a
            // message comes in the batch.
            let spool = self.spool.clone();
            tokio::task::spawn_blocking(move || spool.write_body(id, &msg.body).map(|_| msg))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??
        };
        let (done, wait) = oneshot::channel();
        if self
            .writer
            .send(Work::Commit(Commit { msg, inline, done }))
            .await
            .is_err()
        {
            self.spool.recycle(id);
            return Err(StoreError::Closed);
        }
        let suppressed = wait.await.map_err(|_| StoreError::Closed)??;
        if suppressed.len() >= recipients {
            // Nothing to send: a spooled body goes once this is durable.
            self.to_release.lock().expect("not poisoned").push(id);
        }
        Ok(suppressed)
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        policy: &RetryPolicy,
        limit: usize,
    ) -> Result<Vec<DueRecipient>> {
        let (reply, wait) = oneshot::channel();
        let claim = Claim {
            now,
            lease_until,
            policy: policy.clone(),
            limit,
            reply,
        };
        self.writer
            .send(Work::Claim(claim))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    async fn renew_leases(&self, until: i64, recipients: &[(MessageId, u32)]) -> Result<u64> {
        if recipients.is_empty() {
            return Ok(0);
        }
        let _turn = self.gate.lock().await;
        let mut tx = self.state.begin_with("BEGIN IMMEDIATE").await?;
        let mut n = 0;
        for (id, idx) in recipients {
            n += sqlx::query(
                "UPDATE recipients SET leased_until = ?
                 WHERE message_id = ? AND idx = ? AND leased_until IS NOT NULL",
            )
            .bind(until)
            .bind(id.to_string())
            .bind(*idx as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn release_leases(&self) -> Result<u64> {
        Ok(
            sqlx::query("UPDATE recipients SET leased_until = NULL WHERE leased_until IS NOT NULL")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
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
        let (reply, wait) = oneshot::channel();
        self.writer
            .send(Work::Results((results.to_vec(), reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        let finished = wait.await.map_err(|_| StoreError::Closed)??;
        // The rows say "final", but perhaps not yet durably (a cycle with
        // no new message commits with synchronous=NORMAL): spooled bodies
        // go once a durable commit covers them (`releaser`), so a power
        // loss can never leave a pending message without its body. Inline
        // bodies went with the rows.
        self.to_release
            .lock()
            .expect("not poisoned")
            .extend(finished.spooled);
        Ok(finished.all)
    }

    async fn list_messages(&self, limit: usize) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(
            "SELECT id, sender, created_at, size FROM messages m
             WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                           AND r.status IN ('queued', 'deferred'))
             ORDER BY id LIMIT ?",
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
        let row = sqlx::query("SELECT id, sender, created_at, size FROM messages WHERE id = ?")
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
            "SELECT at, recipient, kind, detail, data FROM events WHERE message_id = ? ORDER BY id",
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
        let now = tern_core::unix_now();
        let _turn = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let failed = fail_pending(&mut tx, id, DELETED, "deleted", DELETED, now).await?;
        if failed > 0 {
            sqlx::query("DELETE FROM bodies WHERE message_id = ?")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if failed == 0 {
            return Ok(false);
        }
        self.spool.remove(id);
        Ok(true)
    }

    async fn retry_now(&self, id: Option<MessageId>, now: i64) -> Result<u64> {
        let q = match id {
            Some(id) => sqlx::query(
                "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND status IN ('queued', 'deferred')",
            )
            .bind(now)
            .bind(id.to_string()),
            None => sqlx::query(
                "UPDATE recipients SET next_attempt = ? WHERE status IN ('queued', 'deferred')",
            )
            .bind(now),
        };
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn body_chunk(&self, id: MessageId, index: u32) -> Result<Option<Vec<u8>>> {
        let offset = index as i64 * crate::BODY_CHUNK as i64;
        let row = sqlx::query(
            "SELECT length(data) AS n, substr(data, ?, ?) AS piece FROM bodies WHERE message_id = ?",
        )
        .bind(offset + 1)
        .bind(crate::BODY_CHUNK as i64)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let n: i64 = row.get("n");
            if offset >= n && index > 0 {
                return Ok(None);
            }
            return Ok(Some(
                row.get::<Option<Vec<u8>>, _>("piece").unwrap_or_default(),
            ));
        }
        let spool = self.spool.clone();
        Ok(
            tokio::task::spawn_blocking(move || spool.read_chunk(id, index))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??,
        )
    }

    async fn small_bodies(&self, ids: &[MessageId]) -> Result<Vec<(MessageId, Vec<u8>)>> {
        let mut found = Vec::new();
        for part in ids.chunks(ROWS) {
            let ids: Vec<String> = part.iter().map(|id| id.to_string()).collect();
            let mut q = in_list(
                "SELECT message_id, data FROM bodies WHERE message_id IN ",
                ids.iter().map(|id| id.as_str()),
                "",
            );
            for r in q.build().fetch_all(&self.pool).await? {
                if let Ok(id) = r.get::<String, _>("message_id").parse() {
                    found.push((id, r.get("data")));
                }
            }
        }
        Ok(found)
    }

    async fn body_head(&self, id: MessageId) -> Result<Option<(u64, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT length(data) AS n, substr(data, 1, ?) AS piece FROM bodies WHERE message_id = ?",
        )
        .bind(crate::BODY_CHUNK as i64)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let piece = row.get::<Option<Vec<u8>>, _>("piece").unwrap_or_default();
            return Ok(Some((row.get::<i64, _>("n") as u64, piece)));
        }
        let spool = self.spool.clone();
        let head = tokio::task::spawn_blocking(move || {
            let Some(n) = spool.body_len(id)? else {
                return Ok(None);
            };
            Ok::<_, std::io::Error>(spool.read_chunk(id, 0)?.map(|piece| (n, piece)))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(head)
    }

    async fn body_size(&self, id: MessageId) -> Result<Option<u64>> {
        let inline: Option<i64> =
            sqlx::query_scalar("SELECT length(data) FROM bodies WHERE message_id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        if let Some(n) = inline {
            return Ok(Some(n as u64));
        }
        let spool = self.spool.clone();
        Ok(tokio::task::spawn_blocking(move || spool.body_len(id))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??)
    }

    async fn quarantine(&self, id: MessageId, reason: &str) -> Result<()> {
        let now = tern_core::unix_now();
        let detail = format!("quarantined: {reason}");
        let _turn = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        fail_pending(&mut tx, id, &detail, "quarantined", reason, now).await?;
        tx.commit().await?;
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.set_aside(id))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }

    async fn sweep(&self) -> Result<usize> {
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT message_id FROM recipients WHERE status IN ('queued', 'deferred')",
        )
        .fetch_all(&self.pool)
        .await?;
        let pending: std::collections::HashSet<String> = pending.into_iter().collect();
        let mut removed = sqlx::query(
            "DELETE FROM bodies WHERE message_id NOT IN
             (SELECT message_id FROM recipients WHERE status IN ('queued', 'deferred'))",
        )
        .execute(&self.pool)
        .await?
        .rows_affected() as usize;
        for id in self.spool.list()? {
            if !pending.contains(&id.to_string()) {
                self.spool.recycle(id);
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        let r = sqlx::query("INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)")
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
            sqlx::query("UPDATE users SET password_hash = ? WHERE name = ?")
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
            sqlx::query_scalar("SELECT password_hash FROM users WHERE name = ?")
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
        Ok(sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }
    async fn add_domain(&self, name: &str, now: i64) -> Result<()> {
        let r = sqlx::query("INSERT INTO domains (name, created_at) VALUES (?, ?)")
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
        sqlx::query("DELETE FROM dkim_keys WHERE domain = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM domains WHERE name = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.domain)
        .bind(&key.selector)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.created_at)
        .bind(key.active as i64)
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
             FROM dkim_keys WHERE (? IS NULL OR domain = ?) ORDER BY domain, created_at, selector",
        )
        .bind(domain)
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
                active: r.get::<i64, _>("active") != 0,
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
            sqlx::query("UPDATE dkim_keys SET active = ? WHERE domain = ? AND selector = ?")
                .bind(active as i64)
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
            sqlx::query("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?")
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
    SqliteStore,
    sqlx::Sqlite,
    pool,
    state,
    crate::api::same,
    "BEGIN IMMEDIATE",
    ""
);
