//! ARC (RFC 8617) on mail arriving for local domains: a chain sealed by an
//! intermediary whose key the loopback DNS serves is reported as arc=pass;
//! a chain broken after sealing (a sealed header, the body, the seal's own
//! results, a malformed or missing seal, or an intermediary that found the
//! chain broken) as arc=fail. The classic forwarding case keeps arc=pass next to the
//! broken DKIM signature and failing SPF it explains; ARC is reported, and
//! does not change what DMARC decides.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::dns::TestDns;
use common::*;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use tern_auth::dkim::{self, Algorithm};
use tern_store::DkimKeyRecord;

/// The author's message, as it leaves the author's domain (before signing).
const ORIGINAL: &str = "From: bob@orig.test\r\nTo: list@forwarder.test\r\nSubject: minutes\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@orig.test>\r\n\r\nHello.\r\n";

/// The headers an intermediary's ARC-Message-Signature covers.
const SEALED_HEADERS: [&str; 6] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "DKIM-Signature",
];

/// Keys: the authors' DKIM keys and the intermediaries' ARC keys, all
/// published in the loopback DNS.
struct Keys {
    orig: DkimKeyRecord,
    strict: DkimKeyRecord,
    forwarder: DkimKeyRecord,
    list: DkimKeyRecord,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            orig: dkim::generate("orig.test", "s1", Algorithm::Ed25519, 0).unwrap(),
            strict: dkim::generate("strict.test", "s1", Algorithm::Ed25519, 0).unwrap(),
            // One intermediary seals with RSA, the other with Ed25519.
            forwarder: dkim::generate("forwarder.test", "selector", Algorithm::Rsa2048, 0).unwrap(),
            list: dkim::generate("list.test", "arc", Algorithm::Ed25519, 0).unwrap(),
        }
    }

    /// The zone: SPF for the authors allows only 192.0.2.1 (so mail relayed
    /// from loopback fails SPF for them), SPF for forwarder.test allows
    /// loopback, and every key is published.
    fn zone(&self) -> String {
        let mut z = String::from(
            "
orig.test          TXT \"v=spf1 ip4:192.0.2.1 -all\"
_dmarc.orig.test   TXT \"v=DMARC1; p=none\"
strict.test        TXT \"v=spf1 ip4:192.0.2.1 -all\"
_dmarc.strict.test TXT \"v=DMARC1; p=reject\"
forwarder.test     TXT \"v=spf1 ip4:127.0.0.1 -all\"
list.test          TXT \"v=spf1 ip4:127.0.0.1 -all\"
",
        );
        for k in [&self.orig, &self.strict, &self.forwarder, &self.list] {
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
}

/// An intermediary (forwarder, mailing list) that checks what it receives
/// against the same DNS and adds an ARC set with its own key.
struct Intermediary<'a> {
    auth: MessageAuthenticator,
    key: &'a DkimKeyRecord,
    authserv_id: String,
}

impl<'a> Intermediary<'a> {
    fn new(dns: &TestDns, key: &'a DkimKeyRecord) -> Intermediary<'a> {
        let mut udp = ConnectionConfig::udp();
        udp.port = dns.addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = dns.addr.port();
        let server = NameServerConfig::new(dns.addr.ip(), true, vec![udp, tcp]);
        let mut opts = ResolverOpts::default();
        opts.ndots = 0;
        let auth =
            MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], vec![server]), opts)
                .expect("resolver for the intermediary");
        Intermediary {
            auth,
            authserv_id: format!("mx.{}", key.domain),
            key,
        }
    }

    /// Receives `received`, checks its DKIM and ARC, lets `modify` change it
    /// (as a list adds a subject tag), and returns the result with a new ARC
    /// set in front.
    async fn relay(&self, received: &str, modify: impl FnOnce(&str) -> String) -> String {
        let incoming = AuthenticatedMessage::parse(received.as_bytes()).expect("parses");
        let dkim = self.auth.verify_dkim(&incoming).await;
        let arc = self.auth.verify_arc(&incoming).await;
        let results = AuthenticationResults::new(&self.authserv_id)
            .with_dkim_results(&dkim, incoming.from())
            .with_arc_result(&arc, "127.0.0.1".parse().unwrap());
        let outgoing = modify(received);
        let message = AuthenticatedMessage::parse(outgoing.as_bytes()).expect("parses");
        let der = B64.decode(&self.key.private_key).unwrap();
        let set = if self.key.algorithm == "ed25519" {
            seal(
                Ed25519Key::from_pkcs8_der(&der).unwrap(),
                self.key,
                &message,
                &results,
                &arc,
            )
        } else {
            let pkcs1 = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.as_slice()));
            seal(
                RsaKey::<Sha256>::from_key_der(pkcs1).unwrap(),
                self.key,
                &message,
                &results,
                &arc,
            )
        };
        format!("{set}{outgoing}")
    }

    /// Relays without changing the message.
    async fn forward(&self, received: &str) -> String {
        self.relay(received, str::to_string).await
    }
}

