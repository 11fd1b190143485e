//! The scheduler: takes due recipients, hands them to the transport, records
//! what happened, and bounces what failed.
//!
//! Before an attempt, `claim_due` counts it, writes the time of the next one
//! and marks the recipient in flight (Mox's rule: if we run into trouble
//! delivering, at least we won't be bothering the receiving server again at
//! once). The schedule: 1m, 5m, 15m, 30m, 1h, 2h, 4h, then every 4h,
//! expiring after 5 days by default.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_core::{Address, Envelope, MessageId, RetryPolicy};
use tern_delivery::{Attempt, Body, Job, Transport};
use tern_store::{DueRecipient, Outcome, RecipientResult, Store};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::dsn::{build_dsn, Report, ReportedRecipient};
use crate::Queue;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub hostname: String,
    pub policy: RetryPolicy,
    /// Deliveries in flight at once.
    pub workers: usize,
    /// How often the store is polled for work made due by another process
    /// (`tern queue retry`) or by time.
    pub poll: Duration,
    /// One job per message and destination domain (MX delivery), or one
    /// per message (everything goes through one relay).
    pub group_by_domain: bool,
    /// How long a claim lasts unless renewed; renewed every third of it
    /// while attempts run.
    pub lease: Duration,
}

pub struct Scheduler {
    queue: Queue,
    transport: Arc<dyn Transport>,
    config: SchedulerConfig,
    /// Recipients claimed by this node whose attempt has not ended: the
    /// leases the renewer keeps alive.
    inflight: Mutex<BTreeSet<(MessageId, u32)>>,
    /// Results on their way to the store: the recorder writes all that
    /// are waiting in one transaction, as the group commit does for
    /// acceptance, instead of one transaction per message.
    results: mpsc::Sender<Results>,
    recorder: Mutex<Option<mpsc::Receiver<Results>>>,
}

/// A body read with the claim, when the store keeps it small and close.
type Prefetched = Option<Arc<Vec<u8>>>;

/// One job's results, and its claim: dropped once they are written, so the
/// leases are renewed until then.
type Results = (Vec<RecipientResult>, InFlight);

/// Most results written in one transaction.
const RESULT_BATCH: usize = 256;

/// How long a small batch of results waits for more.
const RESULT_WINDOW: Duration = Duration::from_millis(2);

