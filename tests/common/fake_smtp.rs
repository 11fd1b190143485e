//! A scriptable fake remote SMTP server (the recipient's MX, or a
//! smarthost) on a real socket, for testing outbound delivery.
//!
//! It answers like an RFC 5321 server and records what it received, and it
//! is strict about what a good client must send: every breach of a wire rule
//! (bare CR or LF, over-long lines, commands out of order, extensions used
//! without being offered, pipelining without PIPELINING, commands sent before
//! STARTTLS completes, AUTH in the clear...) is kept in `violations()`, which
//! tests assert is empty. It keeps answering after a breach, so one mistake
//! does not hide the next.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
const MAX_COMMAND: usize = 512;
/// RFC 4954 4: AUTH lines may carry long initial responses.
const MAX_AUTH_LINE: usize = 12_288;
/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
const MAX_DATA_LINE: usize = 1000;
/// Input kept while looking for an end of line, before giving up on a peer.
const MAX_BUFFER: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct Script {
    /// Sent on connect. A 421 closes at once; another non-2xx code refuses
    /// every command but QUIT with 503 (RFC 5321 3.1).
    pub greeting: String,
    /// false: EHLO gets `502 5.5.1` and the client must fall back to HELO.
    pub ehlo: bool,
    /// Offer STARTTLS, and do it with a self-signed certificate (see
    /// [`tls_cert_pem`]).
    pub starttls: bool,
    /// Bytes sent in plaintext in the same write as the 220 to STARTTLS
    /// (CVE-2011-0411 from the server side): a good client discards them.
    pub inject_after_starttls: Option<Vec<u8>>,
    pub pipelining: bool,
    /// `SIZE n`; a MAIL with a larger SIZE= gets 552 5.3.4.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    /// Offer AUTH PLAIN LOGIN and require these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// The reply to MAIL; one starting "421" closes the connection after it.
    pub mail_reply: String,
    /// Lowercase address → reply to its RCPT; default "250 2.1.5 OK".
    pub rcpt_replies: HashMap<String, String>,
    /// Final replies after the message data, one used per message; when
    /// empty, "250 2.0.0 queued as FAKE".
    pub data_replies: VecDeque<String>,
    /// Answer DATA with 354, read some of the data, then reset the connection.
    pub close_after_data_start: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 fake.remote.test ESMTP".into(),
            ehlo: true,
            starttls: false,
            inject_after_starttls: None,
            pipelining: true,
            size: None,
            eightbitmime: true,
            smtputf8: false,
            chunking: false,
            auth: None,
            mail_reply: "250 2.1.0 OK".into(),
            rcpt_replies: HashMap::new(),
            data_replies: VecDeque::new(),
            close_after_data_start: false,
        }
    }
}

/// One message whose data was transferred in full (whatever the final reply).
#[derive(Clone, Debug)]
pub struct Received {
    /// The argument of the last EHLO or HELO.
    pub helo: String,
    pub tls: bool,
    /// Everything after "MAIL FROM:", e.g. `<a@b.test> SIZE=120 BODY=8BITMIME`.
    pub mail_from: String,
    /// Accepted recipients (2xx to RCPT), without the angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as it would be stored: dot-stuffing removed, without the
    /// terminating ".\r\n" (for BDAT: the chunks joined).
    pub data: Vec<u8>,
    /// The bytes on the wire after the 354, up to and including the final
    /// ".\r\n" (for BDAT: the chunk bytes).
    pub raw: Vec<u8>,
    /// The final reply this message got.
    pub reply: String,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    commands: Vec<String>,
    violations: Vec<String>,
}

struct Shared {
    script: Mutex<Script>,
    log: Mutex<Log>,
    connections: AtomicUsize,
}

pub struct FakeSmtp {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    /// A second descriptor for the listening socket, so drop can stop it
    /// at once instead of whenever the runtime gets to the aborted task.
    listen_fd: OwnedFd,
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        // shutdown() on a listening socket takes it out of LISTEN: new
        // connections are refused from this moment on.
        unsafe {
            libc::shutdown(self.listen_fd.as_raw_fd(), libc::SHUT_RDWR);
        }
        self.task.abort();
    }
}