/// The ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results
/// fields of the next instance.
fn seal(
    key: impl SigningKey<Hasher = Sha256>,
    record: &DkimKeyRecord,
    message: &AuthenticatedMessage<'_>,
    results: &AuthenticationResults<'_>,
    arc: &mail_auth::ArcOutput<'_>,
) -> String {
    ArcSealer::from_key(key)
        .domain(&record.domain)
        .selector(&record.selector)
        .headers(SEALED_HEADERS)
        .seal(message, results, arc)
        .expect("seals")
        .to_header()
}

/// `message` with a DKIM-Signature of `key` in front.
fn signed(key: &DkimKeyRecord, message: &str) -> String {
    format!(
        "{}{message}",
        dkim::sign_with(key, message.as_bytes()).unwrap()
    )
}

async fn server(dns: &TestDns) -> TestServer {
    let addr = dns.addr;
    TestServer::start_with(move |c| {
        c.dns.nameservers = vec![addr];
        c.inbound.checks = true;
    })
    .await
}

/// Sends `message` from `from` to alice, as an intermediary on loopback
/// would; returns the reply to the data.
async fn send(t: &TestServer, from: &str, message: &str) -> Reply {
    let mut c = Client::connect(t.smtp()).await;
    c.cmd("EHLO mx.forwarder.test", "250").await;
    c.mail(from, &["alice@example.test"], message).await
}

/// The n-th delivered message, and the Authentication-Results header Tern
/// added to it, unfolded.
async fn delivered(t: &TestServer, n: usize) -> (String, String) {
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
    let header = rest[..end].replace("\r\n\t", " ");
    (text, header)
}

/// The result of one method in an Authentication-Results header: the word
/// after `method=` (`arc=pass smtp.remote-ip=...` gives `pass`).
fn result_of<'h>(header: &'h str, method: &str) -> &'h str {
    let key = format!("{method}=");
    let start = header
        .split(['\t', ' ', ';'])
        .find(|w| w.starts_with(&key))
        .unwrap_or_else(|| panic!("no {method} result in {header}"));
    &start[key.len()..]
}

#[tokio::test]
async fn a_valid_chain_passes() {
    let keys = Keys::new();
    let dns = TestDns::start(&keys.zone()).await;
    let t = server(&dns).await;
    let forwarder = Intermediary::new(&dns, &keys.forwarder);
    let list = Intermediary::new(&dns, &keys.list);
    let original = signed(&keys.orig, ORIGINAL);

    // Without ARC fields there is no chain.
    let r = send(&t, "bounce@forwarder.test", &original).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let (_, ar) = delivered(&t, 1).await;
    assert_eq!(result_of(&ar, "arc"), "none", "{ar}");

    // One intermediary (RSA key at selector._domainkey.forwarder.test).
    let once = forwarder.forward(&original).await;
    assert!(once.starts_with("ARC-Seal: i=1;"), "{once}");
    let r = send(&t, "bounce@forwarder.test", &once).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let (text, ar) = delivered(&t, 2).await;
    assert_eq!(result_of(&ar, "arc"), "pass", "{ar}");
    assert!(ar.contains("arc=pass smtp.remote-ip=127.0.0.1"), "{ar}");
    assert_eq!(result_of(&ar, "dkim"), "pass", "{ar}");
    assert_eq!(result_of(&ar, "spf"), "pass", "{ar}");
    // The chain is delivered as it arrived, for whoever reads it next.
    assert!(text.contains(&once), "the sealed message is intact: {text}");

    // Two: the second (Ed25519) saw the first pass and sealed cv=pass.
    let twice = list.forward(&once).await;
    assert!(twice.starts_with("ARC-Seal: i=2;"), "{twice}");
    assert!(twice.contains("cv=pass"), "{twice}");
    let r = send(&t, "bounce@list.test", &twice).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let (_, ar) = delivered(&t, 3).await;
    assert_eq!(result_of(&ar, "arc"), "pass", "{ar}");
}

