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

#[tokio::test]
async fn commit_claim_record_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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
    assert!(store.read_body(id).await.is_err(), "body released");
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

#[tokio::test]
async fn retry_delete_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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

    // A body with no committed row (a crash between the two) is swept.
    let orphan = MessageId::generate();
    std::fs::write(dir.path().join("spool").join(orphan.to_string()), b"x").unwrap();
    assert_eq!(store.sweep().await.unwrap(), 1);
    assert!(store.read_body(id).await.is_ok(), "committed body kept");

    assert!(store.delete_message(id).await.unwrap());
    assert!(!store.delete_message(id).await.unwrap());
    assert!(store.get_message(id).await.unwrap().is_none());
    assert!(store.read_body(id).await.is_err());
}

#[tokio::test]
async fn concurrent_commits_share_batches_and_all_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = open(dir.path()).await;
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
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    };
    let store = open(dir.path()).await;
    for id in ids {
        assert!(store.get_message(id).await.unwrap().is_some());
    }
    assert_eq!(store.list_messages(1000).await.unwrap().len(), 64);
}

#[tokio::test]
async fn users() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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

#[tokio::test]
async fn leases_keep_in_flight_work_from_being_claimed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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
