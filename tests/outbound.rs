//! Outbound delivery against a real DNS server and scriptable remote SMTP
//! servers on 127.0.0.x: MX order and fallback, implicit and null MX,
//! retries, bounces, TLS policy, connection reuse, a smarthost, and a
//! restart in the middle of a retry schedule.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::dns::TestDns;
use common::fake_smtp::{free_port, FakeSmtp, Script};
use common::*;
use mail_parser::MimeHeaders;
use tern_core::config::HumanDuration;
use tern_core::Config;

const MX1: &str = "127.0.0.2";
const MX2: &str = "127.0.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const ZONE: &str = "
remote.test      MX 10 mx1.remote.test
remote.test      MX 20 mx2.remote.test
other.test       MX 20 mx2.remote.test
other.test       MX 10 mx1.remote.test
mx1.remote.test  A 127.0.0.2
mx2.remote.test  A 127.0.0.3
implicit.test    A 127.0.0.2
nullmx.test      MX 0 .
broken.test      SERVFAIL
";

/// A Tern server whose DNS is `dns` and whose remote port is `port`, with
/// fast retries.
async fn tern(dns: &TestDns, port: u16, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let addr = dns.addr;
    TestServer::start_with(move |c| {
        c.dns.nameservers = vec![addr];
        c.delivery.port = port;
        c.delivery.command_timeout = HumanDuration(Duration::from_secs(5));
        c.delivery.data_timeout = HumanDuration(Duration::from_secs(5));
        c.delivery.connect_timeout = HumanDuration(Duration::from_secs(2));
        c.queue.retry = vec![HumanDuration(Duration::from_secs(1))];
        tweak(c);
    })
    .await
}

/// Submits one message as the authenticated local user alice.
async fn submit(t: &TestServer, to: &[&str], body: &str) -> String {
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    // The wire form is dot-stuffed (RFC 5321 4.5.2); Tern stores it unstuffed.
    let stuffed = body.replace("\r\n.", "\r\n..");
    let r = c.mail("alice@example.test", to, &stuffed).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    r.lines[0].rsplit(' ').next().unwrap().to_string()
}

