//! The test kit: a whole Tern server in-process on free loopback ports with
//! a temporary data directory, and a raw SMTP client that reads like a
//! transcript: `c.cmd("RCPT TO:<x@y>", "550 5.7.1").await`.

#![allow(dead_code)]

pub mod dns;
pub mod fake_smtp;
pub mod node;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::Server;
use tern_core::config::ListenerConfig;
use tern_core::{Config, ListenerMode};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "example.test";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

/// A config on free ports: SMTP, submission, SMTPS, and an SMTP listener
/// that allows AUTH without TLS (for plain-socket tests of AUTH itself).
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        hostname: "mx.example.test".into(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let l = |mode, allow_plaintext_auth| ListenerConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        mode,
        allow_plaintext_auth,
    };
    config.listener = vec![
        l(ListenerMode::Smtp, false),
        l(ListenerMode::Submission, false),
        l(ListenerMode::Smtps, false),
        l(ListenerMode::Smtp, true),
    ];
    config.domains.local = Some(vec![DOMAIN.into()]);
    // Tests never ask the machine's resolver: nothing answers on this
    // loopback port, so remote domains defer at once unless a test points
    // `dns.nameservers` at its own TestDns.
    config.dns.nameservers = vec!["127.0.0.1:1".parse().unwrap()];
    config.dns.timeout = tern_core::config::HumanDuration(std::time::Duration::from_secs(1));
    // SPF/DKIM/DMARC of inbound mail need DNS; the tests that check them
    // turn them on with a TestDns.
    config.inbound.checks = false;
    // Many servers run at once: each gets its own HTTP port.
    config.api.listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_init();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        let hash = tern_auth::hash_password(PASSWORD).unwrap();
        server.store.add_user(USER, &hash, 0).await.unwrap();
        TestServer {
            server: Some(server),
            dir,
            config,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn nth(&self, mode: ListenerMode, n: usize) -> SocketAddr {
        self.server()
            .listeners
            .iter()
            .filter(|(m, _)| *m == mode)
            .nth(n)
            .map(|(_, a)| *a)
            .expect("listener")
    }

    pub fn smtp(&self) -> SocketAddr {
        self.nth(ListenerMode::Smtp, 0)
    }
    pub fn submission(&self) -> SocketAddr {
        self.nth(ListenerMode::Submission, 0)
    }
    pub fn smtps(&self) -> SocketAddr {
        self.nth(ListenerMode::Smtps, 0)
    }
    /// SMTP listener that offers AUTH without TLS.
    pub fn smtp_plain_auth(&self) -> SocketAddr {
        self.nth(ListenerMode::Smtp, 1)
    }

    /// The HTTP API's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn api_url(&self) -> String {
        let addr = self.server().api.expect("the HTTP API is on");
        format!("http://{addr}")
    }

    /// A new API key of this scope (`send`, `read` or `admin`), named
    /// `NAME`, as `tern key create` would make it.
    pub async fn api_key(&self, name: &str, scope: &str) -> String {
        let scope = tern_auth::keys::Scope::parse(scope).expect("send, read or admin");
        let (record, key) = tern_auth::keys::generate(name, scope, tern_core::unix_now());
        self.server().store.add_api_key(&record).await.unwrap();
        key
    }

    pub fn cert_pem(&self) -> PathBuf {
        self.config.data_dir.join("tls/cert.pem")
    }

    pub fn maildir(&self, domain: &str, user: &str) -> PathBuf {
        self.config
            .data_dir
            .join("mail")
            .join(domain)
            .join(user)
            .join("new")
    }

    /// Messages in a mailbox's new/ folder, oldest first.
    pub fn mailbox(&self, domain: &str, user: &str) -> Vec<Vec<u8>> {
        read_maildir(&self.maildir(domain, user))
    }

    /// Waits until the mailbox holds `n` messages, and returns them.
    pub async fn wait_mailbox(&self, domain: &str, user: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.mailbox(domain, user);
            if m.len() >= n || Instant::now() > deadline {
                assert_eq!(m.len(), n, "messages in {domain}/{user}");
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages in the queue with recipients pending.
    /// Waits (10 s at most) until no message is pending: a delivery's
    /// result is recorded shortly after the delivery itself.
    pub async fn wait_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.queued().await > 0 {
            assert!(Instant::now() < deadline, "the queue did not empty in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn queued(&self) -> usize {
        self.server()
            .store
            .list_messages(10_000)
            .await
            .unwrap()
            .len()
    }

    /// Files in the spool (bodies of messages not yet final).
    /// Message bodies in the spool (`.free/`, released files kept for
    /// reuse, is not one).
    pub fn spool_files(&self) -> usize {
        std::fs::read_dir(self.config.data_dir.join("spool"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
                })
                .count()
            })
            .unwrap_or(0)
    }

    /// Stops the server and starts a new one on the same data directory
    /// (listeners get new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

pub fn read_maildir(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn tracing_init() -> Result<(), ()> {
    let filter = std::env::var("TERN_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init()
        .map_err(|_| ())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw SMTP client over a real socket.
pub struct Client {
    io: BufReader<Box<dyn Stream>>,
    cert: Option<PathBuf>,
}

/// A full reply: code and its lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_silent(addr).await;
        c.expect("220").await;
        c
    }

    /// Connects without reading anything.
    pub async fn connect_silent(addr: SocketAddr) -> Client {
        Client::try_connect_silent(addr).await.expect("connect")
    }

    /// As `connect_silent`, for a server that may be down.
    #[allow(dead_code)]
    pub async fn try_connect_silent(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        Ok(Client {
            io: BufReader::new(Box::new(s)),
            cert: None,
        })
    }

    /// Connects with TLS from the first byte, trusting `cert`.
    pub async fn connect_tls(addr: SocketAddr, cert: &Path) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        let tls = tls_connect(s, cert).await;
        let mut c = Client {
            io: BufReader::new(Box::new(tls)),
            cert: Some(cert.to_path_buf()),
        };
        c.expect("220").await;
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write");
    }

    /// As `send`, for a server that may go away while it reads.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        self.io.get_mut().flush().await
    }

    /// Reads one reply (all its lines); panics on EOF or after 10 s.
    pub async fn read(&mut self) -> Reply {
        self.try_read().await.expect("a reply before EOF")
    }

    /// Reads one reply, or `None` at EOF.
    pub async fn try_read(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("reply within 10 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply line ends in CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Reads a reply and checks it starts with `prefix` (e.g. "250 2.1.5").
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        let r = self.read().await;
        let last = r.lines.last().unwrap();
        assert!(
            last.starts_with(prefix) || r.lines[0].starts_with(prefix),
            "expected {prefix:?}, got {:?}",
            r.lines
        );
        r
    }

    /// Sends a command line (CRLF added) and checks the reply.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(&mut self.io, &mut buf)
            )
            .await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// STARTTLS, then the TLS handshake, trusting `cert`.
    pub async fn starttls(self, cert: &Path) -> Client {
        let mut c = self;
        c.cmd("STARTTLS", "220 2.0.0").await;
        let inner = c.io.into_inner();
        let tls = tls_connect(inner, cert).await;
        Client {
            io: BufReader::new(Box::new(tls)),
            cert: Some(cert.to_path_buf()),
        }
    }

    /// The TLS handshake after a 220 to STARTTLS was already read.
    pub async fn tls_after_220(self, cert: &Path) -> Client {
        let inner = self.io.into_inner();
        let tls = tls_connect(inner, cert).await;
        Client {
            io: BufReader::new(Box::new(tls)),
            cert: Some(cert.to_path_buf()),
        }
    }

    /// EHLO, and the extension lines.
    pub async fn ehlo(&mut self) -> Vec<String> {
        self.cmd("EHLO client.test", "250").await.lines
    }

    pub async fn auth_plain(&mut self, user: &str, pass: &str, expect: &str) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.cmd(&format!("AUTH PLAIN {b64}"), expect).await;
    }

    /// A whole transaction with DATA; returns the final reply.
    pub async fn mail(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
        self.send(body.as_bytes()).await;
        self.send(b".\r\n").await;
        self.read().await
    }
}

async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    cert: &Path,
) -> tokio_rustls::client::TlsStream<S> {
    tern_smtp::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, s).await.expect("TLS handshake")
}

/// Waits until `f` is true (polling), or panics after `secs`.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "condition not met in {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
