//! The plain SMTP conversation: EHLO, a local delivery, the headers Tern
//! adds, pipelining and BDAT.

mod common;

use common::*;

#[tokio::test]
async fn ehlo_advertises_extensions_and_hides_auth_before_tls() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    let lines = c.ehlo().await;
    let text = lines.join("\n");
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(text.contains(ext), "{ext} missing from {text}");
    }
    assert!(!text.contains("AUTH"), "AUTH offered before TLS: {text}");
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("VRFY alice", "252 2.5.0").await;
    c.cmd("HELP", "214 2.0.0").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("FOO", "500 5.5.2").await;
    c.cmd("QUIT", "221 2.0.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn helo_then_mail_to_local_user_lands_in_maildir() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.cmd("MAIL FROM:<bob@remote.test>", "503 5.5.1").await;
    c.cmd("HELO client.test", "250").await;
    let body = "From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello Alice.\r\n..leading dot\r\n";
    let r = c
        .mail("bob@remote.test", &["alice@example.test"], body)
        .await;
    assert!(
        r.lines[0].starts_with("250 2.0.0 Ok: queued as "),
        "{:?}",
        r.lines
    );
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    let text = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(
        text.starts_with("Return-Path: <bob@remote.test>\r\n"),
        "{text}"
    );
    assert!(text.contains(
        "Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test (Tern) with SMTP id "
    ));
    assert!(text.contains("\tfor <alice@example.test>;"));
    // The body arrives byte for byte, dot-unstuffed (RFC 5321 4.5.2).
    assert!(
        text.ends_with(&body.replace("\r\n..leading", "\r\n.leading")),
        "{text}"
    );
    // Unauthenticated mail is not given a Message-ID or Date.
    assert!(!text.contains("Message-ID:"));
    // Delivered: nothing left in the queue or the spool.
    common::eventually(10, || t.spool_files() == 0).await;
    t.wait_queue_empty().await;
}

