//! One SMTP session (RFC 5321): a state machine fed with bytes, with one
//! handler file per command group. Replies are queued and flushed when the
//! input runs dry, which is what PIPELINING (RFC 2920) asks of a server.

mod auth;
mod conn;
mod data;
mod ehlo;
mod incoming;
mod mail;
mod mapguard;
mod rcpt;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_core::config::ListenerConfig;
use tern_core::{Address, ListenerMode};
use tern_proto::{ChunkChecker, Command, DataReader, LineBuffer, LineError, Reply, ReversePath};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::SmtpContext;
use conn::Conn;

/// The most octets read from a connection at once, so the most that one
/// step of the session feeds to the data readers.
pub(crate) const READ_SIZE: usize = 64 * 1024;

/// Bad commands tolerated on one connection before it is closed.
const MAX_ERRORS: u32 = 20;

/// What the session does after handling input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    StartTls,
    Close,
}

pub(crate) enum State {
    Command,
    /// Inside DATA: bytes go to the dot-terminated reader.
    Data(Box<DataReader>),
    /// Inside a BDAT chunk: this many octets still belong to it.
    Bdat {
        remaining: u64,
        last: bool,
    },
    /// Waiting for a SASL response line.
    Auth(auth::Step),
}

/// A mail transaction (RFC 5321 3.3): from MAIL to the end of data.
pub(crate) struct Transaction {
    pub sender: ReversePath,
    /// Where to deliver: accepted recipients after alias expansion.
    pub recipients: Vec<Address>,
    /// RCPT commands accepted (the recipient limit counts these).
    pub accepted: usize,
    /// The recipient as given, when there was only one (Received "for").
    pub first_rcpt: Option<Address>,
    /// The message data so far.
    pub body: incoming::Incoming,
    /// Present once BDAT was used in this transaction (RFC 3030 2).
    pub chunks: Option<ChunkChecker>,
    /// A BDAT chunk was refused; later chunks are swallowed until RSET.
    pub failed: bool,
}

pub struct Session {
    ctx: Arc<SmtpContext>,
    listener: ListenerConfig,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    conn: Conn,
    input: LineBuffer,
    out: Vec<u8>,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    auth_failures: u32,
    errors: u32,
    tx: Option<Transaction>,
    /// A command must be complete by then, however slowly its bytes came
    /// (RFC 5321 4.5.3.2.7's 5 minutes are for the whole command).
    command_deadline: tokio::time::Instant,
    /// When message data began and how much has come since.
    data_clock: Option<(tokio::time::Instant, u64)>,
}

/// Message data is allowed to start slowly for this long before its rate
/// is judged.
const DATA_RATE_GRACE: Duration = Duration::from_secs(10);

impl Session {
    pub fn new(
        ctx: Arc<SmtpContext>,
        listener: ListenerConfig,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        let max_line = ctx.config.limits.max_command_line;
        let command_deadline = tokio::time::Instant::now() + ctx.config.limits.command_timeout.0;
        Session {
            ctx,
            listener,
            peer,
            shutdown,
            conn: Conn::Closed,
            input: LineBuffer::new(max_line),
            out: Vec::with_capacity(1024),
            state: State::Command,
            helo: None,
            esmtp: false,
            user: None,
            auth_failures: 0,
            errors: 0,
            tx: None,
            command_deadline,
            data_clock: None,
        }
    }

