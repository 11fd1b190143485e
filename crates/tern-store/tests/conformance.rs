//! The store contract, checked against the embedded backend. Every backend
//! must pass these (the PostgreSQL one will run the same functions).

use std::sync::Arc;

use tern_core::{Address, DeliveryStatus, Envelope, MessageId, RetryPolicy};
use tern_store::{
    ApiKeyRecord, MessageQuery, NewMessage, Outcome, RecipientResult, SqliteStore, Store,
    Suppression, WebhookAttempt, WebhookOutcome, WebhookRecord,
};

fn message(rcpts: &[&str], now: i64) -> NewMessage {
    NewMessage {
        info: Default::default(),
        suppressed: Vec::new(),
        id: MessageId::generate(),
        envelope: Envelope {
            sender: Some(Address::parse("alice@example.test").unwrap()),
            recipients: rcpts.iter().map(|r| Address::parse(r).unwrap()).collect(),
        },
        body: b"Subject: t\r\n\r\nbody\r\n".to_vec().into(),
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
    staged_body_round_trips,
    domains_and_keys,
    quarantine_sets_a_message_aside,
    api_keys,
    suppressions_and_hard_bounces,
    webhooks_get_every_matching_event_once,
    search_and_stats,
    prune_keeps_pending_work,
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
        ["accepted", "accepted", "delivered", "deferred", "bounced"]
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
    // Out of the queue, its history kept.
    let q = store.get_message(id).await.unwrap().unwrap();
    assert!(q.recipients.iter().all(|r| r.status.is_final()));
    assert!(store.list_messages(10).await.unwrap().is_empty());
    assert!(store.read_body(id).await.is_err());
    let kinds: Vec<String> = store
        .message_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("deleted"));
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
    let body: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    m.body = body.clone().into();
    let id = m.id;
    store.commit_message(m).await.unwrap();
    assert_eq!(store.read_body(id).await.unwrap(), body);
    assert_eq!(
        store.get_message(id).await.unwrap().unwrap().size,
        3_500_000
    );
    // The head is its size and first piece; it is never read whole.
    let (size, first) = store.body_head(id).await.unwrap().unwrap();
    assert_eq!(size, 3_500_000);
    assert_eq!(first, body[..tern_store::BODY_CHUNK]);
    assert!(store.small_bodies(&[id]).await.unwrap().is_empty());
    assert_eq!(store.body_head(MessageId::generate()).await.unwrap(), None);
}

