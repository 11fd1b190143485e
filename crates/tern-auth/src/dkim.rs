//! DKIM for sender domains: key generation, the DNS records to publish, and
//! signing (RFC 6376 with RSA-SHA256, RFC 8463 with Ed25519-SHA256).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use tern_store::{DkimKeyRecord, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rsa2048,
    Ed25519,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rsa2048" | "rsa" => Ok(Algorithm::Rsa2048),
            "ed25519" => Ok(Algorithm::Ed25519),
            _ => Err(format!("unknown algorithm {s:?} (use rsa2048 or ed25519)")),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Rsa2048 => "rsa2048",
            Algorithm::Ed25519 => "ed25519",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("generating the key: {0}")]
    Generate(String),
    #[error("stored key {selector} of {domain} is unusable: {why}")]
    BadKey {
        domain: String,
        selector: String,
        why: String,
    },
    #[error("signing: {0}")]
    Sign(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A selector: a DNS label (RFC 6376 3.1).
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A selector for a new key: the algorithm and today's date.
pub fn default_selector(algorithm: Algorithm, now: i64) -> String {
    let date = chrono::DateTime::from_timestamp(now, 0)
        .map(|d| d.format("%Y%m%d").to_string())
        .unwrap_or_default();
    match algorithm {
        Algorithm::Rsa2048 => format!("rsa{date}"),
        Algorithm::Ed25519 => format!("ed{date}"),
    }
}

/// Makes a new key pair for `domain`. RSA generation takes a moment.
pub fn generate(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    now: i64,
) -> Result<DkimKeyRecord, DkimError> {
    let (private_key, public_key) = match algorithm {
        Algorithm::Rsa2048 => {
            let pair =
                DkimKeyPair::generate_rsa(2048).map_err(|e| DkimError::Generate(e.to_string()))?;
            let (private, public_pkcs1) = pair.into_inner();
            // RFC 6376 3.6.1: p= holds a SubjectPublicKeyInfo.
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::pkcs8::EncodePublicKey;
            let spki = rsa::RsaPublicKey::from_pkcs1_der(&public_pkcs1)
                .and_then(|k| {
                    k.to_public_key_der()
                        .map_err(|e| rsa::pkcs1::Error::Pkcs8(e.into()))
                })
                .map_err(|e| DkimError::Generate(e.to_string()))?;
            (private, spki.as_bytes().to_vec())
        }
        Algorithm::Ed25519 => {
            let pair =
                DkimKeyPair::generate_ed25519().map_err(|e| DkimError::Generate(e.to_string()))?;
            pair.into_inner()
        }
    };
    Ok(DkimKeyRecord {
        domain: domain.to_ascii_lowercase(),
        selector: selector.to_string(),
        algorithm: algorithm.to_string(),
        private_key: B64.encode(private_key),
        public_key: B64.encode(public_key),
        created_at: now,
        active: true,
    })
}

/// One DNS record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub name: String,
    pub kind: &'static str,
    pub value: String,
    pub purpose: &'static str,
}

impl fmt::Display for DnsRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            "TXT" => write!(f, "{}. IN TXT {}", self.name, quote_txt(&self.value)),
            _ => write!(f, "{}. IN {} {}", self.name, self.kind, self.value),
        }
    }
}

/// A TXT value as zone-file strings of at most 255 octets each.
fn quote_txt(v: &str) -> String {
    let parts: Vec<String> = v
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    parts.join(" ")
}

/// The DKIM record of a key (RFC 6376 3.6.1, RFC 8463 for k=ed25519).
pub fn dkim_record(key: &DkimKeyRecord) -> DnsRecord {
    let k = if key.algorithm == "ed25519" {
        "ed25519"
    } else {
        "rsa"
    };
    DnsRecord {
        name: format!("{}._domainkey.{}", key.selector, key.domain),
        kind: "TXT",
        value: format!("v=DKIM1; k={k}; p={}", key.public_key),
        purpose: "DKIM public key",
    }
}

