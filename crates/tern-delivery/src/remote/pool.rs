//! Outbound connections: limits per destination and in total, and idle
//! connections kept for the next message to the same destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::SmtpClient;

pub struct Pool {
    total: Arc<Semaphore>,
    per_destination: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    limits: HashMap<String, Arc<Semaphore>>,
    idle: HashMap<String, Vec<(Instant, SmtpClient)>>,
}

/// The right to hold one connection to one destination.
pub struct Lease {
    _total: OwnedSemaphorePermit,
    _destination: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(total: usize, per_destination: usize, idle_timeout: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            total: Arc::new(Semaphore::new(total)),
            per_destination,
            idle_timeout,
            state: Mutex::new(State::default()),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.reap().await;
            }
        });
        pool
    }

    /// Waits for a place under both limits.
    pub async fn acquire(&self, destination: &str) -> Lease {
        let limit = {
            let mut s = self.state.lock().expect("not poisoned");
            s.limits
                .entry(destination.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination)))
                .clone()
        };
        let destination = limit.acquire_owned().await.expect("never closed");
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Lease {
            _total: total,
            _destination: destination,
        }
    }

    /// An idle connection to `destination` that has not yet timed out.
    pub fn take_idle(&self, destination: &str) -> Option<SmtpClient> {
        let mut s = self.state.lock().expect("not poisoned");
        let list = s.idle.get_mut(destination)?;
        while let Some((since, client)) = list.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(client);
            }
        }
        None
    }

    /// Keeps a connection for the next message (at most the destination's
    /// limit of them).
    pub fn put_idle(&self, destination: &str, client: SmtpClient) {
        let mut s = self.state.lock().expect("not poisoned");
        let list = s.idle.entry(destination.to_string()).or_default();
        if list.len() < self.per_destination {
            list.push((Instant::now(), client));
        }
    }

    /// Says QUIT to connections idle too long, and forgets destinations
    /// with nothing open.
    async fn reap(&self) {
        let expired: Vec<SmtpClient> = {
            let mut s = self.state.lock().expect("not poisoned");
            let mut out = Vec::new();
            for list in s.idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(since, _)| since.elapsed() < self.idle_timeout);
                *list = keep;
                out.extend(old.into_iter().map(|(_, c)| c));
            }
            s.idle.retain(|_, l| !l.is_empty());
            let per = self.per_destination;
            s.limits.retain(|_, sem| sem.available_permits() < per);
            out
        };
        for c in expired {
            c.quit().await;
        }
    }
}
