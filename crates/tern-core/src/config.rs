//! The typed configuration, read from `tern.toml`.
//!
//! Every field has a default so that an empty file (or no file) runs a
//! working server on loopback. Unknown keys are errors: a typo must not
//! silently fall back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// How a listener treats TLS and authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25 style: STARTTLS offered, AUTH only after TLS, mail for local
    /// domains from anyone.
    Smtp,
    /// Port 587 style (RFC 6409): STARTTLS and AUTH required before MAIL.
    Submission,
    /// Port 465 style (RFC 8314): TLS from the first byte, AUTH required.
    Smtps,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub mode: ListenerMode,
    /// Offer AUTH on a connection that is not encrypted. Only for trusted
    /// networks (e.g. loopback scripts); off by default.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Default: `<data_dir>/tls/cert.pem`, generated
    /// (self-signed) on first start when missing.
    pub cert: Option<PathBuf>,
    /// PEM private key. Default: `<data_dir>/tls/key.pem`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsConfig {
    /// Domains whose mail is delivered to mailboxes here. Default: the
    /// hostname and `localhost`.
    pub local: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message accepted, in octets (advertised as SIZE, RFC 1870).
    pub max_message_size: u64,
    /// Recipients per message (RFC 5321 4.5.3.1.8 requires at least 100).
    pub max_recipients: usize,
    /// Longest command line including CRLF (RFC 5321 4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest text line in a message including CRLF (RFC 5321 4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// Largest header section of a message, in octets (Exim's
    /// header_maxsize): reading a header takes many times its size in
    /// memory, so it is bounded however large the message may be.
    pub max_header_size: usize,
    /// Idle time allowed between commands (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout: HumanDuration,
    /// Idle time allowed while receiving message data (RFC 5321 4.5.3.2.5: 3 minutes).
    pub data_timeout: HumanDuration,
    /// Open SMTP connections in total.
    pub max_connections: usize,
    /// Open SMTP connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Failed AUTH attempts on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Failed AUTH attempts from one IP address within 10 minutes after
    /// which AUTH from it is refused (454 4.7.0) without checking anything:
    /// guessing passwords over many connections gets nowhere either.
    pub max_auth_failures_per_ip: u32,
    /// Slowest message data accepted, in octets per second, averaged from
    /// 10 s into DATA/BDAT on (0 turns the check off): a client dripping
    /// data to hold a connection (slowloris) is cut off with 421 4.4.2.
    pub min_data_rate: u64,
    /// Below this much free space (octets) in `data_dir`, MAIL is answered
    /// 452 4.3.1 instead of accepting mail that might not fit (like
    /// OpenSMTPD's and Postfix's queue_minfree).
    pub min_free_space: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_header_size: 1024 * 1024,
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(180)),
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_auth_failures: 3,
            max_auth_failures_per_ip: 20,
            min_free_space: 50 * 1024 * 1024,
            min_data_rate: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Waits between attempts after a temporary failure; the last repeats.
    pub retry: Vec<HumanDuration>,
    /// Give up (and bounce) this long after arrival.
    pub expire: HumanDuration,
    /// How many deliveries run at once.
    pub workers: usize,
    /// Tell the sender once when a message is still undelivered after this
    /// long (RFC 3464 "delayed" report). Off when absent.
    pub delay_warning: Option<HumanDuration>,
    /// How long a node's claim on a recipient lasts unless renewed; the node
    /// renews it every third of this while the attempt runs. When a node
    /// dies, its work waits this long before another node takes it.
    pub lease: HumanDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        QueueConfig {
            retry: p.schedule.into_iter().map(HumanDuration).collect(),
            expire: HumanDuration(p.expire),
            workers: 16,
            delay_warning: None,
            lease: HumanDuration(Duration::from_secs(60)),
        }
    }
}

impl QueueConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            schedule: self.retry.iter().map(|d| d.0).collect(),
            expire: self.expire.0,
            delay_warning: self.delay_warning.map(|d| d.0),
        }
    }
}

