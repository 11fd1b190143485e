//! The SMTP client (RFC 5321 from the sending side): greeting, EHLO with
//! HELO fallback, STARTTLS (RFC 3207), AUTH PLAIN (RFC 4954), and one
//! transaction per call, pipelined when the server offers it (RFC 2920).
//! Every reply read is bounded in length and time.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::server_name;
use crate::Attempt;
use tern_core::smtp_path;

/// Longest reply line read, and most lines in one reply.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 128;
/// Message data is written in blocks of this size, each with its own
/// time limit.
const DATA_BLOCK: usize = 64 * 1024;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of every line, joined with spaces.
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    Connect(String),
    Io(String),
    Timeout(&'static str),
    Tls(String),
    Protocol(String),
    /// Tern's own policy stopped short of using this connection.
    Policy(String),
    /// The server refused at a step that has no per-recipient meaning
    /// (greeting, EHLO, STARTTLS, AUTH).
    Refused {
        stage: &'static str,
        reply: Reply,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Io(e) => write!(f, "connection lost: {e}"),
            ClientError::Timeout(stage) => write!(f, "timeout waiting for the {stage} reply"),
            ClientError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::Policy(e) => write!(f, "{e}"),
            ClientError::Refused { stage, reply } => write!(f, "{stage} refused: {reply}"),
        }
    }
}

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE` with its limit (0 = no fixed limit), RFC 1870.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
}

impl Extensions {
    fn parse(lines: &[String]) -> Extensions {
        let mut ext = Extensions::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eightbitmime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "AUTH" => ext.auth_plain = words.any(|m| m.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        ext
    }
}

/// Waits that apply to one connection (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    ext: Extensions,
    peer: String,
    timeouts: Timeouts,
}

impl SmtpClient {
    /// Connects, (with `implicit` set) does TLS at once, and reads a 2xx greeting.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        timeouts: Timeouts,
        implicit: Option<&TlsConnector>,
    ) -> Result<SmtpClient, ClientError> {
        let tcp = timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ClientError::Connect(format!("no answer from {addr} in {:?}", timeouts.connect))
            })?
            .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream = match implicit {
            Some(connector) => Stream::Tls(Box::new(
                handshake(connector, host, tcp, timeouts.command).await?,
            )),
            None => Stream::Plain(tcp),
        };
        let mut client = SmtpClient {
            stream,
            buf: Vec::with_capacity(1024),
            ext: Extensions::default(),
            peer: format!("{host}[{}]", addr.ip()),
            timeouts,
        };
        let greeting = client.read_reply("greeting").await?;
        if greeting.code / 100 != 2 {
            return Err(ClientError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        Ok(client)
    }

    /// "host[ip]" for messages about this connection.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// EHLO, falling back to HELO when the server does not know it
    /// (RFC 5321 3.2).
    pub async fn hello(&mut self, name: &str) -> Result<(), ClientError> {
        let lines = self.command_lines(&format!("EHLO {name}"), "EHLO").await?;
        if lines.0 / 100 == 2 {
            self.ext = Extensions::parse(&lines.1);
            return Ok(());
        }
        if lines.0 == 421 {
            return Err(refused("EHLO", lines.0, &lines.1));
        }
        let reply = self.command(&format!("HELO {name}"), "HELO").await?;
        if reply.code / 100 != 2 {
            return Err(ClientError::Refused {
                stage: "HELO",
                reply,
            });
        }
        self.ext = Extensions::default();
        Ok(())
    }

    /// STARTTLS, the handshake, and EHLO again (RFC 3207 4.2). Anything the
    /// server sent after its 220 in plaintext is thrown away unread: it could
    /// only be an injection (CVE-2011-0411, server side).
    pub async fn starttls(
        self,
        connector: &TlsConnector,
        host: &str,
        helo: &str,
    ) -> Result<SmtpClient, ClientError> {
        let mut this = self;
        let reply = this.command("STARTTLS", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(ClientError::Refused {
                stage: "STARTTLS",
                reply,
            });
        }
        this.buf.clear();
        let Stream::Plain(tcp) = this.stream else {
            return Err(ClientError::Protocol("STARTTLS on a TLS connection".into()));
        };
        let tls = handshake(connector, host, tcp, this.timeouts.command).await?;
        let mut upgraded = SmtpClient {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::with_capacity(1024),
            ext: Extensions::default(),
            peer: this.peer,
            timeouts: this.timeouts,
        };
        upgraded.hello(helo).await?;
        Ok(upgraded)
    }

    /// AUTH PLAIN with an initial response (RFC 4954, RFC 4616).
    pub async fn auth_plain(&mut self, user: &str, pass: &str) -> Result<(), ClientError> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let reply = self.command(&format!("AUTH PLAIN {token}"), "AUTH").await?;
        if reply.code != 235 {
            return Err(ClientError::Refused {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
    }

    /// Resets a connection for reuse; an error means it is no longer usable.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        let reply = self.command("RSET", "RSET").await?;
        if reply.code / 100 != 2 {
            return Err(ClientError::Refused {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(5), async {
            if self.write(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply("QUIT").await;
            }
        })
        .await;
    }

    /// One mail transaction. Returns one attempt per recipient, and whether
    /// the connection is still in a state to be used again.
    pub async fn send_mail(&mut self, mail: &Mail<'_>) -> (Vec<Attempt>, bool) {
        let n = mail.recipients.len();
        if let Some(max) = self.ext.size.filter(|m| *m > 0) {
            if mail.body.size() > max {
                let why = format!(
                    "552 5.3.4 message of {} octets is larger than the {max} that {} accepts",
                    mail.body.size(),
                    self.peer
                );
                return (vec![Attempt::Permanent(why); n], true);
            }
        }
        if mail.needs_smtputf8 && !self.ext.smtputf8 {
            let why = format!(
                "553 5.6.7 the addresses need SMTPUTF8 (RFC 6531), which {} does not support",
                self.peer
            );
            return (vec![Attempt::Permanent(why); n], true);
        }
        // Only a server without 8BITMIME needs the body scanned first.
        let eight_bit = match self.ext.eightbitmime {
            true => false,
            false => match mail.body.has_8bit().await {
                Ok(b) => b,
                Err(e) => {
                    let why = format!("451 4.3.0 cannot read the message: {e}");
                    return (vec![Attempt::Temporary(why); n], true);
                }
            },
        };
        if eight_bit {
            // RFC 6152 3: 8-bit data only to a server that said 8BITMIME.
            let why = format!(
                "554 5.6.3 the message has 8-bit data and {} does not support 8BITMIME (RFC 6152)",
                self.peer
            );
            return (vec![Attempt::Permanent(why); n], true);
        }
        let mut results: Vec<Option<Attempt>> = vec![None; n];
        let reusable = match self.transaction(mail, &mut results).await {
            Ok(reusable) => reusable,
            Err(e) => {
                // Whatever had no answer yet waits for another try: for the
                // reply after the final dot that means at least once, never
                // at most once (RFC 5321 4.5.3.2.6 and 6.1).
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Attempt::Temporary(format!(
                        "451 4.4.2 {} ({})",
                        e, self.peer
                    )));
                }
                false
            }
        };
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Attempt::Temporary("451 4.3.0 no result".into())))
            .collect();
        (results, reusable)
    }

    async fn transaction(
        &mut self,
        mail: &Mail<'_>,
        results: &mut [Option<Attempt>],
    ) -> Result<bool, ClientError> {
        // Local parts are stored unquoted: quoted again where they must be.
        let mut mail_cmd = format!("MAIL FROM:<{}>", smtp_path(mail.sender));
        if self.ext.size.is_some() {
            mail_cmd.push_str(&format!(" SIZE={}", mail.body.size()));
        }
        // RFC 6152 2: BODY=8BITMIME may label any message to a server that
        // offers it, 7-bit or not; saying it always spares reading the body
        // twice.
        if self.ext.eightbitmime {
            mail_cmd.push_str(" BODY=8BITMIME");
        }
        if mail.needs_smtputf8 {
            mail_cmd.push_str(" SMTPUTF8");
        }
        let rcpt_cmds: Vec<String> = mail
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{}>", smtp_path(r)))
            .collect();

        let (mail_reply, rcpt_replies, data_reply) = if self.ext.pipelining {
            // RFC 2920 3.1: MAIL, every RCPT and DATA in one write.
            let mut batch = String::new();
            for c in std::iter::once(&mail_cmd).chain(rcpt_cmds.iter()) {
                batch.push_str(c);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            // A 421 means the server closes at once (RFC 5321 3.8): no more
            // replies follow, and everything not yet answered takes its text.
            let mail_reply = self.read_reply("MAIL").await?;
            if mail_reply.code == 421 {
                return Ok(self.closing(&mail_reply, results));
            }
            let mut rcpt_replies = Vec::with_capacity(rcpt_cmds.len());
            for _ in &rcpt_cmds {
                let r = self.read_reply("RCPT").await?;
                if r.code == 421 {
                    return Ok(self.closing(&r, results));
                }
                rcpt_replies.push(r);
            }
            let data_reply = self.read_reply("DATA").await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            let mail_reply = self.command(&mail_cmd, "MAIL").await?;
            let mut rcpt_replies = Vec::new();
            if mail_reply.code / 100 == 2 {
                for c in &rcpt_cmds {
                    rcpt_replies.push(self.command(c, "RCPT").await?);
                }
            }
            (mail_reply, rcpt_replies, None)
        };

        let peer = self.peer.clone();
        let attempt = |r: &Reply| {
            let text = format!("{r} ({peer})");
            if r.is_permanent() {
                Attempt::Permanent(text)
            } else {
                Attempt::Temporary(text)
            }
        };
        let closing = |r: &Reply| r.code == 421;
        if mail_reply.code / 100 != 2 {
            for r in results.iter_mut() {
                *r = Some(attempt(&mail_reply));
            }
            if let Some(d) = &data_reply {
                if d.code == 354 {
                    self.write(b".\r\n").await?;
                    self.read_reply("DATA").await?;
                }
            }
            return self.finish_failed(closing(&mail_reply)).await;
        }
        let mut accepted = Vec::new();
        for (i, reply) in rcpt_replies.iter().enumerate() {
            if reply.code / 100 == 2 {
                accepted.push(i);
            } else {
                results[i] = Some(attempt(reply));
            }
        }
        let data_reply = match data_reply {
            Some(d) => d,
            None if accepted.is_empty() => {
                return self.finish_failed(rcpt_replies.iter().any(closing)).await;
            }
            None => self.command("DATA", "DATA").await?,
        };
        if data_reply.code != 354 {
            for &i in &accepted {
                results[i] = Some(attempt(&data_reply));
            }
            return self.finish_failed(closing(&data_reply)).await;
        }
        if accepted.is_empty() {
            // RFC 2920 3.1: after a 354 with no recipient, end the data at once.
            self.write(b".\r\n").await?;
            self.read_reply("DATA").await?;
            return self.finish_failed(false).await;
        }
        // The body goes out piece by piece as it is read from the store.
        // RFC 5321 4.5.3.2.5: the time limit is per block sent, not for the
        // whole message, so a large message on a slow link still goes.
        let mut stuffer = tern_proto::Stuffer::new();
        let mut wire = Vec::with_capacity(DATA_BLOCK * 2);
        let mut index = 0;
        loop {
            let chunk = mail
                .body
                .chunk(index)
                .await
                .map_err(|e| ClientError::Io(format!("cannot read the message: {e}")))?;
            match chunk {
                Some(c) => stuffer.push(&c, &mut wire),
                None => {
                    stuffer.finish(&mut wire);
                    self.write_blocks(&wire).await?;
                    break;
                }
            }
            index += 1;
            self.write_blocks(&wire).await?;
            wire.clear();
        }
        let final_reply = self
            .read_reply_within("end of data", self.timeouts.data)
            .await?;
        for &i in &accepted {
            results[i] = Some(if final_reply.code / 100 == 2 {
                Attempt::Delivered(format!("{final_reply} ({})", self.peer))
            } else {
                attempt(&final_reply)
            });
        }
        Ok(final_reply.code / 100 == 2 || (final_reply.code != 421 && self.rset().await.is_ok()))
    }

    /// The server said 421 and is closing: every recipient without a
    /// result defers with its text; the connection is not reused.
    fn closing(&self, reply: &Reply, results: &mut [Option<Attempt>]) -> bool {
        let text = format!("{reply} ({})", self.peer);
        for r in results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Attempt::Temporary(text.clone()));
        }
        false
    }

    /// After a transaction that did not complete: reset so the connection
    /// can carry the next one, unless the server is closing.
    async fn finish_failed(&mut self, server_closing: bool) -> Result<bool, ClientError> {
        if server_closing {
            return Ok(false);
        }
        Ok(self.rset().await.is_ok())
    }

    async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, ClientError> {
        let (code, lines) = self.command_lines(line, stage).await?;
        Ok(Reply {
            code,
            text: lines.join(" "),
        })
    }

    async fn command_lines(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<(u16, Vec<String>), ClientError> {
        debug_assert!(!line.contains(['\r', '\n']));
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_lines(stage, self.timeouts.command).await
    }

    async fn read_reply(&mut self, stage: &'static str) -> Result<Reply, ClientError> {
        self.read_reply_within(stage, self.timeouts.command).await
    }

    async fn read_reply_within(
        &mut self,
        stage: &'static str,
        wait: Duration,
    ) -> Result<Reply, ClientError> {
        let (code, lines) = self.read_lines(stage, wait).await?;
        Ok(Reply {
            code,
            text: lines.join(" "),
        })
    }

    /// Reads one (possibly multi-line) reply: `ddd-text` lines, then `ddd text`.
    async fn read_lines(
        &mut self,
        stage: &'static str,
        wait: Duration,
    ) -> Result<(u16, Vec<String>), ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut lines = Vec::new();
        loop {
            let line = match self.buf.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let raw: Vec<u8> = self.buf.drain(..=end).collect();
                    String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_string()
                }
                None => {
                    if self.buf.len() > MAX_REPLY_LINE {
                        return Err(ClientError::Protocol(format!(
                            "{stage} reply line too long"
                        )));
                    }
                    let mut chunk = [0u8; 4096];
                    let n = match tokio::time::timeout_at(deadline, self.read(&mut chunk)).await {
                        Ok(r) => r?,
                        Err(_) => return Err(ClientError::Timeout(stage)),
                    };
                    if n == 0 {
                        return Err(ClientError::Io(format!(
                            "closed by {} before the {stage} reply",
                            self.peer
                        )));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            };
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c));
            let Some(code) = code else {
                return Err(ClientError::Protocol(format!(
                    "garbage instead of a {stage} reply: {:?}",
                    clip(&line)
                )));
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(clip(line.get(4..).unwrap_or("")));
            if !more {
                return Ok((code, lines));
            }
            if lines.len() > MAX_REPLY_LINES {
                return Err(ClientError::Protocol(format!(
                    "{stage} reply has too many lines"
                )));
            }
        }
    }

    async fn write_blocks(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for block in data.chunks(DATA_BLOCK) {
            match timeout(self.timeouts.command, self.write_raw(block)).await {
                Ok(r) => r?,
                Err(_) => return Err(ClientError::Timeout("DATA block")),
            }
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        match timeout(self.timeouts.command, self.write_raw(data)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout("write")),
        }
    }

    async fn write_raw(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let r = match &mut self.stream {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => match s.write_all(data).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
        };
        r.map_err(|e| ClientError::Io(format!("{}: {e}", self.peer)))
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        let r = match &mut self.stream {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        };
        r.map_err(|e| ClientError::Io(format!("{}: {e}", self.peer)))
    }
}

/// What one transaction sends.
pub struct Mail<'a> {
    /// Empty for the null reverse-path.
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub body: &'a crate::Body,
    pub needs_smtputf8: bool,
}

async fn handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
    wait: Duration,
) -> Result<TlsStream<TcpStream>, ClientError> {
    match timeout(wait, connector.connect(server_name(host), tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ClientError::Tls(e.to_string())),
        Err(_) => Err(ClientError::Timeout("TLS handshake")),
    }
}

fn refused(stage: &'static str, code: u16, lines: &[String]) -> ClientError {
    ClientError::Refused {
        stage,
        reply: Reply {
            code,
            text: lines.join(" "),
        },
    }
}

/// Remote text goes into logs and bounces: printable and bounded.
fn clip(s: &str) -> String {
    s.chars()
        .take(512)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
