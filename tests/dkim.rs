//! Sender domains: mail Tern signs verifies with an independent verifier
//! (Python's dkimpy) against the DNS record Tern prints, for RSA and
//! Ed25519, plain and MIME messages, sent over SMTP or the HTTP API; and an
//! authenticated user may only send as its allowed domains.

mod common;

use std::net::IpAddr;
use std::process::Command;

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::*;
use tern_auth::dkim::{self, Algorithm};

const SENDER_DOMAIN: &str = "sender.test";

/// A server with `sender.test` registered with the given keys, delivering
/// to a fake MX for remote.test; returns the DNS records printed for it.
async fn setup(algorithms: &[Algorithm]) -> (TestServer, FakeSmtp, Vec<dkim::DnsRecord>, TestDns) {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let port = free_port(&[ip]);
    let dns = TestDns::start("remote.test A 127.0.0.2\n").await;
    let fake = FakeSmtp::start(ip, port, Script::default()).await;
    let dns_addr = dns.addr;
    let t = TestServer::start_with(move |c| {
        c.dns.nameservers = vec![dns_addr];
        c.delivery.port = port;
    })
    .await;
    let store = &t.server().store;
    store.add_domain(SENDER_DOMAIN, 0).await.unwrap();
    let mut keys = Vec::new();
    for (i, a) in algorithms.iter().enumerate() {
        let key = dkim::generate(SENDER_DOMAIN, &format!("s{i}"), *a, 0).unwrap();
        store.add_dkim_key(&key).await.unwrap();
        keys.push(key);
    }
    let records = dkim::suggested_records(SENDER_DOMAIN, &keys, "mx.example.test", false);
    (t, fake, records, dns)
}

