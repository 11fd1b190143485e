//! `tern bench idle`: opens many SMTP connections, takes each as far as
//! EHLO (or STARTTLS, or AUTH), and holds them open doing nothing, to
//! measure what an idle connection costs a server. With `--pid`, it reads
//! the server's resident memory (Linux `/proc`) before, while the
//! connections are held, and after they are closed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::Semaphore;

use super::load::{open, BenchTls, Conn};

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Server to connect to, HOST:PORT.
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, value_enum, default_value_t = BenchTls::None)]
    pub tls: BenchTls,
    /// AUTH PLAIN as USER:PASS on every connection.
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,
    /// How long to hold the connections once all are open, in seconds.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 100)]
    pub parallel: usize,
    /// The server's process id: its resident memory is reported.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Resident memory of `pid` in KiB (VmRSS), if it can be read.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(args: IdleArgs) -> anyhow::Result<ExitCode> {
    tern_smtp::tls::install_crypto_provider();
    if args.connections == 0 || args.parallel == 0 {
        bail!("--connections and --parallel must be at least 1");
    }
    let before = rss_kib(args.pid);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel));
    let auth = args.auth.clone();
    let opening: Vec<_> = (0..args.connections)
        .map(|_| {
            let gate = gate.clone();
            let auth = auth.clone();
            let (server, tls) = (args.server, args.tls);
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.expect("open");
                open(server, tls, auth.as_deref()).await
            })
        })
        .collect();
    let mut conns: Vec<Conn> = Vec::with_capacity(args.connections);
    let mut failed = std::collections::BTreeMap::<String, usize>::new();
    for o in opening {
        match o.await.context("opening task")? {
            Ok(c) => conns.push(c),
            Err(e) => *failed.entry(format!("{e:#}")).or_default() += 1,
        }
    }
    println!(
        "opened {} of {} connections in {:.2} s",
        conns.len(),
        args.connections,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held = rss_kib(args.pid);
    // Each connection must still be served after the wait: a NOOP each.
    let mut answered = 0;
    for c in &mut conns {
        match tokio::time::timeout(Duration::from_secs(10), c.cmd("NOOP", 250)).await {
            Ok(Ok(())) => answered += 1,
            Ok(Err(e)) => *failed.entry(format!("NOOP: {e:#}")).or_default() += 1,
            Err(_) => *failed.entry("NOOP: no answer in 10 s".into()).or_default() += 1,
        }
    }
    println!(
        "after {} s idle, {answered} of {} answered NOOP",
        args.hold,
        conns.len()
    );
    let open_now = conns.len();
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(args.pid);
    if let (Some(b), Some(h), Some(a)) = (before, held, after) {
        let each = h.saturating_sub(b) as f64 / open_now.max(1) as f64;
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB with {open_now} idle connections ({each:.1} KiB each), {:.1} MiB after they closed",
            mib(b),
            mib(h),
            mib(a)
        );
    }
    if failed.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = failed.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("errors: {}", list.join(", "));
    }
    Ok(if failed.is_empty() && answered == args.connections {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
