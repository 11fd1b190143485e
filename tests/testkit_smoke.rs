//! The test kit's own servers: the zone-text DNS server seen through a real
//! resolver, and the fake remote SMTP server seen through a raw socket.
//! Delivery tests rely on both behaving exactly as described here.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use common::dns::{resolver, resolver_tcp, TestDns};
use common::fake_smtp::{free_port, tls_cert_pem, FakeSmtp, Script};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const ZONE: &str = r#"
# the recipient's domain, two exchangers
remote.test        MX 10 mx1.remote.test
Remote.Test.       MX 20 MX2.remote.test.
remote.test        TXT "v=spf1 -all"
mx1.remote.test    A 127.0.0.2
mx1.remote.test    AAAA ::1
mx2.remote.test    A 127.0.0.3
alias.remote.test  CNAME mx1.remote.test
nomail.test        MX 0 .
broken.test        SERVFAIL
multi.test         TXT "first part" "second # part"   # a comment after a record
deep.a.b.test      A 127.0.0.9
"#;

fn mx(r: &hickory_resolver::lookup::Lookup) -> Vec<(u16, String)> {
    let mut v: Vec<_> = r
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn txt(r: &hickory_resolver::lookup::Lookup) -> Vec<Vec<String>> {
    r.answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn is_nodata(e: &NetError) -> bool {
    e.is_no_records_found() && !e.is_nx_domain()
}

fn is_servfail(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
    )
}

/// Every kind of answer the zone can give, through `r`.
async fn check_zone(r: &TokioResolver) {
    let m = r.mx_lookup("remote.test.").await.unwrap();
    assert_eq!(
        mx(&m),
        vec![
            (10, "mx1.remote.test.".to_string()),
            (20, "mx2.remote.test.".to_string())
        ]
    );
    // Names are case-insensitive both in the zone and in queries.
    assert_eq!(mx(&r.mx_lookup("REMOTE.test.").await.unwrap()).len(), 2);

    let a = r.ipv4_lookup("mx1.remote.test.").await.unwrap();
    let a: Vec<_> = a
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(a, vec![Ipv4Addr::new(127, 0, 0, 2)]);
    assert_eq!(a.len(), 1);

    let aaaa = r.ipv6_lookup("mx1.remote.test.").await.unwrap();
    assert!(aaaa
        .answers()
        .iter()
        .any(|r| matches!(&r.data, RData::AAAA(a) if a.0 == Ipv6Addr::LOCALHOST)));

    let t = r.txt_lookup("remote.test.").await.unwrap();
    assert_eq!(txt(&t), vec![vec!["v=spf1 -all".to_string()]]);
    let t = r.txt_lookup("multi.test.").await.unwrap();
    assert_eq!(
        txt(&t),
        vec![vec!["first part".to_string(), "second # part".to_string()]]
    );

    // A CNAME is followed to the target's addresses.
    let ips: Vec<IpAddr> = r
        .lookup_ip("alias.remote.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert!(
        ips.contains(&IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        "{ips:?}"
    );

    // RFC 7505 null MX: one MX of preference 0 and exchange ".".
    let m = r.mx_lookup("nomail.test.").await.unwrap();
    assert_eq!(mx(&m), vec![(0, ".".to_string())]);

    let e = r.mx_lookup("nowhere.remote.test.").await.unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    assert!(e.into_soa().is_some(), "NXDOMAIN carries an SOA");

    let e = r.mx_lookup("mx1.remote.test.").await.unwrap_err();
    assert!(is_nodata(&e), "{e:?}");
    assert!(e.into_soa().is_some(), "NODATA carries an SOA");
    let e = r.ipv4_lookup("remote.test.").await.unwrap_err();
    assert!(is_nodata(&e), "{e:?}");
    // An empty non-terminal exists: NODATA, not NXDOMAIN.
    let e = r.ipv4_lookup("a.b.test.").await.unwrap_err();
    assert!(is_nodata(&e), "{e:?}");

    for name in ["broken.test.", "BROKEN.test."] {
        let e = r.mx_lookup(name).await.unwrap_err();
        assert!(is_servfail(&e), "{e:?}");
    }
    let e = r.ipv4_lookup("broken.test.").await.unwrap_err();
    assert!(is_servfail(&e), "{e:?}");
}

#[tokio::test]
async fn dns_answers_over_udp() {
    let dns = TestDns::start(ZONE).await;
    let r = resolver(dns.addr);
    check_zone(&r).await;
    // No cache and no retries: each lookup is one query on the wire.
    let before = dns.queries();
    r.mx_lookup("remote.test.").await.unwrap();
    r.mx_lookup("remote.test.").await.unwrap();
    r.mx_lookup("broken.test.").await.unwrap_err();
    assert_eq!(dns.queries(), before + 3);
}

#[tokio::test]
async fn dns_answers_over_tcp() {
    let dns = TestDns::start(ZONE).await;
    check_zone(&resolver_tcp(dns.addr)).await;
    assert!(dns.queries() > 10);
}

#[tokio::test]
async fn dns_truncates_big_udp_answers_so_the_resolver_uses_tcp() {
    let chunk = "x".repeat(200);
    let strings = vec![format!("\"{chunk}\""); 8].join(" ");
    let dns = TestDns::start(&format!("big.test TXT {strings}")).await;
    let t = resolver(dns.addr).txt_lookup("big.test.").await.unwrap();
    assert_eq!(txt(&t), vec![vec![chunk; 8]]);
    // The truncated UDP answer, then the full one over TCP.
    assert_eq!(dns.queries(), 2);
}

/// A bare-bones SMTP client: what the test writes is exactly what is sent.
struct Raw<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(s: S) -> Self {
        Raw { s, buf: Vec::new() }
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
        self.s.flush().await.unwrap();
    }

    /// Reads until `buf` holds at least `n` bytes; false at EOF.
    async fn fill_to(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut b = [0u8; 4096];
            let r = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b))
                .await
                .expect("data within 5 s");
            match r {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&b[..k]),
            }
        }
        true
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                assert!(l.ends_with(b"\r\n"), "reply line ends in CRLF: {l:?}");
                return Some(String::from_utf8(l).unwrap().trim_end().to_string());
            }
            let want = self.buf.len() + 1;
            if !self.fill_to(want).await {
                return None;
            }
        }
    }

    /// One whole reply, its lines joined by "\n"; `None` at EOF.
    async fn reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let last = l.as_bytes().get(3) != Some(&b'-');
            lines.push(l);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await.expect("a reply before EOF");
        let last = r.lines().last().unwrap();
        assert!(last.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill_to(1).await
    }
}

