//! Policy: relay refusals, every limit, strict CRLF and smuggling, and a
//! connection killed mid-DATA leaving nothing behind.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn relay_tricks_are_refused_without_auth() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<spammer@evil.test>", "250").await;
    for rcpt in [
        "<victim@elsewhere.test>",
        "<victim%elsewhere.test@example.test>",
        "<elsewhere.test!victim@example.test>",
        "<@example.test:victim@elsewhere.test>",
        "<\"victim@elsewhere.test\"@example.test>",
        "<victim@elsewhere.test@example.test>",
        "<victim@[127.0.0.1]>",
        "<\"victim\"@example.test>",
        "<victim@EXAMPLE.test.elsewhere.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"), "5").await;
        // A quoted plain local part is the same mailbox unquoted, so it is
        // an unknown local user (5.1.1); every other form is refused.
        assert!(
            r.lines[0].starts_with("550 5.7.1")
                || r.lines[0].starts_with("553 5.1.3")
                || (rcpt == "<\"victim\"@example.test>" && r.lines[0].starts_with("550 5.1.1")),
            "{rcpt}: {:?}",
            r.lines
        );
    }
    c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1").await;
    c.cmd("DATA", "554 5.5.1").await;
    // A null sender to a stranger is no better.
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<victim@elsewhere.test>", "550 5.7.1").await;
    // Source routes ending here are stripped (RFC 5321 C) and delivered locally.
    c.cmd("RCPT TO:<@elsewhere.test:alice@example.test>", "250")
        .await;
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn command_line_and_text_line_limits() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2")
        .await;
    c.cmd("NOOP", "250").await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)).as_bytes())
        .await;
    c.expect("500 5.5.2").await;
    c.cmd("NOOP", "250").await;
    assert_eq!(t.queued().await, 0);
    assert_eq!(t.mailbox(DOMAIN, "alice").len(), 0);
}

