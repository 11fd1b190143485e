//! Process-wide counters for `/metrics` (Prometheus text format). Plain
//! atomics: counting must never slow down or fail the mail path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (seconds) of the delivery latency buckets: from acceptance
/// to the next hop's 250.
pub const LATENCY_BUCKETS: &[u64] = &[1, 5, 15, 60, 300, 900, 3600, 14400, 86400];

pub struct Metrics {
    pub messages_accepted: AtomicU64,
    /// Messages received into a file instead of memory (large ones).
    pub messages_received_to_file: AtomicU64,
    pub recipients_delivered: AtomicU64,
    pub recipients_deferred: AtomicU64,
    pub recipients_bounced: AtomicU64,
    pub recipients_expired: AtomicU64,
    pub recipients_suppressed: AtomicU64,
    pub smtp_sessions_total: AtomicU64,
    pub smtp_sessions_active: AtomicI64,
    pub webhooks_delivered: AtomicU64,
    pub webhooks_failed_attempts: AtomicU64,
    latency_buckets: [AtomicU64; 9],
    latency_count: AtomicU64,
    latency_sum: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    messages_accepted: AtomicU64::new(0),
    messages_received_to_file: AtomicU64::new(0),
    recipients_delivered: AtomicU64::new(0),
    recipients_deferred: AtomicU64::new(0),
    recipients_bounced: AtomicU64::new(0),
    recipients_expired: AtomicU64::new(0),
    recipients_suppressed: AtomicU64::new(0),
    smtp_sessions_total: AtomicU64::new(0),
    smtp_sessions_active: AtomicI64::new(0),
    webhooks_delivered: AtomicU64::new(0),
    webhooks_failed_attempts: AtomicU64::new(0),
    latency_buckets: [const { AtomicU64::new(0) }; 9],
    latency_count: AtomicU64::new(0),
    latency_sum: AtomicU64::new(0),
};

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Records how long a recipient took from acceptance to delivery.
    pub fn observe_latency(&self, seconds: u64) {
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum.fetch_add(seconds, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per `LATENCY_BUCKETS` bound), count
    /// and sum.
    pub fn latency(&self) -> (Vec<u64>, u64, u64) {
        (
            self.latency_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.latency_count.load(Ordering::Relaxed),
            self.latency_sum.load(Ordering::Relaxed),
        )
    }
}

/// Counts an open SMTP session for as long as it lives.
pub struct SessionGuard(());

impl SessionGuard {
    pub fn open() -> SessionGuard {
        inc(&METRICS.smtp_sessions_total);
        METRICS.smtp_sessions_active.fetch_add(1, Ordering::Relaxed);
        SessionGuard(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        METRICS.smtp_sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}
