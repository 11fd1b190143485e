//! The sink: a minimal, fast SMTP server for end-to-end benchmarks. It
//! takes pipelined commands, reads message data up to CRLF.CRLF without
//! keeping it, answers the end of data with the chosen reply, and counts.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Args, Debug)]
pub struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// The reply to the end of each message: 250 accepts, 451 defers, 550 refuses.
    #[arg(long, default_value_t = 250, value_parser = parse_reply)]
    pub reply: u16,
    /// Exit once this many messages were received, printing the time from
    /// the first to the last.
    #[arg(long)]
    pub expect: Option<u64>,
    /// Do not print the running count.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_reply(s: &str) -> Result<u16, String> {
    match s {
        "250" | "451" | "550" => Ok(s.parse().expect("digits")),
        _ => Err("one of 250, 451, 550".into()),
    }
}

struct Counter {
    messages: AtomicU64,
    /// Microseconds since `start` of the first and the latest message.
    first: AtomicU64,
    last: AtomicU64,
    start: Instant,
}

pub async fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "sink listening on {} (reply {})",
        listener.local_addr()?,
        args.reply
    );
    let counter = Arc::new(Counter {
        messages: AtomicU64::new(0),
        first: AtomicU64::new(u64::MAX),
        last: AtomicU64::new(0),
        start: Instant::now(),
    });
    let final_reply: &'static [u8] = match args.reply {
        250 => b"250 2.0.0 Ok: queued\r\n",
        451 => b"451 4.3.0 Try again later\r\n",
        _ => b"550 5.7.1 Refused\r\n",
    };
    let accept = {
        let counter = counter.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(session(s, counter.clone(), final_reply));
            }
        })
    };
    let mut shown = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let n = counter.messages.load(Ordering::Relaxed);
        if !args.quiet && n != shown && tick_is_second(&counter) {
            println!("received {n}");
            shown = n;
        }
        if args.expect.is_some_and(|e| n >= e) {
            break;
        }
    }
    accept.abort();
    let n = counter.messages.load(Ordering::Relaxed);
    let (first, last) = (
        counter.first.load(Ordering::Relaxed),
        counter.last.load(Ordering::Relaxed),
    );
    if n > 0 && first != u64::MAX {
        let span = (last.saturating_sub(first)) as f64 / 1e6;
        let rate = if span > 0.0 { n as f64 / span } else { 0.0 };
        println!("received {n} messages; first to last {span:.2} s ({rate:.0} msg/s)");
    } else {
        println!("received {n} messages");
    }
    Ok(ExitCode::SUCCESS)
}

fn tick_is_second(c: &Counter) -> bool {
    c.start.elapsed().as_millis() % 1000 < 200
}

async fn session(mut s: TcpStream, counter: Arc<Counter>, final_reply: &'static [u8]) {
    if s.write_all(b"220 sink.tern.test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut chunk = vec![0u8; 256 * 1024];
    // Unprocessed input. Inside DATA it starts with a CRLF of our own, so
    // that an empty message (".\r\n" at once) ends like any other; only
    // the last 4 octets are kept while looking for the end.
    let mut buf: Vec<u8> = Vec::new();
    let mut in_data = false;
    let mut out = Vec::new();
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if in_data {
                match find(&buf, b"\r\n.\r\n") {
                    Some(p) => {
                        buf.drain(..p + 5);
                        in_data = false;
                        // Every complete message counts, whatever the reply.
                        let now = counter.start.elapsed().as_micros() as u64;
                        counter.messages.fetch_add(1, Ordering::Relaxed);
                        counter.first.fetch_min(now, Ordering::Relaxed);
                        counter.last.fetch_max(now, Ordering::Relaxed);
                        out.extend_from_slice(final_reply);
                        continue;
                    }
                    None => {
                        let keep = buf.len().min(4);
                        buf.drain(..buf.len() - keep);
                        break;
                    }
                }
            }
            let Some(p) = find(&buf, b"\r\n") else { break };
            let verb: Vec<u8> = buf[..p.min(4)]
                .iter()
                .map(|b| b.to_ascii_uppercase())
                .collect();
            buf.drain(..p + 2);
            match verb.as_slice() {
                b"EHLO" => out.extend_from_slice(
                    b"250-sink.tern.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n",
                ),
                b"HELO" => out.extend_from_slice(b"250 sink.tern.test\r\n"),
                b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                b"DATA" => {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    buf.splice(0..0, *b"\r\n");
                    in_data = true;
                }
                b"QUIT" => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    let _ = s.write_all(&out).await;
                    return;
                }
                _ => out.extend_from_slice(b"502 5.5.2 Not implemented\r\n"),
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The sink shares the machine with the server it measures: it looks for
/// line and message ends with memchr's vectorised search, not a byte at a
/// time.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}
