//! The database goes away under load and comes back: the node answers 451
//! while it is away, reconnects by itself, and loses nothing it
//! acknowledged. In a test binary of its own: restarting the cluster would
//! disturb any other test running beside it.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::*;
use tern_core::config::{Backend, HumanDuration};
use tern_store::testkit::ScratchDb;

/// `pg_ctlcluster VERSION NAME action` on the machine's first cluster.
fn pg_ctl(action: &str) -> bool {
    let Ok(list) = std::process::Command::new("pg_lsclusters")
        .arg("-h")
        .output()
    else {
        return false;
    };
    let list = String::from_utf8_lossy(&list.stdout);
    let mut first = list.lines().next().unwrap_or("").split_whitespace();
    let (Some(version), Some(name)) = (first.next(), first.next()) else {
        return false;
    };
    std::process::Command::new("pg_ctlcluster")
        .args([version, name, action])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether this machine's cluster can be stopped and started here; CI
/// must be able to.
fn can_restart_postgres() -> bool {
    if pg_ctl("status") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must be able to run pg_ctlcluster"
    );
    eprintln!("skipping: cannot control the PostgreSQL cluster");
    false
}

#[derive(Default)]
struct Tally {
    acked: BTreeSet<String>,
    refused_451: usize,
}

/// One client sending messages until `until`, reconnecting as needed.
async fn client(t: std::net::SocketAddr, who: usize, until: Instant, tally: Arc<Mutex<Tally>>) {
    let mut n = 0;
    'reconnect: while Instant::now() < until {
        let Ok(stream) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(t)).await
        else {
            continue;
        };
        drop(stream);
        let mut c = Client::connect(t).await;
        c.ehlo().await;
        // AUTH reads the store: while it is away the answer is 454; wait.
        loop {
            c.send(auth_line().as_bytes()).await;
            let Some(r) = c.try_read().await else {
                continue 'reconnect;
            };
            if r.code == 235 {
                break;
            }
            assert_eq!(r.code, 454, "{:?}", r.lines);
            tokio::time::sleep(Duration::from_millis(200)).await;
            if Instant::now() >= until {
                return;
            }
        }
        while Instant::now() < until {
            let subject = format!("c{who}-{n}");
            c.cmd("MAIL FROM:<alice@example.test>", "250").await;
            c.cmd("RCPT TO:<bob@remote.test>", "250").await;
            c.cmd("DATA", "354").await;
            c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes())
                .await;
            let Some(r) = c.try_read().await else {
                continue 'reconnect;
            };
            match r.code {
                250 => {
                    tally.lock().unwrap().acked.insert(subject);
                    n += 1;
                }
                451 => {
                    tally.lock().unwrap().refused_451 += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("unexpected {other}: {:?}", r.lines),
            }
        }
        c.cmd("QUIT", "221").await;
    }
}

fn auth_line() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    format!("AUTH PLAIN {b64}\r\n")
}

/// The tests here restart the cluster: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load_loses_nothing_acknowledged() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    if !can_restart_postgres() {
        return;
    }
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let (url, dns_addr) = (db.url.clone(), dns.addr);
    let t = TestServer::start_with(move |c| {
        c.store.backend = Backend::Postgres;
        c.store.url = Some(url);
        c.store.node_id = Some("node-a".into());
        c.dns.nameservers = vec![dns_addr];
        c.delivery.port = port;
        c.queue.retry = vec![HumanDuration(Duration::from_secs(1))];
    })
    .await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let until = Instant::now() + Duration::from_secs(16);
    let clients: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client(t.smtp_plain_auth(), i, until, tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pg_ctl("stop"), "stopping PostgreSQL");
    // Longer than a commit waits for a connection (5 s), so sessions are
    // told 451 rather than kept waiting.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(pg_ctl("start"), "starting PostgreSQL");
    for c in clients {
        c.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.refused_451 > 0,
        "no client was told 451 while the database was away"
    );
    assert!(
        tally.acked.len() > 20,
        "too little load: {}",
        tally.acked.len()
    );

    // Everything acknowledged arrives, before or after the outage.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = fake
            .received()
            .iter()
            .filter_map(|r| {
                String::from_utf8_lossy(&r.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(|s| s.trim().to_string()))
            })
            .collect();
        let lost: Vec<&String> = tally.acked.difference(&seen).collect();
        if lost.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never arrived: {lost:?}",
            lost.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "acked {}, refused with 451 {}",
        tally.acked.len(),
        tally.refused_451
    );
    drop(t);
    db.drop_db().await;
}

/// A node whose name another node takes while the database restarts (two
/// nodes given one `node_id`) claims no work once it has lost the
/// connection holding its name, and stops when it cannot take the name
/// back; the other node runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_name_is_taken_during_a_database_restart_stops() {
    use common::node::Node;
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    if !can_restart_postgres() {
        return;
    }
    let config = format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{}\"\nnode_id = \"same\"\n",
        db.url
    );
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Node::with_config(da.path(), &config);
    let mut b = Node::with_config(db_dir.path(), &config);
    a.start().await;
    // A is frozen while the database restarts (its session, and the name
    // with it, end), and B takes the name meanwhile.
    let pid = a.pid();
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    assert!(pg_ctl("restart"), "restarting PostgreSQL");
    b.start().await;
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = a.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "A still runs without its name");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "A stops with an error: {status}");
    assert!(b.try_wait().is_none(), "B runs on");
    assert!(b.terminate().success());
}
