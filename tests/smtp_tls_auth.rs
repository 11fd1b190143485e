//! STARTTLS, implicit TLS and SMTP AUTH, over raw sockets and with lettre.

mod common;

use common::*;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[tokio::test]
async fn starttls_then_auth_then_relay() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.submission()).await;
    c.ehlo().await;
    // Submission: nothing before TLS.
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0").await;
    c.auth_plain(USER, PASSWORD, "538 5.7.11").await;
    let mut c = c.starttls(&t.cert_pem()).await;
    let ext = c.ehlo().await.join("\n");
    assert!(ext.contains("AUTH PLAIN LOGIN"), "{ext}");
    assert!(!ext.contains("STARTTLS"), "{ext}");
    c.cmd("STARTTLS", "503 5.5.1").await;
    // TLS alone is not enough on submission.
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0").await;
    c.auth_plain(USER, "wrong", "535 5.7.8").await;
    c.auth_plain(USER, PASSWORD, "235 2.7.0").await;
    c.cmd("AUTH PLAIN", "503 5.5.1").await;
    c.cmd("MAIL FROM:<alice@example.test>", "250").await;
    // Authenticated users may send anywhere.
    c.cmd("RCPT TO:<someone@elsewhere.test>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: out\r\n\r\nbody\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    assert_eq!(t.queued().await, 1, "remote recipient waits in the queue");
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    // CVE-2011-0411: the injected command must never be executed.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    c.expect("220 2.0.0").await;
    let inner = c;
    // Complete the handshake by hand: starttls() would send STARTTLS again.
    let mut c = inner.tls_after_220(&t.cert_pem()).await;
    // The first reply we read must be for our EHLO, not for the RSET.
    let r = c.cmd("EHLO client.test", "250").await;
    assert!(r.lines[0].contains("mx.example.test"), "{:?}", r.lines);
    c.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn implicit_tls_listener() {
    let t = TestServer::start().await;
    let mut c = Client::connect_tls(t.smtps(), &t.cert_pem()).await;
    let ext = c.ehlo().await.join("\n");
    assert!(
        ext.contains("AUTH PLAIN LOGIN") && !ext.contains("STARTTLS"),
        "{ext}"
    );
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0").await;
    // AUTH LOGIN, step by step (RFC 4954 with the LOGIN mechanism).
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await; // alice
    c.cmd("Y29ycmVjdCBob3JzZQ==", "235 2.7.0").await; // correct horse
    let r = c
        .mail(
            "alice@example.test",
            &["alice@example.test"],
            "Subject: tls\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert!(text.contains("(using TLS"), "{text}");
    // Submitted mail without them gets Message-ID and Date.
    assert!(
        text.contains("\r\nMessage-ID: <") && text.contains("\r\nDate: "),
        "{text}"
    );
}

#[tokio::test]
async fn auth_failures_close_the_connection() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    let ext = c.ehlo().await.join("\n");
    assert!(ext.contains("AUTH PLAIN LOGIN"), "{ext}");
    c.auth_plain(USER, "nope", "535 5.7.8").await;
    c.cmd("AUTH PLAIN !!!notbase64", "501 5.5.2").await;
    c.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    c.auth_plain("nobody", "nope", "535 5.7.8").await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn auth_cancel_and_empty_initial_response() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.cmd("AUTH PLAIN", "334").await;
    c.cmd("*", "501 5.0.0").await;
    c.cmd("AUTH PLAIN", "334").await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    c.cmd(&b64, "235 2.7.0").await;
}

fn lettre_message(subject: &str) -> Message {
    Message::builder()
        .from("alice@example.test".parse().unwrap())
        .to("alice@example.test".parse().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(String::from("Sent with lettre.\r\n"))
        .unwrap()
}

fn tls_params(t: &TestServer) -> TlsParameters {
    let pem = std::fs::read(t.cert_pem()).unwrap();
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build_rustls()
        .unwrap()
}

#[tokio::test]
async fn lettre_starttls_and_implicit_tls_with_auth() {
    let t = TestServer::start().await;
    for (addr, tls) in [
        (t.submission(), Tls::Required(tls_params(&t))),
        (t.smtps(), Tls::Wrapper(tls_params(&t))),
    ] {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
            .port(addr.port())
            .tls(tls)
            .credentials(Credentials::new(USER.into(), PASSWORD.into()))
            .authentication(vec![Mechanism::Plain])
            .build();
        let r = mailer.send(lettre_message("lettre")).await.expect("sent");
        assert_eq!(u16::from(r.code()), 250);
    }
    let bad = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(t.submission().port())
        .tls(Tls::Required(tls_params(&t)))
        .credentials(Credentials::new(USER.into(), "wrong".into()))
        .authentication(vec![Mechanism::Login])
        .build();
    let e = bad.send(lettre_message("bad")).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("5.7.8"), "{e}");
    let msgs = t.wait_mailbox(DOMAIN, "alice", 2).await;
    assert!(msgs
        .iter()
        .all(|m| String::from_utf8_lossy(m).contains("Sent with lettre.")));
}

#[tokio::test]
async fn password_guessing_across_connections_is_throttled_per_address() {
    let t = TestServer::start_with(|c| c.limits.max_auth_failures_per_ip = 4).await;
    for _ in 0..2 {
        let mut c = Client::connect(t.smtp_plain_auth()).await;
        c.ehlo().await;
        c.auth_plain(USER, "guess1", "535 5.7.8").await;
        c.auth_plain(USER, "guess2", "535 5.7.8").await;
    }
    // Four failures from 127.0.0.1: now even the right password is not
    // checked, on a fresh connection.
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "454 4.7.0").await;
}

/// `[senders.users]` gives one user its own sender domains, replacing the
/// server-wide rule for that user only.
#[tokio::test]
async fn a_user_can_be_limited_to_its_own_sender_domains() {
    let t = TestServer::start_with(|c| {
        c.senders
            .users
            .insert(USER.into(), vec!["Only.test".into()]);
    })
    .await;
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    // A local domain, allowed to everyone else by default, is not this
    // user's.
    let r = c.cmd("MAIL FROM:<alice@example.test>", "553 5.7.1").await;
    assert!(
        r.text()
            .contains("example.test is not a sender domain of alice"),
        "{:?}",
        r.lines
    );
    c.cmd("MAIL FROM:<alice@only.test>", "250").await;
}