/// The history lines of a message, as `tern queue show` prints them.
async fn history(t: &TestServer, id: &str) -> Vec<String> {
    let id = id.parse().unwrap();
    t.server()
        .store
        .message_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e.kind,
                e.recipient.unwrap_or_default(),
                e.detail.unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_history(t: &TestServer, id: &str, needle: &str) -> Vec<String> {
    for _ in 0..200 {
        let h = history(t, id).await;
        if h.iter().any(|l| l.contains(needle)) {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{needle:?} never appeared in {:?}", history(t, id).await);
}

/// The bounce in alice's mailbox, parsed.
async fn bounce(t: &TestServer) -> String {
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    let raw = msgs[0].clone();
    let parsed = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("DSN parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert!(parsed.parts.len() >= 4, "human part, status, headers");
    String::from_utf8(raw).unwrap()
}

#[tokio::test]
async fn mx_order_and_fallback_when_the_first_refuses() {
    let port = free_port(&[ip(MX1), ip(MX2)]);
    let dns = TestDns::start(ZONE).await;
    // Only the second exchanger listens: the first refuses the connection.
    let mx2 = FakeSmtp::start(ip(MX2), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    let body = "Subject: fallback\r\n\r\n.leading dot\r\nbody\r\n";
    let id = submit(&t, &["bob@remote.test"], body).await;
    let got = mx2.wait_received(1, 15).await;
    assert_eq!(got[0].rcpt_to, vec!["bob@remote.test"]);
    assert!(
        got[0].mail_from.starts_with("<alice@example.test>"),
        "{}",
        got[0].mail_from
    );
    // What arrives is what was queued: the original plus Tern's headers.
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(text.ends_with(body), "{text}");
    assert!(String::from_utf8_lossy(&got[0].raw).contains("\r\n..leading dot\r\n"));
    assert!(mx2.violations().is_empty(), "{:?}", mx2.violations());
    let h = wait_history(&t, &id, "delivered").await;
    assert!(
        h.iter().any(|l| l.contains("delivered bob@remote.test 250")
            && l.contains("mx2.remote.test[127.0.0.3]")),
        "{h:?}"
    );

    // With both up, the preferred exchanger gets the mail (another domain
    // with the same exchangers, so no cached connection decides).
    let mx1 = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    submit(&t, &["carol@other.test"], "Subject: preferred\r\n\r\nx\r\n").await;
    mx1.wait_received(1, 15).await;
    assert_eq!(mx2.received().len(), 1);
}

/// Tern keeps local parts unquoted (`"john doe"@x` is `john doe@x` in its
/// queue and history); on the wire they must be quoted again (RFC 5321
/// 4.1.2), or the remote server sees a broken path.
#[tokio::test]
async fn quoted_local_parts_are_quoted_again_on_the_wire() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    let id = submit(
        &t,
        &[
            "\"john doe\"@implicit.test",
            "\"a@b\"@implicit.test",
            "\"say \\\"hi\\\"\"@implicit.test",
            "plain.one@implicit.test",
        ],
        "Subject: quoted\r\n\r\nx\r\n",
    )
    .await;
    let got = fake.wait_received(1, 15).await;
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            "\"a@b\"@implicit.test",
            "\"john doe\"@implicit.test",
            "\"say \\\"hi\\\"\"@implicit.test",
            "plain.one@implicit.test",
        ]
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The history names them unquoted, as they are stored.
    let h = wait_history(&t, &id, "delivered john doe@implicit.test").await;
    assert!(
        h.iter().any(|l| l.contains("delivered a@b@implicit.test")),
        "{h:?}"
    );
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_address() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    submit(
        &t,
        &["dave@implicit.test"],
        "Subject: implicit\r\n\r\nx\r\n",
    )
    .await;
    let got = fake.wait_received(1, 15).await;
    assert_eq!(got[0].rcpt_to, vec!["dave@implicit.test"]);
}

#[tokio::test]
async fn null_mx_bounces_at_once_without_connecting() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    let id = submit(&t, &["erin@nullmx.test"], "Subject: null\r\n\r\nx\r\n").await;
    let dsn = bounce(&t).await;
    assert!(
        dsn.contains("Final-Recipient: rfc822; erin@nullmx.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(
        dsn.contains("Return-Path: <>"),
        "bounces use the null sender: {dsn}"
    );
    assert_eq!(fake.connections(), 0);
    wait_history(&t, &id, "bounced erin@nullmx.test 556 5.1.10").await;
}

#[tokio::test]
async fn temporary_failure_then_delivered_on_retry() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let script = Script {
        data_replies: ["451 4.3.0 try again later".to_string()].into(),
        ..Script::default()
    };
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |_| {}).await;
    let id = submit(&t, &["frank@implicit.test"], "Subject: retry\r\n\r\nx\r\n").await;
    let h = wait_history(&t, &id, "delivered").await;
    let deferred = h
        .iter()
        .position(|l| l.contains("deferred frank@implicit.test 451 4.3.0 try again later"));
    let delivered = h
        .iter()
        .position(|l| l.contains("delivered frank@implicit.test 250"));
    assert!(deferred.is_some() && delivered > deferred, "{h:?}");
    // No bounce for a recipient that was delivered in the end.
    assert!(t.mailbox(DOMAIN, "alice").is_empty());
    assert_eq!(
        fake.received()
            .iter()
            .filter(|r| r.rcpt_to == ["frank@implicit.test"])
            .count(),
        2
    );
}

#[tokio::test]
async fn mixed_recipient_results_in_one_transaction_and_a_bounce() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "nobody@implicit.test".into(),
        "550 5.1.1 no such user".into(),
    );
    script
        .rcpt_replies
        .insert("busy@implicit.test".into(), "452 4.2.2 mailbox full".into());
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |c| {
        c.queue.retry = vec![HumanDuration(Duration::from_secs(3600))]
    })
    .await;
    let id = submit(
        &t,
        &[
            "ok@implicit.test",
            "nobody@implicit.test",
            "busy@implicit.test",
        ],
        "Subject: mixed\r\nFrom: alice@example.test\r\n\r\nsecret body\r\n",
    )
    .await;
    let got = fake.wait_received(1, 15).await;
    // One transaction for the three: only the accepted one got the data.
    assert_eq!(got[0].rcpt_to, vec!["ok@implicit.test"]);
    assert_eq!(fake.connections(), 1);
    let dsn = bounce(&t).await;
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; nobody@implicit.test\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{dsn}"
    );
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Subject: mixed"),
        "original headers returned: {dsn}"
    );
    assert!(!dsn.contains("secret body"), "but not the body");
    assert!(
        !dsn.contains("busy@implicit.test"),
        "a deferred recipient is not bounced"
    );
    // The bounce is queued before the results are recorded; wait for them.
    wait_history(
        &t,
        &id,
        "deferred busy@implicit.test 452 4.2.2 mailbox full",
    )
    .await;
    let q = t
        .server()
        .store
        .get_message(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let kinds: Vec<&str> = q.recipients.iter().map(|r| r.status.kind()).collect();
    assert_eq!(kinds, ["delivered", "failed", "deferred"]);
}