/// What is checked on mail arriving for local domains (RFC 7208 SPF,
/// RFC 6376 DKIM, RFC 8617 ARC, RFC 7489 DMARC), and what a failure does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// Run the checks and add an Authentication-Results header (RFC 8601).
    pub checks: bool,
    /// Refuse (550 5.7.1) mail failing DMARC whose domain publishes p=reject.
    pub dmarc_reject: bool,
    /// Mark (X-Tern-Quarantine header) mail failing DMARC under p=quarantine.
    pub dmarc_quarantine: bool,
    /// Refuse (550 5.7.23) mail whose SPF result is fail.
    pub spf_reject: bool,
    /// Per local domain: `[inbound.domains."example.com"]` with any of
    /// `dmarc_reject`, `dmarc_quarantine`, `spf_reject`; unset keys follow
    /// the section's own.
    pub domains: BTreeMap<String, InboundPolicyOverride>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            checks: true,
            dmarc_reject: true,
            dmarc_quarantine: true,
            spf_reject: false,
            domains: BTreeMap::new(),
        }
    }
}

/// One local domain's own inbound policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicyOverride {
    pub dmarc_reject: Option<bool>,
    pub dmarc_quarantine: Option<bool>,
    pub spf_reject: Option<bool>,
}

/// The policy in force for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPolicy {
    pub dmarc_reject: bool,
    pub dmarc_quarantine: bool,
    pub spf_reject: bool,
}

impl InboundConfig {
    /// The policy for a message to these recipient domains. With several,
    /// a check applies when any of their policies asks for it: one
    /// transaction gets one answer, and the stricter one protects everyone.
    pub fn policy_for<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> InboundPolicy {
        let base = InboundPolicy {
            dmarc_reject: self.dmarc_reject,
            dmarc_quarantine: self.dmarc_quarantine,
            spf_reject: self.spf_reject,
        };
        let mut out: Option<InboundPolicy> = None;
        for d in domains {
            let o = self.domains.get(&d.to_ascii_lowercase());
            let p = InboundPolicy {
                dmarc_reject: o.and_then(|o| o.dmarc_reject).unwrap_or(base.dmarc_reject),
                dmarc_quarantine: o
                    .and_then(|o| o.dmarc_quarantine)
                    .unwrap_or(base.dmarc_quarantine),
                spf_reject: o.and_then(|o| o.spf_reject).unwrap_or(base.spf_reject),
            };
            out = Some(match out {
                None => p,
                Some(q) => InboundPolicy {
                    dmarc_reject: q.dmarc_reject || p.dmarc_reject,
                    dmarc_quarantine: q.dmarc_quarantine || p.dmarc_quarantine,
                    spf_reject: q.spf_reject || p.spf_reject,
                },
            });
        }
        out.unwrap_or(base)
    }
}

/// Which addresses authenticated users may send as.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendersConfig {
    /// Domains an authenticated user may use in MAIL FROM and in the From
    /// header. `["*"]` allows any. Default: the sender domains added with
    /// `tern domain add`, and the local domains.
    pub domains: Option<Vec<String>>,
    /// Per SMTP user: the domains this user may send as, instead of
    /// `domains` (`alice = ["example.com"]`).
    pub users: BTreeMap<String, Vec<String>>,
    /// Per API key (by its name): the same for keys.
    pub keys: BTreeMap<String, Vec<String>>,
}

/// Which storage backend holds the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite and spool files in `data_dir`: one node.
    Sqlite,
    /// A PostgreSQL database that several nodes share.
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    /// `postgres://user:password@host/db` for the postgres backend.
    pub url: Option<String>,
    /// This node's name among the nodes sharing a database; it owns the
    /// node's leases, so it must be unique and stable. Default: hostname.
    pub node_id: Option<String>,
    /// Embedded store: bodies up to this many octets are kept in the
    /// database and made durable by its one commit fsync; larger ones are
    /// spool files (one fsync each, plus one of the spool directory).
    /// 0 keeps every body in the spool.
    pub inline_body_max: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            url: None,
            node_id: None,
            inline_body_max: 64 * 1024,
        }
    }
}

