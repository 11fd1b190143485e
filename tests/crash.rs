//! Crash testing: load against a Tern process that relays to a remote,
//! SIGKILL at random moments (during DATA, right after a 250, during
//! delivery, during a group commit), restart, and at the end check that
//! every message that got a 250 reached the remote at least once.
//!
//! CI runs a short form; `TERN_CRASH_KILLS=200 cargo test --release --test
//! crash -- --nocapture` runs a long one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::node::{text, Node};
use common::Client;

/// One client: sends messages with unique subjects until told to stop,
/// reconnecting whenever the server goes away. Records what got a 250.
async fn client(
    addr: std::net::SocketAddr,
    who: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    next: Arc<AtomicUsize>,
) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("\0alice\0pw");
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        drop(s);
        // The server may have gone again since.
        let Ok(mut c) = Client::try_connect_silent(addr).await else {
            continue;
        };
        if !matches!(c.try_read().await, Some(r) if r.code == 220) {
            continue;
        }
        let steps = [format!("EHLO c{who}.test"), format!("AUTH PLAIN {auth}")];
        let mut ok = true;
        for s in &steps {
            ok &= c.try_send(format!("{s}\r\n").as_bytes()).await.is_ok();
            ok &= matches!(c.try_read().await, Some(r) if r.code / 100 == 2);
        }
        while ok && !stop.load(Ordering::Relaxed) {
            let n = next.fetch_add(1, Ordering::Relaxed);
            // The last client sends messages past 1 MiB: received into a
            // file, and linked into the spool when committed.
            let (subject, lines) = if who == 3 {
                (format!("crash-big-{n}"), 20_000)
            } else {
                (format!("crash-{n}"), 26)
            };
            let msg = "MAIL FROM:<alice@example.test>\r\nRCPT TO:<sink@remote.test>\r\nDATA\r\n";
            if c.try_send(msg.as_bytes()).await.is_err() {
                break;
            }
            let mut codes = Vec::new();
            for _ in 0..3 {
                match c.try_read().await {
                    Some(r) => codes.push(r.code),
                    None => break,
                }
            }
            if codes != [250, 250, 354] {
                break;
            }
            let line = format!("{}\r\n", "z".repeat(76));
            let body = format!("Subject: {subject}\r\n\r\n{}.\r\n", line.repeat(lines));
            if c.try_send(body.as_bytes()).await.is_err() {
                break;
            }
            match c.try_read().await {
                Some(r) if r.code == 250 => {
                    acked.lock().unwrap().insert(subject);
                }
                Some(_) => {}
                None => break,
            }
        }
    }
}

fn subjects(fake: &FakeSmtp) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in fake.received() {
        let data = String::from_utf8_lossy(&r.data).to_string();
        if let Some(s) = data.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(s.trim().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

/// How a run under load ended: what got a 250, and how many times each
/// message reached the remote.
struct Outcome {
    acked: BTreeSet<String>,
    seen: BTreeMap<String, usize>,
}

impl Outcome {
    fn lost(&self) -> Vec<&String> {
        self.acked
            .iter()
            .filter(|s| !self.seen.contains_key(*s))
            .collect()
    }

    fn duplicated(&self) -> Vec<(&String, &usize)> {
        self.seen.iter().filter(|(_, n)| **n > 1).collect()
    }
}

/// Four clients load a Tern process that relays to a remote; `times`
/// times, at a moment 0.2-1.2 s apart, the process is stopped by `stop`
/// and started again. Then everything acknowledged is waited for at the
/// remote (90 s at most).
async fn load_with_interruptions(times: usize, how: &str, stop_node: fn(&mut Node)) -> Outcome {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(
        dir.path(),
        &format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n[delivery]\nport = {port}\n[queue]\nretry = [\"1s\"]\nlease = \"3s\"\n",
            dns.addr
        ),
    );
    let out = node.tern(&["user", "add", "alice"], Some("pw\n"));
    assert!(out.status.success(), "{}", text(&out));
    node.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(client(
                node.plain_auth,
                i,
                stop.clone(),
                acked.clone(),
                next.clone(),
            ))
        })
        .collect();
    let mut seed = std::process::id() as u64;
    for _ in 0..times {
        // A small xorshift: moments spread over 0.2-1.2 s.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 1000)).await;
        stop_node(&mut node);
        tokio::time::sleep(Duration::from_millis(50)).await;
        node.start().await;
    }
    // On a busy machine the interruptions may leave little load behind:
    // let the clients go on (the node up) until there is enough to mean
    // anything.
    let big = |acked: &BTreeSet<String>| acked.iter().filter(|s| s.contains("big")).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while {
        let acked = acked.lock().unwrap();
        acked.len() <= 20 || big(&acked) == 0
    } && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20 && big(&acked) > 0,
        "too little load to mean anything: {} ({} large)",
        acked.len(),
        big(&acked)
    );

    // Everything acknowledged arrives, at least once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let seen = subjects(&fake);
        let lost = acked.iter().filter(|s| !seen.contains_key(*s)).count();
        if lost == 0 || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A duplicate still on its way would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = subjects(&fake)
        .into_iter()
        .filter(|(s, _)| seen.contains_key(s))
        .collect();
    let outcome = Outcome { acked, seen };
    eprintln!(
        "{how}: {times} times, {} acknowledged ({} large), {} delivered, {} lost, {} delivered more than once",
        outcome.acked.len(),
        big(&outcome.acked),
        outcome.seen.len(),
        outcome.lost().len(),
        outcome.duplicated().len()
    );
    assert!(node.terminate().success());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_message() {
    let kills: usize = std::env::var("TERN_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(8);
    let outcome = load_with_interruptions(kills, "SIGKILL", Node::kill9).await;
    // A kill between a delivery and its record means a second delivery:
    // at least once, never lost.
    assert!(
        outcome.lost().is_empty(),
        "lost acknowledged messages: {:?}",
        outcome.lost()
    );
}

/// A stop (SIGTERM) lets the attempts under way finish and their results
/// reach the store before the process exits, so a restart delivers
/// nothing a second time, as well as losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_delivers_nothing_twice() {
    let outcome = load_with_interruptions(6, "SIGTERM", |node| {
        assert!(node.terminate().success(), "a clean exit");
    })
    .await;
    assert!(
        outcome.lost().is_empty(),
        "lost acknowledged messages: {:?}",
        outcome.lost()
    );
    assert!(
        outcome.duplicated().is_empty(),
        "delivered more than once: {:?}",
        outcome.duplicated()
    );
}