#[tokio::test]
async fn a_chain_broken_after_sealing_fails() {
    let keys = Keys::new();
    let dns = TestDns::start(&keys.zone()).await;
    let t = server(&dns).await;
    let forwarder = Intermediary::new(&dns, &keys.forwarder);
    let list = Intermediary::new(&dns, &keys.list);
    let sealed = forwarder.forward(&signed(&keys.orig, ORIGINAL)).await;
    assert!(sealed.contains("ARC-Authentication-Results: i=1; mx.forwarder.test;"));

    // RFC 8617 5.2: each of these is a failed chain, the body hash and the
    // unparseable seal included (the verifier alone would call those neutral).
    let cases: Vec<(&str, String)> = vec![
        (
            "a sealed header changed",
            sealed.replace("Subject: minutes", "Subject: invoice"),
        ),
        ("the body changed", sealed.replace("Hello.", "Hullo.")),
        (
            "the sealed results changed",
            sealed.replace(
                "ARC-Authentication-Results: i=1; mx.forwarder.test;",
                "ARC-Authentication-Results: i=1; mx.forwarder.test; spf=pass;",
            ),
        ),
        ("a malformed seal", sealed.replace("cv=none", "cv=maybe")),
        ("the seal removed", remove_field(&sealed, "ARC-Seal")),
        (
            "a second intermediary found it broken (cv=fail)",
            list.forward(&sealed.replace("Hello.", "Hullo.")).await,
        ),
    ];
    for (n, (what, message)) in cases.iter().enumerate() {
        assert_ne!(message, &sealed, "{what}: the case changes the message");
        let r = send(&t, "bounce@forwarder.test", message).await;
        assert_eq!(r.code, 250, "{what}: {:?}", r.lines);
        let (_, ar) = delivered(&t, n + 1).await;
        assert_eq!(result_of(&ar, "arc"), "fail", "{what}: {ar}");
    }
}

/// `message` without the (first) field called `name`.
fn remove_field(message: &str, name: &str) -> String {
    let start = message
        .find(&format!("{name}:"))
        .unwrap_or_else(|| panic!("{name} in {message}"));
    let mut end = start + message[start..].find("\r\n").unwrap() + 2;
    while message[end..].starts_with('\t') || message[end..].starts_with(' ') {
        end += message[end..].find("\r\n").unwrap() + 2;
    }
    format!("{}{}", &message[..start], &message[end..])
}

#[tokio::test]
async fn forwarding_that_breaks_dkim_keeps_arc_pass() {
    let keys = Keys::new();
    let dns = TestDns::start(&keys.zone()).await;
    let t = server(&dns).await;
    let forwarder = Intermediary::new(&dns, &keys.forwarder);
    let tag = |m: &str| m.replace("Subject: minutes", "Subject: [list] minutes");

    // The forwarder saw a good signature, then tagged the subject and
    // relayed with the author's envelope sender (no SRS): DKIM and SPF both
    // fail here, but the chain vouches for what the forwarder saw.
    let relayed = forwarder.relay(&signed(&keys.orig, ORIGINAL), tag).await;
    assert!(
        relayed.contains("dkim=pass header.d=orig.test"),
        "the forwarder recorded the original pass: {relayed}"
    );
    let r = send(&t, "bob@orig.test", &relayed).await;
    assert_eq!(r.code, 250, "{:?}", r.lines);
    let (_, ar) = delivered(&t, 1).await;
    assert_eq!(result_of(&ar, "arc"), "pass", "{ar}");
    assert_eq!(result_of(&ar, "dkim"), "fail", "{ar}");
    assert_eq!(result_of(&ar, "spf"), "fail", "{ar}");
    // DMARC is decided from SPF and DKIM alone (orig.test asks for p=none).
    assert_eq!(result_of(&ar, "dmarc"), "fail", "{ar}");

    // The same for an author whose domain asks for p=reject: the valid
    // chain does not override the policy, and the message is refused.
    let original = ORIGINAL.replace("bob@orig.test", "ceo@strict.test");
    let relayed = forwarder.relay(&signed(&keys.strict, &original), tag).await;
    let r = send(&t, "ceo@strict.test", &relayed).await;
    assert!(r.lines[0].starts_with("550 5.7.1"), "{:?}", r.lines);
    assert!(r.text().contains("strict.test"), "{:?}", r.lines);
}