async fn connect(fake: &FakeSmtp) -> Raw<TcpStream> {
    let mut c = Raw::new(TcpStream::connect(fake.addr).await.unwrap());
    c.expect("220").await;
    c
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[tokio::test]
async fn fake_smtp_pipelined_transactions_and_scripted_replies() {
    let script = Script {
        rcpt_replies: HashMap::from([(
            "bad@remote.test".to_string(),
            "550 5.1.1 No such user".to_string(),
        )]),
        data_replies: ["451 4.3.0 Try again later".to_string()].into(),
        ..Script::default()
    };
    let fake = FakeSmtp::start(localhost(), 0, script).await;
    let mut c = connect(&fake).await;
    let ext = c.cmd("EHLO client.test", "250 ").await;
    assert!(
        ext.contains("PIPELINING") && ext.contains("8BITMIME"),
        "{ext}"
    );

    // One write, answered in order.
    c.send(
        b"MAIL FROM:<a@origin.test> BODY=8BITMIME\r\n\
          RCPT TO:<Good@remote.test>\r\n\
          RCPT TO:<BAD@remote.test>\r\n\
          DATA\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("550 5.1.1").await;
    c.expect("354").await;
    let wire = b"Subject: one\r\n\r\n..a line that starts with a dot\r\nend\r\n.\r\n";
    c.send(wire).await;
    c.expect("451 4.3.0").await;

    // The same connection again: the scripted replies are used up.
    c.send(b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<good@remote.test>\r\nDATA\r\n")
        .await;
    for code in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"] {
        c.expect(code).await;
    }
    c.send(b"Subject: two\r\n\r\nbody\r\n.\r\n").await;
    c.expect("250 2.0.0 queued as FAKE").await;
    c.cmd("QUIT", "221").await;
    assert!(c.closed().await);

    let got = fake.wait_received(2, 5).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].helo, "client.test");
    assert!(!got[0].tls);
    assert_eq!(got[0].mail_from, "<a@origin.test> BODY=8BITMIME");
    assert_eq!(got[0].rcpt_to, vec!["Good@remote.test"]);
    assert_eq!(
        got[0].data,
        b"Subject: one\r\n\r\n.a line that starts with a dot\r\nend\r\n"
    );
    assert_eq!(got[0].raw, wire);
    assert_eq!(got[0].reply, "451 4.3.0 Try again later");
    assert_eq!(got[1].mail_from, "<>");
    assert_eq!(got[1].reply, "250 2.0.0 queued as FAKE");
    assert_eq!(fake.connections(), 1);
    let cmds = fake.commands();
    assert_eq!(cmds[0], "EHLO client.test");
    assert_eq!(cmds[3], "RCPT TO:<BAD@remote.test>");
    assert_eq!(cmds.last().unwrap(), "QUIT");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn fake_smtp_421_to_mail_closes_the_connection() {
    let fake = FakeSmtp::start(localhost(), 0, Script::default()).await;
    fake.set_script(|s| s.mail_reply = "421 4.3.2 Shutting down".into());
    let mut c = connect(&fake).await;
    c.cmd("EHLO client.test", "250 ").await;
    c.cmd("MAIL FROM:<a@origin.test>", "421 4.3.2").await;
    assert!(c.closed().await);
    assert!(fake.received().is_empty());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn fake_smtp_starttls_with_injected_plaintext() {
    let inject = b"250 injected before the handshake\r\n".to_vec();
    let script = Script {
        starttls: true,
        inject_after_starttls: Some(inject.clone()),
        auth: Some(("user".into(), "secret".into())),
        ..Script::default()
    };
    let fake = FakeSmtp::start(localhost(), 0, script).await;
    let mut c = connect(&fake).await;
    let ext = c.cmd("EHLO client.test", "250 ").await;
    assert!(ext.contains("STARTTLS"), "{ext}");
    c.cmd("STARTTLS", "220 2.0.0").await;
    // The injected bytes arrive with the 220; a good client drops them.
    assert!(c.fill_to(inject.len()).await);
    assert_eq!(c.buf, inject);

    tern_smtp::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut tls_cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("mx1.remote.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, c.s)
        .await
        .expect("TLS handshake with the fake");
    let mut c = Raw::new(tls);
    let ext = c.cmd("EHLO client.test", "250 ").await;
    assert!(
        !ext.contains("STARTTLS") && ext.contains("AUTH PLAIN LOGIN"),
        "{ext}"
    );
    c.cmd("MAIL FROM:<a@origin.test>", "530 5.7.0").await;
    c.cmd("AUTH PLAIN AHVzZXIAd3Jvbmc=", "535 5.7.8").await;
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("dXNlcg==", "334 UGFzc3dvcmQ6").await;
    c.cmd("c2VjcmV0", "235 2.7.0").await;
    c.cmd("MAIL FROM:<a@origin.test>", "250").await;
    c.cmd("RCPT TO:<b@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: secret\r\n\r\nhi\r\n.\r\n").await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;

    let got = fake.wait_received(1, 5).await;
    assert!(got[0].tls);
    assert_eq!(got[0].rcpt_to, vec!["b@remote.test"]);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn fake_smtp_reports_wire_violations() {
    let fake = FakeSmtp::start(localhost(), 0, Script::default()).await;

    let mut c = connect(&fake).await;
    c.cmd("EHLO client.test", "250 ").await;
    c.send(b"MAIL FROM:<a@origin.test>\n").await;
    c.expect("250").await;
    c.cmd("RCPT TO:<b@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: x\r\n\r\nbare\nfeed\r\n.\r\n").await;
    c.expect("250").await;
    let v = fake.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].contains("bare LF") && v[0].contains("MAIL FROM"),
        "{v:?}"
    );
    assert!(
        v[1].contains("bare LF") && v[1].contains("message data"),
        "{v:?}"
    );

    // More breaches on a second connection: no hello, unoffered extension,
    // AUTH in the clear, a pipelined command the server never offered to take.
    fake.set_script(|s| {
        s.pipelining = false;
        s.auth = Some(("u".into(), "p".into()));
    });
    let mut c = connect(&fake).await;
    c.cmd("MAIL FROM:<a@origin.test>", "503").await;
    c.cmd("EHLO client.test", "250 ").await;
    c.cmd("AUTH PLAIN AHUAcA==", "538").await;
    c.send(b"NOOP\r\nNOOP\r\n").await;
    c.expect("250").await;
    c.expect("250").await;
    let v = fake.violations()[2..].to_vec();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].starts_with("connection 2: MAIL before EHLO"), "{v:?}");
    assert!(v[1].contains("AUTH without TLS"), "{v:?}");
    assert!(v[2].contains("without PIPELINING"), "{v:?}");
}

