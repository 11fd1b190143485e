//! Mail arriving for local domains is checked (SPF, DKIM, ARC, DMARC)
//! against a loopback DNS server and gets one Authentication-Results
//! header; DMARC p=reject is honoured, p=quarantine marked; forged results
//! under our name are removed.

mod common;

use common::dns::TestDns;
use common::*;
use tern_auth::dkim::{self, Algorithm};

/// Zone text for the sender domains the tests use, with the DKIM record of
/// `key` published for signed.test and strict.test.
fn zone(keys: &[&tern_store::DkimKeyRecord]) -> String {
    let mut z = String::from(
        "
spf-pass.test     TXT \"v=spf1 ip4:127.0.0.1 -all\"
spf-fail.test     TXT \"v=spf1 ip4:192.0.2.1 -all\"
spf-soft.test     TXT \"v=spf1 ~all\"
spf-none.test     A 192.0.2.7
spf-temp.test     SERVFAIL
signed.test       TXT \"v=spf1 ip4:192.0.2.1 -all\"
strict.test       TXT \"v=spf1 ip4:192.0.2.1 -all\"
_dmarc.strict.test TXT \"v=DMARC1; p=reject\"
quarantine.test   TXT \"v=spf1 ip4:192.0.2.1 -all\"
_dmarc.quarantine.test TXT \"v=DMARC1; p=quarantine\"
aligned.test      TXT \"v=spf1 ip4:127.0.0.1 -all\"
_dmarc.aligned.test TXT \"v=DMARC1; p=reject\"
",
    );
    for k in keys {
        // TXT strings hold at most 255 octets: a 2048-bit key needs two.
        let r = dkim::dkim_record(k);
        let strings: Vec<String> = r
            .value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        z.push_str(&format!("{} TXT {}\n", r.name, strings.join(" ")));
    }
    z
}

async fn server(
    dns: &TestDns,
    tweak: impl FnOnce(&mut tern_core::Config) + Send + 'static,
) -> TestServer {
    let addr = dns.addr;
    TestServer::start_with(move |c| {
        c.dns.nameservers = vec![addr];
        c.inbound.checks = true;
        tweak(c);
    })
    .await
}

/// Sends `message` from `from` to alice; returns the reply to the data.
async fn send(t: &TestServer, from: &str, message: &str) -> Reply {
    let mut c = Client::connect(t.smtp()).await;
    c.cmd("EHLO client.spf-pass.test", "250").await;
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(message.as_bytes()).await;
    c.send(b".\r\n").await;
    c.read().await
}

/// The Authentication-Results header of the n-th delivered message.
async fn results(t: &TestServer, n: usize) -> String {
    let msgs = t.wait_mailbox(DOMAIN, "alice", n).await;
    let text = String::from_utf8(msgs[n - 1].clone()).unwrap();
    let start = text
        .find("Authentication-Results: mx.example.test")
        .expect("header added");
    let rest = &text[start..];
    let mut end = rest.find("\r\n").unwrap();
    while rest[end + 2..].starts_with('\t') || rest[end + 2..].starts_with(' ') {
        end += 2 + rest[end + 2..].find("\r\n").unwrap();
    }
    rest[..end].replace("\r\n\t", " ")
}

#[tokio::test]
async fn spf_results() {
    let dns = TestDns::start(&zone(&[])).await;
    let t = server(&dns, |_| {}).await;
    let cases = [
        ("bob@spf-pass.test", "spf=pass"),
        ("bob@spf-fail.test", "spf=fail"),
        ("bob@spf-soft.test", "spf=softfail"),
        ("bob@spf-none.test", "spf=none"),
        ("bob@spf-temp.test", "spf=temperror"),
    ];
    for (i, (from, want)) in cases.iter().enumerate() {
        let r = send(
            &t,
            from,
            &format!("From: {from}\r\nSubject: {i}\r\n\r\nx\r\n"),
        )
        .await;
        assert_eq!(r.code, 250, "{from}: {:?}", r.lines);
        let ar = results(&t, i + 1).await;
        assert!(ar.contains(want), "{from}: {ar}");
        assert!(ar.contains(&format!("smtp.mailfrom={from}")), "{ar}");
    }
    // The null sender is checked by its HELO name.
    let r = send(&t, "", "From: x@spf-pass.test\r\n\r\nx\r\n").await;
    assert_eq!(r.code, 250);
    assert!(results(&t, 6)
        .await
        .contains("smtp.helo=client.spf-pass.test"));
}

