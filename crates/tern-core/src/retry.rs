//! When to try again, and when to give up.

use std::time::Duration;

/// The retry schedule for temporary failures. The n-th retry waits
/// `schedule[n]`, and the last entry repeats; after `expire` from arrival the
/// recipient fails and is bounced (RFC 5321 4.5.4.1: give up after 4-5 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub expire: Duration,
    /// When to send one "still trying" report; never when `None`.
    pub delay_warning: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        RetryPolicy {
            schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            expire: Duration::from_secs(5 * 24 * 3600),
            delay_warning: None,
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt that follows `attempts` finished attempts.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.schedule.len().saturating_sub(1));
        self.schedule
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Whether a still-deferred message that arrived at `created_at` is due
    /// its delay warning at `now`.
    pub fn warn_delay(&self, created_at: i64, now: i64) -> bool {
        self.delay_warning
            .is_some_and(|d| now.saturating_sub(created_at) >= d.as_secs() as i64)
    }

    /// Whether a message that arrived at `created_at` has expired at `now`
    /// (both Unix seconds).
    pub fn expired(&self, created_at: i64, now: i64) -> bool {
        now.saturating_sub(created_at) >= self.expire.as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_steps_then_repeats_last() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_after(1), Duration::from_secs(60));
        assert_eq!(p.delay_after(2), Duration::from_secs(300));
        assert_eq!(p.delay_after(7), Duration::from_secs(4 * 3600));
        assert_eq!(p.delay_after(50), Duration::from_secs(4 * 3600));
        assert!(!p.expired(0, 3600));
        assert!(p.expired(0, 5 * 24 * 3600));
    }
}