#[tokio::test]
async fn a_421_mid_transaction_defers_and_the_retry_delivers() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let script = Script {
        mail_reply: "421 4.3.2 shutting down".into(),
        ..Script::default()
    };
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |_| {}).await;
    let id = submit(&t, &["gina@implicit.test"], "Subject: 421\r\n\r\nx\r\n").await;
    wait_history(&t, &id, "deferred gina@implicit.test 421 4.3.2").await;
    fake.set_script(|s| s.mail_reply = "250 2.1.0 OK".into());
    wait_history(&t, &id, "delivered gina@implicit.test").await;
    fake.wait_received(1, 5).await;
}

#[tokio::test]
async fn starttls_used_when_offered_plaintext_when_not() {
    let port = free_port(&[ip(MX1), ip(MX2)]);
    let dns = TestDns::start("a.test A 127.0.0.2\nb.test A 127.0.0.3\n").await;
    let tls = FakeSmtp::start(
        ip(MX1),
        port,
        Script {
            starttls: true,
            ..Script::default()
        },
    )
    .await;
    let plain = FakeSmtp::start(ip(MX2), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    submit(&t, &["x@a.test", "y@b.test"], "Subject: tls\r\n\r\nx\r\n").await;
    assert!(tls.wait_received(1, 15).await[0].tls);
    assert!(!plain.wait_received(1, 15).await[0].tls);
    assert!(tls.violations().is_empty(), "{:?}", tls.violations());
}

#[tokio::test]
async fn required_tls_defers_until_the_server_offers_it() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    let t = tern(&dns, port, |c| {
        c.delivery.tls = tern_core::TlsPolicy::Required
    })
    .await;
    let id = submit(
        &t,
        &["hal@implicit.test"],
        "Subject: must be private\r\n\r\nx\r\n",
    )
    .await;
    wait_history(&t, &id, "TLS is required").await;
    assert!(fake.received().is_empty(), "nothing sent in plaintext");
    fake.set_script(|s| s.starttls = true);
    wait_history(&t, &id, "delivered hal@implicit.test").await;
    assert!(fake.received()[0].tls);
}

#[tokio::test]
async fn plaintext_injected_after_starttls_is_ignored() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let script = Script {
        starttls: true,
        inject_after_starttls: Some(b"250-injected\r\n250 2.0.0 fake OK\r\n".to_vec()),
        ..Script::default()
    };
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |_| {}).await;
    submit(&t, &["ivy@implicit.test"], "Subject: inject\r\n\r\nx\r\n").await;
    let got = fake.wait_received(1, 15).await;
    assert!(got[0].tls);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn expiry_fails_and_bounces_with_5_4_7() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("jan@implicit.test".into(), "451 4.7.1 greylisted".into());
    let _fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |c| {
        c.queue.expire = HumanDuration(Duration::from_secs(2))
    })
    .await;
    let id = submit(&t, &["jan@implicit.test"], "Subject: old\r\n\r\nx\r\n").await;
    let dsn = bounce(&t).await;
    assert!(dsn.contains("Status: 5.4.7"), "{dsn}");
    assert!(
        dsn.contains("greylisted"),
        "the last error is in the report: {dsn}"
    );
    wait_history(&t, &id, "expired jan@implicit.test expired after").await;
}

#[tokio::test]
async fn dns_trouble_defers() {
    let dns = TestDns::start(ZONE).await;
    let t = tern(&dns, 1, |c| {
        c.queue.retry = vec![HumanDuration(Duration::from_secs(3600))]
    })
    .await;
    let id = submit(
        &t,
        &["kim@broken.test", "lee@nosuchdomain.test"],
        "Subject: dns\r\n\r\nx\r\n",
    )
    .await;
    wait_history(&t, &id, "deferred kim@broken.test 451 4.4.3").await;
    // A domain that does not exist is permanent.
    wait_history(&t, &id, "bounced lee@nosuchdomain.test 550 5.1.2").await;
}