async fn submit(t: &TestServer, from: &str, body: &str) -> Reply {
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    c.cmd("RCPT TO:<rcpt@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(body.replace("\r\n.", "\r\n..").as_bytes()).await;
    c.send(b".\r\n").await;
    c.read().await
}

/// Verifies every DKIM-Signature of `message` with dkimpy, serving the
/// printed records as DNS. Returns dkimpy's verdict per signature.
fn dkimpy_verify(message: &[u8], records: &[dkim::DnsRecord]) -> Vec<bool> {
    assert!(
        Command::new("python3")
            .args(["-c", "import dkim, nacl"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        "python3 with dkimpy and pynacl is needed (pip install dkimpy pynacl)"
    );
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg.eml");
    std::fs::write(&msg, message).unwrap();
    let zone: String = records
        .iter()
        .filter(|r| r.kind == "TXT")
        .map(|r| format!("{}.\t{}\n", r.name, r.value))
        .collect();
    let zone_file = dir.path().join("zone");
    std::fs::write(&zone_file, zone).unwrap();
    let script = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
records = {}
for line in open(sys.argv[2]):
    name, value = line.rstrip("\n").split("\t", 1)
    records[name.encode()] = value.encode()
def dns(name, timeout=5):
    return records.get(name)
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
def check(i):
    try:
        return "pass" if d.verify(idx=i, dnsfunc=dns) else "fail"
    except dkim.DKIMException as e:
        print("signature %d: %s" % (i, e), file=sys.stderr)
        return "fail"
print(" ".join(check(i) for i in range(n)))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&msg)
        .arg(&zone_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w == "pass")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ed25519_signatures_verify_with_dkimpy() {
    let (t, fake, records, _dns) = setup(&[Algorithm::Rsa2048, Algorithm::Ed25519]).await;
    let body = "From: Alice <alice@sender.test>\r\nTo: rcpt@remote.test\r\nSubject: signed\r\n\r\nHello,\r\n.this line starts with a dot\r\n";
    let r = submit(&t, "alice@sender.test", body).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let got = fake.wait_received(1, 15).await;
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    assert!(
        text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    assert!(text.contains("c=relaxed/relaxed"), "{text}");
    // From is oversigned: listed once more than it occurs.
    let h = text
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(h.matches("from").count(), 2, "h={h}");
    assert_eq!(dkimpy_verify(&got[0].data, &records), [true, true]);
    // Tampering is caught.
    let tampered = text.replace("Hello,", "Hullo,");
    assert_eq!(dkimpy_verify(tampered.as_bytes(), &records), [false, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mime_message_with_attachments_verifies() {
    let (t, fake, records, _dns) = setup(&[Algorithm::Ed25519]).await;
    let mime = mail_builder::MessageBuilder::new()
        .from(("Alice", "alice@sender.test"))
        .to("rcpt@remote.test")
        .subject("Quarterly report: caf\u{e9}")
        .text_body("See the attachments.\n")
        .html_body("<p>See the <b>attachments</b>.</p>")
        .attachment(
            "application/pdf",
            "report.pdf",
            vec![0u8, 1, 2, 3, 255, 254, 10, 13, 46],
        )
        .attachment("text/csv", "data.csv", "a,b\n1,2\n")
        .write_to_string()
        .unwrap();
    let r = submit(&t, "alice@sender.test", &mime).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let got = fake.wait_received(1, 15).await;
    assert_eq!(dkimpy_verify(&got[0].data, &records), [true]);
}

/// A message too large to hold in memory (received into a file) is signed
/// without being joined to the header fields Tern adds in front of it
/// (trace, Message-ID, Date): the signatures still cover all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_received_into_a_file_verifies() {
    let (t, fake, records, _dns) = setup(&[Algorithm::Rsa2048, Algorithm::Ed25519]).await;
    let mut body = String::from(
        "From: Alice <alice@sender.test>\r\nTo: rcpt@remote.test\r\nSubject: big\r\n\r\n",
    );
    let mut n = 0;
    while body.len() < 3 << 20 {
        n += 1;
        body.push_str(&format!(
            "{n:08} the quick brown fox jumps over the lazy dog\r\n"
        ));
    }
    let r = submit(&t, "alice@sender.test", &body).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let got = fake.wait_received(1, 30).await;
    let data = &got[0].data;
    assert!(
        data.ends_with(body.as_bytes()),
        "the message follows intact"
    );
    let head = String::from_utf8_lossy(&data[..data.len() - body.len()]);
    assert!(head.contains("Message-ID: <"), "{head}");
    assert!(head.contains("\r\nDate: "), "{head}");
    assert_eq!(dkimpy_verify(data, &records), [true, true]);
}

/// POSTs `body` to the API path with a send key; the answer's JSON.
async fn api_send(
    t: &TestServer,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    tern_smtp::tls::install_crypto_provider();
    let r = reqwest::Client::new()
        .post(format!("{}{path}", t.api_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_sent_through_the_http_api_verifies() {
    use base64::Engine;
    let (t, fake, records, _dns) = setup(&[Algorithm::Rsa2048, Algorithm::Ed25519]).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    // Built by Tern from JSON: multipart, an attachment, 8-bit text, a
    // display name and a header of the caller's.
    let key = t.api_key("reports", "send").await;
    let sent = api_send(
        &t,
        &key,
        "/api/v1/messages",
        serde_json::json!({
            "from": "Alice Example <alice@sender.test>",
            "to": ["Rcpt <rcpt@remote.test>"],
            "subject": "Quarterly report: caf\u{e9}",
            "text": "See the attachment.\n.A line that starts with a dot\n",
            "html": "<p>See the <b>attachment</b>.</p>",
            "headers": {"X-Campaign": "q3"},
            "attachments": [
                {"filename": "report.pdf", "content_type": "application/pdf", "content_base64": b64(&pdf)},
                {"filename": "data.csv", "content_type": "text/csv", "content_base64": b64(b"a,b\n1,2\n")}
            ],
            "tags": ["reports"]
        }),
    )
    .await;
    assert_eq!(sent["recipients"][0]["status"], "queued", "{sent}");
    let got = fake.wait_received(1, 15).await;
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    assert!(text.contains("multipart/mixed"), "{text}");
    assert!(text.contains("report.pdf"), "{text}");
    assert_eq!(dkimpy_verify(&got[0].data, &records), [true, true]);
    let tampered = text.replacen("See the attachment.", "See the attachments", 1);
    assert_ne!(tampered, text);
    assert_eq!(dkimpy_verify(tampered.as_bytes(), &records), [false, false]);

    // Sent as it is (raw MIME with bare LF line ends).
    let mime = mail_builder::MessageBuilder::new()
        .from(("Alice", "alice@sender.test"))
        .to("rcpt@remote.test")
        .subject("Raw through the API")
        .text_body("Hello.\n")
        .attachment("application/octet-stream", "blob.bin", vec![0u8, 1, 2, 255])
        .write_to_string()
        .unwrap()
        .replace("\r\n", "\n");
    api_send(
        &t,
        &key,
        "/api/v1/messages/raw",
        serde_json::json!({"message": mime}),
    )
    .await;
    let got = fake.wait_received(2, 15).await;
    assert_eq!(dkimpy_verify(&got[1].data, &records), [true, true]);
}

#[tokio::test]
async fn sending_as_a_domain_the_user_may_not_use_is_refused() {
    let (t, _fake, _records, _dns) = setup(&[Algorithm::Ed25519]).await;
    // MAIL FROM in a domain the user may not use.
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    let r = c.cmd("MAIL FROM:<ceo@bank.test>", "553 5.7.1").await;
    assert!(r.text().contains("bank.test"), "{:?}", r.lines);
    // An allowed envelope, but a From header in someone else's domain.
    c.cmd("MAIL FROM:<alice@sender.test>", "250").await;
    c.cmd("RCPT TO:<rcpt@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: ceo@bank.test\r\nSubject: wire money\r\n\r\nNow.\r\n.\r\n")
        .await;
    let r = c.expect("553 5.7.1").await;
    assert!(r.text().contains("bank.test"), "{:?}", r.lines);
    // Two From fields: the second could smuggle an identity past the check.
    c.cmd("MAIL FROM:<alice@sender.test>", "250").await;
    c.cmd("RCPT TO:<rcpt@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: ceo@bank.test\r\nFrom: alice@sender.test\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        .await;
    c.expect("553 5.7.1 More than one From").await;
    // A line with an empty field name before a second From: Tern's own
    // header reader sees no field there, mail-parser sees a From. Counted
    // by both, it is two.
    c.cmd("MAIL FROM:<alice@sender.test>", "250").await;
    c.cmd("RCPT TO:<rcpt@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: ceo@bank.test\r\n:From: alice@sender.test\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        .await;
    c.expect("553 5.7.1").await;
    // Local domains are allowed by default, and mail is unsigned when the
    // domain has no key.
    let r = c
        .mail(
            "alice@example.test",
            &["rcpt@remote.test"],
            "From: alice@example.test\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    assert_eq!(t.queued().await, 1);
}

#[tokio::test]
async fn unauthenticated_inbound_mail_is_never_signed() {
    let (t, _fake, _records, _dns) = setup(&[Algorithm::Ed25519]).await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    let r = c
        .mail(
            "alice@sender.test",
            &["alice@example.test"],
            "From: alice@sender.test\r\nSubject: in\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(!String::from_utf8_lossy(&msgs[0]).contains("DKIM-Signature"));
}
