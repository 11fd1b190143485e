//! What the HTTP API tells about mail after it was sent, over real HTTP
//! against a whole Tern server whose remote MX is a scriptable fake:
//! each recipient's event timeline (delivered, deferred then delivered,
//! hard and soft bounces, suppressed), the suppression list a hard bounce
//! feeds, statistics, Prometheus metrics, and webhooks, received by a small
//! HTTP server here that checks every signature and fails on purpose so
//! the retry schedule and the delivery log can be seen.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tern_core::config::HumanDuration;
use tern_core::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MX: &str = "127.0.0.2";

const ZONE: &str = "
remote.test      MX 10 mx.remote.test
mx.remote.test   A 127.0.0.2
";

const FROM: &str = "alice@example.test";

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

/// The remote MX (a fake on 127.0.0.2), its DNS, and a Tern server that
/// delivers to it with one-second retries.
struct Setup {
    t: TestServer,
    fake: FakeSmtp,
    _dns: TestDns,
    api: Api,
}

impl Setup {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Setup {
        let ip: IpAddr = MX.parse().unwrap();
        let port = free_port(&[ip]);
        let dns = TestDns::start(ZONE).await;
        let fake = FakeSmtp::start(ip, port, Script::default()).await;
        let dns_addr = dns.addr;
        let t = TestServer::start_with(move |c| {
            c.dns.nameservers = vec![dns_addr];
            c.delivery.port = port;
            c.delivery.command_timeout = secs(5);
            c.delivery.data_timeout = secs(5);
            c.delivery.connect_timeout = secs(2);
            c.queue.retry = vec![secs(1)];
            tweak(c);
        })
        .await;
        let api = Api::new(&t).await;
        Setup {
            t,
            fake,
            _dns: dns,
            api,
        }
    }

    /// How the remote host shows in replies and events.
    fn host(&self) -> String {
        format!("mx.remote.test[{MX}]")
    }

    /// RCPT commands the fake got for `address`.
    fn rcpts(&self, address: &str) -> usize {
        let wanted = format!("RCPT TO:<{address}>").to_lowercase();
        self.fake
            .commands()
            .iter()
            .filter(|c| c.to_lowercase().starts_with(&wanted))
            .count()
    }
}

/// An HTTP client with one key of each scope.
struct Api {
    base: String,
    http: reqwest::Client,
    send: String,
    read: String,
    admin: String,
}