/// Where DNS questions go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers as `ip:port`; empty means the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// How long to wait for one answer.
    pub timeout: HumanDuration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// When outbound SMTP uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS when the server offers it; plaintext otherwise (RFC 3207,
    /// as every MTA does on port 25).
    Opportunistic,
    /// Only deliver encrypted; a server without STARTTLS or a failed
    /// handshake defers the message.
    Required,
    /// Never use TLS.
    None,
}

/// Outbound delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The port remote mail servers listen on.
    pub port: u16,
    pub tls: TlsPolicy,
    /// Name given in EHLO. Default: `hostname`.
    pub helo_name: Option<String>,
    /// Send everything through this server (`host:port`) instead of MX.
    pub relay: Option<String>,
    /// AUTH credentials for the relay (sent only over TLS unless `tls = "none"`).
    pub relay_username: Option<String>,
    pub relay_password: Option<String>,
    /// The relay expects TLS from the first byte (port 465).
    pub relay_implicit_tls: bool,
    /// Check the relay's certificate against the public roots (and
    /// `relay_ca_file`). Only for a relay: an MX found by DNS has no name
    /// that can be checked without DANE or MTA-STS.
    pub relay_verify_certificate: bool,
    /// An extra PEM certificate (or CA) to trust for the relay.
    pub relay_ca_file: Option<PathBuf>,
    pub connect_timeout: HumanDuration,
    /// Wait for the greeting and each command's reply (RFC 5321 4.5.3.2: 5 minutes).
    pub command_timeout: HumanDuration,
    /// Wait for the reply after the final dot (RFC 5321 4.5.3.2.6: 10 minutes).
    pub data_timeout: HumanDuration,
    /// Outbound connections in total.
    pub max_connections: usize,
    /// Outbound connections to one destination (domain or relay).
    pub max_connections_per_domain: usize,
    /// How long an idle connection is kept for the next message.
    pub idle_timeout: HumanDuration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            port: 25,
            tls: TlsPolicy::Opportunistic,
            helo_name: None,
            relay: None,
            relay_username: None,
            relay_password: None,
            relay_implicit_tls: false,
            relay_verify_certificate: true,
            relay_ca_file: None,
            connect_timeout: HumanDuration(Duration::from_secs(30)),
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(600)),
            max_connections: 100,
            max_connections_per_domain: 4,
            idle_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Any listener given replaces the default set.
    #[serde(default = "default_listeners")]
    pub listener: Vec<ListenerConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub domains: DomainsConfig,
    /// `"alias@domain" = ["target@domain", ...]`; `"@domain"` is a catch-all.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub senders: SendersConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
}

/// The HTTP API, metrics and health check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the HTTP API at all.
    pub enabled: bool,
    /// Where it listens.
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the certificate of `[tls]`.
    pub tls: bool,
    /// Largest request body, in octets. Default: the message size limit
    /// plus a third (base64 grows attachments by 4/3).
    pub max_request_size: Option<u64>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
            tls: false,
            max_request_size: None,
        }
    }
}

/// The event log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events and finished messages older than this are removed.
    pub retention: HumanDuration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention: HumanDuration(Duration::from_secs(30 * 86400)),
        }
    }
}

/// Webhook deliveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Waits between attempts after a failure; after the last one the
    /// delivery is given up. The default adds up to about 24 hours.
    pub retry: Vec<HumanDuration>,
    /// How long one POST may take.
    pub timeout: HumanDuration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let m = |n: u64| HumanDuration(Duration::from_secs(n * 60));
        WebhooksConfig {
            // 1m 5m 15m 30m 1h 2h 4h 8h 8h: 23h51m in all.
            retry: vec![
                m(1),
                m(5),
                m(15),
                m(30),
                m(60),
                m(120),
                m(240),
                m(480),
                m(480),
            ],
            timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// The machine's name when it is a usable domain name, else `localhost`.
fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|s| crate::Address::parse(&format!("x@{s}")).is_ok() && !s.starts_with('['))
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./tern-data")
}

fn default_listeners() -> Vec<ListenerConfig> {
    let l = |port: u16, mode| ListenerConfig {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        mode,
        allow_plaintext_auth: false,
    };
    vec![
        l(2525, ListenerMode::Smtp),
        l(2587, ListenerMode::Submission),
        l(2465, ListenerMode::Smtps),
    ]
}

