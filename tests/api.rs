//! The HTTP API over real HTTP: sending built and raw messages to a fake
//! remote MX and to local mailboxes, every validation error with the field
//! it names, header injection through every field, keys and scopes, the
//! queue, suppressions, search, and the operational endpoints.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::*;
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tern_auth::dkim::{self, Algorithm};
use tern_core::config::HumanDuration;

/// A client for one server's API.
struct Api {
    http: reqwest::Client,
    base: String,
}

/// An answer: status, header fields, and the body (as JSON when it is).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Api {
    fn new(t: &TestServer) -> Api {
        tern_smtp::tls::install_crypto_provider();
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: t.api_url(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        if let Some((content_type, bytes)) = body {
            if !content_type.is_empty() {
                req = req.header("Content-Type", content_type);
            }
            req = req.body(bytes);
        }
        let r = req.send().await.expect("the API answers");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request(
            Method::POST,
            path,
            Some(key),
            Some(("application/json", bytes)),
        )
        .await
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        self.request(Method::GET, path, Some(key), None).await
    }

    async fn delete(&self, path: &str, key: &str) -> Resp {
        self.request(Method::DELETE, path, Some(key), None).await
    }

    /// Sends a message and expects it queued; returns the answer's body.
    async fn send(&self, key: &str, body: &Value) -> Value {
        let r = self.post("/api/v1/messages", key, body).await;
        assert_eq!(r.status, 202, "{body} -> {}", r.text);
        r.json
    }

    /// The ids a search finds, in the order given.
    async fn search(&self, key: &str, query: &str) -> Vec<String> {
        let r = self.get(&format!("/api/v1/messages?{query}"), key).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        ids(&r.json["messages"])
    }

    /// Polls a message until every recipient's status is final.
    async fn wait_final(&self, key: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.get(&format!("/api/v1/messages/{id}"), key).await;
            assert_eq!(r.status, 200, "{}", r.text);
            let done = r.json["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| !matches!(r["status"].as_str(), Some("queued" | "deferred")));
            if done {
                return r.json;
            }
            assert!(Instant::now() < deadline, "not final in time: {}", r.json);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Checks an error answer: its status and the JSON error shape with this
/// code and field.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str, field: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let e = &r.json["error"];
    assert!(e.is_object(), "{what}: not the error shape: {}", r.text);
    assert_eq!(e["code"], code, "{what}: {}", r.text);
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {}",
        r.text
    );
    match field {
        Some(f) => assert_eq!(e["field"], f, "{what}: {}", r.text),
        None => assert!(e["field"].is_null(), "{what}: {}", r.text),
    }
}

/// The header fields of a message, unfolded, in order.
fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().expect("a continuation after a field");
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// The values of the fields of this name.
fn field(raw: &[u8], name: &str) -> Vec<String> {
    header_fields(raw)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Every line ends in CRLF: no bare LF, no bare CR.
fn crlf_only(raw: &[u8]) -> bool {
    raw.iter().enumerate().all(|(i, &b)| match b {
        b'\n' => i > 0 && raw[i - 1] == b'\r',
        b'\r' => raw.get(i + 1) == Some(&b'\n'),
        _ => true,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Adds local users (the test kit has alice) with a placeholder hash: only
/// their mailboxes matter here.
async fn add_users(t: &TestServer, names: &[&str]) {
    for n in names {
        t.server().store.add_user(n, "x", 0).await.unwrap();
    }
}

/// Nothing was queued: the admin search sees no message at all.
async fn assert_nothing_queued(api: &Api, admin: &str) {
    let r = api.get("/api/v1/messages", admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["messages"], json!([]), "nothing may be queued");
}

/// A request body as sent: its Content-Type (none when empty) and bytes.
type Body = (&'static str, Vec<u8>);

/// A request that would be sent: alice to herself.
fn valid() -> Value {
    json!({
        "from": "alice@example.test",
        "to": ["alice@example.test"],
        "subject": "hello",
        "text": "Hello.\n",
    })
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = valid();
    f(&mut v);
    v
}

const REMOTE_ZONE: &str = "
remote.test     MX 10 mx.remote.test
mx.remote.test  A 127.0.0.2
";

#[tokio::test(flavor = "multi_thread")]
async fn send_with_attachments_to_a_remote_mx() {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start(REMOTE_ZONE).await;
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let dns_addr = dns.addr;
    let t = TestServer::start_with(move |c| {
        c.dns.nameservers = vec![dns_addr];
        c.delivery.port = port;
        c.delivery.connect_timeout = HumanDuration(Duration::from_secs(2));
    })
    .await;
    let store = &t.server().store;
    store.add_domain("sender.test", 0).await.unwrap();
    let key = dkim::generate("sender.test", "s1", Algorithm::Ed25519, 0).unwrap();
    store.add_dkim_key(&key).await.unwrap();
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let read = t.api_key("dashboard", "read").await;

    let binary: Vec<u8> = (0..=255u8).collect();
    let notes = "Notes, line one.\r\nLine two: ünïcödé.\r\n";
    let text = "Hello Bob,\r\nThe report is attached.\r\n";
    // One line far over SMTP's 1000 octets: the message must be encoded
    // so that no line on the wire is that long.
    let html = format!(
        "<p>Hello Bob,</p><p>The report is <b>attached</b>.</p>{}",
        "<span>figure</span>".repeat(300)
    );
    let subject = "Quarterly report – Q3 ✓";
    let sent = api
        .send(
            &send,
            &json!({
                "from": "Ann Sender <ann@sender.test>",
                "to": ["Bob Remote <bob@remote.test>"],
                "cc": ["carol@remote.test"],
                "bcc": ["dave@remote.test"],
                "reply_to": "replies@sender.test",
                "subject": subject,
                "text": text,
                "html": html,
                "headers": {"X-Campaign": "autumn-2024"},
                "attachments": [
                    {"filename": "data.bin", "content_type": "application/octet-stream",
                     "content_base64": b64(&binary)},
                    {"filename": "notes.txt", "content_type": "text/plain",
                     "content_base64": b64(notes.as_bytes())},
                ],
                "tags": ["reports", "q3"],
                "metadata": {"customer": "42", "plan": "gold"},
            }),
        )
        .await;
    let id = sent["id"].as_str().expect("an id").to_string();
    assert_eq!(
        sent["recipients"],
        json!([
            {"address": "bob@remote.test", "status": "queued"},
            {"address": "carol@remote.test", "status": "queued"},
            {"address": "dave@remote.test", "status": "queued"},
        ])
    );

    let got = fake.wait_received(1, 15).await;
    assert_eq!(got.len(), 1);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let m = &got[0];
    assert!(
        m.mail_from.starts_with("<ann@sender.test>"),
        "{}",
        m.mail_from
    );
    let mut rcpts = m.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["bob@remote.test", "carol@remote.test", "dave@remote.test"],
        "Bcc is an envelope recipient"
    );
    let raw = &m.data;
    let raw_text = String::from_utf8_lossy(raw);
    assert!(crlf_only(raw), "{raw_text}");

    // Bcc travels only in the envelope.
    assert!(field(raw, "Bcc").is_empty(), "{raw_text}");
    assert!(!raw_text.contains("dave@"), "{raw_text}");
    // Tern's own fields.
    let received = field(raw, "Received");
    assert_eq!(received.len(), 1, "{raw_text}");
    assert!(
        received[0].contains(&format!("by mx.example.test (Tern) with HTTP id {id}")),
        "{received:?}"
    );
    assert!(
        !received[0].contains(" for <"),
        "three recipients: none named"
    );
    assert_eq!(
        field(raw, "Message-ID"),
        [format!("<{id}@mx.example.test>")]
    );
    assert_eq!(field(raw, "Date").len(), 1, "{raw_text}");
    let sigs = field(raw, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{raw_text}");
    assert!(
        sigs[0].contains("d=sender.test") && sigs[0].contains("s=s1"),
        "{sigs:?}"
    );
    assert_eq!(field(raw, "X-Campaign"), ["autumn-2024"]);
    assert_eq!(field(raw, "From").len(), 1);

    let parsed = MessageParser::default().parse(raw).expect("parses");
    let from = parsed.from().and_then(|a| a.first()).unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Ann Sender"), Some("ann@sender.test"))
    );
    let to: Vec<_> = parsed
        .to()
        .unwrap()
        .iter()
        .map(|a| (a.name(), a.address()))
        .collect();
    assert_eq!(to, [(Some("Bob Remote"), Some("bob@remote.test"))]);
    let cc: Vec<_> = parsed.cc().unwrap().iter().map(|a| a.address()).collect();
    assert_eq!(cc, [Some("carol@remote.test")]);
    assert_eq!(
        parsed
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("replies@sender.test")
    );
    assert_eq!(parsed.subject(), Some(subject));
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@mx.example.test").as_str())
    );
    assert!(parsed.date().is_some());
    let norm = |s: &str| s.replace("\r\n", "\n").trim_end().to_string();
    assert_eq!(norm(&parsed.body_text(0).expect("a text part")), norm(text));
    assert_eq!(
        norm(&parsed.body_html(0).expect("an html part")),
        norm(&html)
    );
    let attachments: Vec<_> = parsed
        .attachments()
        .map(|a| {
            let ct = a.content_type().expect("a content type");
            (
                a.attachment_name().map(str::to_string),
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(attachments.len(), 2, "{raw_text}");
    assert_eq!(
        attachments[0],
        (
            Some("data.bin".to_string()),
            "application/octet-stream".to_string(),
            binary
        )
    );
    assert_eq!(attachments[1].0.as_deref(), Some("notes.txt"));
    assert_eq!(attachments[1].1, "text/plain");
    assert_eq!(attachments[1].2, notes.as_bytes());

    // The message's record: every recipient delivered, with what it was
    // sent with.
    let view = api.wait_final(&read, &id).await;
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["sender"], "ann@sender.test");
    assert_eq!(view["subject"], subject);
    assert_eq!(view["tags"], json!(["reports", "q3"]));
    assert_eq!(view["metadata"], json!({"customer": "42", "plan": "gold"}));
    for r in view["recipients"].as_array().unwrap() {
        assert_eq!(r["status"], "delivered", "{view}");
        let kinds: Vec<&str> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"delivered"), "{view}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_to_a_local_mailbox() {
    let t = TestServer::start().await;
    add_users(&t, &["bob"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let read = t.api_key("dashboard", "read").await;
    let sent = api
        .send(
            &send,
            &json!({
                "from": "Alice <alice@example.test>",
                "to": ["bob@example.test"],
                "subject": "Lunch?",
                "text": "Noon at the usual place.\n",
                "html": "<p>Noon at the usual place.</p>",
            }),
        )
        .await;
    let id = sent["id"].as_str().unwrap();
    assert_eq!(
        sent["recipients"],
        json!([{"address": "bob@example.test", "status": "queued"}])
    );
    let raw = t.wait_mailbox(DOMAIN, "bob", 1).await.remove(0);
    let raw_text = String::from_utf8_lossy(&raw);
    assert!(crlf_only(&raw), "{raw_text}");
    assert_eq!(field(&raw, "Return-Path"), ["<alice@example.test>"]);
    let received = field(&raw, "Received");
    assert!(
        received[0].contains(&format!("with HTTP id {id}"))
            && received[0].contains("for <bob@example.test>"),
        "{received:?}"
    );
    // No DKIM key for example.test: no signature.
    assert!(field(&raw, "DKIM-Signature").is_empty());
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some("Lunch?"));
    assert_eq!(
        parsed.from().and_then(|a| a.first()).and_then(|a| a.name()),
        Some("Alice")
    );
    assert_eq!(
        parsed.body_text(0).unwrap().trim_end(),
        "Noon at the usual place."
    );
    assert!(parsed.body_html(0).unwrap().contains("<p>Noon"));
    assert!(t.mailbox(DOMAIN, "alice").is_empty());

    // The same address in To, Cc and Bcc (in any case) is one envelope
    // recipient: one copy.
    let sent = api
        .send(
            &send,
            &json!({
                "from": "alice@example.test",
                "to": ["bob@example.test"],
                "cc": ["Bob <Bob@example.test>"],
                "bcc": ["BOB@example.test"],
                "text": "once",
            }),
        )
        .await;
    assert_eq!(
        sent["recipients"],
        json!([{"address": "bob@example.test", "status": "queued"}])
    );
    api.wait_final(&read, sent["id"].as_str().unwrap()).await;
    let copies = t.wait_mailbox(DOMAIN, "bob", 2).await;
    assert!(field(&copies[1], "Bcc").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn send_raw_mime() {
    let t = TestServer::start().await;
    add_users(&t, &["bob", "carol", "dave"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let admin = t.api_key("ops", "admin").await;

    // Bare LF line ends; recipients from To, Cc and Bcc.
    let message = "From: Alice <alice@example.test>\n\
                   To: Bob <bob@example.test>\n\
                   Cc: carol@example.test\n\
                   Bcc: dave@example.test, BOB@example.test\n\
                   Subject: raw one\n\
                   Message-ID: <raw-1@client.test>\n\
                   \n\
                   line one\n\
                   line two\n";
    let r = api
        .post(
            "/api/v1/messages/raw",
            &send,
            &json!({"message": message, "tags": ["raw"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.json["recipients"],
        json!([
            {"address": "bob@example.test", "status": "queued"},
            {"address": "carol@example.test", "status": "queued"},
            {"address": "dave@example.test", "status": "queued"},
        ])
    );
    for user in ["bob", "carol", "dave"] {
        let raw = t.wait_mailbox(DOMAIN, user, 1).await.remove(0);
        let text = String::from_utf8_lossy(&raw).to_string();
        assert!(crlf_only(&raw), "bare LF became CRLF: {text:?}");
        assert!(field(&raw, "Bcc").is_empty(), "{text}");
        assert!(
            !text.contains("dave@example.test") || user == "dave",
            "{text}"
        );
        // The client's Message-ID is kept; Tern adds Date and its trace.
        assert_eq!(field(&raw, "Message-ID"), ["<raw-1@client.test>"]);
        assert_eq!(field(&raw, "Date").len(), 1, "{text}");
        assert!(
            field(&raw, "Received")[0].contains(&format!("with HTTP id {id}")),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nline one\r\nline two\r\n"), "{text}");
    }
    let view = api.get(&format!("/api/v1/messages/{id}"), &admin).await;
    assert_eq!(view.json["subject"], "raw one");
    assert_eq!(view.json["tags"], json!(["raw"]));

    // An explicit `to` replaces the header recipients.
    let r = api
        .post(
            "/api/v1/messages/raw",
            &send,
            &json!({
                "message": format!(
                    "From: alice@example.test\r\nTo: bob@example.test\r\nCc: carol@example.test\r\n\
                     Subject: only alice\r\n\r\nhi\r\n{}\r\n",
                    "m".repeat(998)
                ),
                "to": ["alice@example.test", "Alice@example.test"],
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        r.json["recipients"],
        json!([{"address": "alice@example.test", "status": "queued"}])
    );
    let raw = t.wait_mailbox(DOMAIN, "alice", 1).await.remove(0);
    assert!(String::from_utf8_lossy(&raw).contains("Subject: only alice"));
    assert!(String::from_utf8_lossy(&raw).ends_with(&format!("\r\n{}\r\n", "m".repeat(998))));
    api.wait_final(&admin, r.json["id"].as_str().unwrap()).await;
    assert_eq!(t.mailbox(DOMAIN, "bob").len(), 1);
    assert_eq!(t.mailbox(DOMAIN, "carol").len(), 1);

    // What the raw endpoint refuses, each with the field at fault.
    let cases: Vec<(Value, u16, &str, &str, &str)> = vec![
        (
            json!({"message": "From: alice@example.test\r\nTo: bob@example.test\r\n\r\nx\rBcc: y\r\n"}),
            422,
            "invalid_field",
            "message",
            "a bare CR",
        ),
        (
            json!({"message": "From: alice@example.test\nTo: bob@example.test\n\nx\0y\n"}),
            422,
            "invalid_field",
            "message",
            "NUL",
        ),
        (
            json!({"message": format!("From: alice@example.test\nTo: bob@example.test\n\n{}\n", "l".repeat(999))}),
            422,
            "invalid_field",
            "message",
            "a line over 1000 octets with its CRLF",
        ),
        (
            json!({"message": format!("From: alice@example.test\r\nTo: bob@example.test\r\nX-Long: {}\r\n\r\nx\r\n", "h".repeat(1000))}),
            422,
            "invalid_field",
            "message",
            "a header line over 1000 octets",
        ),
        (
            json!({"message": "To: bob@example.test\r\nSubject: who?\r\n\r\nx\r\n"}),
            422,
            "invalid_field",
            "message",
            "no From and no from",
        ),
        (
            json!({"message": " folded\r\nFrom: alice@example.test\r\nTo: bob@example.test\r\n\r\nx\r\n"}),
            422,
            "invalid_field",
            "message",
            "a folded first line",
        ),
        (
            json!({"message": format!(
                "From: alice@example.test\r\nTo: bob@example.test\r\n{}\r\nx\r\n",
                format!("X-Filler: {}\r\n", "h".repeat(60)).repeat(20_000)
            )}),
            413,
            "too_large",
            "message",
            "a header section over max_header_size",
        ),
        (
            json!({"message": "From: alice@example.test\r\nTo: bob@example.test\r\n"}),
            422,
            "invalid_field",
            "message",
            "no empty line after the header",
        ),
        (
            json!({"message": "no header at all\r\n\r\nbody\r\n"}),
            422,
            "invalid_field",
            "message",
            "not a header",
        ),
        (
            json!({"message": "From: alice@example.test\r\nSubject: nobody\r\n\r\nx\r\n"}),
            422,
            "invalid_field",
            "to",
            "no recipients",
        ),
        (
            json!({"message": "From: mallory@elsewhere.test\r\nTo: bob@example.test\r\n\r\nx\r\n",
                   "from": "alice@example.test"}),
            403,
            "forbidden",
            "message",
            "a From header in a foreign domain",
        ),
        (
            json!({"message": "From: alice@example.test\r\nFrom: mallory@elsewhere.test\r\nTo: bob@example.test\r\n\r\nx\r\n",
                   "from": "alice@example.test"}),
            422,
            "invalid_field",
            "message",
            "two From fields",
        ),
        (
            json!({"message": "From: mallory@elsewhere.test\r\nTo: bob@example.test\r\n\r\nx\r\n"}),
            403,
            "forbidden",
            "from",
            "an envelope sender in a foreign domain",
        ),
        (
            json!({"message": "From: alice@example.test\r\n\r\nx\r\n",
                   "to": ["bob@example.test", "not an address"]}),
            422,
            "invalid_field",
            "to[1]",
            "a bad explicit recipient",
        ),
        (
            json!({"message": "From: alice@example.test\r\n\r\nx\r\n",
                   "from": "alice@example.test\r\nBcc: x@elsewhere.test",
                   "to": ["bob@example.test"]}),
            422,
            "invalid_field",
            "from",
            "injection in from",
        ),
        (
            json!({"message": "From: alice@example.test\r\n\r\nx\r\n",
                   "to": ["bob@example.test\nBcc: x@elsewhere.test"]}),
            422,
            "invalid_field",
            "to[0]",
            "injection in to",
        ),
        (
            json!({"message": "From: alice@example.test\r\nTo: bob@example.test\r\n\r\nx\r\n",
                   "tags": ["a\nb"]}),
            422,
            "invalid_field",
            "tags[0]",
            "a control character in a tag",
        ),
        (
            json!({"message": "From: alice@example.test\r\nTo: bob@example.test\r\n\r\nx\r\n",
                   "cc": ["carol@example.test"]}),
            422,
            "invalid_field",
            "cc",
            "an unknown field",
        ),
    ];
    for (body, status, code, f, what) in &cases {
        let r = api.post("/api/v1/messages/raw", &send, body).await;
        assert_error(&r, *status, code, Some(f), what);
    }
    // Only the two good messages exist.
    let r = api.get("/api/v1/messages", &admin).await;
    assert_eq!(
        r.json["messages"].as_array().unwrap().len(),
        2,
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_validation_error_names_its_field() {
    let t = TestServer::start_with(|c| {
        c.limits.max_recipients = 3;
        c.limits.max_message_size = 20_000;
    })
    .await;
    add_users(&t, &["bob", "carol"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let admin = t.api_key("ops", "admin").await;

    // Not JSON at all, or not declared as JSON.
    let raw = |ct: &'static str, body: &'static str| (ct, body.as_bytes().to_vec());
    let bytes_cases: Vec<(Body, u16, &str, &str)> = vec![
        (
            raw("application/json", "{\"from\": "),
            400,
            "bad_request",
            "truncated JSON",
        ),
        (
            raw("application/json", "{from: 1}"),
            400,
            "bad_request",
            "not JSON",
        ),
        (
            raw(
                "application/json",
                "{\"from\":\"alice@example.test\",\"to\":[\"alice@example.test\"],\"text\":\"x\"} trailing",
            ),
            400,
            "bad_request",
            "trailing garbage",
        ),
        (raw("application/json", ""), 400, "bad_request", "empty body"),
        (
            raw("text/plain", "{\"from\":\"alice@example.test\"}"),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            raw("", "{\"from\":\"alice@example.test\"}"),
            415,
            "unsupported_media_type",
            "no Content-Type",
        ),
        (
            raw("application/x-www-form-urlencoded", "from=alice"),
            415,
            "unsupported_media_type",
            "a form",
        ),
    ];
    for (body, status, code, what) in bytes_cases {
        let r = api
            .request(Method::POST, "/api/v1/messages", Some(&send), Some(body))
            .await;
        assert_error(&r, status, code, None, what);
    }
    // JSON with parameters or a +json type is JSON.
    let body = serde_json::to_vec(&json!({"from": "alice@example.test"})).unwrap();
    let r = api
        .request(
            Method::POST,
            "/api/v1/messages",
            Some(&send),
            Some(("application/json; charset=utf-8", body)),
        )
        .await;
    assert_error(&r, 422, "invalid_field", Some("to"), "charset parameter");

    let long = "x".repeat(999);
    let many_tags: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    let many_meta: BTreeMap<String, String> = (0..21)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let big = b64(&vec![7u8; 30_000]);
    let att = |f: &str, ct: &str, b: &str| json!([{"filename": f, "content_type": ct, "content_base64": b}]);
    let cases: Vec<(Value, u16, &str, &str, &str)> = vec![
        (
            json!({"to": ["alice@example.test"], "text": "x"}),
            422,
            "invalid_field",
            "from",
            "missing from",
        ),
        (
            with(|v| v["tos"] = json!(["alice@example.test"])),
            422,
            "invalid_field",
            "tos",
            "unknown field",
        ),
        (
            with(|v| v["to"] = json!("alice@example.test")),
            422,
            "invalid_field",
            "to",
            "to is not a list",
        ),
        (
            with(
                |v| v["attachments"] = json!([{"filename": "a.txt", "content_type": "text/plain", "content_base64": "", "size": 1}]),
            ),
            422,
            "invalid_field",
            "attachments[0].size",
            "unknown attachment field",
        ),
        (
            with(|v| {
                v["attachments"] = json!([{"filename": "a.txt", "content_type": "text/plain"}])
            }),
            422,
            "invalid_field",
            "attachments[0].content_base64",
            "a missing attachment field",
        ),
        (
            with(|v| v["from"] = json!("not an address")),
            422,
            "invalid_field",
            "from",
            "bad from",
        ),
        (
            with(|v| v["from"] = json!("Alice <alice@>")),
            422,
            "invalid_field",
            "from",
            "from without a domain",
        ),
        (
            with(|v| v["from"] = json!("\"Evil <x>\" <alice@example.test>")),
            422,
            "invalid_field",
            "from",
            "a display name with angle brackets",
        ),
        (
            with(|v| v["to"] = json!(["alice@example.test", "bob at example.test"])),
            422,
            "invalid_field",
            "to[1]",
            "bad to[1]",
        ),
        (
            with(|v| v["cc"] = json!(["@example.test"])),
            422,
            "invalid_field",
            "cc[0]",
            "bad cc[0]",
        ),
        (
            with(|v| v["bcc"] = json!(["bob@"])),
            422,
            "invalid_field",
            "bcc[0]",
            "bad bcc[0]",
        ),
        (
            with(|v| v["reply_to"] = json!("replies")),
            422,
            "invalid_field",
            "reply_to",
            "bad reply_to",
        ),
        (
            with(|v| v["to"] = json!([])),
            422,
            "invalid_field",
            "to",
            "no recipients",
        ),
        (
            with(|v| {
                v["to"] = json!(["a@example.test", "b@example.test"]);
                v["cc"] = json!(["c@example.test"]);
                v["bcc"] = json!(["d@example.test"]);
            }),
            422,
            "invalid_field",
            "to",
            "too many recipients",
        ),
        (
            with(|v| {
                v.as_object_mut().unwrap().remove("text");
            }),
            422,
            "invalid_field",
            "text",
            "no body",
        ),
        (
            with(|v| {
                v["text"] = json!("");
                v["html"] = json!("");
            }),
            422,
            "invalid_field",
            "text",
            "empty bodies",
        ),
        (
            with(|v| v["subject"] = json!(long)),
            422,
            "invalid_field",
            "subject",
            "a subject longer than a line",
        ),
        (
            with(|v| v["attachments"] = att("big.bin", "application/octet-stream", &big)),
            413,
            "too_large",
            "attachments",
            "a message over the size limit",
        ),
        (
            with(|v| v["attachments"] = att("a.bin", "application/octet-stream", "abc")),
            422,
            "invalid_field",
            "attachments[0].content_base64",
            "base64 of odd length",
        ),
        (
            with(|v| v["attachments"] = att("a.bin", "application/octet-stream", "ab!$cd==")),
            422,
            "invalid_field",
            "attachments[0].content_base64",
            "base64 with invalid characters",
        ),
        (
            with(|v| {
                v["attachments"] = json!([
                    {"filename": "a.txt", "content_type": "text/plain", "content_base64": "aGk="},
                    {"filename": "b.txt", "content_type": "text/plain", "content_base64": "a===="},
                ])
            }),
            422,
            "invalid_field",
            "attachments[1].content_base64",
            "the second attachment's base64",
        ),
        (
            with(|v| v["attachments"] = att("a.pdf", "pdf", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].content_type",
            "a content type without a subtype",
        ),
        (
            with(|v| v["attachments"] = att("a.pdf", "application/", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].content_type",
            "an empty subtype",
        ),
        (
            with(|v| v["attachments"] = att("a.txt", "text/plain; charset=utf-8", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].content_type",
            "parameters in the content type",
        ),
        (
            with(|v| v["attachments"] = att("a.pdf", "application pdf/x", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].content_type",
            "a space in the content type",
        ),
        (
            with(|v| v["attachments"] = att("", "text/plain", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].filename",
            "an empty file name",
        ),
        (
            with(|v| v["attachments"] = att("../etc/passwd", "text/plain", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].filename",
            "a slash in the file name",
        ),
        (
            with(|v| v["attachments"] = att("a\"b.txt", "text/plain", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].filename",
            "a quote in the file name",
        ),
        (
            with(|v| v["attachments"] = att("a\\b.txt", "text/plain", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].filename",
            "a backslash in the file name",
        ),
        (
            with(|v| v["attachments"] = att(&"n".repeat(256), "text/plain", "aGk=")),
            422,
            "invalid_field",
            "attachments[0].filename",
            "a file name too long",
        ),
        (
            with(|v| v["headers"] = json!({"Bcc": "x@elsewhere.test"})),
            422,
            "invalid_field",
            "headers.Bcc",
            "Bcc in headers",
        ),
        (
            with(|v| v["headers"] = json!({"Content-Type": "text/html"})),
            422,
            "invalid_field",
            "headers.Content-Type",
            "Content-Type in headers",
        ),
        (
            with(|v| v["headers"] = json!({"from": "x@elsewhere.test"})),
            422,
            "invalid_field",
            "headers.from",
            "from (lower case) in headers",
        ),
        (
            with(|v| v["headers"] = json!({"DKIM-Signature": "v=1"})),
            422,
            "invalid_field",
            "headers.DKIM-Signature",
            "DKIM-Signature in headers",
        ),
        (
            with(|v| v["headers"] = json!({"Message-ID": "<x@y>"})),
            422,
            "invalid_field",
            "headers.Message-ID",
            "Message-ID in headers",
        ),
        (
            with(|v| v["headers"] = json!({"X Bad": "v"})),
            422,
            "invalid_field",
            "headers.X Bad",
            "a space in a header name",
        ),
        (
            with(|v| v["headers"] = json!({"X:Bad": "v"})),
            422,
            "invalid_field",
            "headers.X:Bad",
            "a colon in a header name",
        ),
        (
            with(|v| v["headers"] = json!({"": "v"})),
            422,
            "invalid_field",
            "headers.",
            "an empty header name",
        ),
        (
            with(|v| v["headers"] = json!({"X-Ünicode": "v"})),
            422,
            "invalid_field",
            "headers.X-Ünicode",
            "a non-ASCII header name",
        ),
        (
            with(|v| v["headers"] = json!({"X-Long": long})),
            422,
            "invalid_field",
            "headers.X-Long",
            "a header value longer than a line",
        ),
        (
            with(|v| v["tags"] = json!(many_tags)),
            422,
            "invalid_field",
            "tags",
            "21 tags",
        ),
        (
            with(|v| v["tags"] = json!(["ok", ""])),
            422,
            "invalid_field",
            "tags[1]",
            "an empty tag",
        ),
        (
            with(|v| v["tags"] = json!(["t".repeat(65)])),
            422,
            "invalid_field",
            "tags[0]",
            "a tag too long",
        ),
        (
            with(|v| v["metadata"] = json!(many_meta)),
            422,
            "invalid_field",
            "metadata",
            "21 metadata keys",
        ),
        (
            with(|v| v["metadata"] = json!({"bad key": "v"})),
            422,
            "invalid_field",
            "metadata.bad key",
            "a space in a metadata key",
        ),
        (
            with(|v| v["metadata"] = json!({"k": "v".repeat(1001)})),
            422,
            "invalid_field",
            "metadata.k",
            "a metadata value too long",
        ),
        (
            with(|v| v["metadata"] = json!({"k": 5})),
            422,
            "invalid_field",
            "metadata.k",
            "a metadata value that is not a string",
        ),
    ];
    for (body, status, code, f, what) in &cases {
        let r = api.post("/api/v1/messages", &send, body).await;
        assert_error(&r, *status, code, Some(f), what);
    }

    // A request body over the limit is refused before it is parsed.
    let huge = with(|v| v["text"] = json!("y".repeat(200_000)));
    let r = api.post("/api/v1/messages", &send, &huge).await;
    assert_error(&r, 413, "too_large", None, "an oversize request body");
    // Answered before the body was read: the connection closes after it,
    // and the answer says so (RFC 9112 9.6), or the client would send its
    // next request on a connection about to close.
    let connection = |r: &Resp| {
        r.headers
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(connection(&r).as_deref(), Some("close"));
    // A body read to its end leaves the connection open.
    let r = api
        .post("/api/v1/messages", &send, &with(|v| v["tags"] = json!(5)))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(connection(&r), None);
    // A small body that the route does not take is read all the same.
    let r = api
        .request(
            Method::POST,
            "/api/v1/queue/0123456789abcdef0123/retry",
            Some(&admin),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(connection(&r), None);

    // Limits are inclusive: 20 tags and metadata keys, 3 recipients.
    let tags: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let meta: BTreeMap<String, String> = (0..20)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    assert_nothing_queued(&api, &admin).await;
    let sent = api
        .send(
            &send,
            &with(|v| {
                v["to"] = json!(["alice@example.test"]);
                v["cc"] = json!(["bob@example.test"]);
                v["bcc"] = json!(["carol@example.test"]);
                v["tags"] = json!(tags);
                v["metadata"] = json!(meta);
            }),
        )
        .await;
    let r = api.get("/api/v1/messages", &admin).await;
    assert_eq!(ids(&r.json["messages"]), [sent["id"].as_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn header_injection_is_refused_in_every_field() {
    let t = TestServer::start().await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let admin = t.api_key("ops", "admin").await;

    let evil = "Bcc: mallory@elsewhere.test";
    for (sep, sep_name) in [("\r", "CR"), ("\n", "LF"), ("\r\n", "CRLF"), ("\0", "NUL")] {
        let addr = format!("alice@example.test{sep}{evil}");
        let named = format!("Alice{sep}{evil} <alice@example.test>");
        let value = format!("x{sep}{evil}");
        let name = format!("X-A{sep}Bcc");
        let key = format!("k{sep}x");
        let cases: Vec<(Value, String)> = vec![
            (with(|v| v["from"] = json!(addr)), "from".into()),
            (with(|v| v["from"] = json!(named)), "from".into()),
            (with(|v| v["to"] = json!([addr])), "to[0]".into()),
            (
                with(|v| v["to"] = json!(["alice@example.test", named])),
                "to[1]".into(),
            ),
            (with(|v| v["cc"] = json!([addr])), "cc[0]".into()),
            (with(|v| v["bcc"] = json!([addr])), "bcc[0]".into()),
            (with(|v| v["reply_to"] = json!(addr)), "reply_to".into()),
            (with(|v| v["subject"] = json!(value)), "subject".into()),
            (
                with(|v| v["headers"] = json!({"X-Tag": value})),
                "headers.X-Tag".into(),
            ),
            (
                with(|v| v["headers"] = json!({ name.clone(): "v" })),
                format!("headers.{name}"),
            ),
            (
                with(|v| {
                    v["attachments"] = json!([{"filename": format!("a{sep}b.txt"),
                        "content_type": "text/plain", "content_base64": "aGk="}])
                }),
                "attachments[0].filename".into(),
            ),
            (
                with(|v| {
                    v["attachments"] = json!([{"filename": "a.txt",
                        "content_type": format!("text/plain{sep}{evil}"), "content_base64": "aGk="}])
                }),
                "attachments[0].content_type".into(),
            ),
            (with(|v| v["tags"] = json!([value])), "tags[0]".into()),
            (
                with(|v| v["metadata"] = json!({"k": value})),
                "metadata.k".into(),
            ),
            (
                with(|v| v["metadata"] = json!({ key.clone(): "v" })),
                format!("metadata.{key}"),
            ),
        ];
        for (body, f) in &cases {
            let r = api.post("/api/v1/messages", &send, body).await;
            assert_error(
                &r,
                422,
                "invalid_field",
                Some(f),
                &format!("{sep_name} in {f}"),
            );
        }
    }
    // In a body, line breaks are text; NUL is not.
    for f in ["text", "html"] {
        let r = api
            .post("/api/v1/messages", &send, &with(|v| v[f] = json!("a\0b")))
            .await;
        assert_error(&r, 422, "invalid_field", Some(f), "NUL in a body");
    }

    assert_nothing_queued(&api, &admin).await;
    assert_eq!(t.queued().await, 0);
    assert!(t.mailbox(DOMAIN, "alice").is_empty());

    // The same request without the injection goes through, and carries
    // exactly the fields it was given.
    let sent = api
        .send(
            &send,
            &with(|v| {
                v["reply_to"] = json!("alice@example.test");
                v["headers"] = json!({"X-Tag": "x Bcc: mallory@elsewhere.test"});
            }),
        )
        .await;
    let raw = t.wait_mailbox(DOMAIN, "alice", 1).await.remove(0);
    assert!(field(&raw, "Bcc").is_empty());
    assert_eq!(field(&raw, "X-Tag"), ["x Bcc: mallory@elsewhere.test"]);
    api.wait_final(&admin, sent["id"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_scopes() {
    let t = TestServer::start().await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let read = t.api_key("dashboard", "read").await;
    let admin = t.api_key("ops", "admin").await;
    let old = t.api_key("old", "admin").await;
    t.server()
        .store
        .revoke_api_key("old", tern_core::unix_now())
        .await
        .unwrap();
    let body = serde_json::to_vec(&valid()).unwrap();
    let json_body = || Some(("application/json", body.clone()));

    // Without a live key: 401 with a Bearer challenge, whatever else is wrong.
    let wrong_secret = format!(
        "{}{}",
        &send[..send.len() - 1],
        if send.ends_with('a') { 'b' } else { 'a' }
    );
    let unknown_id = format!("tern_0123456789ab_{}", &send[send.len() - 32..]);
    let bad_auth: Vec<(Option<String>, &str)> = vec![
        (None, "no Authorization"),
        (Some(format!("Basic {}", b64(b"alice:pw"))), "Basic"),
        (Some(send.clone()), "no scheme"),
        (Some("Bearer ".into()), "an empty token"),
        (Some(format!("Bearer {wrong_secret}")), "a wrong secret"),
        (Some(format!("Bearer {unknown_id}")), "an unknown key id"),
        (Some("Bearer tern_zz_y".into()), "a malformed key"),
        (Some("Bearer garbage".into()), "garbage"),
        (Some(format!("Bearer {old}")), "a revoked key"),
    ];
    for (auth, what) in &bad_auth {
        let mut req = api.http.post(format!("{}/api/v1/messages", api.base));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized", "{what}");
    }
    // "bearer" in any case is the scheme.
    let r = api
        .http
        .get(format!("{}/api/v1/messages", api.base))
        .header("Authorization", format!("bEaReR {read}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An invalid body does not change the answer to a missing key.
    let invalid_bodies: Vec<(&str, Vec<u8>, &str)> = vec![
        ("application/json", b"{not json".to_vec(), "malformed JSON"),
        (
            "application/json",
            b"{\"tos\": 1}".to_vec(),
            "unknown field",
        ),
        ("text/plain", b"hello".to_vec(), "not JSON"),
        ("", b"hello".to_vec(), "no Content-Type"),
    ];
    for path in [
        "/api/v1/messages",
        "/api/v1/messages/raw",
        "/api/v1/suppressions",
    ] {
        for (ct, b, what) in &invalid_bodies {
            for key in [None, Some(old.as_str())] {
                let r = api
                    .request(Method::POST, path, key, Some((ct, b.clone())))
                    .await;
                assert_error(&r, 401, "unauthorized", None, &format!("{path}: {what}"));
                assert_eq!(r.headers["www-authenticate"], "Bearer");
            }
        }
    }
    // The key is checked before the body is read: a client without one
    // that announces a large body hears 401 without sending any of it, so
    // it cannot make Tern hold request bodies in memory.
    for path in [
        "/api/v1/messages",
        "/api/v1/messages/raw",
        "/api/v1/suppressions",
        "/api/v1/webhooks",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = api.base.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: 20000000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut head))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
        // And it says the connection closes: the body was not read.
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{path}: {head}"
        );
    }

    // Every /api/v1 route needs a key; the operational ones do not.
    for (method, path) in [
        (Method::GET, "/api/v1/messages"),
        (Method::GET, "/api/v1/messages/x"),
        (Method::GET, "/api/v1/stats"),
        (Method::GET, "/api/v1/queue"),
        (Method::POST, "/api/v1/queue/x/retry"),
        (Method::DELETE, "/api/v1/queue/x"),
        (Method::GET, "/api/v1/webhooks"),
        (Method::DELETE, "/api/v1/webhooks/x"),
        (Method::GET, "/api/v1/suppressions"),
        (Method::DELETE, "/api/v1/suppressions/x@example.test"),
    ] {
        let r = api.request(method.clone(), path, None, None).await;
        assert_error(&r, 401, "unauthorized", None, &format!("{method} {path}"));
    }

    // Scopes: read cannot send, send cannot read or administer.
    let r = api
        .request(Method::POST, "/api/v1/messages", Some(&read), json_body())
        .await;
    assert_error(&r, 403, "forbidden", None, "read key sends");
    let r = api
        .request(
            Method::POST,
            "/api/v1/messages/raw",
            Some(&read),
            json_body(),
        )
        .await;
    assert_error(&r, 403, "forbidden", None, "read key sends raw");
    for (method, path, key, what) in [
        (Method::GET, "/api/v1/messages", &send, "send key searches"),
        (Method::GET, "/api/v1/stats", &send, "send key reads stats"),
        (
            Method::GET,
            "/api/v1/suppressions",
            &send,
            "send key lists suppressions",
        ),
        (
            Method::GET,
            "/api/v1/queue",
            &send,
            "send key lists the queue",
        ),
        (
            Method::GET,
            "/api/v1/queue",
            &read,
            "read key lists the queue",
        ),
        (Method::DELETE, "/api/v1/queue/x", &send, "send key deletes"),
        (
            Method::POST,
            "/api/v1/queue/x/retry",
            &read,
            "read key retries",
        ),
        (
            Method::GET,
            "/api/v1/webhooks",
            &read,
            "read key lists webhooks",
        ),
        (
            Method::DELETE,
            "/api/v1/suppressions/x@example.test",
            &read,
            "read key unsuppresses",
        ),
    ] {
        let r = api.request(method, path, Some(key), None).await;
        assert_error(&r, 403, "forbidden", None, what);
    }
    let r = api
        .post(
            "/api/v1/suppressions",
            &read,
            &json!({"address": "x@example.test"}),
        )
        .await;
    assert_error(&r, 403, "forbidden", None, "read key suppresses");
    // Nothing so far was queued.
    assert_nothing_queued(&api, &admin).await;

    // Admin may do everything; each scope may do its own.
    let sent = api.send(&send, &valid()).await;
    let id = sent["id"].as_str().unwrap().to_string();
    let sent2 = api.send(&admin, &valid()).await;
    for key in [&read, &admin] {
        assert_eq!(api.get("/api/v1/messages", key).await.status, 200);
        assert_eq!(api.get("/api/v1/stats", key).await.status, 200);
        assert_eq!(api.get("/api/v1/suppressions", key).await.status, 200);
        let r = api.get(&format!("/api/v1/messages/{id}"), key).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(api.get("/api/v1/queue", &admin).await.status, 200);
    assert_eq!(api.get("/api/v1/webhooks", &admin).await.status, 200);
    t.wait_mailbox(DOMAIN, "alice", 2).await;
    api.wait_final(&admin, sent2["id"].as_str().unwrap()).await;

    // Sender identity: a domain neither local nor registered is refused,
    // and the refusal is counted.
    let r = api
        .post(
            "/api/v1/messages",
            &admin,
            &with(|v| v["from"] = json!("Mallory <mallory@elsewhere.test>")),
        )
        .await;
    assert_error(
        &r,
        403,
        "forbidden",
        Some("from"),
        "a foreign sender domain",
    );
    let until = tern_core::unix_now() + 3600;
    let r = api
        .get(&format!("/api/v1/stats?until={until}"), &read)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let count = |kind: &str| -> i64 {
        r.json["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["counts"][kind].as_i64().unwrap())
            .sum()
    };
    assert_eq!(count("rejected"), 1, "{}", r.text);
    assert_eq!(count("accepted"), 2, "{}", r.text);
    // Once the domain is registered, it may send.
    t.server()
        .store
        .add_domain("elsewhere.test", 0)
        .await
        .unwrap();
    api.send(
        &send,
        &with(|v| v["from"] = json!("Mallory <mallory@elsewhere.test>")),
    )
    .await;
    t.wait_mailbox(DOMAIN, "alice", 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_list_retry_and_delete() {
    // The test kit's DNS answers nothing: remote domains stay deferred.
    let t = TestServer::start().await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let admin = t.api_key("ops", "admin").await;
    let sent = api
        .send(
            &send,
            &with(|v| {
                v["to"] = json!(["bob@unreachable.test"]);
                v["subject"] = json!("stuck");
            }),
        )
        .await;
    let id = sent["id"].as_str().unwrap().to_string();

    let r = api.get("/api/v1/queue", &admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let queued = r.json["messages"].as_array().unwrap();
    assert_eq!(ids(&r.json["messages"]), [id.as_str()], "{}", r.text);
    assert_eq!(queued[0]["subject"], "stuck");
    assert_eq!(
        queued[0]["recipients"][0]["address"],
        "bob@unreachable.test"
    );
    assert!(
        matches!(
            queued[0]["recipients"][0]["status"].as_str(),
            Some("queued" | "deferred")
        ),
        "{}",
        r.text
    );
    assert!(queued[0]["recipients"][0]["next_attempt"].is_string());

    // Wait for the first attempt to fail, then retry at once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = api.get(&format!("/api/v1/messages/{id}"), &admin).await;
        if r.json["recipients"][0]["status"] == "deferred" {
            break;
        }
        assert!(Instant::now() < deadline, "never deferred: {}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = api
        .request(
            Method::POST,
            &format!("/api/v1/queue/{id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"id": id, "recipients": 1}));

    let r = api.delete(&format!("/api/v1/queue/{id}"), &admin).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let r = api.get("/api/v1/queue", &admin).await;
    assert_eq!(r.json["messages"], json!([]), "{}", r.text);
    let r = api.delete(&format!("/api/v1/queue/{id}"), &admin).await;
    assert_error(&r, 404, "not_found", None, "deleted twice");
    let r = api
        .request(
            Method::POST,
            &format!("/api/v1/queue/{id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_error(&r, 404, "not_found", None, "retry after delete");
    // Out of the queue, but its history stays: the recipient is failed
    // and its timeline ends with `deleted`.
    let r = api.get(&format!("/api/v1/messages/{id}"), &admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rcpt = &r.json["recipients"][0];
    assert_eq!(rcpt["status"], "failed", "{}", r.text);
    assert_eq!(rcpt["detail"], "deleted from the queue", "{}", r.text);
    let kinds: Vec<&str> = rcpt["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"deleted"), "{}", r.text);
    assert_eq!(t.queued().await, 0);

    let unknown = tern_core::MessageId::generate().to_string();
    for path in [
        format!("/api/v1/queue/{unknown}"),
        "/api/v1/queue/not-an-id".to_string(),
    ] {
        let r = api.delete(&path, &admin).await;
        assert_error(&r, 404, "not_found", None, &path);
        let r = api
            .request(Method::POST, &format!("{path}/retry"), Some(&admin), None)
            .await;
        assert_error(&r, 404, "not_found", None, &path);
    }

    // A message whose recipients are all final is not in the queue, and
    // has nothing to retry.
    let local = api.send(&send, &valid()).await;
    let local_id = local["id"].as_str().unwrap();
    api.wait_final(&admin, local_id).await;
    let r = api.get("/api/v1/queue", &admin).await;
    assert_eq!(r.json["messages"], json!([]), "{}", r.text);
    let r = api
        .request(
            Method::POST,
            &format!("/api/v1/queue/{local_id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_error(&r, 404, "not_found", None, "retry of a delivered message");
}

#[tokio::test(flavor = "multi_thread")]
async fn suppressed_recipients_are_never_sent_to() {
    let t = TestServer::start().await;
    add_users(&t, &["bob"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let read = t.api_key("dashboard", "read").await;
    let admin = t.api_key("ops", "admin").await;

    let r = api
        .post(
            "/api/v1/suppressions",
            &admin,
            &json!({"address": "Bob@Example.test", "reason": "complained"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["address"], "bob@example.test");
    assert_eq!(r.json["reason"], "complained");
    assert_eq!(r.json["source"], "manual");
    for (body, f) in [
        (json!({"address": "not an address"}), "address"),
        (
            json!({"address": "x@example.test", "reason": "a\nb"}),
            "reason",
        ),
        (json!({"address": "x@example.test", "why": "x"}), "why"),
        (json!({"reason": "x"}), "address"),
    ] {
        let r = api.post("/api/v1/suppressions", &admin, &body).await;
        assert_error(&r, 422, "invalid_field", Some(f), &body.to_string());
    }

    let r = api.get("/api/v1/suppressions", &read).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json["suppressions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["address"], "bob@example.test");
    assert_eq!(list[0]["reason"], "complained");

    // One message, two recipients: the suppressed one is recorded and never
    // attempted, the other is delivered.
    let sent = api
        .send(
            &send,
            &with(|v| v["to"] = json!(["alice@example.test", "Bob@example.test"])),
        )
        .await;
    assert_eq!(
        sent["recipients"],
        json!([
            // A local recipient is named by its mailbox, as delivered.
            {"address": "alice@example.test", "status": "queued"},
            {"address": "bob@example.test", "status": "suppressed"},
        ])
    );
    let id = sent["id"].as_str().unwrap();
    t.wait_mailbox(DOMAIN, "alice", 1).await;
    let view = api.wait_final(&read, id).await;
    let statuses: Vec<(&str, &str)> = view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("alice@example.test", "delivered"),
            ("bob@example.test", "suppressed")
        ]
    );
    assert!(t.mailbox(DOMAIN, "bob").is_empty());
    let ids_found = api.search(&read, "status=suppressed").await;
    assert_eq!(ids_found, [id]);

    // A message only to suppressed recipients is accepted and goes nowhere.
    let sent = api
        .send(&send, &with(|v| v["to"] = json!(["bob@example.test"])))
        .await;
    assert_eq!(sent["recipients"][0]["status"], "suppressed");
    let view = api.wait_final(&read, sent["id"].as_str().unwrap()).await;
    assert_eq!(view["recipients"][0]["status"], "suppressed");

    let r = api
        .delete("/api/v1/suppressions/BOB@example.test", &admin)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api
        .delete("/api/v1/suppressions/bob@example.test", &admin)
        .await;
    assert_error(&r, 404, "not_found", None, "removed twice");
    let r = api.get("/api/v1/suppressions", &read).await;
    assert_eq!(r.json["suppressions"], json!([]));
    assert!(t.mailbox(DOMAIN, "bob").is_empty());

    // Off the list, mail to it is sent again.
    let sent = api
        .send(&send, &with(|v| v["to"] = json!(["bob@example.test"])))
        .await;
    assert_eq!(sent["recipients"][0]["status"], "queued");
    t.wait_mailbox(DOMAIN, "bob", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn search_and_operational_endpoints() {
    let t = TestServer::start().await;
    add_users(&t, &["bob", "dave"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let read = t.api_key("dashboard", "read").await;

    let start = tern_core::unix_now();
    let mut sent = Vec::new();
    for (from, to, subject, tags) in [
        (
            "alice@example.test",
            "bob@example.test",
            "Invoice 1",
            json!(["billing"]),
        ),
        (
            "carol@example.test",
            "dave@example.test",
            "Welcome aboard",
            json!(["onboarding"]),
        ),
        (
            "alice@example.test",
            "Dave@example.test",
            "Invoice 2 (100%)",
            json!(["billing", "urgent"]),
        ),
    ] {
        let body = json!({"from": from, "to": [to], "subject": subject, "text": "x",
                          "tags": tags, "metadata": {"n": sent.len().to_string()}});
        let r = api.send(&send, &body).await;
        sent.push(r["id"].as_str().unwrap().to_string());
    }
    t.wait_mailbox(DOMAIN, "bob", 1).await;
    t.wait_mailbox(DOMAIN, "dave", 2).await;
    for id in &sent {
        api.wait_final(&read, id).await;
    }
    let (m1, m2, m3) = (sent[0].as_str(), sent[1].as_str(), sent[2].as_str());
    let set = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let of = |ids: &[&str]| {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };

    assert_eq!(set(api.search(&read, "").await), of(&[m1, m2, m3]));
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("recipient=dave@example.test".into(), vec![m2, m3]),
        ("recipient=DAVE%40EXAMPLE.TEST".into(), vec![m2, m3]),
        ("recipient=bob@example.test".into(), vec![m1]),
        ("recipient=nobody@example.test".into(), vec![]),
        ("sender=alice@example.test".into(), vec![m1, m3]),
        ("sender=Carol@Example.test".into(), vec![m2]),
        ("subject=invoice".into(), vec![m1, m3]),
        ("subject=WELCOME".into(), vec![m2]),
        ("subject=100%25".into(), vec![m3]),
        ("subject=%25".into(), vec![m3]),
        ("subject=_nvoice".into(), vec![]),
        ("tag=billing".into(), vec![m1, m3]),
        ("tag=urgent".into(), vec![m3]),
        ("tag=bill".into(), vec![]),
        (
            "tag=billing&sender=alice@example.test&recipient=dave@example.test".into(),
            vec![m3],
        ),
        ("status=delivered".into(), vec![m1, m2, m3]),
        ("status=failed".into(), vec![]),
        ("status=queued".into(), vec![]),
        (format!("since={start}"), vec![m1, m2, m3]),
        (format!("since={}", start + 3600), vec![]),
        ("until=2000-01-01T00:00:00Z".into(), vec![]),
        (format!("until={}", start + 3600), vec![m1, m2, m3]),
        ("since=2000-01-01T00:00:00%2B02:00".into(), vec![m1, m2, m3]),
    ];
    for (query, expected) in &cases {
        assert_eq!(set(api.search(&read, query).await), of(expected), "{query}");
    }
    // Newest first.
    let all = api.get("/api/v1/messages", &read).await;
    let created: Vec<&str> = all.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    assert!(all.json["next_cursor"].is_null());
    let third = &all.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == m3)
        .unwrap()
        .clone();
    assert_eq!(third["tags"], json!(["billing", "urgent"]));
    assert_eq!(third["metadata"], json!({"n": "2"}));
    assert_eq!(third["sender"], "alice@example.test");

    // Paging: two, then the rest, nothing twice.
    let r = api.get("/api/v1/messages?limit=2", &read).await;
    let page1 = ids(&r.json["messages"]);
    assert_eq!(page1.len(), 2);
    let cursor = r.json["next_cursor"]
        .as_str()
        .expect("a cursor")
        .to_string();
    let r = api
        .get(&format!("/api/v1/messages?limit=2&cursor={cursor}"), &read)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page2 = ids(&r.json["messages"]);
    assert_eq!(page2.len(), 1, "{}", r.text);
    assert!(r.json["next_cursor"].is_null());
    assert_eq!(set([page1, page2].concat()), of(&[m1, m2, m3]));
    let r = api.get("/api/v1/messages?limit=1&tag=billing", &read).await;
    let first = ids(&r.json["messages"]);
    let cursor = r.json["next_cursor"].as_str().unwrap().to_string();
    let r = api
        .get(
            &format!("/api/v1/messages?limit=1&tag=billing&cursor={cursor}"),
            &read,
        )
        .await;
    assert_eq!(
        set([first, ids(&r.json["messages"])].concat()),
        of(&[m1, m3])
    );

    for (query, f) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=many", "limit"),
        ("cursor=%21%21", "cursor"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("status=bounced", "status"),
        ("since=yesterday", "since"),
        ("until=2024-13-01", "until"),
    ] {
        let r = api.get(&format!("/api/v1/messages?{query}"), &read).await;
        assert_error(&r, 400, "bad_request", Some(f), query);
    }

    // One message, with its timeline.
    let r = api.get(&format!("/api/v1/messages/{m1}"), &read).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["subject"], "Invoice 1");
    let rcpt = &r.json["recipients"][0];
    assert_eq!(rcpt["address"], "bob@example.test");
    assert_eq!(rcpt["status"], "delivered");
    let kinds: Vec<&str> = rcpt["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"delivered"), "{}", r.text);
    let unknown = tern_core::MessageId::generate().to_string();
    for id in [unknown.as_str(), "not-an-id"] {
        let r = api.get(&format!("/api/v1/messages/{id}"), &read).await;
        assert_error(&r, 404, "not_found", None, id);
    }

    // Statistics.
    let until = tern_core::unix_now() + 3600;
    let r = api
        .get(&format!("/api/v1/stats?interval=day&until={until}"), &read)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["interval"], "day");
    let delivered: i64 = r.json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["counts"]["delivered"].as_i64().unwrap())
        .sum();
    assert_eq!(delivered, 3, "{}", r.text);
    let r = api.get("/api/v1/stats?interval=week", &read).await;
    assert_error(&r, 400, "bad_request", Some("interval"), "interval=week");

    // Operations: no key needed.
    let r = api.request(Method::GET, "/healthz", None, None).await;
    assert_eq!((r.status, &r.json), (200, &json!({"status": "ok"})));
    let r = api.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let accepted: u64 = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("tern_messages_accepted_total "))
        .expect("the accepted counter")
        .parse()
        .unwrap();
    assert!(accepted >= 3, "{}", r.text);
    assert!(r
        .text
        .contains("# TYPE tern_messages_accepted_total counter"));
    assert!(
        r.text.contains("tern_recipients{status=\"delivered\"} 3"),
        "{}",
        r.text
    );

    let r = api
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{}",
        r.text
    );
    let paths = &r.json["paths"];
    assert!(paths["/api/v1/messages"]["post"].is_object(), "{paths}");
    assert!(paths["/api/v1/messages"]["get"].is_object(), "{paths}");
    assert!(paths["/api/v1/messages/raw"]["post"].is_object(), "{paths}");
    assert!(paths["/api/v1/suppressions"].is_object(), "{paths}");

    for path in ["/api/v1/nope", "/nope", "/api/v2/messages"] {
        let r = api.request(Method::GET, path, Some(&read), None).await;
        assert_error(&r, 404, "not_found", None, path);
    }
    // A method an endpoint does not take: 405 in the same error shape.
    let r = api
        .request(Method::DELETE, "/api/v1/messages", Some(&read), None)
        .await;
    assert_error(
        &r,
        405,
        "method_not_allowed",
        None,
        "DELETE /api/v1/messages",
    );
}

/// Recipients in local domains are checked as SMTP's RCPT checks them: an
/// unknown mailbox is refused (nothing is queued, no mailbox is made) and
/// an alias becomes its targets.
#[tokio::test(flavor = "multi_thread")]
async fn local_recipients_are_checked_like_rcpt() {
    let t = TestServer::start_with(|c| {
        c.aliases
            .insert("team@example.test".into(), vec!["bob@example.test".into()]);
    })
    .await;
    add_users(&t, &["bob"]).await;
    let api = Api::new(&t);
    let send = t.api_key("app", "send").await;
    let body =
        |to: &str| json!({"from": "alice@example.test", "to": [to], "subject": "s", "text": "x"});
    let r = api
        .post("/api/v1/messages", &send, &body("nosuchuser@example.test"))
        .await;
    assert_error(
        &r,
        422,
        "invalid_field",
        Some("to"),
        "unknown local mailbox",
    );
    assert!(r.text.contains("nosuchuser@example.test"), "{}", r.text);
    assert!(!t.maildir(DOMAIN, "nosuchuser").exists());
    assert_eq!(t.queued().await, 0);

    let sent = api.send(&send, &body("team@example.test")).await;
    assert_eq!(
        sent["recipients"],
        json!([{"address": "bob@example.test", "status": "queued"}])
    );
    t.wait_mailbox(DOMAIN, "bob", 1).await;
}

/// `[api] tls = true`: HTTPS with the server's certificate (here the one
/// it generated), and nothing in plain HTTP; the trace header says HTTPS.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_over_https() {
    tern_smtp::tls::install_crypto_provider();
    let t = TestServer::start_with(|c| c.api.tls = true).await;
    add_users(&t, &["bob"]).await;
    let key = t.api_key("app", "send").await;
    let addr = t.server().api.unwrap();
    let cert = std::fs::read(t.cert_pem()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let r = client
        .post(format!("https://localhost:{}/api/v1/messages", addr.port()))
        .bearer_auth(&key)
        .json(
            &json!({"from": "alice@example.test", "to": ["bob@example.test"],
                      "subject": "over TLS", "text": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let raw = t.wait_mailbox(DOMAIN, "bob", 1).await.remove(0);
    assert!(String::from_utf8_lossy(&raw).contains("with HTTPS id"));
    // Plain HTTP to the TLS port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP must not be served on the TLS port"
    );
}