/// A message received into a file (`MessageBody::Staged`) is stored as
/// Tern's header fields followed by the file's content, byte for byte,
/// across the pieces it is stored and read in: from a file with room in
/// front for the header fields (which the SQLite store links into its
/// spool), and from one without (copied).
async fn staged_body_round_trips(store: Arc<dyn Store>) {
    let original: Vec<u8> = (0..2_300_000u32).map(|i| (i % 253) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let with_room = {
        let mut f = tern_store::StagedFile::create_in(dir.path()).unwrap();
        f.append(&original).unwrap();
        f
    };
    let without_room = {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&original).unwrap();
        tern_store::StagedFile {
            file,
            start: 0,
            len: original.len() as u64,
        }
    };
    for staged in [with_room, without_room] {
        let head = b"Received: from staged\r\n".to_vec();
        let mut m = message(&["a@x.test"], 100);
        m.body = tern_store::MessageBody::Staged {
            head: head.clone(),
            file: staged,
        };
        let id = m.id;
        store.commit_message(m).await.unwrap();
        let mut expected = head;
        expected.extend_from_slice(&original);
        assert_eq!(
            store.body_size(id).await.unwrap(),
            Some(expected.len() as u64)
        );
        assert_eq!(
            store.get_message(id).await.unwrap().unwrap().size,
            expected.len() as u64
        );
        let (n, first) = store.body_head(id).await.unwrap().unwrap();
        assert_eq!(n, expected.len() as u64);
        assert!(first == expected[..tern_store::BODY_CHUNK]);
        assert!(store.read_body(id).await.unwrap() == expected);
    }
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
    let (id, size) = (m.id, m.body.len());
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

async fn api_keys(store: Arc<dyn Store>) {
    let key = |id: &str, name: &str| ApiKeyRecord {
        id: id.into(),
        name: name.into(),
        scope: "send".into(),
        secret_hash: "00ff".into(),
        created_at: 5,
        revoked_at: None,
    };
    store.add_api_key(&key("k1", "app")).await.unwrap();
    store.add_api_key(&key("k2", "ops")).await.unwrap();
    assert!(store.add_api_key(&key("k1", "again")).await.is_err());
    assert_eq!(store.api_key("k1").await.unwrap().unwrap().name, "app");
    assert!(store.api_key("nope").await.unwrap().is_none());
    assert_eq!(store.list_api_keys().await.unwrap().len(), 2);
    assert!(store.revoke_api_key("ops", 9).await.unwrap());
    assert!(
        !store.revoke_api_key("ops", 10).await.unwrap(),
        "already revoked"
    );
    assert_eq!(
        store.api_key("k2").await.unwrap().unwrap().revoked_at,
        Some(9)
    );
}

fn rcpt_result(id: MessageId, idx: u32, address: &str, outcome: Outcome) -> RecipientResult {
    RecipientResult {
        message_id: id,
        idx,
        address: address.into(),
        outcome,
        at: 200,
        warned: false,
    }
}

async fn suppressions_and_hard_bounces(store: Arc<dyn Store>) {
    store
        .add_suppression(&Suppression {
            address: "Gone@X.test".into(),
            reason: "asked".into(),
            source: "manual".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    let found = store
        .suppressed(&["gone@x.test".into(), "here@x.test".into()])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![("gone@x.test".to_string(), "asked".to_string())]
    );

    // A recipient on the list is found by the commit itself (whatever the
    // case of the address), stored final and never claimed; one the caller
    // marks suppressed is too.
    let m = message(&["GONE@x.test", "here@x.test"], 100);
    let id = m.id;
    assert_eq!(
        store.commit_message(m).await.unwrap(),
        vec![(0, "suppressed: asked".to_string())]
    );
    let mut marked = message(&["also@x.test", "here2@x.test"], 100);
    marked.suppressed = vec![(1, "suppressed: by the caller".into())];
    let marked_id = marked.id;
    assert_eq!(
        store.commit_message(marked).await.unwrap(),
        vec![(1, "suppressed: by the caller".to_string())]
    );
    let claimed = store
        .claim_due(100, 200, &RetryPolicy::default(), 10)
        .await
        .unwrap();
    let mut addresses: Vec<&str> = claimed.iter().map(|d| d.address.as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["also@x.test", "here@x.test"]);
    let q = store.get_message(marked_id).await.unwrap().unwrap();
    assert_eq!(q.recipients[1].status.kind(), "suppressed");
    let q = store.get_message(id).await.unwrap().unwrap();
    assert_eq!(
        q.recipients[0].status,
        DeliveryStatus::Suppressed {
            reason: "suppressed: asked".into()
        }
    );

    // A hard bounce (5.1.1) suppresses; a soft one (5.2.2) does not.
    let m = message(&["hard@x.test", "soft@x.test"], 100);
    let id = m.id;
    store.commit_message(m).await.unwrap();
    store
        .claim_due(100, 200, &RetryPolicy::default(), 10)
        .await
        .unwrap();
    store
        .record_results(&[
            rcpt_result(
                id,
                0,
                "hard@x.test",
                Outcome::Failed {
                    reason: "550 5.1.1 no such user (mx.x.test[127.0.0.2])".into(),
                },
            ),
            rcpt_result(
                id,
                1,
                "soft@x.test",
                Outcome::Failed {
                    reason: "552 5.2.2 mailbox full".into(),
                },
            ),
        ])
        .await
        .unwrap();
    let list = store.list_suppressions(None, 10).await.unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(names, ["gone@x.test", "hard@x.test"]);
    assert_eq!(list[1].source, "bounce");
    let events = store.message_events(id).await.unwrap();
    let bounce = events
        .iter()
        .find(|e| e.recipient.as_deref() == Some("hard@x.test") && e.kind == "bounced")
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(bounce.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["bounce"], "hard");
    assert_eq!(data["host"], "mx.x.test[127.0.0.2]");
    assert!(store.remove_suppression("HARD@x.test").await.unwrap());
    assert!(!store.remove_suppression("hard@x.test").await.unwrap());
    let after = store
        .list_suppressions(Some("gone@x.test"), 10)
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
}

async fn webhooks_get_every_matching_event_once(store: Arc<dyn Store>) {
    let hook = |id: &str, events: &[&str]| WebhookRecord {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret: "s".into(),
        created_at: 1,
    };
    store
        .add_webhook(&hook("w1", &["delivered"]))
        .await
        .unwrap();
    store.add_webhook(&hook("w2", &["*"])).await.unwrap();
    assert_eq!(store.list_webhooks().await.unwrap()[1].events, ["*"]);

    let mut m = message(&["a@x.test"], 100);
    m.info.tags = vec!["welcome".into()];
    let id = m.id;
    store.commit_message(m).await.unwrap();
    store
        .claim_due(100, 200, &RetryPolicy::default(), 10)
        .await
        .unwrap();
    store
        .record_results(&[rcpt_result(
            id,
            0,
            "a@x.test",
            Outcome::Delivered {
                reply: "250 ok".into(),
            },
        )])
        .await
        .unwrap();

    // w1: delivered only; w2: accepted and delivered.
    let due = store.claim_webhooks(1000, 1060, 10).await.unwrap();
    let mut got: Vec<(String, String)> = due
        .iter()
        .map(|d| (d.webhook_id.clone(), d.event.kind.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("w1".to_string(), "delivered".to_string()),
            ("w2".to_string(), "accepted".to_string()),
            ("w2".to_string(), "delivered".to_string()),
        ]
    );
    assert!(due.iter().all(|d| d.event.info.tags == ["welcome"]));
    assert!(due.iter().all(|d| d.event.message_id == id.to_string()));
    // Leased: a second claimer gets nothing.
    assert!(store
        .claim_webhooks(1000, 1060, 10)
        .await
        .unwrap()
        .is_empty());

    let first = &due[0];
    store
        .record_webhook(
            first.delivery_id,
            &WebhookAttempt {
                at: 1001,
                status_code: Some(500),
                error: None,
            },
            WebhookOutcome::RetryAt(1100),
        )
        .await
        .unwrap();
    for d in &due[1..] {
        store
            .record_webhook(
                d.delivery_id,
                &WebhookAttempt {
                    at: 1001,
                    status_code: Some(200),
                    error: None,
                },
                WebhookOutcome::Delivered,
            )
            .await
            .unwrap();
    }
    assert!(store
        .claim_webhooks(1099, 1160, 10)
        .await
        .unwrap()
        .is_empty());
    let again = store.claim_webhooks(1100, 1160, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_id, first.delivery_id);
    assert_eq!(again[0].attempts, 1);

    let log = store
        .webhook_deliveries(&first.webhook_id, 10)
        .await
        .unwrap();
    let d = log.iter().find(|d| d.id == first.delivery_id).unwrap();
    assert_eq!(d.status, "pending");
    assert_eq!(d.attempts_log.len(), 1);
    assert_eq!(d.attempts_log[0].status_code, Some(500));

    assert!(store.remove_webhook("w1").await.unwrap());
    assert!(store.webhook_deliveries("w1", 10).await.unwrap().is_empty());
}

async fn search_and_stats(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for (i, (rcpt, subject, tag)) in [
        ("a@x.test", "Your receipt", "receipt"),
        ("b@x.test", "Password reset 100%", "reset"),
        ("a@x.test", "Another receipt", "receipt"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = message(&[rcpt], 1000 + i as i64 * 3600);
        m.info.subject = Some(subject.into());
        m.info.tags = vec![tag.into()];
        m.info.metadata.insert("order".into(), i.to_string());
        ids.push(m.id);
        store.commit_message(m).await.unwrap();
    }
    let q = |f: &dyn Fn(&mut MessageQuery)| {
        let mut q = MessageQuery {
            limit: 10,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let found = |list: Vec<tern_store::MessageSummary>| -> Vec<String> {
        list.into_iter().map(|m| m.id).collect()
    };
    let s = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    // Newest first.
    assert_eq!(
        found(store.search_messages(&q(&|_| {})).await.unwrap()),
        [s[2].clone(), s[1].clone(), s[0].clone()]
    );
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| q.recipient = Some("A@x.test".into())))
                .await
                .unwrap()
        ),
        [s[2].clone(), s[0].clone()]
    );
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| q.subject = Some("RECEIPT".into())))
                .await
                .unwrap()
        ),
        [s[2].clone(), s[0].clone()]
    );
    // LIKE wildcards in the query are taken literally.
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| q.subject = Some("100%".into())))
                .await
                .unwrap()
        ),
        [s[1].clone()]
    );
    assert!(store
        .search_messages(&q(&|q| q.subject = Some("_".into())))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| q.tag = Some("reset".into())))
                .await
                .unwrap()
        ),
        [s[1].clone()]
    );
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| {
                    q.since = Some(2000);
                    q.until = Some(5000)
                }))
                .await
                .unwrap()
        ),
        [s[1].clone()]
    );
    assert_eq!(
        found(
            store
                .search_messages(&q(&|q| q.status = Some("queued".into())))
                .await
                .unwrap()
        )
        .len(),
        3
    );
    // Paging: after the newest, the next two.
    let page = store
        .search_messages(&q(&|q| {
            q.limit = 1;
        }))
        .await
        .unwrap();
    let next = store
        .search_messages(&q(&|q| {
            q.after = Some((page[0].created_at, page[0].id.clone()))
        }))
        .await
        .unwrap();
    assert_eq!(found(next), [s[1].clone(), s[0].clone()]);

    let one = store.message_summary(&s[1]).await.unwrap().unwrap();
    assert_eq!(one.info.subject.as_deref(), Some("Password reset 100%"));
    assert_eq!(one.info.metadata["order"], "1");
    assert_eq!(one.recipients[0].address, "b@x.test");

    store
        .record_event(
            "refused-1",
            Some("c@x.test"),
            "rejected",
            Some("550 5.7.1 relay"),
            1500,
        )
        .await
        .unwrap();
    let stats = store.stats(0, 3600 * 3, 3600).await.unwrap();
    let count = |bucket: i64, kind: &str| {
        stats
            .iter()
            .find(|r| r.bucket == bucket && r.kind == kind)
            .map(|r| r.count)
            .unwrap_or(0)
    };
    assert_eq!(count(0, "accepted"), 1);
    assert_eq!(count(0, "rejected"), 1);
    assert_eq!(count(3600, "accepted"), 1);
    assert_eq!(count(7200, "accepted"), 1);
    let counts = store.recipient_counts().await.unwrap();
    assert_eq!(counts, vec![("queued".to_string(), 3)]);
}

