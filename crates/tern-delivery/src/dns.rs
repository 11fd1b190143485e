//! Where mail for a domain goes: MX lookup (RFC 5321 5.1) with the implicit
//! MX rule and null MX (RFC 7505), then the addresses of each exchanger.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use tern_core::config::DnsConfig;

/// Why a destination could not be found, and whether trying later can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// Will not change by waiting (no such domain, null MX): bounce.
    Permanent(String),
    /// DNS trouble (timeout, SERVFAIL): defer.
    Temporary(String),
}

/// One mail exchanger, in the order to try it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanger {
    pub host: String,
    pub preference: u16,
}

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
        } else {
            let servers = config.nameservers.iter().map(name_server).collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = config.timeout.0;
        opts.attempts = 2;
        // Mail domains are absolute names: no search list, no local suffix.
        opts.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("building the DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// The exchangers for `domain`, most preferred first, shuffled among
    /// equal preferences (RFC 5321 5.1).
    pub async fn exchangers(&self, domain: &str) -> Result<Vec<Exchanger>, LookupError> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            // An address literal names the host itself (RFC 5321 4.1.3).
            let ip = literal.strip_prefix("IPv6:").unwrap_or(literal);
            return Ok(vec![Exchanger {
                host: ip.to_string(),
                preference: 0,
            }]);
        }
        let name = absolute(domain);
        match self.resolver.mx_lookup(name.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<Exchanger> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(Exchanger {
                            host: mx
                                .exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                            preference: mx.preference,
                        }),
                        _ => None,
                    })
                    .collect();
                // RFC 7505 3: a single MX of "." means no mail at all.
                if mx.len() == 1 && mx[0].host.is_empty() {
                    return Err(LookupError::Permanent(format!(
                        "556 5.1.10 {domain} does not accept mail (null MX, RFC 7505)"
                    )));
                }
                mx.retain(|m| !m.host.is_empty());
                if mx.is_empty() {
                    return Ok(implicit(domain));
                }
                mx.shuffle(&mut rand::thread_rng());
                mx.sort_by_key(|m| m.preference);
                Ok(mx)
            }
            Err(e) if e.is_nx_domain() => Err(LookupError::Permanent(format!(
                "550 5.1.2 domain {domain} does not exist (NXDOMAIN)"
            ))),
            // RFC 5321 5.1: no MX records → the domain itself is the exchanger.
            Err(e) if e.is_no_records_found() => Ok(implicit(domain)),
            Err(e) => Err(LookupError::Temporary(format!(
                "451 4.4.3 DNS lookup of MX for {domain} failed: {}",
                describe(&e)
            ))),
        }
    }

    /// Addresses of a host (A and AAAA). An IP address stands for itself.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.lookup_ip(absolute(host).as_str()).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(LookupError::Permanent(
                format!("550 5.1.2 host {host} has no address"),
            )),
            Err(e) => Err(LookupError::Temporary(format!(
                "451 4.4.3 DNS lookup of {host} failed: {}",
                describe(&e)
            ))),
        }
    }
}

impl Dns {
    /// The TXT records at `name`, each as one string (its pieces joined);
    /// none when the name or the records do not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        match self.resolver.txt_lookup(absolute(name).as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(LookupError::Temporary(format!(
                "DNS lookup of TXT {name} failed: {}",
                describe(&e)
            ))),
        }
    }

    /// The MX hosts of `domain` as published (no implicit MX).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, LookupError> {
        match self.exchangers(domain).await {
            Ok(mx) if mx.len() == 1 && mx[0].host == domain && mx[0].preference == 0 => {
                // Only the implicit MX: nothing is published.
                match self.resolver.mx_lookup(absolute(domain).as_str()).await {
                    Ok(l) if !l.answers().is_empty() => Ok(vec![domain.to_string()]),
                    _ => Ok(Vec::new()),
                }
            }
            Ok(mx) => Ok(mx.into_iter().map(|m| m.host).collect()),
            Err(LookupError::Permanent(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn implicit(domain: &str) -> Vec<Exchanger> {
    vec![Exchanger {
        host: domain.to_string(),
        preference: 0,
    }]
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn describe(e: &NetError) -> String {
    e.to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}
