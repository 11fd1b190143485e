//! The store contract, checked against the embedded backend. Every backend
//! must pass these (the PostgreSQL one will run the same functions).

use std::sync::Arc;

use tern_core::{Address, DeliveryStatus, Envelope, MessageId, RetryPolicy};
use tern_store::{NewMessage, Outcome, RecipientResult, SqliteStore, Store};

fn message(rcpts: &[&str], now: i64) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        envelope: Envelope {
            sender: Some(Address::parse("alice@example.test").unwrap()),
            recipients: rcpts.iter().map(|r| Address::parse(r).unwrap()).collect(),
        },
        body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
        created_at: now,
        auth_user: None,
    }
}

async fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir).await.unwrap())
}

/// Runs one case against both backends: the embedded store in a temporary
/// directory, and PostgreSQL in a scratch database.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(super::open(dir.path()).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = tern_store::testkit::ScratchDb::create().await else { return };
                    let store = tern_store::PgStore::connect(&db.url, "node-a").await.unwrap();
                    super::$case(std::sync::Arc::new(store)).await;
                    db.drop_db().await;
                }
            )*
        }
    };
}

both_backends!(
    commit_claim_record_release,
    retry_and_delete,
    concurrent_commits_all_survive,
    users,
    leases_keep_in_flight_work_from_being_claimed_twice,
    two_claimers_never_share_a_recipient,
    large_body_round_trips,
    domains_and_keys,
    quarantine_sets_a_message_aside,
);

async fn commit_claim_record_release(store: Arc<dyn Store>) {
    let policy = RetryPolicy::default();
    let m = message(&["a@x.test", "b@y.test"], 100);
    let id = m.id;
    store.commit_message(m).await.unwrap();
    assert_eq!(
        store.read_body(id).await.unwrap(),
        b"Subject: t\r\n\r\nbody\r\n"
    );
    assert_eq!(store.next_due().await.unwrap(), Some(100));

    // Nothing is due before its time; claiming moves the next attempt ahead.
    assert!(store
        .claim_due(99, 160, &policy, 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.claim_due(100, 160, &policy, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].sender, "alice@example.test");
    assert_eq!(due[0].domain, "x.test");
    assert!(
        store
            .claim_due(100, 160, &policy, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed twice"
    );
    // The next attempt (first retry: 1 minute) was written before this one.
    assert_eq!(store.next_due().await.unwrap(), Some(160));

    let r = |idx: u32, address: &str, outcome| RecipientResult {
        message_id: id,
        idx,
        address: address.into(),
        outcome,
        at: 101,
        warned: false,
    };
    let done = store
        .record_results(&[
            r(
                0,
                "a@x.test",
                Outcome::Delivered {
                    reply: "250 ok".into(),
                },
            ),
            r(
                1,
                "b@y.test",
                Outcome::Deferred {
                    reason: "451 later".into(),
                    retry_at: 400,
                },
            ),
        ])
        .await
        .unwrap();
    assert!(done.is_empty());
    let q = store.get_message(id).await.unwrap().unwrap();
    assert_eq!(
        q.recipients[0].status,
        DeliveryStatus::Delivered {
            reply: "250 ok".into()
        }
    );
    assert_eq!(
        q.recipients[1].status,
        DeliveryStatus::Deferred {
            reason: "451 later".into()
        }
    );
    assert_eq!(q.recipients[1].attempts, 1);
    assert_eq!(q.recipients[1].next_attempt, 400);
    assert_eq!(store.list_messages(10).await.unwrap().len(), 1);

    let done = store
        .record_results(&[r(
            1,
            "b@y.test",
            Outcome::Failed {
                reason: "550 no".into(),
            },
        )])
        .await
        .unwrap();
    assert_eq!(done, vec![id]);
    // Released once the final state is durable (the embedded store batches
    // that every half second).
    let mut released = false;
    for _ in 0..40 {
        if store.read_body(id).await.is_err() {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(released, "body released");
    assert!(store.list_messages(10).await.unwrap().is_empty());
    let kinds: Vec<String> = store
        .message_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["accepted", "accepted", "delivered", "deferred", "failed"]
    );
}

async fn retry_and_delete(store: Arc<dyn Store>) {
    let m = message(&["a@x.test"], 100);
    let id = m.id;
    store.commit_message(m).await.unwrap();
    store
        .claim_due(100, 10_000, &RetryPolicy::default(), 10)
        .await
        .unwrap();
    assert_eq!(store.retry_now(Some(id), 200).await.unwrap(), 1);
    assert_eq!(store.next_due().await.unwrap(), Some(200));
    assert_eq!(store.retry_now(None, 300).await.unwrap(), 1);
    assert_eq!(store.sweep().await.unwrap(), 0, "nothing to sweep");
    assert!(store.read_body(id).await.is_ok(), "committed body kept");

    assert!(store.delete_message(id).await.unwrap());
    assert!(!store.delete_message(id).await.unwrap());
    assert!(store.get_message(id).await.unwrap().is_none());
    assert!(store.read_body(id).await.is_err());
}

async fn concurrent_commits_all_survive(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let m = message(&[&format!("u{i}@x.test")], 100);
            let id = m.id;
            store.commit_message(m).await.unwrap();
            id
        }));
    }
    for t in tasks {
        let id = t.await.unwrap();
        assert!(store.get_message(id).await.unwrap().is_some());
    }
    assert_eq!(store.list_messages(1000).await.unwrap().len(), 64);
}

