//! Checks on mail arriving for local domains: SPF (RFC 7208) for MAIL FROM
//! (or HELO for the null sender), DKIM (RFC 6376), ARC (RFC 8617) and DMARC
//! (RFC 7489) with alignment, summed up in one Authentication-Results header
//! (RFC 8601). All of it through `mail-auth`.

use std::net::IpAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
};

pub use mail_auth::SpfResult;
use tern_core::config::DnsConfig;

/// What DMARC says should happen to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmarcVerdict {
    /// Aligned SPF or DKIM pass.
    Pass,
    /// No DMARC record (or nothing to check).
    None,
    /// Failed; the domain asks for this to be done with such mail.
    Fail { domain: String, policy: Requested },
    /// DNS trouble: no conclusion.
    TempError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Nothing,
    Quarantine,
    Reject,
}

/// The outcome of the checks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The complete `Authentication-Results: ...\r\n` field.
    pub header: String,
    pub spf: SpfResult,
    pub spf_domain: String,
    pub dmarc: DmarcVerdict,
}

pub struct InboundChecker {
    auth: MessageAuthenticator,
    hostname: String,
}

impl InboundChecker {
    pub fn new(dns: &DnsConfig, hostname: &str) -> Result<InboundChecker, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = dns.timeout.0;
        opts.attempts = 2;
        opts.ndots = 0;
        let auth = if dns.nameservers.is_empty() {
            // The system's servers, with Tern's timeout and no search list.
            let (config, system) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
            let mut opts = system;
            opts.timeout = dns.timeout.0;
            opts.attempts = 2;
            opts.ndots = 0;
            MessageAuthenticator::new(config, opts)
        } else {
            let servers = dns
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], servers), opts)
        }
        .map_err(|e| format!("building the DNS resolver for inbound checks: {e}"))?;
        Ok(InboundChecker {
            auth,
            hostname: hostname.to_string(),
        })
    }

    /// Checks one message from `ip`, which said `helo` and gave `mail_from`
    /// (empty for the null sender).
    pub async fn check(&self, message: &[u8], ip: IpAddr, helo: &str, mail_from: &str) -> Checked {
        let host = self.hostname.as_str();
        let spf = if mail_from.is_empty() {
            self.auth
                .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
                .await
        } else {
            self.auth
                .verify_spf(SpfParameters::verify_mail_from(ip, helo, host, mail_from))
                .await
        };
        let spf_domain = match mail_from.rsplit_once('@') {
            Some((_, d)) => d.to_ascii_lowercase(),
            None => helo.to_ascii_lowercase(),
        };
        let mut results = AuthenticationResults::new(host);
        results = if mail_from.is_empty() {
            results.with_spf_ehlo_result(&spf, ip, helo)
        } else {
            results.with_spf_mailfrom_result(&spf, ip, mail_from, helo)
        };
        let Some(msg) = AuthenticatedMessage::parse(message) else {
            return Checked {
                header: results.to_header(),
                spf: spf.result(),
                spf_domain,
                dmarc: DmarcVerdict::None,
            };
        };
        let dkim = self.auth.verify_dkim(&msg).await;
        let arc = self.auth.verify_arc(&msg).await;
        // RFC 8617 5.2: a chain whose newest ARC-Message-Signature does not
        // verify (body hash, expiry) or with a malformed ARC field has failed;
        // mail-auth calls those cases neutral, which is no ARC result.
        let arc = match arc.result() {
            DkimResult::Neutral(e) => {
                let e = e.clone();
                arc.with_result(DkimResult::Fail(e))
            }
            _ => arc,
        };
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, &spf_domain, &spf))
            .await;
        let from = msg.from().to_string();
        let header = results
            .with_dkim_results(&dkim, &from)
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc)
            .to_header();
        let passed =
            *dmarc.dkim_result() == DmarcResult::Pass || *dmarc.spf_result() == DmarcResult::Pass;
        let verdict = if passed {
            DmarcVerdict::Pass
        } else if matches!(dmarc.dkim_result(), DmarcResult::TempError(_))
            || matches!(dmarc.spf_result(), DmarcResult::TempError(_))
        {
            DmarcVerdict::TempError
        } else if dmarc.dmarc_record().is_none() {
            DmarcVerdict::None
        } else {
            DmarcVerdict::Fail {
                domain: dmarc.domain().to_string(),
                policy: match dmarc.policy() {
                    Policy::Reject => Requested::Reject,
                    Policy::Quarantine => Requested::Quarantine,
                    Policy::None | Policy::Unspecified => Requested::Nothing,
                },
            }
        };
        Checked {
            header,
            spf: spf.result(),
            spf_domain,
            dmarc: verdict,
        }
    }
}

