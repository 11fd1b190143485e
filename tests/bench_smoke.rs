//! A small end-to-end run of the benchmark tools, so they keep working:
//! `tern bench` loads a Tern server that relays everything to
//! `tern bench sink`, and both report the same count.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::node::{text, BIN};
use common::*;
use tern_core::config::HumanDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_through_tern_to_the_sink() {
    let port = common::fake_smtp::free_port(&["127.0.0.1".parse().unwrap()]);
    let sink = tokio::process::Command::new(BIN)
        .args([
            "bench",
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--expect",
            "300",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t = TestServer::start_with(move |c| {
        c.delivery.relay = Some(format!("127.0.0.1:{port}"));
        c.delivery.tls = tern_core::TlsPolicy::None;
        c.delivery.relay_verify_certificate = false;
        c.queue.retry = vec![HumanDuration(Duration::from_secs(1))];
    })
    .await;
    let server = t.smtp_plain_auth().to_string();
    let auth = format!("{USER}:{PASSWORD}");
    let bench = tokio::process::Command::new(BIN)
        .args(["bench", "--server", &server, "--auth", &auth, "--quiet"])
        .args([
            "--messages",
            "300",
            "--connections",
            "4",
            "--size",
            "2048",
            "--rcpts",
            "2",
        ])
        .args(["--from", "alice@example.test", "--to", "sink@remote.test"])
        .output()
        .await
        .unwrap();
    let report = text(&bench);
    assert!(bench.status.success(), "{report}");
    assert!(report.contains("accepted 300"), "{report}");
    assert!(report.contains("errors: none"), "{report}");
    assert!(report.contains("latency MAIL to 250: p50"), "{report}");
    let done = tokio::time::timeout(Duration::from_secs(60), sink.wait_with_output())
        .await
        .expect("the sink got every message")
        .unwrap();
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(out.contains("received 300 messages"), "{out}");
}

/// `--rate` paces the load: 20 messages at 40 a second cannot all be sent
/// before half a second has gone by (message n starts at n/40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rate_paces_the_load() {
    let t = TestServer::start().await;
    let server = t.smtp().to_string();
    let started = std::time::Instant::now();
    let bench = tokio::process::Command::new(BIN)
        .args(["bench", "--server", &server, "--quiet"])
        .args(["--messages", "20", "--connections", "4", "--rate", "40"])
        .args(["--from", "x@remote.test", "--to", "alice@example.test"])
        .output()
        .await
        .unwrap();
    let report = text(&bench);
    assert!(bench.status.success(), "{report}");
    assert!(report.contains("accepted 20"), "{report}");
    assert!(
        started.elapsed() >= Duration::from_millis(19 * 1000 / 40),
        "20 messages at 40/s were sent in {:?}",
        started.elapsed()
    );
    let bad = tokio::process::Command::new(BIN)
        .args(["bench", "--server", &server, "--rate", "0"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--rate"), "{}", text(&bad));
}

/// `tern bench idle` opens connections, holds them, checks each still
/// answers, and reads the server's memory from `/proc` (the server runs in
/// this test process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_idle_holds_connections_and_reads_memory() {
    let t = TestServer::start().await;
    let server = t.smtp().to_string();
    let pid = std::process::id().to_string();
    let idle = tokio::process::Command::new(BIN)
        .args(["bench", "idle", "--server", &server, "--pid", &pid])
        .args(["--connections", "50", "--hold", "1", "--tls", "starttls"])
        .output()
        .await
        .unwrap();
    let report = text(&idle);
    assert!(idle.status.success(), "{report}");
    assert!(report.contains("opened 50 of 50 connections"), "{report}");
    assert!(report.contains("50 of 50 answered NOOP"), "{report}");
    assert!(report.contains("with 50 idle connections"), "{report}");
    assert!(report.contains("errors: none"), "{report}");
}
