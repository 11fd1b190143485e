//! Connection limits, in total and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Free space (octets) for unprivileged use on the filesystem holding
/// `path`, or `None` when it cannot be read.
pub fn free_space(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed struct to fill.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Failed AUTH attempts per client address over a sliding window.
pub struct AuthThrottle {
    max: u32,
    window: std::time::Duration,
    failures: Mutex<HashMap<IpAddr, (std::time::Instant, u32)>>,
}

impl AuthThrottle {
    pub fn new(max: u32) -> AuthThrottle {
        AuthThrottle {
            max,
            window: std::time::Duration::from_secs(600),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether AUTH from `ip` is refused for now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().expect("not poisoned");
        map.get(&ip)
            .is_some_and(|(since, n)| since.elapsed() < self.window && *n >= self.max)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("not poisoned");
        if map.len() > 100_000 {
            // Bounded memory under a spray of addresses.
            let window = self.window;
            map.retain(|_, (since, _)| since.elapsed() < window);
        }
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Holds one connection's place; the place is freed when it drops.
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new(Counts::default()),
        })
    }

    /// A place for a new connection from `ip`, or `None` when a limit is hit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let mut s = self.state.lock().expect("not poisoned");
        let n = s.per_ip.get(&ip).copied().unwrap_or(0);
        if s.total >= self.max_total || n >= self.max_per_ip {
            return None;
        }
        s.total += 1;
        s.per_ip.insert(ip, n + 1);
        Some(ConnectionGuard {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.state.lock().expect("not poisoned").total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().expect("not poisoned");
        s.total -= 1;
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none());
        let _g3 = l.try_acquire(b).unwrap();
        assert!(l.try_acquire(b).is_none());
        drop(g1);
        assert!(l.try_acquire(a).is_some());
    }
}