#[tokio::test]
async fn pipelined_transaction_gets_replies_in_order() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.send(
        b"MAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("550 5.1.1").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    // The body, the end of data and the next transaction in one write.
    c.send(b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nSubject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        .await;
    c.expect("250 2.0.0").await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    t.wait_mailbox(DOMAIN, "alice", 1).await;
    let pm = t.wait_mailbox(DOMAIN, "postmaster", 2).await;
    assert!(
        String::from_utf8_lossy(&pm[1]).contains("second")
            || String::from_utf8_lossy(&pm[0]).contains("second")
    );
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    let part1 = "Subject: chunked\r\n\r\nfirst half, ";
    let part2 = "second half\r\n.not stuffed\r\n";
    c.send(format!("BDAT {}\r\n{part1}", part1.len()).as_bytes())
        .await;
    c.expect("250 2.0.0").await;
    // The last chunk and a pipelined NOOP in one write.
    c.send(format!("BDAT {} LAST\r\n{part2}NOOP\r\n", part2.len()).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.expect("250 2.0.0").await;
    // DATA after BDAT in the same transaction is refused.
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.send(b"BDAT 3\r\nab\n").await;
    c.expect("550 5.6.0").await;
    c.cmd("RSET", "250").await;
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    let text = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(text.ends_with(&format!("{part1}{part2}")), "{text}");
}

#[tokio::test]
async fn bdat_without_transaction_is_consumed_and_refused() {
    let t = TestServer::start().await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    // The chunk's bytes look like commands; they must be swallowed.
    c.send(b"BDAT 28 LAST\r\nMAIL FROM:<x@y.test>\r\nQUIT\r\nNOOP\r\n")
        .await;
    c.expect("503 5.5.1").await;
    c.expect("250 2.0.0").await;
    assert_eq!(t.queued().await, 0);
}

#[tokio::test]
async fn aliases_and_catch_all_expand_at_rcpt() {
    let t = TestServer::start_with(|c| {
        c.aliases.insert(
            "info@example.test".into(),
            vec!["alice@example.test".into()],
        );
        c.aliases.insert(
            "@example.test".into(),
            vec!["postmaster@example.test".into()],
        );
    })
    .await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.mail(
        "bob@remote.test",
        &["info@example.test", "anything@example.test"],
        "Subject: a\r\n\r\nx\r\n",
    )
    .await;
    t.wait_mailbox(DOMAIN, "alice", 1).await;
    t.wait_mailbox(DOMAIN, "postmaster", 1).await;
}

#[tokio::test]
async fn alias_to_nobody_is_refused_at_rcpt_not_lost() {
    let t = TestServer::start_with(|c| {
        c.aliases.insert(
            "broken@example.test".into(),
            vec!["ghost@example.test".into()],
        );
        c.aliases.insert(
            "loop1@example.test".into(),
            vec!["loop2@example.test".into()],
        );
        c.aliases.insert(
            "loop2@example.test".into(),
            vec!["loop1@example.test".into()],
        );
    })
    .await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
    c.cmd("RCPT TO:<broken@example.test>", "550 5.1.1").await;
    c.cmd("RCPT TO:<loop1@example.test>", "550 5.1.1").await;
    // Local parts match case-insensitively.
    c.cmd("RCPT TO:<ALICE@Example.Test>", "250").await;
}

#[tokio::test]
async fn second_server_on_the_same_data_dir_is_refused() {
    let t = TestServer::start().await;
    let mut config = t.config.clone();
    for l in &mut config.listener {
        l.address = "127.0.0.1:0".parse().unwrap();
    }
    let err = tern::Server::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("in use by another"), "{err:#}");
}

/// A message of `size` octets or a little more: a header, then lines of
/// which some start with a dot (stuffed in DATA, kept as they are in BDAT).
fn large_message(subject: &str, size: usize) -> String {
    let mut m = format!("Subject: {subject}\r\nFrom: bob@remote.test\r\n\r\n");
    let mut n = 0u32;
    while m.len() < size {
        n += 1;
        if n.is_multiple_of(7) {
            m.push_str(&format!(".line {n} starts with a dot\r\n"));
        } else {
            m.push_str(&format!(
                "line {n} of a message too large to hold in memory\r\n"
            ));
        }
    }
    m
}

fn received_to_file() -> u64 {
    tern_core::metrics::METRICS
        .messages_received_to_file
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Messages larger than what a session holds in memory (1 MiB) are written
/// to a file as they arrive, and still come out byte for byte: through
/// DATA, dot-stuffed, and through BDAT in chunks that split lines. The
/// file has no name, so nothing is left in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_received_into_a_file_and_delivered_intact() {
    let t = TestServer::start().await;
    let before = received_to_file();
    let by_data = large_message("by DATA", 3 << 20);
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            &by_data.replace("\r\n.", "\r\n.."),
        )
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);

    // BDAT in large chunks that split lines, and in many small ones.
    let by_bdat = large_message("by BDAT", (5 << 20) / 2);
    let by_small_chunks = large_message("by small BDAT chunks", 2 << 20);
    for (message, size) in [(&by_bdat, 700_001), (&by_small_chunks, 9_999)] {
        c.cmd("MAIL FROM:<bob@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        let chunks: Vec<&[u8]> = message.as_bytes().chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { " LAST" } else { "" };
            let mut command = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
            command.extend_from_slice(chunk);
            c.send(&command).await;
            c.expect("250 2.0.0").await;
        }
    }
    assert!(received_to_file() >= before + 3, "all three went to a file");

    let msgs = t.wait_mailbox(DOMAIN, "alice", 3).await;
    for (sent, subject) in [
        (&by_data, "by DATA"),
        (&by_bdat, "by BDAT"),
        (&by_small_chunks, "by small BDAT chunks"),
    ] {
        let got = msgs
            .iter()
            .find(|m| memchr::memmem::find(m, format!("Subject: {subject}").as_bytes()).is_some())
            .expect("delivered");
        assert!(got.ends_with(sent.as_bytes()), "{subject}: body intact");
        let head = String::from_utf8_lossy(&got[..got.len() - sent.len()]);
        assert!(head.contains("Received: from"), "{subject}: {head}");
    }
    t.wait_queue_empty().await;
    eventually(10, || t.spool_files() == 0).await;
    // The files had no name; none is still open either (the server runs
    // in this process, so its descriptors are ours).
    let dir = std::fs::canonicalize(&t.config.data_dir).unwrap();
    let open: Vec<std::path::PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|p| p.starts_with(&dir) && p.to_string_lossy().ends_with("(deleted)"))
        .collect();
    assert!(open.is_empty(), "staging files still open: {open:?}");
    // The subject is kept for search, as for a message held in memory.
    let found = t
        .server()
        .store
        .search_messages(&tern_store::MessageQuery {
            subject: Some("by small BDAT".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].info.subject.as_deref(),
        Some("by small BDAT chunks")
    );
}

/// Over the size limit while being written to a file: refused with 552,
/// the rest of the data swallowed, and the session goes on.
#[tokio::test]
async fn a_large_message_over_the_limit_is_refused_and_the_session_goes_on() {
    let t = TestServer::start_with(|c| c.limits.max_message_size = 2 << 20).await;
    let mut c = Client::connect(t.smtp()).await;
    c.ehlo().await;
    let big = large_message("over the limit", 3 << 20);
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            &big.replace("\r\n.", "\r\n.."),
        )
        .await;
    assert!(r.lines[0].starts_with("552 5.3.4"), "{:?}", r.lines);
    let r = c
        .mail(
            "bob@remote.test",
            &["alice@example.test"],
            "Subject: small\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let msgs = t.wait_mailbox(DOMAIN, "alice", 1).await;
    assert!(msgs[0].ends_with(b"Subject: small\r\n\r\nx\r\n"));
    t.wait_queue_empty().await;
    assert_eq!(
        t.mailbox(DOMAIN, "alice").len(),
        1,
        "the refused one is not kept"
    );
}