impl FakeSmtp {
    /// Listens on `ip:port` (port 0: any free port) and serves `script`.
    pub async fn start(ip: IpAddr, port: u16, script: Script) -> FakeSmtp {
        tern_smtp::tls::install_crypto_provider();
        let listener = TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("fake SMTP cannot listen on {ip}:{port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let listen_fd = listener.as_fd().try_clone_to_owned().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            log: Mutex::new(Log::default()),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeSmtp {
            addr,
            shared,
            task,
            listen_fd,
        }
    }

    /// Changes the script; replies not yet sent follow the new one. What an
    /// EHLO advertised stays as it was for that session.
    pub fn set_script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.shared.script.lock().unwrap());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().received.clone()
    }

    /// Waits until `n` messages have arrived and returns them all; panics
    /// after `secs` with what was seen, to make the failure readable.
    pub async fn wait_received(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "fake SMTP {}: expected {n} message(s) within {secs} s, got {}\n\
                     connections: {}\ncommands: {:#?}\nviolations: {:#?}",
                    self.addr,
                    got.len(),
                    self.connections(),
                    self.commands(),
                    self.violations()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every line received in command mode (AUTH continuation lines too),
    /// without its line ending, in order, across connections.
    pub fn commands(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().commands.clone()
    }

    /// Wire-rule breaches seen, each naming its connection (1-based).
    pub fn violations(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().violations.clone()
    }
}

/// A TCP port free on every one of `ips` at once (all bound, then
/// released), so servers on several loopback addresses can share it, as the
/// MX hosts of one domain share port 25. Linux routes all of 127.0.0.0/8 to
/// lo, so 127.0.0.2, 127.0.0.3... need no setup.
pub fn free_port(ips: &[IpAddr]) -> u16 {
    let ips: Vec<IpAddr> = if ips.is_empty() {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        ips.to_vec()
    };
    // Tests in one binary run in parallel: a port just released could be
    // handed to two of them, so each port is given out only once. Ports
    // come from below the kernel's ephemeral range (32768 and up): a port
    // from the ephemeral range can be taken by any outgoing connection
    // (a node's PostgreSQL pool, a delivery) between this check and the
    // test's own bind.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let mut given = GIVEN.lock().unwrap();
    for i in 0..SPAN {
        let port = (LOW + (start + i * 13) % SPAN) as u16;
        if given.contains(&port) {
            continue;
        }
        let free = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if free {
            given.push(port);
            return port;
        }
    }
    panic!("no TCP port free on all of {ips:?}");
}

/// The certificate the fake presents after STARTTLS (PEM), valid for
/// localhost, fake.remote.test, *.remote.test, 127.0.0.1 and ::1, for tests
/// whose client verifies it.
pub fn tls_cert_pem() -> &'static str {
    &tls().1
}

fn tls() -> &'static (Arc<rustls::ServerConfig>, String) {
    static TLS: OnceLock<(Arc<rustls::ServerConfig>, String)> = OnceLock::new();
    TLS.get_or_init(|| {
        tern_smtp::tls::install_crypto_provider();
        let names = [
            "localhost",
            "fake.remote.test",
            "*.remote.test",
            "127.0.0.1",
            "::1",
        ]
        .map(String::from)
        .to_vec();
        let ck = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("TLS server config");
        (Arc::new(config), ck.cert.pem())
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) ends every session.
    let mut sessions = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        while sessions.try_join_next().is_some() {}
        let mut session = Session::new(id, stream, shared.clone());
        sessions.spawn(async move { session.run().await });
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
            Io::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Io::Plain(s) => Some(s),
            Io::Tls(s) => Some(s.get_ref().0),
            Io::Gone => None,
        }
    }
}

/// What the last EHLO advertised: extensions are in effect only if offered
/// (after HELO, none are).
#[derive(Clone, Default)]
struct Offer {
    pipelining: bool,
    size: Option<u64>,
    eightbitmime: bool,
    smtputf8: bool,
    chunking: bool,
    starttls: bool,
    auth: bool,
}

struct Tx {
    mail_from: String,
    body8: bool,
    smtputf8: bool,
    rcpt: Vec<String>,
    rcpt_tried: bool,
    bdat: Option<Vec<u8>>,
}