/// Claims racing from many tasks (as from several nodes) split the work:
/// every recipient is claimed exactly once.
async fn two_claimers_never_share_a_recipient(store: Arc<dyn Store>) {
    for i in 0..40 {
        store
            .commit_message(message(&[&format!("u{i}@x.test"), "v@y.test"], 100))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_due(100, 10_000, &RetryPolicy::default(), 7)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| (d.message_id, d.idx)));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a recipient was claimed twice");
    assert_eq!(n, 80);
}

/// Bodies larger than one storage chunk come back byte for byte.
async fn large_body_round_trips(store: Arc<dyn Store>) {
    let mut m = message(&["a@x.test"], 100);
    m.body = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    let (id, body) = (m.id, m.body.clone());
    store.commit_message(m).await.unwrap();
    assert_eq!(store.read_body(id).await.unwrap(), body);
    assert_eq!(
        store.get_message(id).await.unwrap().unwrap().size,
        3_500_000
    );
}

async fn domains_and_keys(store: Arc<dyn Store>) {
    use tern_store::DkimKeyRecord;
    store.add_domain("example.com", 1).await.unwrap();
    assert!(matches!(
        store.add_domain("example.com", 1).await,
        Err(tern_store::StoreError::Exists(_))
    ));
    store.add_domain("example.org", 2).await.unwrap();
    assert_eq!(
        store.list_domains().await.unwrap(),
        ["example.com", "example.org"]
    );
    let key = |selector: &str, at| DkimKeyRecord {
        domain: "example.com".into(),
        selector: selector.into(),
        algorithm: "ed25519".into(),
        private_key: "cHJpdg==".into(),
        public_key: "cHVi".into(),
        created_at: at,
        active: true,
    };
    store.add_dkim_key(&key("s1", 10)).await.unwrap();
    store.add_dkim_key(&key("s2", 20)).await.unwrap();
    assert!(
        store.add_dkim_key(&key("s1", 30)).await.is_err(),
        "selector taken"
    );
    assert!(store
        .set_dkim_key_active("example.com", "s1", false)
        .await
        .unwrap());
    let keys = store.dkim_keys(Some("example.com")).await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.selector.as_str(), k.active))
            .collect::<Vec<_>>(),
        [("s1", false), ("s2", true)]
    );
    assert_eq!(store.dkim_keys(None).await.unwrap().len(), 2);
    assert!(store
        .dkim_keys(Some("example.org"))
        .await
        .unwrap()
        .is_empty());
    assert!(store.remove_dkim_key("example.com", "s1").await.unwrap());
    assert!(store.remove_domain("example.com").await.unwrap());
    assert!(!store.remove_domain("example.com").await.unwrap());
    assert!(
        store.dkim_keys(None).await.unwrap().is_empty(),
        "keys go with their domain"
    );
}

async fn quarantine_sets_a_message_aside(store: Arc<dyn Store>) {
    let m = message(&["a@x.test", "b@y.test"], 100);
    let (id, size) = (m.id, m.body.len() as u64);
    store.commit_message(m).await.unwrap();
    assert_eq!(store.body_size(id).await.unwrap(), Some(size));
    assert_eq!(store.body_size(MessageId::generate()).await.unwrap(), None);
    store
        .quarantine(id, "the message body is missing")
        .await
        .unwrap();
    let q = store.get_message(id).await.unwrap().unwrap();
    assert!(q.recipients.iter().all(|r| r.status.kind() == "failed"));
    assert!(store
        .claim_due(1_000, 2_000, &RetryPolicy::default(), 10)
        .await
        .unwrap()
        .is_empty());
    let events = store.message_events(id).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "quarantined").count(), 2);
}

