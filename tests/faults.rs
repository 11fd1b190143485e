//! Faults with nothing lost: a full disk (a small tmpfs), a free-space
//! floor, damaged queue entries set aside, and SIGTERM.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::node::Node;
use common::*;
use tern_core::config::HumanDuration;

/// A tmpfs of `mib` MiB, unmounted on drop; `None` where mounting is not
/// allowed (not root) outside CI.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        // One mount per test, however many run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tern-disk-{}-{n}-{mib}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to mount a tmpfs"
            );
            eprintln!("skipping: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Fills the disk until only about `leave` octets are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let free = free_bytes(&self.0);
        let size = free.saturating_sub(leave);
        let f = std::fs::File::create(&filler).unwrap();
        // Written, not just sized: tmpfs counts pages actually used.
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let block = vec![7u8; 64 * 1024];
        let mut written = 0;
        while written + block.len() as u64 <= size {
            if w.write_all(&block).is_err() {
                break;
            }
            written += block.len() as u64;
        }
        let _ = w.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn free_bytes(p: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn session(t: &TestServer) -> Client {
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c
}

#[tokio::test]
async fn full_disk_answers_452_at_mail_and_451_in_data_then_recovers() {
    let Some(disk) = SmallDisk::mount(8) else {
        return;
    };
    let data = disk.path().join("data");
    let t = TestServer::start_with(move |c| {
        c.data_dir = data;
        c.limits.min_free_space = 1024 * 1024;
    })
    .await;

    // Below the floor: refused at MAIL, politely, and the session goes on.
    let filler = disk.fill(512 * 1024);
    let mut c = session(&t).await;
    c.cmd("MAIL FROM:<bob@remote.test>", "452 4.3.1").await;
    c.cmd("NOOP", "250").await;
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            "Subject: space again\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(
        r.code, 250,
        "recovers by itself once space returns: {:?}",
        r.lines
    );

    // The disk fills up during DATA (a floor of zero lets MAIL through).
    drop(c);
    t.wait_mailbox(DOMAIN, "alice", 1).await;
    let mut t = t;
    t.stop().await;
    t.config.limits.min_free_space = 0;
    t.restart().await;
    let filler = disk.fill(200 * 1024);
    let mut c = session(&t).await;
    let line = format!("{}\r\n", "y".repeat(76));
    let big = format!("Subject: too big for the disk\r\n\r\n{}", line.repeat(8000));
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &big)
        .await;
    assert!(r.lines[0].starts_with("451 4.3"), "{:?}", r.lines);
    assert_eq!(t.queued().await, 0, "nothing half-written is queued");
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &big)
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    t.wait_mailbox(DOMAIN, "alice", 2).await;
    t.stop().await;
}

/// The disk fills while a large message is being written to its file:
/// the rest of the data is read and dropped, the client hears 451 4.3.1
/// (try again), the space comes back at once (the file has no name), and
/// the same session sends the message once there is room.
#[tokio::test]
async fn full_disk_while_receiving_a_large_message_answers_451_and_frees_the_file() {
    let Some(disk) = SmallDisk::mount(8) else {
        return;
    };
    let data = disk.path().join("data");
    let t = TestServer::start_with(move |c| {
        c.data_dir = data;
        c.limits.min_free_space = 0;
    })
    .await;
    let line = format!("{}\r\n", "z".repeat(76));
    let big = format!(
        "Subject: larger than the room left\r\n\r\n{}",
        line.repeat(40_000)
    );
    let filler = disk.fill(3 << 19);
    let free_before = free_bytes(disk.path());
    let mut c = session(&t).await;
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &big)
        .await;
    assert!(r.lines[0].starts_with("451 4.3.1"), "{:?}", r.lines);
    assert_eq!(t.queued().await, 0, "nothing half-written is queued");
    eventually(5, || free_bytes(disk.path()) + 64 * 1024 >= free_before).await;
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &big)
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(msgs[0].ends_with(big.as_bytes()));

    // Over BDAT the chunk during which the disk filled is answered 451 at
    // once, and the rest of the transaction is refused until RSET.
    t.wait_queue_empty().await;
    eventually(10, || t.spool_files() == 0).await;
    let filler = disk.fill(3 << 19);
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    let chunk = big.as_bytes()[..1 << 20].to_vec();
    let mut replies = Vec::new();
    for last in ["", "", " LAST"] {
        let mut command = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
        command.extend_from_slice(&chunk);
        c.send(&command).await;
        replies.push(c.read().await.lines[0].clone());
    }
    assert!(replies[0].starts_with("250 2.0.0"), "{replies:?}");
    assert!(replies[1].starts_with("451 4.3.1"), "{replies:?}");
    assert!(replies[2].starts_with("503 5.5.1"), "{replies:?}");
    c.cmd("RSET", "250").await;
    assert_eq!(t.queued().await, 0);
    std::fs::remove_file(&filler).unwrap();
    let mut t = t;
    t.stop().await;
}