/// Whether the session goes on after a command.
enum Flow {
    Go,
    Close,
    /// Close with a TCP reset rather than a FIN.
    Reset,
}

struct Session {
    id: usize,
    shared: Arc<Shared>,
    io: Io,
    /// Received and not yet consumed.
    input: Vec<u8>,
    /// Replies not yet written: they go out just before the next read, so a
    /// pipelined group is answered in one write, in order.
    output: Vec<u8>,
    host: String,
    helo: Option<String>,
    offer: Offer,
    tls: bool,
    authed: bool,
    refusing: bool,
    tx: Option<Tx>,
}

fn is_2xx(reply: &str) -> bool {
    reply.starts_with('2')
}

fn closes(reply: &str) -> bool {
    reply.starts_with("421")
}

/// Shows a line in a violation message, escaped and shortened.
fn show(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(80)]);
    let more = if line.len() > 80 { "..." } else { "" };
    format!("{s:?}{more}")
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

impl Session {
    fn new(id: usize, stream: TcpStream, shared: Arc<Shared>) -> Session {
        let greeting = shared.script.lock().unwrap().greeting.clone();
        let host = greeting
            .split_whitespace()
            .nth(1)
            .unwrap_or("fake.remote.test")
            .to_string();
        Session {
            id,
            shared,
            io: Io::Plain(stream),
            input: Vec::new(),
            output: Vec::new(),
            host,
            helo: None,
            offer: Offer::default(),
            tls: false,
            authed: false,
            refusing: false,
            tx: None,
        }
    }