#[tokio::test]
async fn message_size_limit_keeps_the_session_in_sync() {
    let t = TestServer::start_with(|c| c.limits.max_message_size = 4096).await;
    let mut c = Client::connect(t.smtp()).await;
    let ext = c.ehlo().await.join("\n");
    assert!(ext.contains("SIZE 4096"), "{ext}");
    c.cmd("MAIL FROM:<bob@remote.test> SIZE=5000", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<bob@remote.test> SIZE=100", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    let line = format!("{}\r\n", "z".repeat(70));
    // 10 kB of body, with something that looks like a command inside.
    let mut body = String::from("Subject: big\r\n\r\n");
    for _ in 0..140 {
        body.push_str(&line);
    }
    body.push_str("QUIT\r\n.\r\n");
    c.send(body.as_bytes()).await;
    c.expect("552 5.3.4").await;
    c.cmd("NOOP", "250").await;
    // Same over BDAT.
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.send(format!("BDAT {} LAST\r\n{body}", body.len()).as_bytes())
        .await;
    c.expect("552 5.3.4").await;
    c.cmd("NOOP", "250").await;
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn recipient_limit() {
    let t = TestServer::start_with(|c| c.limits.max_recipients = 3).await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    for _ in 0..3 {
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
    }
    c.cmd("RCPT TO:<alice@example.test>", "452 4.5.3").await;
}

#[tokio::test]
async fn default_recipient_limit_is_100() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    let mut batch = String::new();
    for _ in 0..101 {
        batch.push_str("RCPT TO:<alice@example.test>\r\n");
    }
    c.send(batch.as_bytes()).await;
    for _ in 0..100 {
        c.expect("250 2.1.5").await;
    }
    c.expect("452 4.5.3").await;
}

#[tokio::test]
async fn command_timeout_closes_with_421() {
    let t = TestServer::start_with(|c| {
        c.limits.command_timeout = tern_core::config::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn data_timeout_closes_with_421_and_queues_nothing() {
    let t = TestServer::start_with(|c| {
        c.limits.data_timeout = tern_core::config::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: slow\r\n\r\npartial").await;
    c.expect("421 4.4.2").await;
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn connection_limits_per_ip_and_total() {
    let t = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.max_connections = 3;
    })
    .await;
    let _a = Client::connect(t.smtp()).await;
    let _b = Client::connect(t.smtp()).await;
    let mut third = Client::connect_silent(t.smtp()).await;
    third.expect("421 4.7.0").await;
    assert!(third.closed().await);
    drop(_a);
    // The place is freed when a connection ends.
    common::eventually(5, || true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _c = Client::connect(t.smtp()).await;
}

/// Every known way to fake the end of data, each followed by a smuggled
/// second transaction; then the real end.
const SMUGGLING: &[&str] = &[
    "\n.\n",
    "\r.\r",
    "\n.\r\n",
    "\r.\n",
    "\r\n.\r",
    "\r\n.\n",
    "\r\n\0.\r\n",
];

#[tokio::test]
async fn smuggled_end_of_data_never_makes_a_second_message() {
    let t = TestServer::start().await;
    for (i, fake) in SMUGGLING.iter().enumerate() {
        let mut c = Client::connect(t.smtp()).await;
        c.ehlo().await;
        c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        let payload = format!(
            "Subject: smuggle {i}\r\n\r\nbody{fake}MAIL FROM:<admin@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        );
        c.send(payload.as_bytes()).await;
        let r = c.read().await;
        assert!(
            r.lines[0].starts_with("550 5.6.0") || r.lines[0].starts_with("500 5.5.2"),
            "{fake:?}: {:?}",
            r.lines
        );
        // In sync: the next command gets its own reply, not a smuggled one.
        c.cmd("NOOP", "250 2.0.0").await;
    }
    // Nothing was accepted: not the carrier, not the smuggled message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.queued().await, 0);
    assert_eq!(t.mailbox(DOMAIN, "alice").len(), 0);
}

#[tokio::test]
async fn bare_lf_and_bare_cr_in_data_and_bdat_are_refused() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    for body in [
        "Subject: x\r\n\r\nbare\nlf\r\n",
        "Subject: x\r\n\r\nbare\rcr\r\n",
        "Subject: x\r\n\r\nnul\0\r\n",
    ] {
        c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(format!("{body}.\r\n").as_bytes()).await;
        c.expect("550 5.6.0").await;
        c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.send(format!("BDAT {} LAST\r\n{body}", body.len()).as_bytes())
            .await;
        c.expect("550 5.6.0").await;
        c.cmd("NOOP", "250").await;
    }
    // Bare LF ending a command line is refused too.
    c.send(b"NOOP\n").await;
    c.expect("500 5.5.2").await;
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn connection_killed_mid_data_leaves_nothing() {
    let t = TestServer::start().await;
    {
        let mut c = Client::connect(t.smtp()).await;
        c.ehlo().await;
        c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n").await;
    } // dropped: the socket closes without the final dot
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.queued().await, 0);
    assert_eq!(t.spool_files(), 0);
    assert_eq!(t.mailbox(DOMAIN, "alice").len(), 0);
    // And the server still serves.
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
}

#[tokio::test]
async fn control_characters_in_commands_are_refused() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.send(b"MAIL FROM:<a\0b@remote.test>\r\n").await;
    c.expect("501").await;
    c.send(b"MAIL FROM:<bob@remote.test> SIZE=1\x01\r\n").await;
    c.expect("501").await;
    c.cmd("MAIL FROM:<;sh;@remote.test>", "553 5.1.7").await;
    c.cmd("RSET", "250").await;
}

#[tokio::test]
async fn storage_failure_answers_451_and_leaves_nothing() {
    // Every body in the spool, where the failure is made.
    let t = TestServer::start_with(|c| c.store.inline_body_max = 0).await;
    // Replace the spool directory with a file: every body write now fails.
    let spool = t.dir.path().join("spool");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            "Subject: x\r\n\r\ny\r\n",
        )
        .await;
    assert!(r.lines[0].starts_with("451 4.3.0"), "{:?}", r.lines);
    assert_eq!(t.queued().await, 0);
    // The session goes on, and the server recovers once storage is back.
    std::fs::remove_file(&spool).unwrap();
    std::fs::create_dir(&spool).unwrap();
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            "Subject: x\r\n\r\ny\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    t.wait_mailbox(DOMAIN, "alice", 1).await;
}

#[tokio::test]
async fn a_command_dripped_byte_by_byte_still_times_out() {
    let t = TestServer::start_with(|c| {
        c.limits.command_timeout = tern_core::config::HumanDuration(Duration::from_secs(2))
    })
    .await;
    let mut c = Client::connect(t.smtp()).await;
    // Each byte comes well within the timeout, the command as a whole not.
    for b in b"NOOP" {
        c.send(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn message_data_dripped_slowly_is_cut_off() {
    let t = TestServer::start_with(|c| c.limits.min_data_rate = 1000).await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    // 20 octets a second: far below 1000 once the 10 s grace is over.
    let started = std::time::Instant::now();
    let reply = loop {
        c.send(b"Subject: slow line\r\n").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(10), c.try_read()).await {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never cut off");
    };
    assert!(reply.lines[0].starts_with("421 4.4.2"), "{:?}", reply.lines);
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn huge_header_blocks_and_mime_bombs_are_handled_in_bounded_time() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp_plain_auth()).await;
    c.ehlo().await;
    c.auth_plain(USER, PASSWORD, "235").await;
    // 20,000 header fields, then 2,000 nested multiparts with 3,000 parts at
    // the bottom: Tern never walks the MIME tree, and reads headers linearly.
    let mut m = String::from("From: alice@example.test\r\nSubject: bomb\r\n");
    for i in 0..20_000 {
        m.push_str(&format!("X-Filler-{i}: {}\r\n", "h".repeat(30)));
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n");
    for i in 0..2_000 {
        m.push_str(&format!(
            "--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{}\"\r\n\r\n",
            i + 1
        ));
    }
    for _ in 0..3_000 {
        m.push_str("--b2000\r\nContent-Type: text/plain\r\n\r\nx\r\n");
    }
    m.push_str("--b2000--\r\n");
    let r = c
        .mail("alice@example.test", &["alice@example.test"], &m)
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    c.cmd("NOOP", "250").await;
    t.wait_mailbox(DOMAIN, "alice", 1).await;
}

/// The header section is bounded on its own (`max_header_size`, 1 MiB by
/// default): reading a header takes many times its size in memory, so a
/// message that is nearly all header is refused, however large messages
/// may be; and a message whose first line is folded is refused, as it
/// would continue the last header field Tern adds in front of it.
#[tokio::test]
async fn header_section_limit_and_a_folded_first_line() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    let field = format!("X-Filler: {}\r\n", "h".repeat(60));
    let huge = format!(
        "Subject: all header\r\n{}\r\nbody\r\n",
        field.repeat(20_000)
    );
    assert!(huge.len() > 1 << 20);
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &huge)
        .await;
    assert_eq!(
        r.lines[0],
        "552 5.3.4 Message header section larger than 1048576 octets"
    );
    // A large body behind a small header is fine.
    let large = format!("Subject: large body\r\n\r\n{}", field.repeat(20_000));
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], &large)
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            " folded\r\nSubject: x\r\n\r\nbody\r\n",
        )
        .await;
    assert!(
        r.lines[0].starts_with("550 5.6.0 Message starts with a folded line"),
        "{:?}",
        r.lines
    );
    c.cmd("NOOP", "250").await;
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(msgs[0].ends_with(large.as_bytes()));

    // A lower limit, over BDAT.
    let t = TestServer::start_with(|c| c.limits.max_header_size = 4096).await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    let m = format!("{}\r\nbody\r\n", field.repeat(70));
    c.send(format!("BDAT {} LAST\r\n{m}", m.len()).as_bytes())
        .await;
    c.expect("552 5.3.4").await;
    c.cmd("NOOP", "250").await;
    assert_eq!(t.queued().await, 0);
}

/// A ready session on each kind of listener: port 25 style without AUTH,
/// submission after STARTTLS and AUTH, SMTPS after AUTH.
async fn sessions(t: &TestServer) -> Vec<(&'static str, Client)> {
    let mut plain = Client::connect(t.smtp()).await;
    plain.ehlo().await;
    let mut sub = Client::connect(t.submission()).await;
    sub.ehlo().await;
    let mut sub = sub.starttls(&t.cert_pem()).await;
    sub.ehlo().await;
    sub.auth_plain(USER, PASSWORD, "235").await;
    let mut tls = Client::connect_tls(t.smtps(), &t.cert_pem()).await;
    tls.ehlo().await;
    tls.auth_plain(USER, PASSWORD, "235").await;
    vec![("smtp", plain), ("submission", sub), ("smtps", tls)]
}

#[tokio::test]
async fn smuggling_is_refused_on_every_listener_over_data_and_bdat_even_fully_pipelined() {
    let t = TestServer::start().await;
    for (listener, mut c) in sessions(&t).await {
        for (i, fake) in SMUGGLING.iter().enumerate() {
            // The pipelining variant: the whole carrier transaction, the
            // fake end, the smuggled one and the real end in one write.
            let carrier = format!(
                "MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: {listener} {i}\r\n\r\nbody{fake}MAIL FROM:<admin@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n"
            );
            c.send(carrier.as_bytes()).await;
            c.expect("250 2.1.0").await;
            c.expect("250 2.1.5").await;
            c.expect("354").await;
            let r = c.read().await;
            assert!(
                r.lines[0].starts_with("550 5.6.0"),
                "{listener} {fake:?}: {:?}",
                r.lines
            );
            c.expect("250 2.0.0").await; // the NOOP, in step
                                         // The same bytes as a BDAT chunk are refused too.
            let chunk =
                format!("Subject: bdat\r\n\r\nbody{fake}MAIL FROM:<admin@example.test>\r\n");
            c.send(
                format!(
                    "MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT {} LAST\r\n{chunk}NOOP\r\n",
                    chunk.len()
                )
                .as_bytes(),
            )
            .await;
            c.expect("250 2.1.0").await;
            c.expect("250 2.1.5").await;
            let r = c.read().await;
            assert!(
                r.lines[0].starts_with("550 5.6.0"),
                "{listener} BDAT {fake:?}: {:?}",
                r.lines
            );
            c.expect("250 2.0.0").await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.queued().await, 0);
    assert!(t.mailbox(DOMAIN, "alice").is_empty());
    assert!(t.mailbox(DOMAIN, "admin").is_empty());
}

/// Mail refused by policy is recorded as `rejected` events (for search,
/// statistics and webhooks), with the sender, the client and the reply.
#[tokio::test]
async fn refusals_are_recorded_as_rejected_events() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<spammer@evil.test>", "250").await;
    c.cmd("RCPT TO:<victim@elsewhere.test>", "550 5.7.1").await;
    c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1").await;
    c.cmd("QUIT", "221").await;
    let store = t.server().store.clone();
    let now = tern_core::unix_now();
    let mut rejected = 0;
    for _ in 0..50 {
        let stats = store.stats(now - 60, now + 60, 3600).await.unwrap();
        rejected = stats
            .iter()
            .filter(|r| r.kind == "rejected")
            .map(|r| r.count)
            .sum::<i64>();
        if rejected >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rejected, 2);
    let hits = store
        .search_messages(&tern_store::MessageQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(hits.is_empty(), "a refusal queues nothing: {hits:?}");
}

/// A client that keeps getting errors is cut off: after 20 refused
/// commands the server says 421 and closes, so a session cannot be used
/// to probe addresses or commands without end.
#[tokio::test]
async fn twenty_errors_close_the_connection() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<x@remote.test>", "250").await;
    for i in 0..19 {
        c.cmd(&format!("RCPT TO:<nobody{i}@example.test>"), "550")
            .await;
    }
    c.send(b"RCPT TO:<nobody19@example.test>\r\n").await;
    c.expect("550").await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await, "the connection is closed after 421");
}