#[tokio::test]
async fn damaged_queue_entries_are_set_aside_and_the_rest_delivered() {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let mut script = Script::default();
    for who in ["good", "cut", "gone"] {
        script
            .rcpt_replies
            .insert(format!("{who}@remote.test"), "451 4.3.0 not yet".into());
    }
    let fake = FakeSmtp::start(ip, port, script).await;
    let dns_addr = dns.addr;
    let mut t = TestServer::start_with(move |c| {
        c.dns.nameservers = vec![dns_addr];
        c.delivery.port = port;
        c.queue.retry = vec![HumanDuration(Duration::from_secs(3600))];
        // The damage below is done to spool files.
        c.store.inline_body_max = 0;
    })
    .await;
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    let mut ids = Vec::new();
    for who in ["good", "cut", "gone"] {
        let r = c
            .mail(
                "alice@example.test",
                &[&format!("{who}@remote.test")],
                &format!("Subject: {who}\r\n\r\nbody of {who}\r\n"),
            )
            .await;
        ids.push(r.lines[0].rsplit(' ').next().unwrap().to_string());
    }
    common::eventually(15, || {
        fake.commands()
            .iter()
            .filter(|c| c.starts_with("RCPT"))
            .count()
            >= 3
    })
    .await;
    t.stop().await;

    // Damage two entries while the server is down: one truncated, one gone.
    let spool = t.dir.path().join("spool");
    let cut = spool.join(&ids[1]);
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::remove_file(spool.join(&ids[2])).unwrap();

    fake.set_script(|s| s.rcpt_replies.clear());
    t.restart().await;
    t.server()
        .store
        .retry_now(None, tern_core::unix_now())
        .await
        .unwrap();
    let got = fake.wait_received(1, 15).await;
    assert_eq!(got[0].rcpt_to, ["good@remote.test"]);
    for (id, why) in [(&ids[1], "octets"), (&ids[2], "missing")] {
        let id = id.parse().unwrap();
        let mut state = String::new();
        for _ in 0..100 {
            let m = t.server().store.get_message(id).await.unwrap().unwrap();
            state = format!("{:?}", m.recipients[0].status);
            if state.contains("quarantined") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            state.contains("quarantined") && state.contains(why),
            "{state}"
        );
    }
    assert!(
        t.dir.path().join("quarantine").join(&ids[1]).exists(),
        "the truncated body is kept"
    );
    assert_eq!(fake.received().len(), 1, "nothing damaged was sent");
    assert!(
        t.mailbox(DOMAIN, "alice").is_empty(),
        "no bounce for a damaged entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_421_to_open_sessions_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path());
    node.start().await;
    let mut c = Client::connect(node.smtp).await;
    c.cmd("EHLO client.test", "250").await;
    let status = tokio::task::spawn_blocking(move || {
        let s = node.terminate();
        (s, node)
    });
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    let (status, _node) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
}