#[tokio::test]
async fn spf_fail_can_be_refused() {
    let dns = TestDns::start(&zone(&[])).await;
    let t = server(&dns, |c| c.inbound.spf_reject = true).await;
    let r = send(
        &t,
        "bob@spf-fail.test",
        "From: bob@spf-fail.test\r\n\r\nx\r\n",
    )
    .await;
    assert!(r.lines[0].starts_with("550 5.7.23"), "{:?}", r.lines);
    let r = send(
        &t,
        "bob@spf-soft.test",
        "From: bob@spf-soft.test\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(r.code, 250, "softfail is not refused");
}

fn signed(key: &tern_store::DkimKeyRecord, message: &str) -> String {
    format!(
        "{}{message}",
        dkim::sign_with(key, message.as_bytes()).unwrap()
    )
}

#[tokio::test]
async fn dkim_good_bad_body_hash_and_missing_key() {
    let key = dkim::generate("signed.test", "s1", Algorithm::Ed25519, 0).unwrap();
    let unpublished = dkim::generate("signed.test", "gone", Algorithm::Ed25519, 0).unwrap();
    let dns = TestDns::start(&zone(&[&key])).await;
    let t = server(&dns, |_| {}).await;
    let msg =
        "From: bob@signed.test\r\nTo: alice@example.test\r\nSubject: signed\r\n\r\nHello.\r\n";
    send(&t, "bob@signed.test", &signed(&key, msg)).await;
    let ar = results(&t, 1).await;
    assert!(
        ar.contains("dkim=pass header.d=signed.test header.s=s1"),
        "{ar}"
    );
    // Aligned DKIM passes DMARC even with SPF failing... there is no DMARC
    // record for signed.test, so dmarc=none.
    assert!(ar.contains("dmarc=none"), "{ar}");

    let tampered = signed(&key, msg).replace("Hello.", "Hullo.");
    send(&t, "bob@signed.test", &tampered).await;
    let ar = results(&t, 2).await;
    assert!(
        ar.contains("(body hash did not verify)") && !ar.contains("dkim=pass"),
        "{ar}"
    );

    send(&t, "bob@signed.test", &signed(&unpublished, msg)).await;
    let ar = results(&t, 3).await;
    assert!(
        ar.contains("dkim=permerror") || ar.contains("dkim=fail") || ar.contains("dkim=neutral"),
        "{ar}"
    );
    assert!(!ar.contains("dkim=pass"), "{ar}");
}

#[tokio::test]
async fn dmarc_aligned_unaligned_reject_and_quarantine() {
    let strict_key = dkim::generate("strict.test", "s1", Algorithm::Rsa2048, 0).unwrap();
    let other_key = dkim::generate("signed.test", "s1", Algorithm::Ed25519, 0).unwrap();
    let dns = TestDns::start(&zone(&[&strict_key, &other_key])).await;
    let t = server(&dns, |_| {}).await;

    // Aligned SPF: pass.
    let r = send(
        &t,
        "bob@aligned.test",
        "From: bob@aligned.test\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(r.code, 250);
    assert!(results(&t, 1).await.contains("dmarc=pass"));

    // Aligned DKIM while SPF fails: pass.
    let msg = "From: ceo@strict.test\r\nSubject: real\r\n\r\nx\r\n";
    let r = send(&t, "bounce@strict.test", &signed(&strict_key, msg)).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    assert!(results(&t, 2).await.contains("dmarc=pass"));

    // Signed, but by another domain (unaligned), SPF failing, p=reject.
    let spoof = "From: ceo@strict.test\r\nSubject: wire money\r\n\r\nx\r\n";
    let r = send(&t, "bounce@strict.test", &signed(&other_key, spoof)).await;
    assert!(r.lines[0].starts_with("550 5.7.1"), "{:?}", r.lines);
    assert!(r.text().contains("strict.test"), "{:?}", r.lines);

    // p=quarantine: accepted, marked.
    let r = send(
        &t,
        "x@quarantine.test",
        "From: x@quarantine.test\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(r.code, 250);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 3).await;
    let text = String::from_utf8_lossy(&msgs[2]).to_string();
    assert!(
        text.contains("X-Tern-Quarantine: DMARC policy of quarantine.test"),
        "{text}"
    );
    assert!(text.contains("dmarc=fail"), "{text}");
}

#[tokio::test]
async fn dmarc_reject_can_be_turned_off() {
    let dns = TestDns::start(&zone(&[])).await;
    let t = server(&dns, |c| c.inbound.dmarc_reject = false).await;
    let r = send(
        &t,
        "bounce@strict.test",
        "From: ceo@strict.test\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(r.code, 250);
    assert!(results(&t, 1).await.contains("dmarc=fail"));
}

#[tokio::test]
async fn forged_results_under_our_name_are_removed() {
    let dns = TestDns::start(&zone(&[])).await;
    let t = server(&dns, |_| {}).await;
    let msg = "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=ceo@bank.test;\r\n\tdkim=pass header.d=bank.test; dmarc=pass\r\nAuthentication-Results: other.example; spf=none\r\nFrom: x@spf-fail.test\r\nSubject: trust me\r\n\r\nx\r\n";
    let r = send(&t, "x@spf-fail.test", msg).await;
    assert_eq!(r.code, 250);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    let text = String::from_utf8_lossy(&msgs[0]).to_string();
    assert_eq!(
        text.matches("Authentication-Results: mx.example.test")
            .count(),
        1,
        "{text}"
    );
    assert!(
        !text.contains("header.d=bank.test"),
        "the forged one is gone: {text}"
    );
    assert!(
        text.contains("Authentication-Results: other.example; spf=none"),
        "{text}"
    );
    assert!(text.contains("spf=fail"), "{text}");
}

/// A message too large to hold in memory is checked from its file: a
/// forged result under our name is removed (the header section is
/// rewritten, the rest copied as it is), and its DKIM signature, made over
/// the message without the forgery, verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_checked_and_cleaned_from_its_file() {
    let key = dkim::generate("signed.test", "s1", Algorithm::Ed25519, 0).unwrap();
    let dns = TestDns::start(&zone(&[&key])).await;
    let t = server(&dns, |_| {}).await;
    let mut msg = String::from(
        "From: bob@signed.test\r\nTo: alice@example.test\r\nSubject: large and signed\r\n\r\n",
    );
    let mut n = 0;
    while msg.len() < 3 << 20 {
        n += 1;
        msg.push_str(&format!(
            "{n:08} pack my box with five dozen liquor jugs\r\n"
        ));
    }
    let signed = signed(&key, &msg);
    let forged = format!(
        "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n{signed}"
    );
    let r = send(&t, "bob@signed.test", &forged).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let ar = results(&t, 1).await;
    assert!(
        ar.contains("dkim=pass header.d=signed.test header.s=s1"),
        "{ar}"
    );
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(
        msgs[0].ends_with(signed.as_bytes()),
        "the message is intact"
    );
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(!text.contains("header.d=bank.test"), "the forgery is gone");
}

#[tokio::test]
async fn dmarc_policy_per_local_domain() {
    let dns = TestDns::start(&zone(&[])).await;
    let t = server(&dns, |c| {
        c.domains.local = Some(vec!["example.test".into(), "lenient.test".into()]);
        c.inbound.domains.insert(
            "lenient.test".into(),
            tern_core::config::InboundPolicyOverride {
                dmarc_reject: Some(false),
                ..Default::default()
            },
        );
    })
    .await;
    let spoof = "From: ceo@strict.test\r\nSubject: per domain\r\n\r\nx\r\n";
    let mut c = Client::connect(t.smtp()).await;
    c.cmd("EHLO client.spf-pass.test", "250").await;
    // The default for example.test: refused.
    c.cmd("MAIL FROM:<bounce@strict.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{spoof}.\r\n").as_bytes()).await;
    c.expect("550 5.7.1").await;
    // lenient.test turned it off: accepted, with the result in the header.
    c.cmd("MAIL FROM:<bounce@strict.test>", "250").await;
    c.cmd("RCPT TO:<alice@lenient.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{spoof}.\r\n").as_bytes()).await;
    c.expect("250 2.0.0").await;
    let msgs = t.wait_mailbox("lenient.test", "alice", 1).await;
    assert!(String::from_utf8_lossy(&msgs[0]).contains("dmarc=fail"));
    // Both in one transaction: the stricter policy answers for it.
    c.cmd("MAIL FROM:<bounce@strict.test>", "250").await;
    c.cmd("RCPT TO:<alice@lenient.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{spoof}.\r\n").as_bytes()).await;
    c.expect("550 5.7.1").await;
}