async fn prune_keeps_pending_work(store: Arc<dyn Store>) {
    let old_done = message(&["a@x.test"], 100);
    let old_pending = message(&["b@x.test"], 100);
    let fresh = message(&["c@x.test"], 5000);
    let (done_id, pending_id, fresh_id) = (old_done.id, old_pending.id, fresh.id);
    for m in [old_done, old_pending, fresh] {
        store.commit_message(m).await.unwrap();
    }
    store
        .claim_due(100, 200, &RetryPolicy::default(), 1)
        .await
        .unwrap();
    store
        .record_results(&[rcpt_result(
            done_id,
            0,
            "a@x.test",
            Outcome::Delivered {
                reply: "250 ok".into(),
            },
        )])
        .await
        .unwrap();
    let pruned = store.prune(1000).await.unwrap();
    assert!(pruned >= 3, "{pruned}");
    assert!(store.get_message(done_id).await.unwrap().is_none());
    assert!(store.get_message(pending_id).await.unwrap().is_some());
    assert!(store.get_message(fresh_id).await.unwrap().is_some());
    assert_eq!(store.message_events(fresh_id).await.unwrap().len(), 1);
}

/// Small bodies live in the database (one fsync with their rows), large
/// ones in the spool; both read back the same, and both go once the
/// message is final.
#[tokio::test]
async fn sqlite_keeps_small_bodies_inline_and_large_ones_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path(), 1024).await.unwrap();
    // Bodies only: `.free/` holds released files kept for reuse.
    let spool_files = || {
        std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count()
    };
    let small = message(&["a@x.test"], 100);
    let mut large = message(&["b@x.test"], 100);
    large.body = vec![b'x'; 5000].into();
    let (small_id, large_id) = (small.id, large.id);
    let small_body = b"Subject: t\r\n\r\nbody\r\n".to_vec();
    store.commit_message(small).await.unwrap();
    store.commit_message(large).await.unwrap();
    assert_eq!(spool_files(), 1, "only the large body is a file");
    assert_eq!(store.read_body(small_id).await.unwrap(), small_body);
    assert_eq!(store.read_body(large_id).await.unwrap(), vec![b'x'; 5000]);
    assert_eq!(
        store.body_size(small_id).await.unwrap(),
        Some(small_body.len() as u64)
    );
    assert_eq!(store.body_chunk(small_id, 1).await.unwrap(), None);
    assert_eq!(
        store.body_head(small_id).await.unwrap(),
        Some((small_body.len() as u64, small_body.clone()))
    );
    assert_eq!(
        store.body_head(large_id).await.unwrap(),
        Some((5000, vec![b'x'; 5000]))
    );
    // Read with the claim: the small body only (the large one is read as
    // it is sent).
    let unknown = MessageId::generate();
    assert_eq!(
        store
            .small_bodies(&[small_id, large_id, unknown])
            .await
            .unwrap(),
        vec![(small_id, small_body.clone())]
    );

    store
        .claim_due(100, 200, &RetryPolicy::default(), 10)
        .await
        .unwrap();
    let done = |id, address: &str| RecipientResult {
        message_id: id,
        idx: 0,
        address: address.into(),
        outcome: Outcome::Delivered {
            reply: "250 ok".into(),
        },
        at: 101,
        warned: false,
    };
    store
        .record_results(&[done(small_id, "a@x.test"), done(large_id, "b@x.test")])
        .await
        .unwrap();
    assert_eq!(
        store.body_size(small_id).await.unwrap(),
        None,
        "gone with the final state"
    );
    assert_eq!(store.body_head(small_id).await.unwrap(), None);
    assert!(store.small_bodies(&[small_id]).await.unwrap().is_empty());
    for _ in 0..40 {
        if spool_files() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(spool_files(), 0);

    // The released file is kept for the next large body, which is written
    // over it: nothing of the old body is left.
    let free = || {
        std::fs::read_dir(dir.path().join("spool").join(".free"))
            .unwrap()
            .count()
    };
    assert_eq!(free(), 1);
    let mut next = message(&["c@x.test"], 200);
    next.body = vec![b'y'; 3000].into();
    let next_id = next.id;
    store.commit_message(next).await.unwrap();
    assert_eq!(free(), 0, "reused");
    assert_eq!(spool_files(), 1);
    assert_eq!(store.read_body(next_id).await.unwrap(), vec![b'y'; 3000]);
}