    fn script<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.shared.script.lock().unwrap())
    }

    fn violation(&self, what: impl AsRef<str>) {
        let v = format!("connection {}: {}", self.id, what.as_ref());
        self.shared.log.lock().unwrap().violations.push(v);
    }

    fn log_command(&self, line: &[u8]) {
        let c = String::from_utf8_lossy(strip_eol(line)).into_owned();
        self.shared.log.lock().unwrap().commands.push(c);
    }

    /// Queues a reply; a script string may hold several lines separated by
    /// "\n", each already carrying its "250-" style prefix.
    fn reply(&mut self, text: &str) {
        for line in text.split('\n') {
            self.output
                .extend_from_slice(line.trim_end_matches('\r').as_bytes());
            self.output.extend_from_slice(b"\r\n");
        }
    }

    /// Queues a scripted reply and says whether it ends the session.
    fn scripted(&mut self, text: &str) -> Flow {
        self.reply(text);
        if closes(text) {
            Flow::Close
        } else {
            Flow::Go
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.output);
        self.io.write_all(&out).await
    }

    /// Flushes pending replies, then reads more input; false at EOF or error.
    async fn fill(&mut self) -> bool {
        if self.flush().await.is_err() {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        match self.io.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.input.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// The next line, with its LF; `None` when the peer is gone.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.input.iter().position(|&b| b == b'\n') {
                return Some(self.input.drain(..=i).collect());
            }
            if self.input.len() > MAX_BUFFER {
                self.violation(format!("no line end in {} octets", self.input.len()));
                return None;
            }
            if !self.fill().await {
                if !self.input.is_empty() {
                    self.violation(format!(
                        "connection ended inside a line: {}",
                        show(&self.input)
                    ));
                }
                return None;
            }
        }
    }

    async fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.input.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.input.drain(..n).collect())
    }

    /// RFC 5321 2.3.8: lines end in CRLF, and CR and LF appear only there.
    fn check_line(&self, line: &[u8], what: &str) {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let crlf = body.ends_with(b"\r");
        if line.ends_with(b"\n") && !crlf {
            self.violation(format!("bare LF ending {what}: {}", show(line)));
        }
        let inner = if crlf { &body[..body.len() - 1] } else { body };
        if inner.contains(&b'\r') {
            self.violation(format!("bare CR in {what}: {}", show(line)));
        }
    }

    async fn run(&mut self) {
        let greeting = self.script(|s| s.greeting.clone());
        self.reply(&greeting);
        let flow = if closes(&greeting) {
            Flow::Close
        } else {
            self.refusing = !is_2xx(&greeting);
            self.commands().await
        };
        let _ = self.flush().await;
        match flow {
            Flow::Go | Flow::Close => match &mut self.io {
                Io::Plain(s) => {
                    let _ = s.shutdown().await;
                }
                Io::Tls(s) => {
                    let _ = s.shutdown().await;
                }
                Io::Gone => {}
            },
            Flow::Reset => {
                if let Some(s) = self.io.tcp() {
                    // A zero linger turns the close into an RST, the way a
                    // crashed or killed server looks to the client.
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
        }
    }

    async fn commands(&mut self) -> Flow {
        loop {
            let Some(line) = self.next_line().await else {
                return Flow::Go;
            };
            self.log_command(&line);
            self.check_line(&line, "a command line");
            let text = String::from_utf8_lossy(strip_eol(&line)).into_owned();
            let (verb, arg) = match text.find(' ') {
                Some(i) => (text[..i].to_ascii_uppercase(), text[i + 1..].to_string()),
                None => (text.to_ascii_uppercase(), String::new()),
            };
            let limit = if verb == "AUTH" {
                MAX_AUTH_LINE
            } else {
                MAX_COMMAND
            };
            if line.len() > limit {
                self.violation(format!(
                    "command line of {} octets (limit {limit}): {}",
                    line.len(),
                    show(&line)
                ));
            }
            // BDAT's chunk follows its line, so its check comes after it.
            if verb != "STARTTLS" && verb != "BDAT" {
                self.check_group(&verb);
            }
            if self.refusing && verb != "QUIT" {
                self.violation(format!("{verb} after a refusing greeting"));
                self.reply("503 5.5.1 No service here, please QUIT");
                continue;
            }
            let flow = match verb.as_str() {
                "EHLO" => self.ehlo(&arg),
                "HELO" => self.helo(&arg),
                "STARTTLS" => self.starttls(&arg).await,
                "AUTH" => self.auth(&arg).await,
                "MAIL" => self.mail(&text),
                "RCPT" => self.rcpt(&text),
                "DATA" => self.data(&arg).await,
                "BDAT" => self.bdat(&arg).await,
                "RSET" => {
                    self.tx = None;
                    self.reply("250 2.0.0 OK");
                    Flow::Go
                }
                "NOOP" => {
                    self.reply("250 2.0.0 OK");
                    Flow::Go
                }
                "QUIT" => {
                    self.reply("221 2.0.0 Bye");
                    Flow::Close
                }
                "VRFY" => {
                    self.reply("252 2.5.2 Cannot VRFY user");
                    Flow::Go
                }
                _ => {
                    self.violation(format!("unknown command: {}", show(&line)));
                    self.reply("500 5.5.2 Command not recognized");
                    Flow::Go
                }
            };
            if !matches!(flow, Flow::Go) {
                return flow;
            }
        }
    }

    /// RFC 2920: without PIPELINING the client waits for each reply; with
    /// it, EHLO, DATA, VRFY, EXPN, TURN, QUIT, NOOP (and AUTH, RFC 4954)
    /// must still end a group. Input already here was sent before the reply
    /// to this command went out, since replies are written before reading.
    fn check_group(&self, verb: &str) {
        if self.input.is_empty() {
            return;
        }
        if !self.offer.pipelining {
            self.violation(format!(
                "more input after {verb} before its reply, without PIPELINING: {}",
                show(&self.input)
            ));
        } else if matches!(
            verb,
            "EHLO" | "HELO" | "DATA" | "VRFY" | "EXPN" | "TURN" | "QUIT" | "NOOP" | "AUTH"
        ) {
            self.violation(format!(
                "{verb} not last in a pipelined group, followed by {}",
                show(&self.input)
            ));
        }
    }

    fn reset_session(&mut self) {
        self.tx = None;
        self.helo = None;
        self.offer = Offer::default();
        self.authed = false;
    }

    fn ehlo(&mut self, arg: &str) -> Flow {
        let domain = arg.trim();
        if domain.is_empty() {
            self.violation("EHLO without a domain");
            self.reply("501 5.5.4 EHLO needs a domain");
            return Flow::Go;
        }
        let script = self.script(|s| s.clone());
        if !script.ehlo {
            self.reply("502 5.5.1 EHLO not supported, use HELO");
            return Flow::Go;
        }
        self.tx = None;
        self.helo = Some(domain.to_string());
        let offer = Offer {
            pipelining: script.pipelining,
            size: script.size,
            eightbitmime: script.eightbitmime,
            smtputf8: script.smtputf8,
            chunking: script.chunking,
            starttls: script.starttls && !self.tls,
            // Offered in the clear too, as some servers do: a client must
            // still keep its credentials for TLS.
            auth: script.auth.is_some() && !self.authed,
        };
        let mut lines = vec![format!("{} greets {domain}", self.host)];
        if offer.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(n) = offer.size {
            lines.push(format!("SIZE {n}"));
        }
        if offer.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if offer.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if offer.chunking {
            lines.push("CHUNKING".into());
        }
        if offer.starttls {
            lines.push("STARTTLS".into());
        }
        if offer.auth {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.output
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
        self.offer = offer;
        Flow::Go
    }

    fn helo(&mut self, arg: &str) -> Flow {
        let domain = arg.trim();
        if domain.is_empty() {
            self.violation("HELO without a domain");
            self.reply("501 5.5.4 HELO needs a domain");
            return Flow::Go;
        }
        self.tx = None;
        self.helo = Some(domain.to_string());
        self.offer = Offer::default();
        let host = self.host.clone();
        self.reply(&format!("250 {host}"));
        Flow::Go
    }

    async fn starttls(&mut self, arg: &str) -> Flow {
        if !arg.is_empty() {
            self.violation("STARTTLS with an argument");
            self.reply("501 5.5.4 No arguments allowed");
            return Flow::Go;
        }
        if self.tls {
            self.violation("STARTTLS inside TLS");
            self.reply("503 5.5.1 TLS already active");
            return Flow::Go;
        }
        if !self.offer.starttls {
            self.violation("STARTTLS not offered");
            self.reply("502 5.5.1 STARTTLS not offered");
            return Flow::Go;
        }
        // RFC 3207 4.2 / CVE-2011-0411: anything sent after STARTTLS in the
        // clear must wait for the 220 and is thrown away, never acted on.
        if !self.input.is_empty() {
            self.violation(format!(
                "sent after STARTTLS before the TLS handshake: {}",
                show(&self.input)
            ));
            self.input.clear();
        }
        self.reply("220 2.0.0 Ready to start TLS");
        if let Some(extra) = self.script(|s| s.inject_after_starttls.clone()) {
            self.output.extend_from_slice(&extra);
        }
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Flow::Close;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls().0.clone());
        match acceptor.accept(tcp).await {
            Ok(tls) => {
                self.io = Io::Tls(Box::new(tls));
                self.tls = true;
                // RFC 3207 4.2: the session starts over; the client must EHLO again.
                self.reset_session();
                Flow::Go
            }
            // A client may refuse the certificate: not a breach, just the end.
            Err(_) => Flow::Close,
        }
    }

    /// The next AUTH continuation line, decoded; `Err` carries the reply.
    async fn auth_line(&mut self, prompt: &str) -> Result<Vec<u8>, Option<&'static str>> {
        self.reply(prompt);
        let Some(line) = self.next_line().await else {
            return Err(None);
        };
        self.log_command(&line);
        self.check_line(&line, "an AUTH line");
        if line.len() > MAX_AUTH_LINE {
            self.violation(format!("AUTH line of {} octets", line.len()));
        }
        decode(strip_eol(&line))
    }

    async fn auth(&mut self, arg: &str) -> Flow {
        if !self.offer.auth {
            self.violation("AUTH not offered");
            self.reply("502 5.5.1 AUTH not offered");
            return Flow::Go;
        }
        if !self.tls {
            self.violation("AUTH without TLS");
            self.reply("538 5.7.11 Encryption required for requested authentication mechanism");
            return Flow::Go;
        }
        if self.authed || self.tx.is_some() {
            self.violation("AUTH after AUTH or inside a transaction");
            self.reply("503 5.5.1 Bad sequence of commands");
            return Flow::Go;
        }
        let mut parts = arg.split_whitespace();
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next().map(|s| decode(s.as_bytes()));
        let result = match mech.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => r,
                    None => self.auth_line("334 ").await,
                };
                resp.map(|r| {
                    let mut f = r.split(|&b| b == 0).skip(1);
                    let user = f.next().unwrap_or_default().to_vec();
                    let pass = f.next().unwrap_or_default().to_vec();
                    (user, pass)
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => self.auth_line("334 VXNlcm5hbWU6").await,
                };
                match user {
                    Ok(user) => self
                        .auth_line("334 UGFzc3dvcmQ6")
                        .await
                        .map(|pass| (user, pass)),
                    Err(e) => Err(e),
                }
            }
            _ => {
                self.violation(format!("AUTH mechanism not offered: {mech}"));
                self.reply("504 5.5.4 Unrecognized authentication type");
                return Flow::Go;
            }
        };
        match result {
            Err(None) => Flow::Close,
            Err(Some(reply)) => {
                self.reply(reply);
                Flow::Go
            }
            Ok((user, pass)) => {
                let want = self.script(|s| s.auth.clone());
                let ok = want.is_some_and(|(u, p)| u.as_bytes() == user && p.as_bytes() == pass);
                if ok {
                    self.authed = true;
                    self.reply("235 2.7.0 Authentication successful");
                } else {
                    self.reply("535 5.7.8 Authentication credentials invalid");
                }
                Flow::Go
            }
        }
    }

    /// Splits `MAIL FROM:<path> params` / `RCPT TO:<path> params`, noting
    /// syntax breaches; `None` when unusable.
    fn path_and_params<'a>(
        &self,
        text: &'a str,
        prefix: &str,
    ) -> Option<(&'a str, &'a str, &'a str)> {
        let head = text.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        let arg = &text[prefix.len()..];
        if arg.starts_with(' ') {
            // RFC 5321 4.1.2: no space between the colon and the path.
            self.violation(format!("space after {prefix}"));
        }
        let trimmed = arg.trim_start();
        if !trimmed.starts_with('<') {
            return None;
        }
        let end = trimmed.find('>')?;
        let path = &trimmed[1..end];
        let params = &trimmed[end + 1..];
        if !params.is_empty() && !params.starts_with(' ') {
            return None;
        }
        Some((arg, path, params.trim()))
    }

    fn mail(&mut self, text: &str) -> Flow {
        if self.helo.is_none() {
            self.violation("MAIL before EHLO/HELO");
            self.reply("503 5.5.1 Say hello first");
            return Flow::Go;
        }
        if self.tx.is_some() {
            self.violation("MAIL inside a transaction");
            self.reply("503 5.5.1 Nested MAIL command");
            return Flow::Go;
        }
        let Some((arg, path, params)) = self.path_and_params(text, "MAIL FROM:") else {
            self.violation(format!("MAIL syntax: {text:?}"));
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
            return Flow::Go;
        };
        let (arg, path, params) = (arg.to_string(), path.to_string(), params.to_string());
        if !path.is_empty() && !is_mailbox(&path) {
            self.violation(format!("MAIL path is not an RFC 5321 Mailbox: {path:?}"));
        }
        let script = self.script(|s| (s.auth.is_some(), s.mail_reply.clone()));
        if script.0 && !self.authed {
            self.reply("530 5.7.0 Authentication required");
            return Flow::Go;
        }
        let mut body8 = false;
        let mut smtputf8 = false;
        for p in params.split_whitespace() {
            let (key, value) = p.split_once('=').unwrap_or((p, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => {
                    let Some(limit) = self.offer.size else {
                        self.violation("SIZE= without SIZE offered");
                        continue;
                    };
                    let Ok(n) = value.parse::<u64>() else {
                        self.violation(format!("bad SIZE value {value:?}"));
                        continue;
                    };
                    if limit > 0 && n > limit {
                        self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
                        return Flow::Go;
                    }
                }
                "BODY" if self.offer.eightbitmime => {
                    let v = value.to_ascii_uppercase();
                    if v != "7BIT" && v != "8BITMIME" {
                        self.violation(format!("BODY={value} not offered"));
                    }
                    body8 = v == "8BITMIME";
                }
                "SMTPUTF8" if self.offer.smtputf8 && value.is_empty() => smtputf8 = true,
                "AUTH" if self.offer.auth => {}
                _ => self.violation(format!("MAIL parameter {p} not offered")),
            }
        }
        if !path.is_ascii() && !smtputf8 {
            self.violation(format!("non-ASCII MAIL address without SMTPUTF8: {path:?}"));
        }
        let flow = self.scripted(&script.1);
        if is_2xx(&script.1) {
            self.tx = Some(Tx {
                mail_from: arg,
                body8,
                smtputf8,
                rcpt: Vec::new(),
                rcpt_tried: false,
                bdat: None,
            });
        }
        flow
    }

    fn rcpt(&mut self, text: &str) -> Flow {
        let Some(tx) = &self.tx else {
            // A pipelined RCPT after a refused MAIL is fine (RFC 2920 3.1).
            if !self.offer.pipelining {
                self.violation("RCPT without MAIL");
            }
            self.reply("503 5.5.1 Need MAIL first");
            return Flow::Go;
        };
        let smtputf8 = tx.smtputf8;
        let Some((_, path, params)) = self.path_and_params(text, "RCPT TO:") else {
            self.violation(format!("RCPT syntax: {text:?}"));
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
            return Flow::Go;
        };
        let (path, params) = (path.to_string(), params.to_string());
        if !is_mailbox(&path) && !path.eq_ignore_ascii_case("postmaster") {
            self.violation(format!("RCPT path is not an RFC 5321 Mailbox: {path:?}"));
        }
        for p in params.split_whitespace() {
            self.violation(format!("RCPT parameter {p} not offered"));
        }
        if !path.is_ascii() && !smtputf8 {
            self.violation(format!("non-ASCII RCPT address without SMTPUTF8: {path:?}"));
        }
        let reply = self.script(|s| {
            s.rcpt_replies
                .get(&path.to_lowercase())
                .cloned()
                .unwrap_or_else(|| "250 2.1.5 OK".into())
        });
        let tx = self.tx.as_mut().unwrap();
        tx.rcpt_tried = true;
        if is_2xx(&reply) {
            tx.rcpt.push(path);
        }
        self.scripted(&reply)
    }

    /// Checks a transaction can take message data; queues the refusal if not.
    fn ready_for_data(&mut self, verb: &str) -> bool {
        let pipelining = self.offer.pipelining;
        match &self.tx {
            None => {
                if !pipelining {
                    self.violation(format!("{verb} without MAIL"));
                }
                self.reply("503 5.5.1 Need MAIL first");
                false
            }
            Some(tx) if tx.rcpt.is_empty() => {
                // Pipelined clients learn of refused RCPTs only now; others knew.
                if !pipelining {
                    let why = if tx.rcpt_tried {
                        "after every RCPT was refused"
                    } else {
                        "without RCPT"
                    };
                    self.violation(format!("{verb} {why}"));
                }
                self.reply("554 5.5.1 No valid recipients");
                false
            }
            Some(_) => true,
        }
    }

    async fn data(&mut self, arg: &str) -> Flow {
        if !arg.is_empty() {
            self.violation("DATA with an argument");
            self.reply("501 5.5.4 No arguments allowed");
            return Flow::Go;
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            self.violation("DATA after BDAT");
            self.reply("503 5.5.1 BDAT in progress");
            return Flow::Go;
        }
        if !self.ready_for_data("DATA") {
            return Flow::Go;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        if self.script(|s| s.close_after_data_start) {
            if self.input.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(10), self.fill()).await;
            }
            let _ = self.flush().await;
            return Flow::Reset;
        }
        let mut raw = Vec::new();
        let mut data = Vec::new();
        // The DATA line ended the previous line, so a lone "." first is the end.
        let mut after_crlf = true;
        loop {
            let Some(line) = self.next_line().await else {
                return Flow::Close;
            };
            raw.extend_from_slice(&line);
            if after_crlf && line == b".\r\n" {
                break;
            }
            self.check_line(&line, "message data");
            if line.len() > MAX_DATA_LINE {
                self.violation(format!(
                    "data line of {} octets (limit {MAX_DATA_LINE}): {}",
                    line.len(),
                    show(&line)
                ));
            }
            after_crlf = line.ends_with(b"\r\n");
            // RFC 5321 4.5.2: drop the first dot of any line starting with one.
            data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
        if !self.input.is_empty() && !self.offer.pipelining {
            self.violation(format!(
                "more input after the end of data before its reply, without PIPELINING: {}",
                show(&self.input)
            ));
        }
        self.finish_message(data, raw)
    }

    async fn bdat(&mut self, arg: &str) -> Flow {
        let mut words = arg.split_whitespace();
        let size = words.next().and_then(|w| w.parse::<usize>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            self.violation(format!("BDAT syntax: {arg:?}"));
            self.reply("501 5.5.4 Syntax: BDAT <size> [LAST]");
            // The chunk length is unknown: no way to find the next command.
            return Flow::Close;
        };
        let Some(chunk) = self.take_exact(size).await else {
            return Flow::Close;
        };
        self.check_group("BDAT");
        if !self.offer.chunking {
            self.violation("BDAT without CHUNKING offered");
            self.reply("502 5.5.1 CHUNKING not offered");
            return Flow::Go;
        }
        if !self.ready_for_data("BDAT") {
            return Flow::Go;
        }
        let tx = self.tx.as_mut().unwrap();
        tx.bdat
            .get_or_insert_with(Vec::new)
            .extend_from_slice(&chunk);
        if !last {
            self.reply(&format!("250 2.0.0 {size} octets received"));
            return Flow::Go;
        }
        let body = tx.bdat.take().unwrap_or_default();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let line = &rest[..end];
            self.check_line(line, "BDAT data");
            if line.len() > MAX_DATA_LINE {
                self.violation(format!("BDAT data line of {} octets", line.len()));
            }
            rest = &rest[end..];
        }
        self.finish_message(body.clone(), body)
    }

    fn finish_message(&mut self, data: Vec<u8>, raw: Vec<u8>) -> Flow {
        let tx = self.tx.take().expect("a transaction");
        // RFC 6152: 8-bit content needs BODY=8BITMIME (or SMTPUTF8, RFC 6531).
        if !data.is_ascii() && !tx.body8 && !tx.smtputf8 {
            self.violation("8-bit message data without BODY=8BITMIME");
        }
        let reply = self.script(|s| {
            s.data_replies
                .pop_front()
                .unwrap_or_else(|| "250 2.0.0 queued as FAKE".into())
        });
        let received = Received {
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls,
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt,
            data,
            raw,
            reply: reply.clone(),
        };
        self.shared.log.lock().unwrap().received.push(received);
        self.scripted(&reply)
    }
}