#[tokio::test]
async fn restart_mid_schedule_neither_storms_nor_loses() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("max@implicit.test".into(), "451 4.3.0 later".into());
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let mut t = tern(&dns, port, |c| {
        c.queue.retry = vec![HumanDuration(Duration::from_secs(3600))]
    })
    .await;
    let id = submit(&t, &["max@implicit.test"], "Subject: patience\r\n\r\nx\r\n").await;
    wait_history(&t, &id, "deferred max@implicit.test").await;
    assert_eq!(fake.connections(), 1);
    t.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.connections(),
        1,
        "no new attempt before the hour is up"
    );
    let q = t
        .server()
        .store
        .get_message(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.recipients[0].status.kind(), "deferred");
    assert!(q.recipients[0].next_attempt > tern_core::unix_now() + 3000);
    // The schedule still holds it: an operator's retry delivers it.
    fake.set_script(|s| s.rcpt_replies.clear());
    t.server()
        .store
        .retry_now(Some(id.parse().unwrap()), tern_core::unix_now())
        .await
        .unwrap();
    wait_history(&t, &id, "delivered max@implicit.test").await;
}

#[tokio::test]
async fn connections_are_reused_for_the_next_messages() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(
        ip(MX1),
        port,
        Script {
            pipelining: true,
            ..Script::default()
        },
    )
    .await;
    let t = tern(&dns, port, |c| c.delivery.max_connections_per_domain = 1).await;
    for i in 0..3 {
        submit(
            &t,
            &[&format!("n{i}@implicit.test")],
            "Subject: reuse\r\n\r\nx\r\n",
        )
        .await;
    }
    fake.wait_received(3, 15).await;
    assert_eq!(fake.connections(), 1, "{:?}", fake.commands());
    let mails = fake
        .commands()
        .iter()
        .filter(|c| c.starts_with("MAIL FROM"))
        .count();
    assert_eq!(mails, 3);
}

#[tokio::test]
async fn size_limit_and_smtputf8_are_checked_before_sending() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(
        ip(MX1),
        port,
        Script {
            size: Some(200),
            ..Script::default()
        },
    )
    .await;
    let t = tern(&dns, port, |_| {}).await;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(300));
    submit(&t, &["olga@implicit.test"], &big).await;
    let dsn = bounce(&t).await;
    assert!(dsn.contains("Status: 5.3.4"), "{dsn}");
    assert!(
        fake.commands().iter().all(|c| !c.starts_with("MAIL")),
        "{:?}",
        fake.commands()
    );
}

#[tokio::test]
async fn smtputf8_and_8bitmime_are_respected() {
    let port = free_port(&[ip(MX1), ip(MX2)]);
    let dns = TestDns::start("old.test A 127.0.0.2\nnew.test A 127.0.0.3\n").await;
    let old = Script {
        eightbitmime: false,
        smtputf8: false,
        ..Script::default()
    };
    let new = Script {
        smtputf8: true,
        ..Script::default()
    };
    let old = FakeSmtp::start(ip(MX1), port, old).await;
    let new = FakeSmtp::start(ip(MX2), port, new).await;
    let t = tern(&dns, port, |_| {}).await;
    let body = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n";
    submit(&t, &["j\u{fc}rgen@old.test", "j\u{fc}rgen@new.test"], body).await;
    // The server that supports both gets it with SMTPUTF8 and BODY=8BITMIME.
    let got = new.wait_received(1, 15).await;
    assert!(
        got[0].mail_from.contains("SMTPUTF8") && got[0].mail_from.contains("BODY=8BITMIME"),
        "{}",
        got[0].mail_from
    );
    assert!(new.violations().is_empty(), "{:?}", new.violations());
    // The one that supports neither is never sent it: a bounce says why.
    let dsn = bounce(&t).await;
    assert!(dsn.contains("SMTPUTF8"), "{dsn}");
    assert!(old.received().is_empty());
    assert!(old.violations().is_empty(), "{:?}", old.violations());
}

