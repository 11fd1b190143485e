//! Several nodes on one PostgreSQL database: any node accepts, any node
//! delivers, nothing is delivered twice, and when a node dies holding work
//! another node delivers all of it once the dead node's leases run out.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::node::{text, Node, BIN};
use common::Client;
use tern_store::testkit::ScratchDb;

const MX: &str = "127.0.0.2";

fn node(dir: &Path, db: &ScratchDb, id: &str, dns: &TestDns, port: u16) -> Node {
    Node::with_config(
        dir,
        &format!(
            r#"
[store]
backend = "postgres"
url = "{}"
node_id = "{id}"
[dns]
nameservers = ["{}"]
timeout = "2s"
[delivery]
port = {port}
command_timeout = "30s"
[queue]
retry = ["1s"]
lease = "3s"
"#,
            db.url, dns.addr
        ),
    )
}

/// Submits `n` messages through `node`'s submission port (STARTTLS + AUTH),
/// returning the subjects the server acknowledged with 250.
async fn submit(node: &Node, tag: &str, n: usize) -> Vec<String> {
    let c = Client::connect(node.submission).await;
    let mut c = {
        let mut c = c;
        c.ehlo().await;
        c.starttls(&node.cert()).await
    };
    c.ehlo().await;
    c.auth_plain("alice", "pw", "235").await;
    let mut acked = Vec::new();
    for i in 0..n {
        let subject = format!("{tag}-{i}");
        let r = c
            .mail(
                "alice@example.test",
                &["bob@remote.test"],
                &format!("Subject: {subject}\r\n\r\nbody\r\n"),
            )
            .await;
        assert_eq!(r.code, 250, "{:?}", r.lines);
        acked.push(subject);
    }
    acked
}

/// How many times each subject reached the remote.
fn deliveries(fake: &FakeSmtp) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in fake.received() {
        let text = String::from_utf8_lossy(&r.data).to_string();
        if let Some(s) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(s.trim().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

async fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_queue_and_deliver_each_message_once() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let ip: IpAddr = MX.parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = node(da.path(), &db, "node-a", &dns, port);
    let mut b = node(db_dir.path(), &db, "node-b", &dns, port);
    a.start().await;
    b.start().await;
    // One user, added through node A's CLI, logs in on both: accounts are shared.
    let out = a.tern(&["user", "add", "alice"], Some("pw\n"));
    assert!(out.status.success(), "{}", text(&out));

    let mut acked = submit(&a, "via-a", 15).await;
    acked.extend(submit(&b, "via-b", 15).await);
    wait_for(30, "all deliveries", || {
        deliveries(&fake).len() == acked.len()
    })
    .await;
    // Give a duplicate time to show up, if there were to be one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = deliveries(&fake);
    for s in &acked {
        assert_eq!(
            seen.get(s),
            Some(&1),
            "{s} delivered {:?} times",
            seen.get(s)
        );
    }
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // A message too large to hold in memory: received into a file on
    // node B, stored in the database a piece at a time (three pieces),
    // and delivered byte for byte by whichever node takes it.
    let mut large = String::from("From: alice@example.test\r\nSubject: large-one\r\n\r\n");
    let mut n = 0;
    while large.len() < (5 << 20) / 2 {
        n += 1;
        large.push_str(&format!("{n:08} sphinx of black quartz, judge my vow\r\n"));
    }
    let mut c = Client::connect(b.submission).await;
    c.ehlo().await;
    let mut c = c.starttls(&b.cert()).await;
    c.ehlo().await;
    c.auth_plain("alice", "pw", "235").await;
    let r = c
        .mail("alice@example.test", &["bob@remote.test"], &large)
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    wait_for(30, "the large message", || {
        deliveries(&fake).contains_key("large-one")
    })
    .await;
    let got = fake
        .received()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.data).contains("Subject: large-one"))
        .unwrap();
    assert!(got.data.ends_with(large.as_bytes()), "delivered intact");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_work_is_delivered_by_another_after_its_leases_expire() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let ip: IpAddr = MX.parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    // The remote accepts connections and never answers: node A's attempts
    // hang, holding their leases.
    let blackhole = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            conns.push(s);
        }
    });
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = node(da.path(), &db, "node-a", &dns, port);
    a.start().await;
    let out = a.tern(&["user", "add", "alice"], Some("pw\n"));
    assert!(out.status.success(), "{}", text(&out));
    let acked = submit(&a, "orphan", 10).await;

    // Wait until A has claimed every one of them, then kill it.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leased: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM recipients WHERE leased_by = 'node-a'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if leased == acked.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "node A claimed only {leased}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.kill9();
    held.abort();
    let _ = held.await;

    // The remote is healthy again; node B starts and, once A's leases have
    // run out, delivers everything A had acknowledged.
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let mut b = node(db_dir.path(), &db, "node-b", &dns, port);
    b.start().await;
    wait_for(40, "node B to deliver node A's messages", || {
        deliveries(&fake).len() == acked.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = deliveries(&fake);
    for s in &acked {
        assert_eq!(seen.get(s), Some(&1), "{s}: {seen:?}");
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM recipients WHERE status <> 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
    pool.close().await;
    assert!(b.terminate().success());
    db.drop_db().await;
}

/// Nodes named alike would end each other's leases when they start: a
/// second node with a running node's name is refused, naming the setting,
/// and starts once the first has stopped.
#[tokio::test]
async fn a_second_node_with_the_same_name_is_refused() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = node(da.path(), &db, "mx", &dns, 2525);
    let mut b = node(db_dir.path(), &db, "mx", &dns, 2525);
    a.start().await;

    let mut second = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&b.config)
        .arg("serve")
        .env("TERN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second node with the same name started");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("node name \"mx\" is in use by another running node")
            && err.contains("node_id"),
        "{err}"
    );

    // Once the first is gone, its name is free.
    assert!(a.terminate().success());
    b.start().await;
    assert!(b.terminate().success());
}