/// Every record a sender domain should publish: each key's DKIM record,
/// a suggested SPF record naming this server, a DMARC record to start
/// with, and an MX record when the domain receives mail here.
pub fn suggested_records(
    domain: &str,
    keys: &[DkimKeyRecord],
    hostname: &str,
    receives: bool,
) -> Vec<DnsRecord> {
    let mut out: Vec<DnsRecord> = keys
        .iter()
        .filter(|k| k.domain == domain)
        .map(dkim_record)
        .collect();
    out.push(DnsRecord {
        name: domain.to_string(),
        kind: "TXT",
        value: format!("v=spf1 mx a:{hostname} ~all"),
        purpose: "SPF: mail from this domain comes from this server",
    });
    out.push(DnsRecord {
        name: format!("_dmarc.{domain}"),
        kind: "TXT",
        value: format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}"),
        purpose: "DMARC: start with p=none, move to quarantine/reject once reports are clean",
    });
    if receives {
        out.push(DnsRecord {
            name: domain.to_string(),
            kind: "MX",
            value: format!("10 {hostname}."),
            purpose: "MX: mail for this domain is delivered here",
        });
    }
    out
}

/// The headers signed (RFC 6376 5.4.1's recommendations, plus MIME and
/// list headers). From is listed twice so that no second From can be added
/// (oversigning, RFC 6376 8.15); names absent from a message are signed as
/// absent, so they cannot be added later either.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Signs submitted mail with the keys of its From domain.
#[derive(Clone)]
pub struct Signer {
    store: Arc<dyn Store>,
}

impl Signer {
    pub fn new(store: Arc<dyn Store>) -> Signer {
        Signer { store }
    }

    /// `DKIM-Signature` header fields for `message` (to put in front of
    /// it), one per active key of the From domain: none when the domain has
    /// no key. Call after every other header change.
    pub async fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        self.sign_parts(&[], message).await
    }

    /// As `sign`, for the message `head` followed by `rest`, without
    /// joining them (a large message is not copied in memory). The From
    /// field must be in `rest`: `head` is header fields Tern adds, which
    /// never include one.
    pub async fn sign_parts(&self, head: &[u8], rest: &[u8]) -> Result<String, DkimError> {
        let Some(domain) = from_domain(rest) else {
            return Ok(String::new());
        };
        let keys = self.store.dkim_keys(Some(&domain)).await?;
        let mut headers = String::new();
        for key in keys.iter().filter(|k| k.active) {
            headers.push_str(&sign_parts_with(key, &[head, rest])?);
        }
        Ok(headers)
    }
}

/// One `DKIM-Signature` header field for `message` with `key`.
pub fn sign_with(key: &DkimKeyRecord, message: &[u8]) -> Result<String, DkimError> {
    sign_parts_with(key, &[message])
}

/// One `DKIM-Signature` header field for the message made of `parts`, in
/// order, with `key`.
pub fn sign_parts_with(key: &DkimKeyRecord, parts: &[&[u8]]) -> Result<String, DkimError> {
    let bad = |why: String| DkimError::BadKey {
        domain: key.domain.clone(),
        selector: key.selector.clone(),
        why,
    };
    let der = B64
        .decode(&key.private_key)
        .map_err(|e| bad(e.to_string()))?;
    let signature = if key.algorithm == "ed25519" {
        let k = Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?;
        DkimSigner::from_key(k)
            .domain(&key.domain)
            .selector(&key.selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .sign_chained(parts.iter().copied().filter(|p| !p.is_empty()))
    } else {
        let k = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
            der.as_slice(),
        )))
        .map_err(|e| bad(e.to_string()))?;
        DkimSigner::from_key(k)
            .domain(&key.domain)
            .selector(&key.selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .sign_chained(parts.iter().copied().filter(|p| !p.is_empty()))
    };
    Ok(signature
        .map_err(|e| DkimError::Sign(e.to_string()))?
        .to_header())
}

