//! The `tern` binary as a user runs it: serve with a config file, the CLI on
//! the same store while the server runs, SIGKILL right after a 250, and real
//! third-party clients (swaks, Python's smtplib).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{text, Node, BIN};
use common::*;
use mail_parser::MimeHeaders;

/// alice (password `pw-alice`) sends `message` over submission to herself
/// (delivered at once) and to carol@remote.test (which waits in the
/// queue); the 250.
async fn alice_sends_to_alice_and_carol(node: &Node, message: &str) -> Reply {
    let mut c = Client::connect(node.submission).await;
    c.ehlo().await;
    let mut c = c.starttls(&node.cert()).await;
    c.ehlo().await;
    c.auth_plain("alice", "pw-alice", "235").await;
    let r = c
        .mail(
            "alice@example.test",
            &["alice@example.test", "carol@remote.test"],
            message,
        )
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    r
}

#[tokio::test]
async fn sigkill_right_after_250_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path());
    let out = node.tern(&["user", "add", "alice"], Some("pw-alice\n"));
    assert!(out.status.success(), "{}", text(&out));
    node.start().await;

    // One local message and one for a remote domain (which waits in the
    // queue), then SIGKILL the instant the 250 arrives.
    let r = alice_sends_to_alice_and_carol(&node, "Subject: durable\r\n\r\nmust survive\r\n").await;
    let id = r.lines[0].rsplit(' ').next().unwrap().to_string();
    node.kill9();

    // While stopped, the CLI sees the message.
    let show = node.tern(&["queue", "show", &id], None);
    assert!(show.status.success(), "{}", text(&show));
    assert!(text(&show).contains("carol@remote.test"), "{}", text(&show));

    // Whatever was in flight at the kill waits for its next attempt, which
    // was written before it started (a minute for the first); make it due
    // now rather than wait.
    let out = node.tern(&["queue", "retry", &id], None);
    assert!(
        out.status.success() || node.mailbox("alice").len() == 1,
        "{}",
        text(&out)
    );
    node.start().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.mailbox("alice").is_empty() {
        assert!(
            Instant::now() < deadline,
            "local copy never delivered after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = String::from_utf8(node.mailbox("alice")[0].clone()).unwrap();
    assert!(delivered.contains("must survive"));
    // The remote recipient is still queued, with its state, after the restart.
    let list = node.tern(&["queue", "list"], None);
    assert!(text(&list).contains(&id), "{}", text(&list));
    let show = loop {
        let show = text(&node.tern(&["queue", "show", &id], None));
        if show.contains("<alice@example.test>  delivered") || Instant::now() > deadline {
            break show;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(show.contains("<alice@example.test>  delivered"), "{show}");
    assert!(
        show.contains("<carol@remote.test>  deferred")
            || show.contains("<carol@remote.test>  queued"),
        "{show}"
    );
    assert!(node.terminate().success());
}

#[tokio::test]
async fn cli_acts_on_the_running_server_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path());
    node.start().await;
    // A user added while the server runs can log in at once; names are
    // case-insensitive.
    let out = node.tern(&["user", "add", "Bob"], Some("pw-bob\n"));
    assert!(out.status.success(), "{}", text(&out));
    let out = node.tern(&["user", "add", "bob"], Some("pw-bob\n"));
    assert!(
        !out.status.success() && text(&out).contains("already exists"),
        "{}",
        text(&out)
    );
    let out = node.tern(&["user", "add", "../evil"], Some("pw\n"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&node.tern(&["user", "list"], None)).contains("bob"));

    let (server, ca) = (
        node.submission.to_string(),
        node.cert().display().to_string(),
    );
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--server",
            &server,
            "--ca",
            &ca,
            "--from",
            "bob@example.test",
            "--subject",
            "via tern send",
            "--body",
            "hello",
        ];
        args.extend_from_slice(extra);
        node.tern(&args, None)
    };
    let attachment = tmp.path().join("report.bin");
    std::fs::write(&attachment, b"\x00\x01binary attachment\xff").unwrap();
    let attach = attachment.display().to_string();
    let out = send(&[
        "--auth",
        "BOB:pw-bob",
        "--to",
        "bob@example.test",
        "--to",
        "dave@remote.test",
        "--attach",
        &attach,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("250"), "{}", text(&out));
    // Wrong password: exit code 2 and the server's answer.
    let out = send(&["--auth", "bob:nope", "--to", "bob@example.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("5.7.8"), "{}", text(&out));

    let deadline = Instant::now() + Duration::from_secs(15);
    while node.mailbox("bob").is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The attachment arrives intact.
    let msg = node.mailbox("bob").remove(0);
    let parsed = mail_parser::MessageParser::default().parse(&msg).unwrap();
    assert_eq!(parsed.subject(), Some("via tern send"));
    let att = parsed.attachments().next().expect("attachment");
    assert_eq!(att.attachment_name(), Some("report.bin"));
    assert_eq!(att.contents(), b"\x00\x01binary attachment\xff");
    // The remote copy waits; retry and delete act on it.
    let list = text(&node.tern(&["queue", "list"], None));
    let id = list.split_whitespace().next().unwrap().to_string();
    assert_eq!(id.len(), 20, "{list}");
    let out = node.tern(&["queue", "retry", &id], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = node.tern(&["queue", "retry", "--all"], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = node.tern(&["queue", "delete", &id], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&node.tern(&["queue", "list"], None)).contains("queue is empty"));
    let out = node.tern(&["queue", "show", "00000000000000000000"], None);
    assert!(!out.status.success());
    let out = node.tern(&["user", "remove", "bob"], None);
    assert!(out.status.success());
    assert!(node.terminate().success());
}

#[tokio::test]
async fn bad_config_stops_start_up_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    for (text_in, key) in [
        ("[limits]\nmax_recipents = 5\n", "max_recipents"),
        ("[limits]\nmax_message_size = \"big\"\n", "max_message_size"),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"imap\"\n",
            "mode",
        ),
        ("[queue]\nexpire = \"forever\"\n", "expire"),
    ] {
        std::fs::write(&config, text_in).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text_in:?}: {err}");
    }
}