/// Writes results in batches until every sender is gone. The store may be
/// away for a moment (a database restart): a batch is tried a few times.
/// If it stays away the leases run out and the attempts are made again: at
/// least once, never lost.
async fn recorder(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Results>) {
    let mut batch = Vec::with_capacity(RESULT_BATCH);
    while rx.recv_many(&mut batch, RESULT_BATCH).await > 0 {
        // A moment for the results of attempts finishing together to
        // join this batch: one transaction for many, as with acceptance.
        // Nobody waits for these writes but the attempts' leases.
        if batch.len() < RESULT_BATCH / 4 {
            tokio::time::sleep(RESULT_WINDOW).await;
            while batch.len() < RESULT_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let results: Vec<RecipientResult> = batch
            .iter()
            .flat_map(|(r, _): &Results| r.iter().cloned())
            .collect();
        let mut wait = Duration::from_millis(500);
        for _ in 0..6 {
            match store.record_results(&results).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(results = results.len(), error = %e, "cannot record delivery results; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        // The claims end here: their leases are no longer renewed.
        batch.clear();
    }
}

impl Scheduler {
    pub fn new(queue: Queue, transport: Arc<dyn Transport>, config: SchedulerConfig) -> Scheduler {
        let (results, rx) = mpsc::channel(4096);
        Scheduler {
            queue,
            transport,
            config,
            inflight: Mutex::new(BTreeSet::new()),
            results,
            recorder: Mutex::new(Some(rx)),
        }
    }

    /// Runs until `shutdown` turns true; in-flight deliveries finish first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.config.workers));
        let wake = this.queue.wake_handle();
        let mut running = JoinSet::new();
        let renewer = tokio::spawn(renew_leases(this.clone()));
        if let Some(rx) = this.recorder.lock().expect("not poisoned").take() {
            tokio::spawn(recorder(this.store().clone(), rx));
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match this.claim(free).await {
                    Ok(jobs) => {
                        for (job, body) in jobs {
                            claimed += 1;
                            let permit = slots.clone().acquire_owned().await.expect("open");
                            let this = this.clone();
                            running.spawn(async move {
                                let claim = InFlight {
                                    scheduler: this.clone(),
                                    keys: job.iter().map(|d| (d.message_id, d.idx)).collect(),
                                };
                                this.attempt(job, body, claim).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot read the queue"),
                }
            }
            while running.try_join_next().is_some() {}
            if claimed > 0 && slots.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(this.config.poll) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        while running.join_next().await.is_some() {}
        // The finished attempts' results may still be on their way to the
        // store; their claims end once they are written. Waiting for that
        // keeps a restart from delivering them again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !this.inflight.lock().expect("not poisoned").is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        renewer.abort();
    }

    /// Claims due recipients and groups them into one job per message and
    /// destination domain: a slow remote never holds back the result of a
    /// local delivery, and each domain's recipients share one transaction.
    /// Small bodies kept in the database come with their jobs, read in one
    /// query.
    async fn claim(
        &self,
        max_jobs: usize,
    ) -> tern_store::Result<Vec<(Vec<DueRecipient>, Prefetched)>> {
        let now = tern_core::unix_now();
        let lease_until = now + self.config.lease.as_secs() as i64;
        let due = self
            .store()
            .claim_due(now, lease_until, &self.config.policy, max_jobs * 8)
            .await?;
        self.inflight
            .lock()
            .expect("not poisoned")
            .extend(due.iter().map(|d| (d.message_id, d.idx)));
        let mut by_message: BTreeMap<_, Vec<DueRecipient>> = BTreeMap::new();
        for d in due {
            let domain = if self.config.group_by_domain {
                d.domain.clone()
            } else {
                String::new()
            };
            by_message
                .entry((d.message_id, domain))
                .or_default()
                .push(d);
        }
        let mut ids: Vec<MessageId> = by_message.keys().map(|(id, _)| *id).collect();
        ids.dedup();
        let bodies: BTreeMap<MessageId, Arc<Vec<u8>>> = match self.store().small_bodies(&ids).await
        {
            Ok(found) => found.into_iter().map(|(id, b)| (id, Arc::new(b))).collect(),
            Err(e) => {
                // Each attempt reads its own body instead.
                tracing::warn!(error = %e, "cannot read bodies with the claim");
                BTreeMap::new()
            }
        };
        Ok(by_message
            .into_iter()
            .map(|((id, _), job)| (job, bodies.get(&id).cloned()))
            .collect())
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.queue.store()
    }

    /// One attempt at one message for the given recipients. The body is
    /// read by the transport piece by piece, never whole.
    async fn attempt(&self, due: Vec<DueRecipient>, prefetched: Prefetched, claim: InFlight) {
        let first = &due[0];
        let body = match self.body(&due, prefetched).await {
            Ok(body) => body,
            Err(reason) => {
                // Like Postfix's corrupt queue: set aside with a log line,
                // and go on delivering everything else.
                tracing::error!(id = %first.message_id, %reason, "message damaged; quarantined");
                if let Err(e) = self.store().quarantine(first.message_id, &reason).await {
                    tracing::error!(id = %first.message_id, error = %e, "cannot quarantine");
                }
                return;
            }
        };
        let recipients: Vec<Address> = due
            .iter()
            .filter_map(|d| Address::parse(&d.address).ok())
            .collect();
        let job = Job {
            id: first.message_id,
            sender: first.sender.clone(),
            body,
            recipients,
        };
        let attempts = self.transport.deliver(&job).await;
        let at = tern_core::unix_now();
        let results: Vec<_> = due
            .iter()
            .zip(attempts)
            .map(|(d, a)| self.result(d, a, at))
            .collect();
        self.record(&due, results, claim).await;
    }

    /// The body to deliver, or why the message cannot be delivered as
    /// stored: a body that is gone or not the size it was when accepted, or
    /// a recipient address that no longer parses. A body that fits one
    /// piece (nearly all) is read here, once, and kept for the attempt; a
    /// larger one is read piece by piece as it is sent, never whole. When
    /// the store cannot be asked right now, the transport reads it itself
    /// (and a failure there is retried, not quarantined).
    async fn body(&self, due: &[DueRecipient], prefetched: Prefetched) -> Result<Body, String> {
        let first = &due[0];
        if let Some(d) = due.iter().find(|d| Address::parse(&d.address).is_err()) {
            return Err(format!("recipient address {:?} is not valid", d.address));
        }
        let wrong_size = |n: u64| {
            format!(
                "the message body is {n} octets, {} when accepted",
                first.size
            )
        };
        if let Some(body) = prefetched {
            return match body.len() as u64 {
                n if n == first.size => Ok(Body::Memory(body)),
                n => Err(wrong_size(n)),
            };
        }
        let stored = Body::Stored {
            store: self.store().clone(),
            id: first.message_id,
            size: first.size,
        };
        match self.store().body_head(first.message_id).await {
            Ok(None) => Err("the message body is missing".into()),
            Ok(Some((n, _))) if n != first.size => Err(wrong_size(n)),
            Ok(Some((n, head))) if head.len() as u64 == n => Ok(Body::Memory(Arc::new(head))),
            _ => Ok(stored),
        }
    }

    /// Turns a transport's answer into the stored outcome: retry on schedule
    /// while the message is young enough, fail once it has expired.
    fn result(&self, d: &DueRecipient, attempt: Attempt, at: i64) -> RecipientResult {
        let policy = &self.config.policy;
        let outcome = match attempt {
            Attempt::Delivered(reply) => Outcome::Delivered { reply },
            Attempt::Permanent(reason) => Outcome::Failed { reason },
            Attempt::Temporary(reason) if policy.expired(d.created_at, at) => Outcome::Expired {
                reason: format!(
                    "expired after {} attempts; last error: {reason}",
                    d.attempts + 1
                ),
            },
            Attempt::Temporary(reason) => Outcome::Deferred {
                reason,
                retry_at: at + policy.delay_after(d.attempts + 1).as_secs() as i64,
            },
        };
        let m = &tern_core::metrics::METRICS;
        match &outcome {
            Outcome::Delivered { reply } => {
                tern_core::metrics::inc(&m.recipients_delivered);
                m.observe_latency((at - d.created_at).max(0) as u64);
                tracing::info!(id = %d.message_id, rcpt = %d.address, %reply, "delivered")
            }
            Outcome::Deferred { reason, .. } => {
                tern_core::metrics::inc(&m.recipients_deferred);
                tracing::info!(id = %d.message_id, rcpt = %d.address, %reason, "deferred")
            }
            Outcome::Failed { reason } => {
                tern_core::metrics::inc(&m.recipients_bounced);
                tracing::warn!(id = %d.message_id, rcpt = %d.address, %reason, "bounced")
            }
            Outcome::Expired { reason } => {
                tern_core::metrics::inc(&m.recipients_expired);
                tracing::warn!(id = %d.message_id, rcpt = %d.address, %reason, "expired")
            }
        }
        RecipientResult {
            message_id: d.message_id,
            idx: d.idx,
            address: d.address.clone(),
            outcome,
            at,
            warned: false,
        }
    }

    /// Reports to the sender (bounces for failures, one delay warning for
    /// recipients deferred too long), then stores the results. Reports are
    /// queued first: a crash in between costs a duplicate report, never a
    /// lost one. A message with the null sender is never reported on.
    async fn record(
        &self,
        due: &[DueRecipient],
        mut results: Vec<RecipientResult>,
        claim: InFlight,
    ) {
        let first = &due[0];
        if !first.sender.is_empty() {
            let failed = self.report_list(&results, |_, r| {
                matches!(r.outcome, Outcome::Failed { .. } | Outcome::Expired { .. })
            });
            if !failed.is_empty() && !self.report(first, Report::Failed, &failed).await {
                return;
            }
            let policy = &self.config.policy;
            let late = |d: &DueRecipient, r: &RecipientResult| {
                matches!(r.outcome, Outcome::Deferred { .. })
                    && !d.warned
                    && policy.warn_delay(d.created_at, r.at)
            };
            let delayed: Vec<usize> = (0..results.len())
                .filter(|&i| late(&due[i], &results[i]))
                .collect();
            if !delayed.is_empty() {
                let list = self.report_list(&results, |i, _| delayed.contains(&i));
                let retry_until = first.created_at + policy.expire.as_secs() as i64;
                if self
                    .report(first, Report::Delayed { retry_until }, &list)
                    .await
                {
                    for i in delayed {
                        results[i].warned = true;
                    }
                }
            }
        }
        // Written with other jobs' results. The attempt (and its worker)
        // is done; its claim, and the renewal of its leases, lasts until
        // they are written.
        let _ = self.results.send((results, claim)).await;
    }

    /// The recipients (address, reason) chosen by `pick` for a report.
    fn report_list(
        &self,
        results: &[RecipientResult],
        pick: impl Fn(usize, &RecipientResult) -> bool,
    ) -> Vec<(String, String)> {
        results
            .iter()
            .enumerate()
            .filter(|(i, r)| pick(*i, r))
            .map(|(_, r)| {
                let reason = match &r.outcome {
                    Outcome::Failed { reason }
                    | Outcome::Expired { reason }
                    | Outcome::Deferred { reason, .. } => reason.clone(),
                    Outcome::Delivered { reply } => reply.clone(),
                };
                (r.address.clone(), reason)
            })
            .collect()
    }

    /// Queues one report to the sender of `d`'s message; false when it
    /// could not be queued (the results then stay unrecorded and the
    /// attempt is repeated at its next time).
    async fn report(&self, d: &DueRecipient, report: Report, list: &[(String, String)]) -> bool {
        let Ok(to) = Address::parse(&d.sender) else {
            return true;
        };
        let recipients: Vec<ReportedRecipient<'_>> = list
            .iter()
            .map(|(address, reason)| ReportedRecipient { address, reason })
            .collect();
        // The report returns the original headers: the first piece of the
        // body holds them (a header block over 1 MiB is cut there).
        let body = match self.store().body_chunk(d.message_id, 0).await {
            Ok(Some(b)) => b,
            Ok(None) | Err(_) => Vec::new(),
        };
        let dsn = build_dsn(
            &self.config.hostname,
            d.message_id,
            &d.sender,
            d.created_at,
            report,
            &recipients,
            &body,
        );
        let envelope = Envelope {
            sender: None,
            recipients: vec![to],
        };
        match self.queue.enqueue(envelope, dsn, None).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(id = %d.message_id, error = %e, "cannot queue the report; will retry");
                false
            }
        }
    }
}

/// Keeps this node's claims alive while its attempts run (or wait for a
/// worker), so no other node takes them; a node that dies stops renewing
/// and its claims run out after one lease.
async fn renew_leases(scheduler: Arc<Scheduler>) {
    let mut tick = tokio::time::interval(scheduler.config.lease / 3);
    loop {
        tick.tick().await;
        let until = tern_core::unix_now() + scheduler.config.lease.as_secs() as i64;
        let keys: Vec<_> = scheduler
            .inflight
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect();
        if let Err(e) = scheduler.store().renew_leases(until, &keys).await {
            tracing::warn!(error = %e, "cannot renew leases");
        }
    }
}

/// The recipients of one running attempt. Dropped when the attempt ends,
/// however it ends (a panic included), so their leases stop being renewed
/// and run out: the work is then retried, never held forever.
struct InFlight {
    scheduler: Arc<Scheduler>,
    keys: Vec<(MessageId, u32)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.scheduler.inflight.lock() {
            for k in &self.keys {
                inflight.remove(k);
            }
        }
    }
}