/// Base64 of an AUTH exchange; "*" cancels (RFC 4954 4), "=" is empty.
fn decode(b: &[u8]) -> Result<Vec<u8>, Option<&'static str>> {
    match b {
        b"*" => Err(Some("501 5.0.0 Authentication cancelled")),
        b"=" => Ok(Vec::new()),
        _ => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| Some("501 5.5.2 Cannot decode response")),
    }
}

/// RFC 5321 4.1.2 Mailbox: a Dot-string or a Quoted-string, `@`, a domain
/// or an address literal (non-ASCII allowed, as with SMTPUTF8, RFC 6531).
fn is_mailbox(path: &str) -> bool {
    let local_end = if let Some(rest) = path.strip_prefix('"') {
        // qtextSMTP, or quoted-pairSMTP: a backslash and one printable.
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 2);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, e)) if (' '..='~').contains(&e) => {}
                    _ => return false,
                },
                c if c.is_control() => return false,
                _ => {}
            }
        }
        match end {
            Some(e) => e,
            None => return false,
        }
    } else {
        match path.rfind('@') {
            Some(at) => {
                let dot_string = path[..at].split('.').all(|atom| {
                    !atom.is_empty()
                        && atom.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || "!#$%&'*+-/=?^_`{|}~".contains(c)
                                || !c.is_ascii()
                        })
                });
                if !dot_string {
                    return false;
                }
                at
            }
            None => return false,
        }
    };
    let Some(domain) = path[local_end..].strip_prefix('@') else {
        return false;
    };
    (domain.starts_with('[') && domain.ends_with(']'))
        || (!domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-')))
}