    pub async fn run(mut self, stream: TcpStream) {
        tracing::debug!(peer = %self.peer, mode = ?self.listener.mode, "connected");
        if self.listener.mode == ListenerMode::Smtps {
            // RFC 8314 3.3: TLS from the first byte.
            match self.handshake(stream).await {
                Some(tls) => self.conn = tls,
                None => return,
            }
        } else {
            self.conn = Conn::Plain(stream);
        }
        let greeting = format!("220 {} ESMTP Tern\r\n", self.ctx.config.hostname);
        self.out.extend_from_slice(greeting.as_bytes());
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            if !self.flush().await {
                break;
            }
            let read = match self.read(&mut buf).await {
                Some(n) => n,
                None => break,
            };
            let mut flow = self.ingest(&buf[..read]).await;
            if flow == Flow::StartTls {
                if !self.flush().await {
                    break;
                }
                flow = self.start_tls().await;
            }
            if flow == Flow::Close {
                let _ = self.flush().await;
                break;
            }
        }
        self.conn.shutdown().await;
        tracing::debug!(peer = %self.peer, "disconnected");
    }

    /// Reads the next bytes, honouring the timeouts of RFC 5321 4.5.3.2 and
    /// a shutdown request. `None` ends the session.
    async fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        let limits = &self.ctx.config.limits;
        let (deadline, in_command) = match self.state {
            State::Data(_) | State::Bdat { .. } => {
                (tokio::time::Instant::now() + limits.data_timeout.0, false)
            }
            _ => (self.command_deadline, true),
        };
        let mut shutdown = self.shutdown.clone();
        let result = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.conn.read(buf)) => r,
            _ = wait_true(&mut shutdown), if in_command => {
                self.reply(Reply::new(421, "4.3.2", "Service shutting down, try again later"));
                let _ = self.flush().await;
                return None;
            }
        };
        match result {
            Ok(Ok(0)) => None,
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "read failed");
                None
            }
            Err(_) => {
                self.reply(Reply::new(
                    421,
                    "4.4.2",
                    "Timeout exceeded, closing connection",
                ));
                let _ = self.flush().await;
                None
            }
        }
    }

    /// Sends queued replies; false when the peer is gone.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let ok = tokio::time::timeout(Duration::from_secs(60), self.conn.write_all(&out))
            .await
            .is_ok_and(|r| r.is_ok());
        self.out = out;
        self.out.clear();
        ok
    }

    pub(crate) fn reply(&mut self, reply: Reply) {
        self.out.extend_from_slice(&reply.to_bytes());
    }

    /// Records mail refused by policy as `rejected` events (for search,
    /// statistics and webhooks), one per recipient (or one without), then
    /// answers with `reply`. The write runs on its own: a refusal never
    /// waits for the store. The events name the refused transaction by an
    /// id of its own.
    pub(crate) fn reject(&mut self, sender: &ReversePath, recipients: Vec<String>, reply: Reply) {
        let sender = match sender {
            ReversePath::Mailbox(a) => format!("<{a}>"),
            ReversePath::Null => "<>".into(),
        };
        let detail = format!("from {sender} [{}]: {reply}", self.peer.ip());
        let store = self.ctx.queue.store().clone();
        tokio::spawn(async move {
            let id = tern_core::MessageId::generate().to_string();
            let now = tern_core::unix_now();
            let recipients: Vec<Option<String>> = if recipients.is_empty() {
                vec![None]
            } else {
                recipients.into_iter().map(Some).collect()
            };
            for r in recipients {
                if let Err(e) = store
                    .record_event(&id, r.as_deref(), "rejected", Some(&detail), now)
                    .await
                {
                    tracing::debug!(error = %e, "cannot record a rejection");
                    return;
                }
            }
        });
        self.error(reply);
    }

    /// Feeds received bytes through the current state. A state change in
    /// the middle (DATA, BDAT, end of data) hands the rest to the new state.
    async fn ingest(&mut self, bytes: &[u8]) -> Flow {
        if self.too_slow(bytes.len()) {
            self.reply(Reply::new(
                421,
                "4.4.2",
                "Data arriving too slowly, closing connection",
            ));
            return Flow::Close;
        }
        let (mut flow, mut rest) = self.step(bytes).await;
        while flow == Flow::Continue {
            match rest.take() {
                Some(r) if !r.is_empty() => (flow, rest) = self.step(&r).await,
                _ => break,
            }
        }
        flow
    }

    /// The slowloris check: message data averaging less than
    /// `min_data_rate` once past the grace period.
    fn too_slow(&mut self, n: usize) -> bool {
        if !matches!(self.state, State::Data(_) | State::Bdat { .. }) {
            self.data_clock = None;
            return false;
        }
        let min = self.ctx.config.limits.min_data_rate;
        let (start, bytes) = self
            .data_clock
            .get_or_insert((tokio::time::Instant::now(), 0));
        *bytes += n as u64;
        let elapsed = start.elapsed();
        min > 0 && elapsed > DATA_RATE_GRACE && (*bytes as f64) < min as f64 * elapsed.as_secs_f64()
    }

    async fn step(&mut self, bytes: &[u8]) -> (Flow, Option<Vec<u8>>) {
        match &mut self.state {
            State::Data(reader) => {
                let end = match self.tx.as_mut() {
                    Some(t) => reader.feed(bytes, t.body.buf()),
                    None => reader.feed(bytes, &mut Vec::new()),
                };
                match end {
                    None => {
                        self.spill().await;
                        (Flow::Continue, None)
                    }
                    Some(consumed) => {
                        let State::Data(reader) =
                            std::mem::replace(&mut self.state, State::Command)
                        else {
                            unreachable!()
                        };
                        self.command_deadline =
                            tokio::time::Instant::now() + self.ctx.config.limits.command_timeout.0;
                        self.end_of_data(reader.error()).await;
                        (self.error_flow(), Some(bytes[consumed..].to_vec()))
                    }
                }
            }
            State::Bdat { remaining, last } => {
                let take = (*remaining).min(bytes.len() as u64) as usize;
                *remaining -= take as u64;
                let (done, last) = (*remaining == 0, *last);
                self.bdat_bytes(&bytes[..take]);
                // Also at a chunk's end: many small chunks make a large
                // message too.
                self.spill().await;
                if !done {
                    return (Flow::Continue, None);
                }
                self.state = State::Command;
                self.command_deadline =
                    tokio::time::Instant::now() + self.ctx.config.limits.command_timeout.0;
                self.end_of_chunk(last).await;
                (self.error_flow(), Some(bytes[take..].to_vec()))
            }
            State::Command | State::Auth(_) => {
                self.input.push(bytes);
                while let Some(line) = self.input.next_line() {
                    self.command_deadline =
                        tokio::time::Instant::now() + self.ctx.config.limits.command_timeout.0;
                    let flow = match line {
                        Ok(line) => self.on_line(line).await,
                        Err(LineError::TooLong) => self.error(Reply::line_too_long()),
                        Err(LineError::BareLf) => self.error(Reply::new(
                            500,
                            "5.5.2",
                            "Bare LF received; command lines must end with CRLF",
                        )),
                    };
                    if flow != Flow::Continue {
                        return (flow, None);
                    }
                    if matches!(self.state, State::Data(_) | State::Bdat { .. }) {
                        return (Flow::Continue, Some(self.input.take_rest()));
                    }
                }
                (Flow::Continue, None)
            }
        }
    }

    /// Moves a large message's data from memory to its file as it comes
    /// (see `incoming`).
    async fn spill(&mut self) {
        if let Some(t) = self.tx.as_mut() {
            t.body.spill(&self.ctx.config.data_dir).await;
        }
    }

    async fn on_line(&mut self, line: Vec<u8>) -> Flow {
        if let State::Auth(step) = std::mem::replace(&mut self.state, State::Command) {
            return self.auth_response(step, line).await;
        }
        let command = match tern_proto::parse_command(&line) {
            Ok(c) => c,
            Err(reply) => return self.error(reply),
        };
        match command {
            Command::Ehlo { host } => self.ehlo(host, true),
            Command::Helo { host } => self.ehlo(host, false),
            Command::StartTls => return self.starttls_command(),
            Command::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, .. } => self.rcpt(to).await,
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Flushed"));
            }
            Command::Noop => self.reply(Reply::ok()),
            Command::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            // RFC 5321 3.5.3: 252 when we will not say whether a user exists.
            Command::Vrfy { .. } => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn { .. } => self.reply(Reply::new(502, "5.5.1", "EXPN not available")),
            Command::Help { .. } => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
            )),
        }
        self.error_flow()
    }

    /// Close once `error` has said 421 (the handlers reply and return
    /// nothing; the count decides).
    fn error_flow(&self) -> Flow {
        if self.errors >= MAX_ERRORS {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Replies with an error and counts it; too many and the client is cut off.
    pub(crate) fn error(&mut self, reply: Reply) -> Flow {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many errors, closing connection",
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    fn starttls_command(&mut self) -> Flow {
        if self.conn.is_tls() {
            return self.error(Reply::bad_sequence("TLS already active"));
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        Flow::StartTls
    }

    /// RFC 3207 4.2: after the handshake the session starts over, and
    /// anything the client sent after STARTTLS before the handshake is
    /// discarded (never executed: CVE-2011-0411).
    async fn start_tls(&mut self) -> Flow {
        let _ = self.input.take_rest();
        let Conn::Plain(stream) = std::mem::replace(&mut self.conn, Conn::Closed) else {
            return Flow::Close;
        };
        match self.handshake(stream).await {
            Some(tls) => {
                self.conn = tls;
                self.helo = None;
                self.esmtp = false;
                self.user = None;
                self.tx = None;
                self.state = State::Command;
                Flow::Continue
            }
            None => Flow::Close,
        }
    }

    async fn handshake(&mut self, stream: TcpStream) -> Option<Conn> {
        let timeout = self.ctx.config.limits.command_timeout.0;
        match tokio::time::timeout(timeout, self.ctx.tls.accept(stream)).await {
            Ok(Ok(tls)) => Some(Conn::Tls(Box::new(tls))),
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Whether AUTH is offered and allowed on this connection now
    /// (RFC 4954 4: not over an unencrypted channel unless configured).
    pub(crate) fn auth_allowed(&self) -> bool {
        self.is_tls() || self.listener.allow_plaintext_auth
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