#[tokio::test]
async fn sqlite_sweeps_uncommitted_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let m = message(&["a@x.test"], 100);
    let id = m.id;
    store.commit_message(m).await.unwrap();
    // A body with no committed row (a crash between the two) is swept.
    let orphan = MessageId::generate();
    std::fs::write(dir.path().join("spool").join(orphan.to_string()), b"x").unwrap();
    assert_eq!(store.sweep().await.unwrap(), 1);
    assert!(store.read_body(id).await.is_ok(), "committed body kept");
}

#[tokio::test]
async fn sqlite_commits_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path()).await;
        let m = message(&["a@x.test"], 100);
        let id = m.id;
        store.commit_message(m).await.unwrap();
        id
    };
    let store = open(dir.path()).await;
    assert!(store.get_message(id).await.unwrap().is_some());
}

async fn users(store: Arc<dyn Store>) {
    store.add_user("alice", "h1", 0).await.unwrap();
    assert!(matches!(
        store.add_user("alice", "h2", 0).await,
        Err(tern_store::StoreError::Exists(_))
    ));
    assert_eq!(
        store.user_hash("alice").await.unwrap().as_deref(),
        Some("h1")
    );
    assert!(store.set_password("alice", "h3").await.unwrap());
    assert_eq!(
        store.user_hash("alice").await.unwrap().as_deref(),
        Some("h3")
    );
    assert_eq!(store.list_users().await.unwrap(), ["alice"]);
    assert!(store.remove_user("alice").await.unwrap());
    assert!(!store.remove_user("alice").await.unwrap());
    assert!(store.user_hash("alice").await.unwrap().is_none());
}

async fn leases_keep_in_flight_work_from_being_claimed_twice(store: Arc<dyn Store>) {
    let policy = RetryPolicy::default();
    let m = message(&["a@x.test"], 100);
    let id = m.id;
    store.commit_message(m).await.unwrap();
    let first = store.claim_due(100, 10_000, &policy, 10).await.unwrap();
    assert_eq!(first[0].attempts, 0);
    // Due again by its retry time, but still in flight: not claimed.
    assert!(store
        .claim_due(200, 10_000, &policy, 10)
        .await
        .unwrap()
        .is_empty());
    // A restart after a crash ends the marks; the retry time still holds.
    assert_eq!(store.release_leases().await.unwrap(), 1);
    assert!(store
        .claim_due(159, 10_000, &policy, 10)
        .await
        .unwrap()
        .is_empty());
    let second = store.claim_due(160, 10_000, &policy, 10).await.unwrap();
    assert_eq!(second[0].attempts, 1, "the crashed attempt counted");
    let q = store.get_message(id).await.unwrap().unwrap();
    assert_eq!(q.recipients[0].next_attempt, 160 + 300);
}

#[tokio::test]
async fn postgres_leases_belong_to_their_node() {
    let Some(db) = tern_store::testkit::ScratchDb::create().await else {
        return;
    };
    let a = tern_store::PgStore::connect(&db.url, "node-a")
        .await
        .unwrap();
    let b = tern_store::PgStore::connect(&db.url, "node-b")
        .await
        .unwrap();
    let policy = RetryPolicy::default();
    let m = message(&["x@x.test"], 100);
    let id = m.id;
    a.commit_message(m).await.unwrap();
    assert_eq!(a.claim_due(100, 1_000, &policy, 10).await.unwrap().len(), 1);
    // B neither sees A's in-flight work nor can release A's lease ...
    assert_eq!(b.release_leases().await.unwrap(), 0);
    assert!(b
        .claim_due(500, 1_000, &policy, 10)
        .await
        .unwrap()
        .is_empty());
    // ... and A renews it while its attempt runs.
    let claimed = a.get_message(id).await.unwrap().unwrap();
    assert_eq!(claimed.recipients.len(), 1);
    assert_eq!(a.renew_leases(2_000, &[(id, 0)]).await.unwrap(), 1);
    assert_eq!(
        b.renew_leases(9_000, &[(id, 0)]).await.unwrap(),
        0,
        "not B's lease"
    );
    assert!(b
        .claim_due(1_500, 3_000, &policy, 10)
        .await
        .unwrap()
        .is_empty());
    // When A dies the lease runs out and B takes the work.
    let taken = b.claim_due(2_000, 3_000, &policy, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].attempts, 1);
    drop((a, b));
    db.drop_db().await;
}
