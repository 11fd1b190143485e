//! Latency percentiles and reply-code counts for a bench run.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Default)]
pub struct Stats {
    latencies: Vec<Duration>,
    pub errors: BTreeMap<String, u64>,
    pub bytes: u64,
}

impl Stats {
    pub fn record(&mut self, latency: Duration, bytes: usize) {
        self.latencies.push(latency);
        self.bytes += bytes as u64;
    }

    pub fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        self.bytes += other.bytes;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }

    pub fn accepted(&self) -> usize {
        self.latencies.len()
    }

    /// The latency below which `p` percent of accepted messages fall.
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Stats::default();
        for ms in 1..=100 {
            s.record(Duration::from_millis(ms), 10);
        }
        assert_eq!(s.percentile(50.0), Duration::from_millis(51));
        assert_eq!(s.percentile(99.0), Duration::from_millis(99));
        assert_eq!(s.percentile(100.0), Duration::from_millis(100));
        assert_eq!(s.bytes, 1000);
    }
}