#[tokio::test]
async fn smarthost_with_auth_over_verified_starttls() {
    let port = free_port(&[ip(MX1)]);
    // Only the relay's name is in DNS: the relay takes every domain.
    let dns = TestDns::start("relay.remote.test A 127.0.0.2\n").await;
    let script = Script {
        starttls: true,
        auth: Some(("relayuser".into(), "relaypass".into())),
        ..Script::default()
    };
    let relay = FakeSmtp::start(ip(MX1), port, script).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), common::fake_smtp::tls_cert_pem()).unwrap();
    let ca_path = ca.path().to_path_buf();
    let t = tern(&dns, 25, |c| {
        c.delivery.relay = Some(format!("relay.remote.test:{port}"));
        c.delivery.relay_username = Some("relayuser".into());
        c.delivery.relay_password = Some("relaypass".into());
        c.delivery.relay_ca_file = Some(ca_path);
    })
    .await;
    submit(
        &t,
        &["pat@gmail.example", "quinn@outlook.example"],
        "Subject: via relay\r\n\r\nx\r\n",
    )
    .await;
    let got = relay.wait_received(1, 15).await;
    assert!(got[0].tls);
    // One transaction for the whole message, whatever the domains.
    assert_eq!(
        got[0].rcpt_to,
        ["pat@gmail.example", "quinn@outlook.example"]
    );
    assert!(relay.violations().is_empty(), "{:?}", relay.violations());
}

#[tokio::test]
async fn relay_with_an_untrusted_certificate_gets_no_credentials() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start("relay.remote.test A 127.0.0.2\n").await;
    let script = Script {
        starttls: true,
        auth: Some(("relayuser".into(), "relaypass".into())),
        ..Script::default()
    };
    let relay = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, 25, |c| {
        c.delivery.relay = Some(format!("relay.remote.test:{port}"));
        c.delivery.relay_username = Some("relayuser".into());
        c.delivery.relay_password = Some("relaypass".into());
    })
    .await;
    let id = submit(
        &t,
        &["pat@gmail.example"],
        "Subject: via relay\r\n\r\nx\r\n",
    )
    .await;
    // The self-signed certificate fails verification: the message waits,
    // and the password never crosses the wire.
    wait_history(&t, &id, "deferred pat@gmail.example 451").await;
    assert!(
        relay.commands().iter().all(|c| !c.starts_with("AUTH")),
        "{:?}",
        relay.commands()
    );
    assert!(relay.received().is_empty());
}

/// Tools CI installs: missing there is a failure, on a developer's machine a skip.
fn have_aiosmtpd() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "aiosmtpd is missing in CI"
        );
        eprintln!("skipping: python3 -m pip install aiosmtpd");
    }
    ok
}

const AIOSMTPD_SINK: &str = r#"
import asyncio, os, sys
from aiosmtpd.controller import Controller

host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Store:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out))
        with open(os.path.join(out, "%d.eml" % n), "wb") as f:
            f.write(("%s\n%s\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos))).encode())
            f.write(envelope.original_content)
        return "250 2.0.0 stored by aiosmtpd"

c = Controller(Store(), hostname=host, port=port)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_to_a_real_second_smtp_implementation() {
    if !have_aiosmtpd() {
        return;
    }
    use tokio::io::AsyncBufReadExt;
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let out = tempfile::tempdir().unwrap();
    let mut sink = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(AIOSMTPD_SINK)
        .args([MX1, &port.to_string()])
        .arg(out.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sink.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "ready"),
        "{ready:?}"
    );

    let t = tern(&dns, port, |_| {}).await;
    let body = "Subject: to aiosmtpd\r\n\r\n.leading dot\r\nlast line\r\n";
    let id = submit(&t, &["rita@implicit.test", "sam@implicit.test"], body).await;
    wait_history(&t, &id, "stored by aiosmtpd").await;
    let file = out.path().join("0.eml");
    let stored = std::fs::read(&file).unwrap();
    let text = String::from_utf8(stored).unwrap();
    let (envelope, message) = text.split_at(text.find("Received:").unwrap());
    assert_eq!(
        envelope,
        "alice@example.test\nrita@implicit.test,sam@implicit.test\n"
    );
    assert!(message.ends_with(body), "{message:?}");
    drop(sink.stdin.take());
    let _ = sink.kill().await;
}

#[tokio::test]
async fn one_delay_warning_while_retrying() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("una@implicit.test".into(), "451 4.7.1 greylisted".into());
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |c| {
        c.queue.delay_warning = Some(HumanDuration(Duration::from_secs(1)))
    })
    .await;
    submit(&t, &["una@implicit.test"], "Subject: slow\r\n\r\nx\r\n").await;
    let report = bounce(&t).await;
    assert!(
        report.contains("Action: delayed\r\nStatus: 4.7.1"),
        "{report}"
    );
    assert!(report.contains("Will-Retry-Until: "), "{report}");
    // Retries go on (every second here), but the sender hears it only once.
    let tries = || {
        fake.commands()
            .iter()
            .filter(|c| c.contains("una@implicit.test"))
            .count()
    };
    let before = tries();
    common::eventually(10, || tries() >= before + 2).await;
    assert_eq!(t.mailbox(DOMAIN, "alice").len(), 1);
}