/// Logs written to a pipe (a file, journald, a log shipper) are plain
/// text: no colour escape sequences.
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    // A data directory others may enter gets a warning.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&node.config)
        .arg("serve")
        .env("TERN_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(node.smtp).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status, err)
    })
    .await
    .unwrap();
    let (status, err) = out;
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains(" INFO ") && err.contains("shutting down"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "escape codes in the log: {err:?}");
    assert!(err.contains("open to other users"), "{err}");
}

/// Everything Tern creates is its own user's only: the data directory,
/// the database (password hashes, DKIM keys), queued bodies, delivered
/// mail.
#[tokio::test]
async fn what_tern_creates_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(tmp.path(), "[store]\ninline_body_max = 0\n");
    let out = node.tern(&["user", "add", "alice"], Some("pw-alice\n"));
    assert!(out.status.success(), "{}", text(&out));
    node.start().await;
    alice_sends_to_alice_and_carol(&node, "Subject: private\r\n\r\nfor alice only\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.mailbox("alice").is_empty() {
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = tmp.path().join("data");
    assert_eq!(mode(&data), 0o700, "data_dir");
    assert_eq!(mode(&data.join("tern.db")), 0o600, "tern.db");
    // The remote recipient waits: its body is in the spool.
    let spooled: Vec<_> = std::fs::read_dir(data.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(mode(&spooled[0]), 0o600, "spool file");
    let mailbox = data.join("mail/example.test/alice");
    assert_eq!(mode(&mailbox), 0o700, "mailbox");
    let delivered = std::fs::read_dir(mailbox.join("new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&delivered), 0o600, "delivered message");
    assert!(node.terminate().success());
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Tools CI installs: missing there is a failure, missing on a developer's
/// machine is a skip.
fn require(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{tool} is missing in CI");
    eprintln!("skipping: {tool} not installed");
    false
}

// Multi-threaded: the clients run as blocking child processes while the
// in-process server answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_and_python_smtplib_deliver_byte_exact() {
    let t = TestServer::start().await;
    let body = "From: alice@example.test\r\nTo: alice@example.test\r\nSubject: third-party\r\nMessage-ID: <fixed@example.test>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\nLine one\r\n.dot line\r\n\r\nLast line\r\n";
    let body_file = t.dir.path().join("body.eml");
    // Both clients end the data with CRLF "." CRLF after the last line, so
    // the file leaves out the final CRLF they add.
    std::fs::write(&body_file, body.strip_suffix("\r\n").unwrap()).unwrap();
    let mut expected = 0;
    if require("swaks") {
        let out = Command::new("swaks")
            .args([
                "--server",
                &t.submission().to_string(),
                "--tls",
                "--auth",
                "PLAIN",
            ])
            .args(["--auth-user", USER, "--auth-password", PASSWORD])
            .args(["--from", "alice@example.test", "--to", "alice@example.test"])
            .arg("--data")
            .arg(format!("@{}", body_file.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        expected += 1;
    }
    if require("python3") {
        let script = format!(
            r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
with smtplib.SMTP("127.0.0.1", {port}) as s:
    s.ehlo("python.test")
    s.starttls(context=ctx)
    s.login("{USER}", "{PASSWORD}")
    body = open(sys.argv[2], "rb").read()
    s.sendmail("alice@example.test", ["alice@example.test"], body)
"#,
            port = t.submission().port()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(t.cert_pem())
            .arg(&body_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        expected += 1;
    }
    let msgs = t.wait_mailbox(DOMAIN, "alice", expected).await;
    for m in msgs {
        let m = String::from_utf8(m).unwrap();
        // Byte-exact apart from the headers Tern adds in front.
        let (added, rest) = m.split_at(m.find("From: alice").expect("original headers"));
        assert_eq!(rest, body);
        assert!(added.starts_with("Return-Path: <alice@example.test>\r\nDelivered-To: alice@example.test\r\nReceived: "), "{added}");
        // Message-ID and Date were present, so none were added.
        assert!(
            !added.contains("Message-ID") && !added.contains("Date:"),
            "{added}"
        );
    }
}
