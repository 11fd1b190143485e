//! A `tern` process as a user runs it: its own config file and data
//! directory, started, stopped, or killed with SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::read_maildir;

pub const BIN: &str = env!("CARGO_BIN_EXE_tern");

/// A loopback port no other test in this binary has been given.
fn free_port() -> u16 {
    super::fake_smtp::free_port(&[])
}

pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub submission: SocketAddr,
    /// An SMTP listener that takes AUTH without TLS (loopback scripts).
    pub plain_auth: SocketAddr,
    /// The HTTP API (unless `extra` has its own `[api]`).
    pub api: SocketAddr,
    child: Option<Child>,
}

impl Node {
    pub fn new(dir: &Path) -> Node {
        Node::with_config(dir, "")
    }

    /// A node whose tern.toml ends with `extra` (sections of its own; a
    /// `[dns]` there replaces the default, which points nowhere).
    pub fn with_config(dir: &Path, extra: &str) -> Node {
        let (smtp, submission, smtps) = (free_port(), free_port(), free_port());
        let plain_auth = free_port();
        let api = free_port();
        let api_section = if extra.contains("[api]") {
            String::new()
        } else {
            format!("[api]\nlisten = \"127.0.0.1:{api}\"\n")
        };
        let dns = if extra.contains("[dns]") {
            ""
        } else {
            "[dns]\nnameservers = [\"127.0.0.1:1\"]\ntimeout = \"1s\"\n"
        };
        let config = dir.join("tern.toml");
        std::fs::write(
            &config,
            format!(
                r#"
hostname = "mx.example.test"
data_dir = "{}"
[[listener]]
address = "127.0.0.1:{smtp}"
mode = "smtp"
[[listener]]
address = "127.0.0.1:{submission}"
mode = "submission"
[[listener]]
address = "127.0.0.1:{smtps}"
mode = "smtps"
[[listener]]
address = "127.0.0.1:{plain_auth}"
mode = "smtp"
allow_plaintext_auth = true
[domains]
local = ["example.test"]
{dns}{api_section}{extra}
"#,
                dir.join("data").display()
            ),
        )
        .unwrap();
        Node {
            dir: dir.to_path_buf(),
            config,
            smtp: format!("127.0.0.1:{smtp}").parse().unwrap(),
            submission: format!("127.0.0.1:{submission}").parse().unwrap(),
            plain_auth: format!("127.0.0.1:{plain_auth}").parse().unwrap(),
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            child: None,
        }
    }

    pub fn tern(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    pub async fn start(&mut self) {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("TERN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.smtp).await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// The running server's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    /// The server's exit status, once it has exited.
    #[allow(dead_code)]
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("data/tls/cert.pem")
    }

    pub fn mailbox(&self, user: &str) -> Vec<Vec<u8>> {
        read_maildir(
            &self
                .dir
                .join("data/mail/example.test")
                .join(user)
                .join("new"),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