#[tokio::test]
async fn a_large_message_goes_out_intact_piece_by_piece() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    let fake = FakeSmtp::start(ip(MX1), port, Script::default()).await;
    let t = tern(&dns, port, |_| {}).await;
    // 3.5 MB: several storage pieces; lines that start with dots on the way.
    let mut body = String::from("Subject: large\r\n\r\n");
    let mut i = 0;
    while body.len() < 3_500_000 {
        body.push_str(&format!(".{i:07} {}\r\n", "y".repeat(90)));
        i += 1;
    }
    submit(&t, &["vera@implicit.test", "alice@example.test"], &body).await;
    let got = fake.wait_received(1, 30).await;
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(
        text.ends_with(&body),
        "remote copy differs ({} octets)",
        text.len()
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let local = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(
        String::from_utf8(local[0].clone())
            .unwrap()
            .ends_with(&body),
        "local copy differs"
    );
}

#[tokio::test]
async fn helo_fallback_and_a_bounce_is_never_bounced() {
    let port = free_port(&[ip(MX1)]);
    let dns = TestDns::start(ZONE).await;
    // An old server that does not know EHLO and refuses one recipient.
    let mut script = Script {
        ehlo: false,
        ..Script::default()
    };
    script.rcpt_replies.insert(
        "nobody@implicit.test".into(),
        "550 5.1.1 no such user".into(),
    );
    let fake = FakeSmtp::start(ip(MX1), port, script).await;
    let t = tern(&dns, port, |_| {}).await;
    submit(
        &t,
        &["wes@implicit.test"],
        "Subject: old server\r\n\r\nx\r\n",
    )
    .await;
    let got = fake.wait_received(1, 15).await;
    assert!(
        fake.commands().iter().any(|c| c.starts_with("HELO ")),
        "{:?}",
        fake.commands()
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert!(
        !got[0].mail_from.contains("SIZE="),
        "no ESMTP parameters after HELO: {}",
        got[0].mail_from
    );

    // A message with the null sender (a bounce) that fails is not bounced.
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    let r = c
        .mail(
            "",
            &["nobody@implicit.test"],
            "Subject: a bounce\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let id = r.lines[0].rsplit(' ').next().unwrap().to_string();
    wait_history(&t, &id, "bounced nobody@implicit.test 550 5.1.1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.queued().await, 0, "no report was queued");
    assert!(t.mailbox(DOMAIN, "alice").is_empty());
    assert!(t.mailbox(DOMAIN, "postmaster").is_empty());
}

#[tokio::test]
async fn remote_faults_defer_and_the_message_goes_later() {
    let port = free_port(&[ip(MX1), ip(MX2)]);
    let dns = TestDns::start("reset.test A 127.0.0.2\nsilent.test A 127.0.0.3\n").await;
    // One remote resets the connection in the middle of the data.
    let reset = FakeSmtp::start(
        ip(MX1),
        port,
        Script {
            close_after_data_start: true,
            ..Script::default()
        },
    )
    .await;
    // The other accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind((ip(MX2), port))
        .await
        .unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let t = tern(&dns, port, |c| {
        c.delivery.command_timeout = HumanDuration(Duration::from_secs(1));
        c.queue.retry = vec![HumanDuration(Duration::from_secs(3600))];
    })
    .await;
    let id = submit(
        &t,
        &["a@reset.test", "b@silent.test"],
        "Subject: faults\r\n\r\nx\r\n",
    )
    .await;
    wait_history(&t, &id, "deferred a@reset.test 451").await;
    wait_history(&t, &id, "deferred b@silent.test 451").await;
    let h = history(&t, &id).await;
    assert!(
        h.iter()
            .any(|l| l.contains("b@silent.test") && l.contains("timeout")),
        "{h:?}"
    );
    // Both stay queued; when the remotes behave, the retry delivers.
    held.abort();
    let _ = held.await;
    reset.set_script(|s| s.close_after_data_start = false);
    let good = FakeSmtp::start(ip(MX2), port, Script::default()).await;
    t.server()
        .store
        .retry_now(Some(id.parse().unwrap()), tern_core::unix_now())
        .await
        .unwrap();
    wait_history(&t, &id, "delivered a@reset.test").await;
    wait_history(&t, &id, "delivered b@silent.test").await;
    assert_eq!(good.received().len(), 1);
}