impl Default for Config {
    fn default() -> Self {
        Config::from_toml("", Path::new("<defaults>")).expect("defaults are valid")
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid(
                "hostname",
                "must be a host name without spaces".into(),
            ));
        }
        if self.listener.is_empty() {
            return Err(invalid(
                "listener",
                "at least one listener is needed".into(),
            ));
        }
        for (i, a) in self.listener.iter().enumerate() {
            if a.address.port() != 0 && self.listener[..i].iter().any(|b| b.address == a.address) {
                return Err(invalid(
                    &format!("listener[{i}].address"),
                    format!("{} is used by two listeners", a.address),
                ));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid(
                "tls",
                "set both `cert` and `key`, or neither".into(),
            ));
        }
        for (i, d) in self.local_domains().iter().enumerate() {
            if crate::Address::parse(&format!("x@{d}")).is_err() {
                return Err(invalid(
                    &format!("domains.local[{i}]"),
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        for (alias, targets) in &self.aliases {
            let key = format!("aliases.\"{alias}\"");
            let alias_ok = match alias.strip_prefix('@') {
                Some(domain) => crate::Address::parse(&format!("x@{domain}")).is_ok(),
                None => crate::Address::parse(alias).is_ok(),
            };
            if !alias_ok {
                return Err(invalid(&key, "must be `user@domain` or `@domain`".into()));
            }
            if targets.is_empty() {
                return Err(invalid(&key, "needs at least one target address".into()));
            }
            if let Some(t) = targets.iter().find(|t| crate::Address::parse(t).is_err()) {
                return Err(invalid(&key, format!("{t:?} is not an address")));
            }
        }
        let l = &self.limits;
        if l.max_command_line < 512 {
            return Err(invalid(
                "limits.max_command_line",
                "must be at least 512 (RFC 5321 4.5.3.1.4)".into(),
            ));
        }
        if l.max_text_line < 1000 {
            return Err(invalid(
                "limits.max_text_line",
                "must be at least 1000 (RFC 5321 4.5.3.1.6)".into(),
            ));
        }
        if l.max_header_size < l.max_text_line {
            return Err(invalid(
                "limits.max_header_size",
                format!("must be at least max_text_line ({})", l.max_text_line),
            ));
        }
        if l.max_recipients == 0 {
            return Err(invalid(
                "limits.max_recipients",
                "must be at least 1".into(),
            ));
        }
        if l.max_message_size < 1024 {
            return Err(invalid(
                "limits.max_message_size",
                "must be at least 1024".into(),
            ));
        }
        if l.max_auth_failures == 0 || l.max_auth_failures_per_ip == 0 {
            return Err(invalid(
                if l.max_auth_failures == 0 {
                    "limits.max_auth_failures"
                } else {
                    "limits.max_auth_failures_per_ip"
                },
                "must be at least 1".into(),
            ));
        }
        if l.max_connections == 0 {
            return Err(invalid(
                "limits.max_connections",
                "must be at least 1".into(),
            ));
        }
        if l.max_connections_per_ip == 0 {
            return Err(invalid(
                "limits.max_connections_per_ip",
                "must be at least 1".into(),
            ));
        }
        if l.command_timeout.0.is_zero() {
            return Err(invalid(
                "limits.command_timeout",
                "must be longer than 0".into(),
            ));
        }
        if l.data_timeout.0.is_zero() {
            return Err(invalid(
                "limits.data_timeout",
                "must be longer than 0".into(),
            ));
        }
        if self.queue.retry.iter().any(|d| d.0.is_zero()) {
            return Err(invalid(
                "queue.retry",
                "intervals must be longer than 0".into(),
            ));
        }
        if self.queue.expire.0.is_zero() {
            return Err(invalid("queue.expire", "must be longer than 0".into()));
        }
        if self.queue.retry.is_empty() {
            return Err(invalid("queue.retry", "needs at least one interval".into()));
        }
        if self.webhooks.retry.iter().any(|d| d.0.is_zero()) {
            return Err(invalid(
                "webhooks.retry",
                "intervals must be longer than 0".into(),
            ));
        }
        if self.webhooks.timeout.0.is_zero() {
            return Err(invalid("webhooks.timeout", "must be longer than 0".into()));
        }
        if self.events.retention.0 < Duration::from_secs(3600) {
            return Err(invalid("events.retention", "must be at least 1h".into()));
        }
        if self.api.listen.is_some_and(|a| {
            self.listener
                .iter()
                .any(|l| l.address.port() != 0 && l.address == a)
        }) {
            return Err(invalid(
                "api.listen",
                "is also the address of an SMTP listener".into(),
            ));
        }
        match (&self.store.backend, &self.store.url) {
            (Backend::Postgres, None) => {
                return Err(invalid(
                    "store.url",
                    "the postgres backend needs a url".into(),
                ));
            }
            (Backend::Postgres, Some(u))
                if !u.starts_with("postgres://") && !u.starts_with("postgresql://") =>
            {
                return Err(invalid("store.url", "must start with postgres://".into()));
            }
            (Backend::Sqlite, Some(_)) => {
                return Err(invalid(
                    "store.url",
                    "only used with backend = \"postgres\"".into(),
                ));
            }
            _ => {}
        }
        let locals = self.local_domains();
        for d in self.inbound.domains.keys() {
            if !locals.contains(&d.to_ascii_lowercase()) {
                return Err(invalid(
                    &format!("inbound.domains.\"{d}\""),
                    "is not one of the local domains ([domains] local)".into(),
                ));
            }
        }
        if let Some(list) = &self.senders.domains {
            for (i, d) in list.iter().enumerate() {
                let bad = crate::Address::parse(&format!("x@{d}")).is_err() || d.ends_with('.');
                if d != "*" && bad {
                    return Err(invalid(
                        &format!("senders.domains[{i}]"),
                        format!("{d:?} is not a domain name (or \"*\" for any)"),
                    ));
                }
            }
        }
        if self
            .store
            .node_id
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 64)
        {
            return Err(invalid(
                "store.node_id",
                "must be 1 to 64 characters".into(),
            ));
        }
        if self.queue.lease.0.as_secs() < 3 {
            return Err(invalid("queue.lease", "must be at least 3s".into()));
        }
        let d = &self.delivery;
        if d.port == 0 {
            return Err(invalid("delivery.port", "must be a port number".into()));
        }
        if let Some(relay) = &d.relay {
            let ok = relay
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid(
                    "delivery.relay",
                    format!("{relay:?} is not host:port"),
                ));
            }
        }
        if d.relay_username.is_some() != d.relay_password.is_some() {
            return Err(invalid(
                "delivery.relay_username",
                "set both relay_username and relay_password, or neither".into(),
            ));
        }
        if d.relay.is_none()
            && (d.relay_implicit_tls || d.relay_username.is_some() || d.relay_ca_file.is_some())
        {
            return Err(invalid(
                "delivery.relay",
                "relay_* settings are set but there is no relay = \"host:port\"".into(),
            ));
        }
        if let Some(h) = &d.helo_name {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "delivery.helo_name",
                    "must be a host name without spaces".into(),
                ));
            }
        }
        if d.max_connections == 0 {
            return Err(invalid(
                "delivery.max_connections",
                "must be at least 1".into(),
            ));
        }
        if d.max_connections_per_domain == 0 {
            return Err(invalid(
                "delivery.max_connections_per_domain",
                "must be at least 1".into(),
            ));
        }
        if let Some(w) = self.queue.delay_warning {
            if w.0 >= self.queue.expire.0 {
                return Err(invalid(
                    "queue.delay_warning",
                    "must be shorter than queue.expire, or it never fires".into(),
                ));
            }
        }
        for (key, t) in [
            ("delivery.connect_timeout", d.connect_timeout),
            ("delivery.command_timeout", d.command_timeout),
            ("delivery.data_timeout", d.data_timeout),
            ("dns.timeout", self.dns.timeout),
        ] {
            if t.0.is_zero() {
                return Err(invalid(key, "must be longer than 0".into()));
            }
        }
        if self.queue.workers == 0 {
            return Err(invalid("queue.workers", "must be at least 1".into()));
        }
        Ok(())
    }

    /// Local domains, lowercased; defaults to the hostname and `localhost`.
    pub fn local_domains(&self) -> Vec<String> {
        match &self.domains.local {
            Some(list) => list.iter().map(|d| d.to_ascii_lowercase()).collect(),
            None => vec![self.hostname.to_ascii_lowercase(), "localhost".to_string()],
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls/cert.pem"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls/key.pem"))
    }

    /// This node's name for its leases.
    pub fn node_id(&self) -> &str {
        self.store.node_id.as_deref().unwrap_or(&self.hostname)
    }

    /// The name Tern gives in EHLO when it delivers.
    pub fn helo_name(&self) -> &str {
        self.delivery.helo_name.as_deref().unwrap_or(&self.hostname)
    }

    /// True when the certificate is Tern's own self-signed one.
    pub fn tls_is_generated(&self) -> bool {
        self.tls.cert.is_none()
    }
}

