//! The load generator: C connections share N messages, each connection
//! pipelining MAIL, RCPT and DATA (RFC 2920) like a real client, and the
//! latency of each message is measured from MAIL to the final 250.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::stats::Stats;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BenchTls {
    Starttls,
    Implicit,
    None,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Server(s) to load, HOST:PORT; with several, connections are spread
    /// over them in turn.
    #[arg(long, required = true)]
    pub server: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Message size in octets, headers included.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = BenchTls::None)]
    pub tls: BenchTls,
    /// AUTH PLAIN as USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,
    #[arg(long, default_value = "bench@example.com")]
    pub from: String,
    #[arg(long, default_value = "sink@example.net")]
    pub to: String,
    /// Recipients per message (user+1@..., user+2@... after the first).
    #[arg(long, default_value_t = 1)]
    pub rcpts: usize,
    /// Send at most this many messages a second in all: message n is not
    /// started before n/RATE seconds into the run. For latency at a set
    /// load (e.g. half the maximum) instead of as fast as possible.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub(super) struct Conn {
    io: BufReader<Box<dyn Stream>>,
    line: String,
}

impl Conn {
    /// Reads one reply; returns its code and last line.
    async fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            self.line.clear();
            let n =
                tokio::time::timeout(Duration::from_secs(120), self.io.read_line(&mut self.line))
                    .await
                    .context("no reply in 120 s")??;
            if n == 0 {
                bail!("connection closed");
            }
            let code: u16 = self
                .line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .context("bad reply")?;
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, self.line.trim_end().to_string()));
            }
        }
    }

    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.io.get_mut().write_all(data).await?;
        self.io.get_mut().flush().await?;
        Ok(())
    }

    pub(super) async fn cmd(&mut self, line: &str, want: u16) -> anyhow::Result<()> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        let (code, text) = self.reply().await?;
        if code != want {
            bail!("{line:?}: {text}");
        }
        Ok(())
    }
}

/// Connects, reads the greeting, says EHLO, and does STARTTLS or implicit
/// TLS and AUTH PLAIN (`USER:PASS`) when asked.
pub(super) async fn open(
    server: SocketAddr,
    tls: BenchTls,
    auth: Option<&str>,
) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(server)
        .await
        .with_context(|| format!("connect {server}"))?;
    tcp.set_nodelay(true)?;
    let connector = tern_delivery::remote::tls::connector();
    let name = tern_delivery::remote::tls::server_name(&server.ip().to_string());
    let stream: Box<dyn Stream> = match tls {
        BenchTls::Implicit => Box::new(connector.connect(name.clone(), tcp).await?),
        _ => Box::new(tcp),
    };
    let mut c = Conn {
        io: BufReader::new(stream),
        line: String::new(),
    };
    let (code, text) = c.reply().await?;
    if code != 220 {
        bail!("greeting: {text}");
    }
    c.cmd("EHLO bench.tern.test", 250).await?;
    if tls == BenchTls::Starttls {
        c.cmd("STARTTLS", 220).await?;
        let tcp = c.io.into_inner();
        let tls = connector.connect(name, tcp).await?;
        c = Conn {
            io: BufReader::new(Box::new(tls)),
            line: String::new(),
        };
        c.cmd("EHLO bench.tern.test", 250).await?;
    }
    if let Some(auth) = auth {
        let (u, p) = auth.split_once(':').context("--auth takes USER:PASS")?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        c.cmd(&format!("AUTH PLAIN {token}"), 235).await?;
    }
    Ok(c)
}

/// A message of exactly `size` octets (at least its headers), CRLF lines
/// of 78 characters, with no line starting with a dot.
pub fn make_message(n: usize, size: usize, from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench {n}\r\nMessage-ID: <bench.{n}.{}@tern.test>\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    while m.len() + 2 < size {
        let len = (size - m.len() - 2).min(78);
        m.extend(std::iter::repeat_n(b'x', len));
        m.extend_from_slice(b"\r\n");
    }
    m
}

async fn worker(
    server: SocketAddr,
    args: Arc<LoadArgs>,
    next: Arc<AtomicUsize>,
    bar: ProgressBar,
    epoch: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let mut conn = match open(server, args.tls, args.auth.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            stats.error(format!("session: {e:#}"));
            return stats;
        }
    };
    let mut envelope = format!("MAIL FROM:<{}>\r\n", args.from);
    let (user, domain) = args
        .to
        .rsplit_once('@')
        .unwrap_or((&args.to, "example.net"));
    for k in 0..args.rcpts {
        if k == 0 {
            envelope.push_str(&format!("RCPT TO:<{}>\r\n", args.to));
        } else {
            envelope.push_str(&format!("RCPT TO:<{user}+{k}@{domain}>\r\n"));
        }
    }
    envelope.push_str("DATA\r\n");
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= args.messages {
            break;
        }
        let mut body = make_message(n, args.size, &args.from, &args.to);
        body.extend_from_slice(b".\r\n");
        if let Some(rate) = args.rate {
            let due = epoch + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let start = Instant::now();
        let r: anyhow::Result<Option<u16>> = async {
            conn.send(envelope.as_bytes()).await?;
            let mut refused = None;
            for _ in 0..args.rcpts + 1 {
                let (code, _) = conn.reply().await?;
                if code / 100 != 2 {
                    refused.get_or_insert(code);
                }
            }
            let (code, _) = conn.reply().await?;
            if code != 354 {
                return Ok(Some(refused.unwrap_or(code)));
            }
            conn.send(&body).await?;
            let (code, _) = conn.reply().await?;
            // Accepted means every recipient and the data were.
            Ok(refused.or((code != 250).then_some(code)))
        }
        .await;
        match r {
            Ok(None) => stats.record(start.elapsed(), body.len() - 3),
            Ok(Some(code)) => {
                stats.error(code.to_string());
                if conn.cmd("RSET", 250).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                stats.error(format!("session: {e:#}"));
                break;
            }
        }
        bar.inc(1);
    }
    let _ = conn.cmd("QUIT", 221).await;
    stats
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    tern_smtp::tls::install_crypto_provider();
    if args.connections == 0 || args.messages == 0 || args.rcpts == 0 {
        bail!("--messages, --connections and --rcpts must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of messages a second");
    }
    let args = Arc::new(args);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.messages as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template"),
        )
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|i| {
            let server = args.server[i % args.server.len()];
            tokio::spawn(worker(
                server,
                args.clone(),
                next.clone(),
                bar.clone(),
                started,
            ))
        })
        .collect();
    let mut stats = Stats::default();
    for w in workers {
        stats.merge(w.await?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let accepted = stats.accepted();
    let secs = elapsed.as_secs_f64();
    let servers: Vec<String> = args.server.iter().map(|s| s.to_string()).collect();
    let attempted = accepted as u64 + stats.errors.values().sum::<u64>();
    println!(
        "sent {} of {} messages of {} B over {} connections to {} in {:.2} s",
        attempted.min(args.messages as u64),
        args.messages,
        args.size,
        args.connections,
        servers.join(", "),
        secs
    );
    println!(
        "accepted {accepted}  {:.0} msg/s  {:.1} MB/s",
        accepted as f64 / secs,
        stats.bytes as f64 / secs / 1e6
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency MAIL to 250: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(stats.percentile(50.0)),
        ms(stats.percentile(90.0)),
        ms(stats.percentile(99.0)),
        ms(stats.percentile(100.0))
    );
    if stats.errors.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = stats
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("errors: {}", list.join(", "));
    }
    Ok(if accepted == args.messages {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