/// Removes header fields only this server may write: Authentication-Results
/// fields that claim to come from it (authserv-id `hostname`, RFC 8601 5)
/// and its own quarantine mark. Any already present were forged. Fields
/// of other authserv-ids stay.
///
/// Returns only what changes, so that nothing is copied when nothing is
/// removed (the usual case) and the rest of a large message stays where it
/// is: the header section as it should be, and where in `message` what
/// follows it starts. `None` when there is nothing to remove.
pub fn own_results_stripped(message: &[u8], hostname: &str) -> Option<(Vec<u8>, usize)> {
    let header_end = find_header_end(message);
    let head = &message[..header_end];
    // Whole fields (the first line and its folded continuation lines), as
    // ranges of `head`.
    let mut fields: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match fields.last_mut() {
            Some(field) if continuation => field.end = at + line.len(),
            _ => fields.push(at..at + line.len()),
        }
        at += line.len();
    }
    let own = |r: &std::ops::Range<usize>| is_own_field(&head[r.clone()], hostname);
    if !fields.iter().any(own) {
        return None;
    }
    let mut out = Vec::with_capacity(header_end);
    for field in fields.iter().filter(|r| !own(r)) {
        out.extend_from_slice(&head[field.clone()]);
    }
    Some((out, header_end))
}

fn is_own_field(field: &[u8], hostname: &str) -> bool {
    let Some(colon) = field.iter().position(|b| *b == b':') else {
        return false;
    };
    let name = field[..colon].trim_ascii();
    if name.eq_ignore_ascii_case(b"x-tern-quarantine") {
        return true;
    }
    if !name.eq_ignore_ascii_case(b"authentication-results") {
        return false;
    }
    // The authserv-id is the first token, after any folding and comments.
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let mut rest = value.trim_start();
    while let Some(after) = rest.strip_prefix('(') {
        rest = after
            .split_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .trim_start();
    }
    let id = rest
        .split([';', ' ', '\t', '\r', '\n', '('])
        .next()
        .unwrap_or("");
    id.eq_ignore_ascii_case(hostname)
}

/// Where the header block ends (after its blank line), or the whole length.
fn find_header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(message, b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message with our own results removed.
    fn strip_own_results(m: &[u8], hostname: &str) -> Vec<u8> {
        match own_results_stripped(m, hostname) {
            None => m.to_vec(),
            Some((mut head, rest)) => {
                head.extend_from_slice(&m[rest..]);
                head
            }
        }
    }

    #[test]
    fn strips_only_our_own_results() {
        let m = b"Authentication-Results: mx.example.test; spf=pass\r\n\tsmtp.mailfrom=x\r\nAuthentication-Results:\r\n  (comment) mx.example.test; dkim=pass\r\nX-Tern-Quarantine: no\r\nAuthentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n";
        let out = String::from_utf8(strip_own_results(m, "MX.example.test")).unwrap();
        assert_eq!(
            out,
            "Authentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n"
        );
    }

    #[test]
    fn a_message_with_nothing_to_strip_is_not_copied() {
        let m = b" folded first\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(own_results_stripped(m, "mx.example.test"), None);
        // No header/body separator at all: the whole message is header.
        let m = b"Subject: hi\r\nAuthentication-Results: mx.example.test; x";
        assert_eq!(
            &strip_own_results(m, "mx.example.test")[..],
            b"Subject: hi\r\n"
        );
    }
}