/// A duration written as `30s`, `5m`, `4h` or `5d` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Option<HumanDuration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let secs = match unit.trim() {
            "" | "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            _ => return None,
        };
        Some(HumanDuration(Duration::from_secs(secs)))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(HumanDuration(Duration::from_secs(n))),
            Raw::Text(t) => HumanDuration::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration (use e.g. \"30s\", \"5m\", \"4h\", \"5d\")"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("tern.toml"))
    }

    #[test]
    fn empty_file_gives_loopback_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listener.len(), 3);
        assert_eq!(c.listener[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(c.limits.max_message_size, 25 * 1024 * 1024);
        assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
        assert!(c.local_domains().contains(&"localhost".to_string()));
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            hostname = "mx.example.com"
            data_dir = "/var/lib/tern"
            [[listener]]
            address = "0.0.0.0:25"
            mode = "smtp"
            [tls]
            cert = "/etc/tern/cert.pem"
            key = "/etc/tern/key.pem"
            [domains]
            local = ["Example.com"]
            [aliases]
            "info@example.com" = ["alice@example.com"]
            "@example.com" = ["bob@example.com"]
            [limits]
            max_message_size = 1048576
            command_timeout = "1m"
            [queue]
            retry = ["1m", "1h"]
            expire = "2d"
            [store]
            backend = "postgres"
            url = "postgres://tern@db/tern"
            node_id = "node-1"
            [dns]
            nameservers = ["127.0.0.1:5353"]
            [inbound.domains."example.com"]
            spf_reject = true
            [delivery]
            port = 2525
            tls = "required"
            relay = "smtp.upstream.test:587"
            relay_username = "u"
            relay_password = "p"
            "#,
        )
        .unwrap();
        assert_eq!(c.local_domains(), vec!["example.com"]);
        assert_eq!(c.limits.command_timeout.0, Duration::from_secs(60));
        assert_eq!(c.queue.retry_policy().expire, Duration::from_secs(172800));
        assert_eq!(c.listener[0].mode, ListenerMode::Smtp);
        assert_eq!(c.delivery.tls, TlsPolicy::Required);
        assert_eq!(c.dns.nameservers[0].port(), 5353);
        let e = parse("[delivery]\nrelay = \"nohost\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.relay"), "{e}");
        let e = parse("[delivery]\ntls = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls") || e.contains("maybe"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("hostnme = \"x\"").unwrap_err().to_string();
        assert!(e.contains("hostnme"), "{e}");
        let e = parse("[limits]\nmax_recipients = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_recipients"), "{e}");
        let e = parse("[limits]\nmax_command_line = 100")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_command_line"), "{e}");
        let e = parse("[limits]\nmax_header_size = 999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_header_size"), "{e}");
        assert_eq!(
            parse("").unwrap().limits.max_header_size,
            1024 * 1024,
            "1 MiB by default"
        );
        let e = parse("[[listener]]\naddress = \"nope\"\nmode = \"smtp\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("address"), "{e}");
        let e = parse("[[listener]]\naddress = \"127.0.0.1:25\"\nmode = \"pop3\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode") || e.contains("pop3"), "{e}");
        let e = parse("[queue]\nexpire = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("expire"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The example shipped in the repository must stay loadable.
    #[test]
    fn tern_toml_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tern.toml.example");
        Config::load(&path).unwrap();
    }
}