#[tokio::test]
async fn fake_smtp_helo_fallback_and_reset_mid_data() {
    let script = Script {
        ehlo: false,
        close_after_data_start: true,
        ..Script::default()
    };
    let fake = FakeSmtp::start(localhost(), 0, script).await;
    let mut c = connect(&fake).await;
    c.cmd("EHLO client.test", "502 5.5.1").await;
    c.cmd("HELO client.test", "250").await;
    c.cmd("MAIL FROM:<a@origin.test>", "250").await;
    c.cmd("RCPT TO:<b@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: lost\r\n").await;
    assert!(c.closed().await);
    assert!(fake.received().is_empty());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn fake_smtp_shares_a_port_across_loopback_addresses() {
    let ips = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    ];
    let port = free_port(&ips);
    let a = FakeSmtp::start(ips[0], port, Script::default()).await;
    let b = FakeSmtp::start(ips[1], port, Script::default()).await;
    assert_eq!(a.addr.port(), b.addr.port());
    connect(&a).await;
    connect(&b).await;
    assert_eq!((a.connections(), b.connections()), (1, 1));
    let addr = a.addr;
    drop(a);
    assert!(TcpStream::connect(addr).await.is_err(), "listener stopped");
}

#[tokio::test]
async fn fake_smtp_chunking_size_and_starttls_pipelining() {
    let script = Script {
        chunking: true,
        size: Some(1000),
        starttls: true,
        ..Script::default()
    };
    let fake = FakeSmtp::start(localhost(), 0, script).await;
    let mut c = connect(&fake).await;
    let ext = c.cmd("EHLO client.test", "250 ").await;
    assert!(
        ext.contains("SIZE 1000") && ext.contains("CHUNKING"),
        "{ext}"
    );
    c.cmd("MAIL FROM:<a@origin.test> SIZE=5000", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<a@origin.test> SIZE=20", "250").await;
    c.cmd("RCPT TO:<b@remote.test>", "250").await;
    // BDAT chunks are taken as they are: no dot-stuffing, no terminator.
    c.send(b"BDAT 10\r\n.a\r\nline\r\nBDAT 6 LAST\r\n.end\r\n")
        .await;
    c.expect("250 2.0.0 10 octets").await;
    c.expect("250 2.0.0 queued").await;
    let got = fake.wait_received(1, 5).await;
    assert_eq!(got[0].data, b".a\r\nline\r\n.end\r\n");
    assert_eq!(got[0].raw, got[0].data);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // A client that sends before the TLS handshake is caught; what it sent
    // in the clear is discarded, as RFC 3207 requires.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    c.expect("220 2.0.0").await;
    let v = fake.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("before the TLS handshake"), "{v:?}");
}