/// The domain of the (first) From address, lowercased.
pub fn from_domain(message: &[u8]) -> Option<String> {
    from_domains(message).into_iter().next()
}

/// How many From fields mail-parser (the reader behind signing and the
/// sender check) finds, and the domains of the addresses in all of them,
/// lowercased. A header that one reader counts differently from another is
/// how a second identity is smuggled past a check.
pub fn from_fields(message: &[u8]) -> (usize, Vec<String>) {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return (0, Vec::new());
    };
    let mut count = 0;
    let mut domains = Vec::new();
    for h in parsed.headers() {
        if h.name != mail_parser::HeaderName::From {
            continue;
        }
        count += 1;
        if let Some(list) = h.value.as_address() {
            domains.extend(
                list.iter()
                    .filter_map(|a| a.address())
                    .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())),
            );
        }
    }
    (count, domains)
}

/// The domains of every From address, lowercased.
pub fn from_domains(message: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|a| a.address())
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature over Tern's header fields and the message as two parts
    /// covers the same header fields and body as one over them joined.
    #[test]
    fn signing_in_parts_is_signing_the_whole() {
        let key = generate("example.com", "s1", Algorithm::Ed25519, 0).unwrap();
        let head =
            b"Received: from x\r\n\tby y; Mon, 30 Nov 2026 04:00:00 +0000\r\nMessage-ID: <a@b>\r\n";
        let rest = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n.line\r\n";
        let joined = [&head[..], &rest[..]].concat();
        let tags = |sig: String| -> Vec<String> {
            sig.replace("\r\n", "")
                .split(';')
                .map(|t| t.split_whitespace().collect::<String>())
                .filter(|t| t.starts_with("bh=") || t.starts_with("h="))
                .collect()
        };
        let parts = tags(sign_parts_with(&key, &[head, rest]).unwrap());
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts, tags(sign_with(&key, &joined).unwrap()));
    }

    #[test]
    fn keys_and_records() {
        let ed = generate("Example.com", "s1", Algorithm::Ed25519, 0).unwrap();
        assert_eq!(ed.domain, "example.com");
        let r = dkim_record(&ed);
        assert_eq!(r.name, "s1._domainkey.example.com");
        assert!(r.value.starts_with("v=DKIM1; k=ed25519; p="));
        let rsa = generate("example.com", "s2", Algorithm::Rsa2048, 0).unwrap();
        // A 2048-bit SubjectPublicKeyInfo is 294 octets.
        assert_eq!(B64.decode(&rsa.public_key).unwrap().len(), 294);
        let all = suggested_records("example.com", &[ed.clone(), rsa], "mx.example.com", true);
        assert_eq!(all.len(), 5);
        assert!(all
            .iter()
            .any(|r| r.kind == "MX" && r.value == "10 mx.example.com."));
        assert!(
            all[1].to_string().contains("\" \""),
            "long TXT split in strings: {}",
            all[1]
        );
        assert!(valid_selector("s1") && !valid_selector("a b") && !valid_selector(""));
        assert_eq!(default_selector(Algorithm::Ed25519, 0), "ed19700101");
        let sig = sign_with(
            &ed,
            b"From: a@example.com\r\nTo: b@x.test\r\nSubject: x\r\n\r\nbody\r\n",
        )
        .unwrap();
        assert!(
            sig.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{sig}"
        );
        assert!(
            sig.contains("d=example.com") && sig.contains("s=s1"),
            "{sig}"
        );
    }

    #[test]
    fn from_domains_reads_the_header() {
        assert_eq!(
            from_domains(b"From: \"A\" <a@Example.COM>, b@x.test\r\n\r\n"),
            ["example.com", "x.test"]
        );
        assert!(from_domains(b"Subject: none\r\n\r\n").is_empty());
    }
}