impl Api {
    async fn new(t: &TestServer) -> Api {
        tern_smtp::tls::install_crypto_provider();
        Api {
            base: t.api_url(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            send: t.api_key("sender", "send").await,
            read: t.api_key("reader", "read").await,
            admin: t.api_key("admin", "admin").await,
        }
    }

    async fn answer(r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    async fn delete(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    /// Sends a message from alice; returns its id and each recipient's
    /// status in the answer.
    async fn send_mail(
        &self,
        to: &[&str],
        subject: &str,
        tags: &[&str],
        metadata: Value,
    ) -> (String, Vec<(String, String)>) {
        let (status, body) = self
            .post(
                &self.send,
                "/api/v1/messages",
                &json!({
                    "from": FROM,
                    "to": to,
                    "subject": subject,
                    "text": "Hello from the tests.\n",
                    "tags": tags,
                    "metadata": metadata,
                }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().expect("an id").to_string();
        let recipients = body["recipients"]
            .as_array()
            .expect("recipients")
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (id, recipients)
    }

    async fn message(&self, id: &str) -> Value {
        let (status, body) = self
            .get(&self.read, &format!("/api/v1/messages/{id}"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until `address` has `status` in message `id`; returns the
    /// message.
    async fn wait_status(&self, id: &str, address: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.message(id).await;
            if recipient(&m, address)["status"] == status {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{address} never became {status}: {m:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deliveries(&self, webhook: &str) -> Vec<Value> {
        let (status, body) = self
            .get(
                &self.admin,
                &format!("/api/v1/webhooks/{webhook}/deliveries"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }
}

/// One recipient of a message view.
fn recipient<'a>(m: &'a Value, address: &str) -> &'a Value {
    m["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("no recipient {address} in {m:#}"))
}

/// A recipient's events, oldest first.
fn events<'a>(m: &'a Value, address: &str) -> &'a Vec<Value> {
    recipient(m, address)["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events for {address} in {m:#}"))
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

fn field(error: &Value) -> &str {
    error["error"]["field"].as_str().unwrap_or("")
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- a webhook receiver -------------------------------------------------

/// One request a [`Receiver`] got, and what it answered.
#[derive(Clone, Debug)]
struct Hit {
    method: String,
    path: String,
    /// Names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn delivery(&self) -> &str {
        self.header("tern-delivery")
    }
}

/// A minimal HTTP/1.1 server on loopback that records every request and
/// answers 500 to the first `failures` requests of each webhook delivery
/// (told apart by `Tern-Delivery`), then 200; one request per connection.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let shared = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let hits = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, hits, failures).await;
                });
            }
        });
        Receiver { url, hits, task }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests about message `id` (by the payload's `message_id`).
    fn about(&self, id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.json()["message_id"] == id)
            .collect()
    }
}

async fn serve(
    mut stream: TcpStream,
    hits: Arc<Mutex<Vec<Hit>>>,
    failures: usize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let answered = {
        let mut hits = hits.lock().unwrap();
        let delivery = headers.get("tern-delivery").cloned().unwrap_or_default();
        let before = hits
            .iter()
            .filter(|h: &&Hit| h.headers.get("tern-delivery") == Some(&delivery))
            .count();
        let answered = if before < failures { 500 } else { 200 };
        hits.push(Hit {
            method,
            path,
            headers,
            body,
            answered,
        });
        answered
    };
    let reason = if answered == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    stream
        .write_all(
            format!(
                "HTTP/1.1 {answered} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    stream.shutdown().await
}

/// Checks `Tern-Signature: t=<unix>,v1=<hex>` against HMAC-SHA256 of
/// `"<t>.<body>"` with `secret`; returns `t` when it matches.
fn verify_signature(secret: &str, header: &str, body: &[u8]) -> Option<i64> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t?, v1?);
    if v1.len() != 64 {
        return None;
    }
    let given: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&given).ok().map(|_| t)
}

/// Every request is a signed JSON POST that names its event.
fn check_signed(hits: &[Hit], secret: &str) {
    let now = tern_core::unix_now();
    for h in hits {
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/hook");
        assert!(
            h.header("content-type").starts_with("application/json"),
            "{h:?}"
        );
        assert!(h.header("user-agent").starts_with("Tern/"), "{h:?}");
        let t = verify_signature(secret, h.header("tern-signature"), &h.body)
            .unwrap_or_else(|| panic!("bad signature: {h:?}"));
        assert!(
            (now - 120..=now + 1).contains(&t),
            "signed at {t}, now {now}"
        );
        assert_eq!(h.header("tern-event"), h.json()["event"], "{h:?}");
        assert!(h.delivery().parse::<i64>().is_ok(), "{h:?}");
    }
}

// --- timelines, suppressions, statistics, metrics ------------------------

#[tokio::test(flavor = "multi_thread")]
async fn timelines_suppressions_stats_and_metrics() {
    let s = Setup::start(|_| {}).await;
    let api = &s.api;
    let host = s.host();

    // Delivered at once: accepted, then delivered with the remote reply.
    let (id, sent) = api
        .send_mail(
            &["bob@remote.test"],
            "Welcome",
            &["welcome", "onboarding"],
            json!({"user_id": "42", "plan": "pro"}),
        )
        .await;
    assert_eq!(sent, vec![("bob@remote.test".into(), "queued".into())]);
    let m = api.wait_status(&id, "bob@remote.test", "delivered").await;
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["sender"], FROM);
    assert_eq!(m["subject"], "Welcome");
    assert_eq!(m["tags"], json!(["welcome", "onboarding"]));
    assert_eq!(m["metadata"], json!({"plan": "pro", "user_id": "42"}));
    let bob = recipient(&m, "bob@remote.test");
    assert_eq!(bob["attempts"], 1, "{m:#}");
    assert!(bob["next_attempt"].is_null(), "final: {m:#}");
    let ev = events(&m, "bob@remote.test");
    assert_eq!(kinds(ev), ["accepted", "delivered"], "{m:#}");
    assert_eq!(ev[1]["host"], host.as_str(), "{m:#}");
    let reply = ev[1]["detail"].as_str().unwrap();
    assert!(reply.starts_with("250 2.0.0 queued as FAKE"), "{reply}");
    assert!(reply.ends_with(&format!("({host})")), "{reply}");
    assert_eq!(bob["detail"], reply);
    assert!(ev[0]["detail"].is_null() && ev[0]["host"].is_null());
    assert!(ev.iter().all(|e| e["recipient"] == "bob@remote.test"));
    assert!(ev[0]["at"].as_str().unwrap() <= ev[1]["at"].as_str().unwrap());
    assert_eq!(m["events"], json!([]), "no message-wide events: {m:#}");
    assert_eq!(s.fake.received().len(), 1);

    // The tag finds it.
    let (status, found) = api.get(&api.read, "/api/v1/messages?tag=welcome").await;
    assert_eq!(status, 200, "{found}");
    let ids: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    // Deferred once (451 after the data), then delivered on the retry.
    s.fake.set_script(|sc| {
        sc.data_replies = ["451 4.3.0 try again later".to_string()].into();
    });
    let (id, _) = api
        .send_mail(&["carol@remote.test"], "Later", &["retry"], json!({}))
        .await;
    let m = api.wait_status(&id, "carol@remote.test", "delivered").await;
    let ev = events(&m, "carol@remote.test");
    assert_eq!(kinds(ev), ["accepted", "deferred", "delivered"], "{m:#}");
    let deferred = ev[1]["detail"].as_str().unwrap();
    assert!(
        deferred.starts_with("451 4.3.0 try again later"),
        "{deferred}"
    );
    assert!(ev[1]["bounce"].is_null());
    assert_eq!(ev[2]["host"], host.as_str());
    assert!(ev[1]["at"].as_str().unwrap() < ev[2]["at"].as_str().unwrap());
    assert_eq!(recipient(&m, "carol@remote.test")["attempts"], 2, "{m:#}");
    assert_eq!(m["tags"], json!(["retry"]));
    assert_eq!(m["metadata"], json!({}));

    // No such user (550 5.1.1): a hard bounce, and the address is
    // suppressed from then on.
    s.fake.set_script(|sc| {
        sc.rcpt_replies.insert(
            "dave@remote.test".into(),
            "550 5.1.1 no such user here".into(),
        );
        sc.rcpt_replies
            .insert("erin@remote.test".into(), "552 5.2.2 mailbox full".into());
    });
    let (id, _) = api
        .send_mail(&["dave@remote.test"], "Hard", &[], json!({"n": "1"}))
        .await;
    let m = api.wait_status(&id, "dave@remote.test", "failed").await;
    let ev = events(&m, "dave@remote.test");
    assert_eq!(kinds(ev), ["accepted", "bounced"], "{m:#}");
    assert_eq!(ev[1]["bounce"], "hard", "{m:#}");
    assert_eq!(ev[1]["host"], host.as_str(), "{m:#}");
    let reason = ev[1]["detail"].as_str().unwrap();
    assert!(
        reason.starts_with("550 5.1.1 no such user here"),
        "{reason}"
    );
    assert_eq!(recipient(&m, "dave@remote.test")["attempts"], 1);

    // Mailbox full (552 5.2.2): a soft bounce; not suppressed.
    let (id, _) = api
        .send_mail(&["erin@remote.test"], "Soft", &[], json!({}))
        .await;
    let m = api.wait_status(&id, "erin@remote.test", "failed").await;
    let ev = events(&m, "erin@remote.test");
    assert_eq!(kinds(ev), ["accepted", "bounced"], "{m:#}");
    assert_eq!(ev[1]["bounce"], "soft", "{m:#}");
    assert!(ev[1]["detail"]
        .as_str()
        .unwrap()
        .starts_with("552 5.2.2 mailbox full"));

    let (status, list) = api.get(&api.read, "/api/v1/suppressions").await;
    assert_eq!(status, 200, "{list}");
    let list = list["suppressions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "only the hard bounce: {list:#?}");
    assert_eq!(list[0]["address"], "dave@remote.test");
    assert_eq!(list[0]["source"], "bounce");
    assert!(
        list[0]["reason"].as_str().unwrap().contains("5.1.1"),
        "{list:#?}"
    );

    // Each bounce told alice (a local mailbox) in a delivery status
    // notification from the null sender: two more messages, each accepted
    // and delivered.
    s.t.wait_mailbox(DOMAIN, "alice", 2).await;
    let (_, dsns) = api
        .get(&api.read, "/api/v1/messages?recipient=alice@example.test")
        .await;
    let dsns = dsns["messages"].as_array().unwrap().clone();
    assert_eq!(dsns.len(), 2, "{dsns:#?}");
    for d in &dsns {
        assert_eq!(d["sender"], "", "{d:#}");
        let id = d["id"].as_str().unwrap();
        let m = api.wait_status(id, FROM, "delivered").await;
        assert_eq!(kinds(events(&m, FROM)), ["accepted", "delivered"], "{m:#}");
    }

    // A manual suppression, in any case.
    let (status, added) = api
        .post(
            &api.admin,
            "/api/v1/suppressions",
            &json!({"address": "Heidi@Remote.test", "reason": "asked to stop"}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["address"], "heidi@remote.test");
    assert_eq!(added["source"], "manual");

    // Mail to suppressed addresses is answered "suppressed", recorded as a
    // `suppressed` event, and never attempted.
    let (id1, sent) = api
        .send_mail(&["dave@remote.test"], "Again", &["again"], json!({}))
        .await;
    assert_eq!(sent, vec![("dave@remote.test".into(), "suppressed".into())]);
    let (id2, sent) = api
        .send_mail(
            &["HEIDI@remote.test", "grace@remote.test"],
            "Mixed",
            &[],
            json!({}),
        )
        .await;
    assert_eq!(
        sent,
        vec![
            ("HEIDI@remote.test".into(), "suppressed".into()),
            ("grace@remote.test".into(), "queued".into()),
        ]
    );
    let m2 = api
        .wait_status(&id2, "grace@remote.test", "delivered")
        .await;
    assert_eq!(
        kinds(events(&m2, "grace@remote.test")),
        ["accepted", "delivered"]
    );
    let heidi = recipient(&m2, "HEIDI@remote.test");
    assert_eq!(heidi["status"], "suppressed", "{m2:#}");
    assert_eq!(heidi["attempts"], 0, "{m2:#}");
    let ev = events(&m2, "HEIDI@remote.test");
    assert_eq!(kinds(ev), ["suppressed"], "{m2:#}");
    assert!(
        ev[0]["detail"].as_str().unwrap().contains("asked to stop"),
        "{m2:#}"
    );
    let m1 = api.message(&id1).await;
    let dave = recipient(&m1, "dave@remote.test");
    assert_eq!(dave["status"], "suppressed", "{m1:#}");
    assert_eq!(dave["attempts"], 0);
    assert!(dave["next_attempt"].is_null());
    let ev = events(&m1, "dave@remote.test");
    assert_eq!(kinds(ev), ["suppressed"], "{m1:#}");
    assert!(
        ev[0]["detail"].as_str().unwrap().contains("5.1.1"),
        "the reason is the bounce: {m1:#}"
    );
    assert_eq!(m1["tags"], json!(["again"]));
    // Grace's delivery came after both were queued; the suppressed ones
    // never reached the remote server.
    assert_eq!(
        s.rcpts("dave@remote.test"),
        1,
        "only the first, bounced try"
    );
    assert_eq!(s.rcpts("heidi@remote.test"), 0);
    assert_eq!(s.rcpts("grace@remote.test"), 1);
    let got = s.fake.received();
    assert_eq!(
        got.len(),
        4,
        "bob, carol twice (451, then 250), grace: {got:#?}"
    );
    assert_eq!(got.last().unwrap().rcpt_to, ["grace@remote.test"]);
    assert!(s.fake.violations().is_empty(), "{:?}", s.fake.violations());

    // Statistics: what happened, by kind. Messages: bob, carol, dave, erin,
    // dave again (suppressed), heidi + grace, and the two notices to alice.
    let expected = [
        ("accepted", 7),  // bob, carol, dave, erin, grace, 2 notices
        ("delivered", 5), // bob, carol, grace, 2 notices
        ("deferred", 1),  // carol's first try
        ("bounced", 2),   // dave (hard), erin (soft)
        ("suppressed", 2),
        ("expired", 0),
        ("rejected", 0),
        ("quarantined", 0),
        ("deleted", 0),
    ];
    // Asked right after the last event: the default window ends now and
    // still counts what happened in the current second.
    let now = tern_core::unix_now();
    let (status, stats) = api.get(&api.read, "/api/v1/stats?interval=hour").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["interval"], "hour");
    let buckets = stats["buckets"].as_array().unwrap();
    assert!(buckets.len() >= 24, "a day of hours: {}", buckets.len());
    let starts: Vec<&str> = buckets
        .iter()
        .map(|b| b["start"].as_str().unwrap())
        .collect();
    assert!(
        starts.iter().all(|s| s.ends_with(":00:00Z")),
        "whole hours: {starts:?}"
    );
    let current = rfc3339(now - now.rem_euclid(3600));
    assert_eq!(*starts.last().unwrap(), current, "the last bucket is now's");
    let sum = |buckets: &[Value], kind: &str| -> i64 {
        buckets
            .iter()
            .map(|b| b["counts"][kind].as_i64().expect("every kind counted"))
            .sum()
    };
    for (kind, n) in expected {
        assert_eq!(sum(buckets, kind), n, "{kind} per hour: {stats:#}");
    }
    // Unless the hour turned during the test, all of it is in the current
    // bucket.
    let started = now - 60;
    if started - started.rem_euclid(3600) == now - now.rem_euclid(3600) {
        let last = buckets.last().unwrap();
        for (kind, n) in expected {
            assert_eq!(last["counts"][kind], n, "{kind} this hour: {last:#}");
        }
    }

    let (status, daily) = api.get(&api.read, "/api/v1/stats?interval=day").await;
    assert_eq!(status, 200, "{daily}");
    assert_eq!(daily["interval"], "day");
    let days = daily["buckets"].as_array().unwrap();
    assert!(days.len() >= 30, "30 days: {}", days.len());
    assert!(days
        .iter()
        .all(|b| b["start"].as_str().unwrap().ends_with("T00:00:00Z")));
    assert_eq!(
        days.last().unwrap()["start"],
        rfc3339(now - now.rem_euclid(86400))
    );
    for (kind, n) in expected {
        assert_eq!(sum(days, kind), n, "{kind} per day: {daily:#}");
    }

    // A window given in RFC 3339 that holds the whole test.
    let since = rfc3339(now - 300);
    let until = rfc3339(now + 5);
    let (status, window) = api
        .get(
            &api.read,
            &format!("/api/v1/stats?interval=hour&since={since}&until={until}"),
        )
        .await;
    assert_eq!(status, 200, "{window}");
    let w = window["buckets"].as_array().unwrap();
    assert!((1..=2).contains(&w.len()), "{window:#}");
    for (kind, n) in expected {
        assert_eq!(sum(w, kind), n, "{kind} in the window: {window:#}");
    }

    let (status, e) = api.get(&api.read, "/api/v1/stats?interval=week").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(field(&e), "interval", "{e}");
    let (status, e) = api
        .get(&api.read, "/api/v1/stats?since=2000000000&until=1900000000")
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(field(&e), "until", "{e}");
    let (status, e) = api.get(&api.read, "/api/v1/stats?since=yesterday").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(field(&e), "since", "{e}");
    let (status, _) = api.get(&api.send, "/api/v1/stats").await;
    assert_eq!(status, 403, "a send key cannot read");

    // Metrics.
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    // Counters are for the whole process (other tests run alongside);
    // the gauge is this server's store.
    assert!(value("tern_recipients_delivered_total") >= 5.0, "{text}");
    assert!(value("tern_recipients_bounced_total") >= 2.0, "{text}");
    assert!(value("tern_recipients_suppressed_total") >= 2.0, "{text}");
    assert!(
        text.contains("# TYPE tern_delivery_latency_seconds histogram"),
        "{text}"
    );
    let count = value("tern_delivery_latency_seconds_count");
    assert!(count >= 5.0, "{text}");
    assert_eq!(
        value("tern_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    assert!(value("tern_delivery_latency_seconds_bucket{le=\"1\"}") <= count);
    value("tern_delivery_latency_seconds_sum");
    assert_eq!(
        value("tern_recipients{status=\"delivered\"}"),
        5.0,
        "{text}"
    );
    assert_eq!(value("tern_recipients{status=\"failed\"}"), 2.0, "{text}");
    assert_eq!(
        value("tern_recipients{status=\"suppressed\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(value("tern_recipients{status=\"queued\"}"), 0.0, "{text}");
    assert_eq!(value("tern_recipients{status=\"deferred\"}"), 0.0, "{text}");
}

/// Unix seconds as the API writes times: `YYYY-MM-DDTHH:MM:SSZ` (UTC),
/// by the civil-from-days algorithm.
fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let rem = t.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// --- webhooks ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_retried_and_logged() {
    let s = Setup::start(|c| {
        c.webhooks.retry = vec![secs(1), secs(1), secs(1)];
        c.webhooks.timeout = secs(5);
    })
    .await;
    let api = &s.api;
    let host = s.host();
    s.fake.set_script(|sc| {
        sc.rcpt_replies.insert(
            "dave@remote.test".into(),
            "550 5.1.1 no such user here".into(),
        );
    });

    // Fails twice per event, then takes it.
    let flaky = Receiver::start(2).await;
    // Takes everything.
    let all = Receiver::start(0).await;
    let bounces = Receiver::start(0).await;
    // Never takes anything.
    let broken = Receiver::start(usize::MAX).await;
    // Fails, and is removed before the retry.
    let removed = Receiver::start(usize::MAX).await;

    let create = |url: &str, events: Value, secret: Option<&str>| {
        let mut body = json!({"url": url, "events": events});
        if let Some(secret) = secret {
            body["secret"] = json!(secret);
        }
        async move {
            let (status, hook) = api.post(&api.admin, "/api/v1/webhooks", &body).await;
            assert_eq!(status, 201, "{hook}");
            assert!(hook["id"].as_str().unwrap().starts_with("wh_"), "{hook}");
            assert_eq!(hook["url"], body["url"]);
            let secret = hook["secret"].as_str().expect("shown once").to_string();
            (hook["id"].as_str().unwrap().to_string(), secret)
        }
    };
    let flaky_secret = "flaky-receiver-secret-0123456789";
    let (flaky_id, secret) = create(&flaky.url, json!(["delivered"]), Some(flaky_secret)).await;
    assert_eq!(secret, flaky_secret);
    let (all_id, all_secret) = create(&all.url, json!(["*"]), None).await;
    assert!(all_secret.len() >= 32, "a generated secret: {all_secret}");
    let (bounces_id, bounces_secret) = create(
        &bounces.url,
        json!(["bounced"]),
        Some("bounces-receiver-secret-000"),
    )
    .await;
    let (broken_id, broken_secret) = create(
        &broken.url,
        json!(["delivered"]),
        Some("broken-receiver-secret-000"),
    )
    .await;
    let (removed_id, _) = create(&removed.url, json!(["delivered"]), None).await;

    let (id, _) = api
        .send_mail(
            &["bob@remote.test"],
            "Receipt",
            &["receipt", "billing"],
            json!({"order": "A-17", "customer": "c_9"}),
        )
        .await;
    api.wait_status(&id, "bob@remote.test", "delivered").await;

    // The removed webhook's receiver sees the first attempt; after the
    // webhook is deleted there is no other.
    wait_until("first attempt at the removed webhook", 10, || {
        !removed.hits().is_empty()
    })
    .await;
    let (status, _) = api
        .delete(&api.admin, &format!("/api/v1/webhooks/{removed_id}"))
        .await;
    assert_eq!(status, 204);

    // A hard bounce: a `bounced` event, and a notice to alice (accepted
    // and delivered locally).
    let (bounce_id, _) = api
        .send_mail(&["dave@remote.test"], "Nobody", &["lost"], json!({}))
        .await;
    api.wait_status(&bounce_id, "dave@remote.test", "failed")
        .await;

    // The flaky receiver answered 500, 500, then 200.
    wait_until("the flaky receiver takes the delivered event", 20, || {
        flaky.about(&id).iter().any(|h| h.answered == 200)
    })
    .await;
    // The broken one's delivery runs out of retries: 1 + 3 attempts.
    let deadline = Instant::now() + Duration::from_secs(25);
    let failed = loop {
        let d = api.deliveries(&broken_id).await;
        if let Some(f) = d.iter().find(|d| d["status"] == "failed") {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "never failed: {d:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_until(
        "the notice's delivered event reaches every webhook",
        20,
        || {
            all.hits()
                .iter()
                .any(|h| h.json()["event"] == "delivered" && h.json()["message_id"] != id.as_str())
        },
    )
    .await;
    wait_until("the bounce reaches its webhook", 20, || {
        !bounces.hits().is_empty()
    })
    .await;
    // Nothing more comes after a 200 or the last failure.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // --- the flaky receiver: three signed POSTs of the same event.
    let hits = flaky.about(&id);
    check_signed(&flaky.hits(), flaky_secret);
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 500, 200],
        "exactly three POSTs: {hits:#?}"
    );
    assert!(
        verify_signature(&all_secret, hits[0].header("tern-signature"), &hits[0].body).is_none(),
        "another webhook's secret does not verify"
    );
    let delivery = hits[0].delivery().to_string();
    assert!(hits.iter().all(|h| h.delivery() == delivery), "{hits:#?}");
    assert!(
        hits.iter().all(|h| h.body == hits[0].body),
        "the same event"
    );
    let p = hits[0].json();
    assert_eq!(p["event"], "delivered", "{p:#}");
    assert_eq!(p["message_id"], id.as_str(), "{p:#}");
    assert_eq!(p["recipient"], "bob@remote.test", "{p:#}");
    assert_eq!(p["subject"], "Receipt", "{p:#}");
    assert_eq!(p["tags"], json!(["receipt", "billing"]), "{p:#}");
    assert_eq!(p["metadata"], json!({"order": "A-17", "customer": "c_9"}));
    assert_eq!(p["host"], host.as_str(), "{p:#}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("250 2.0.0 queued as FAKE"),
        "{p:#}"
    );
    let at = p["timestamp"].as_i64().expect("unix seconds");
    assert_eq!(p["time"], rfc3339(at), "{p:#}");
    let event_id = p["id"].as_i64().expect("the event's id");
    // The message's own timeline has that delivery at that time.
    let m = api.message(&id).await;
    let ev = events(&m, "bob@remote.test");
    assert_eq!(kinds(ev), ["accepted", "delivered"]);
    assert_eq!(ev[1]["at"], p["time"]);

    // ... and its log says so.
    let log = api.deliveries(&flaky_id).await;
    let d = log
        .iter()
        .find(|d| d["event_id"] == event_id)
        .unwrap_or_else(|| panic!("no delivery of event {event_id}: {log:#?}"));
    assert_eq!(d["id"].to_string(), delivery, "{d:#}");
    assert_eq!(d["status"], "delivered", "{d:#}");
    assert_eq!(d["attempts"], 3, "{d:#}");
    let attempts = d["attempt_log"].as_array().unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["status_code"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [500, 500, 200],
        "{d:#}"
    );
    assert_eq!(attempts[0]["error"], "HTTP 500", "{d:#}");
    assert!(attempts[2]["error"].is_null(), "{d:#}");
    let times: Vec<&str> = attempts.iter().map(|a| a["at"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "at least a second apart: {times:?}"
    );
    // The flaky webhook asked for `delivered` only: bob's and the notice's.
    let log_events: Vec<i64> = log
        .iter()
        .map(|d| d["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(log_events.len(), 2, "{log:#?}");
    assert!(flaky
        .hits()
        .iter()
        .all(|h| h.json()["event"] == "delivered"));

    // --- the broken receiver: 1 + 3 attempts, then given up.
    assert_eq!(failed["attempts"], 4, "{failed:#}");
    let codes: Vec<i64> = failed["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 500, 500], "{failed:#}");
    check_signed(&broken.hits(), &broken_secret);
    let failed_delivery = failed["id"].to_string();
    let broken_hits: Vec<Hit> = broken
        .hits()
        .into_iter()
        .filter(|h| h.delivery() == failed_delivery)
        .collect();
    assert_eq!(broken_hits.len(), 4, "{broken_hits:#?}");
    assert!(broken_hits.iter().all(|h| h.answered == 500));

    // --- the removed webhook: one attempt, none after the delete.
    assert_eq!(removed.hits().len(), 1, "{:#?}", removed.hits());
    let (status, _) = api
        .get(
            &api.admin,
            &format!("/api/v1/webhooks/{removed_id}/deliveries"),
        )
        .await;
    assert_eq!(status, 404);

    // --- "*": every event of both messages and the notice, once each.
    let hits = all.hits();
    check_signed(&hits, &all_secret);
    assert!(hits.iter().all(|h| h.answered == 200));
    let of = |mid: &str| -> Vec<String> {
        let mut k: Vec<String> = hits
            .iter()
            .map(|h| h.json())
            .filter(|p| p["message_id"] == mid)
            .map(|p| p["event"].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(of(&id), ["accepted", "delivered"]);
    assert_eq!(of(&bounce_id), ["accepted", "bounced"]);
    assert_eq!(hits.len(), 6, "plus the notice's two: {hits:#?}");

    // --- "bounced" only: the bounce, with its class, and nothing else.
    let hits = bounces.hits();
    check_signed(&hits, &bounces_secret);
    assert_eq!(hits.len(), 1, "{hits:#?}");
    let p = hits[0].json();
    assert_eq!(p["event"], "bounced", "{p:#}");
    assert_eq!(p["message_id"], bounce_id.as_str(), "{p:#}");
    assert_eq!(p["recipient"], "dave@remote.test", "{p:#}");
    assert_eq!(p["bounce"], "hard", "{p:#}");
    assert_eq!(p["tags"], json!(["lost"]), "{p:#}");
    assert!(
        p["detail"].as_str().unwrap().starts_with("550 5.1.1"),
        "{p:#}"
    );
    let log = api.deliveries(&bounces_id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"], 1);

    // Webhook metrics count the process's deliveries.
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tern_webhooks_delivered_total ",
        "tern_webhooks_failed_attempts_total ",
    ] {
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap();
        assert!(n >= 2, "{name}{n}");
    }
    let log = api.deliveries(&all_id).await;
    assert_eq!(log.len(), 6, "{log:#?}");
    assert!(log
        .iter()
        .all(|d| d["status"] == "delivered" && d["attempts"] == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_requests_are_checked_and_secrets_shown_once() {
    let t = TestServer::start().await;
    let api = Api::new(&t).await;
    let url = "http://127.0.0.1:9/hook";

    let invalid = [
        (
            json!({"url": "ftp://127.0.0.1/hook", "events": ["delivered"]}),
            "url",
        ),
        (json!({"url": "not a url", "events": ["delivered"]}), "url"),
        (json!({"url": "http://", "events": ["delivered"]}), "url"),
        (json!({"url": url, "events": ["opened"]}), "events[0]"),
        (
            json!({"url": url, "events": ["delivered", "clicked"]}),
            "events[1]",
        ),
        (json!({"url": url, "events": []}), "events"),
        (
            json!({"url": url, "events": ["delivered"], "secret": "too-short"}),
            "secret",
        ),
        (
            json!({"url": url, "events": ["delivered"], "secret": "x".repeat(201)}),
            "secret",
        ),
        (
            json!({"url": url, "events": ["delivered"], "secret": "sixteen-or-more\nchars"}),
            "secret",
        ),
        (json!({"events": ["delivered"]}), "url"),
        (
            json!({"url": url, "events": ["delivered"], "format": "xml"}),
            "format",
        ),
    ];
    for (body, wanted) in invalid {
        let (status, e) = api.post(&api.admin, "/api/v1/webhooks", &body).await;
        assert_eq!(status, 422, "{body} -> {e}");
        assert_eq!(e["error"]["code"], "invalid_field", "{e}");
        assert_eq!(field(&e), wanted, "{body} -> {e}");
    }
    // Only admin keys manage webhooks.
    let body = json!({"url": url, "events": ["delivered"]});
    let (status, _) = api.post(&api.read, "/api/v1/webhooks", &body).await;
    assert_eq!(status, 403);
    let (status, _) = api.get(&api.send, "/api/v1/webhooks").await;
    assert_eq!(status, 403);
    let (status, _) = api.post("tern_nonsense", "/api/v1/webhooks", &body).await;
    assert_eq!(status, 401);
    let (_, list) = api.get(&api.admin, "/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "nothing was created");

    // Created: the secret is in this answer and no other.
    let given = "a-secret-of-enough-length";
    let (status, a) = api
        .post(
            &api.admin,
            "/api/v1/webhooks",
            &json!({"url": url, "events": ["bounced", "delivered", "bounced"], "secret": given}),
        )
        .await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["secret"], given);
    assert_eq!(a["events"], json!(["bounced", "delivered"]), "deduplicated");
    let (status, b) = api
        .post(
            &api.admin,
            "/api/v1/webhooks",
            &json!({"url": "https://hooks.example.net/tern", "events": ["delivered", "*"]}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["events"], json!(["*"]));
    let generated = b["secret"].as_str().unwrap().to_string();
    assert!(generated.len() >= 32, "{b}");

    let r = api
        .http
        .get(format!("{}/api/v1/webhooks", api.base))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(given) && !text.contains(&generated),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    let hooks = list["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{list:#}");
    for h in hooks {
        assert!(h.get("secret").is_none(), "{h}");
        assert!(h["created_at"].as_str().unwrap().ends_with('Z'), "{h}");
    }
    let ids: Vec<&str> = hooks.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&a["id"].as_str().unwrap()) && ids.contains(&b["id"].as_str().unwrap()));

    // Deleted once; then it is gone.
    let path = format!("/api/v1/webhooks/{}", a["id"].as_str().unwrap());
    let (status, _) = api.delete(&api.read, &path).await;
    assert_eq!(status, 403);
    let (status, body) = api.delete(&api.admin, &path).await;
    assert_eq!(status, 204, "{body}");
    assert!(body.is_null(), "no body: {body}");
    let (status, e) = api.delete(&api.admin, &path).await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
    let (status, _) = api.get(&api.admin, &format!("{path}/deliveries")).await;
    assert_eq!(status, 404);
    let (_, list) = api.get(&api.admin, "/api/v1/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list["webhooks"][0]["id"], b["id"]);
}
