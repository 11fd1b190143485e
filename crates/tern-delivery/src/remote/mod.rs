//! Remote delivery: find where a domain's mail goes (MX, or the configured
//! relay), connect, secure, and hand the message over.

pub mod client;
pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tern_core::{Config, TlsPolicy};
use tokio_rustls::TlsConnector;

use crate::dns::{Dns, LookupError};
use crate::Attempt;
use client::{ClientError, Mail, SmtpClient, Timeouts};
use pool::Pool;

/// Where a destination's mail is handed over.
#[derive(Clone)]
struct Relay {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    implicit_tls: bool,
    /// Checks the relay's certificate (unless configured not to).
    connector: TlsConnector,
}

pub struct RemoteDelivery {
    dns: Dns,
    pool: Arc<Pool>,
    connector: TlsConnector,
    port: u16,
    tls: TlsPolicy,
    helo: String,
    relay: Option<Relay>,
    timeouts: Timeouts,
}

/// A connection attempt that did not give a usable session.
struct Failure {
    text: String,
    permanent: bool,
}

impl RemoteDelivery {
    pub fn new(config: &Config) -> Result<RemoteDelivery, String> {
        let d = &config.delivery;
        let relay = match &d.relay {
            None => None,
            Some(r) => {
                let (host, port) = r.rsplit_once(':').expect("validated host:port");
                let connector = if d.relay_verify_certificate {
                    tls::verifying_connector(d.relay_ca_file.as_deref())?
                } else {
                    tls::connector()
                };
                Some(Relay {
                    host: host.trim_matches(['[', ']']).to_string(),
                    port: port.parse().expect("validated port"),
                    credentials: d.relay_username.clone().zip(d.relay_password.clone()),
                    implicit_tls: d.relay_implicit_tls,
                    connector,
                })
            }
        };
        Ok(RemoteDelivery {
            dns: Dns::new(&config.dns)?,
            pool: Pool::new(
                d.max_connections,
                d.max_connections_per_domain,
                d.idle_timeout.0,
            ),
            connector: tls::connector(),
            port: d.port,
            tls: d.tls,
            helo: config.helo_name().to_string(),
            relay,
            timeouts: Timeouts {
                connect: d.connect_timeout.0,
                command: d.command_timeout.0,
                data: d.data_timeout.0,
            },
        })
    }

    /// Whether all remote mail goes through one relay (then every domain
    /// shares one transaction).
    pub fn uses_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// Delivers one message to recipients that share a destination (one
    /// domain, or everything when relaying). One attempt per recipient.
    pub async fn deliver(
        &self,
        domain: &str,
        sender: &str,
        recipients: &[String],
        body: &crate::Body,
    ) -> Vec<Attempt> {
        let destination = match &self.relay {
            Some(r) => format!("relay {}:{}", r.host, r.port),
            None => domain.to_string(),
        };
        let _lease = self.pool.acquire(&destination).await;
        let mut client = None;
        if let Some(mut idle) = self.pool.take_idle(&destination) {
            // A cached connection may have been closed by the server since.
            if idle.rset().await.is_ok() {
                client = Some(idle);
            }
        }
        let mut client = match client {
            Some(c) => c,
            None => match self.open(domain).await {
                Ok(c) => c,
                Err(f) => {
                    let a = if f.permanent {
                        Attempt::Permanent(f.text)
                    } else {
                        Attempt::Temporary(f.text)
                    };
                    return vec![a; recipients.len()];
                }
            },
        };
        let needs_smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let (attempts, reusable) = client
            .send_mail(&Mail {
                sender,
                recipients,
                body,
                needs_smtputf8,
            })
            .await;
        if reusable {
            self.pool.put_idle(&destination, client);
        } else {
            client.quit().await;
        }
        attempts
    }

    /// Connects to the first exchanger (or the relay) that takes a session,
    /// in order: MX preference, then each address of the host.
    async fn open(&self, domain: &str) -> Result<SmtpClient, Failure> {
        let (hosts, port) = match &self.relay {
            Some(r) => (vec![r.host.clone()], r.port),
            None => match self.dns.exchangers(domain).await {
                Ok(mx) => (mx.into_iter().map(|m| m.host).collect(), self.port),
                Err(LookupError::Permanent(text)) => {
                    return Err(Failure {
                        text,
                        permanent: true,
                    })
                }
                Err(LookupError::Temporary(text)) => {
                    return Err(Failure {
                        text,
                        permanent: false,
                    })
                }
            },
        };
        let mut errors: Vec<(String, bool)> = Vec::new();
        for host in &hosts {
            let ips = match self.dns.addresses(host).await {
                Ok(ips) => ips,
                Err(LookupError::Permanent(t)) => {
                    errors.push((t, true));
                    continue;
                }
                Err(LookupError::Temporary(t)) => {
                    errors.push((t, false));
                    continue;
                }
            };
            for ip in ips {
                match self.session(SocketAddr::new(ip, port), host).await {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::debug!(%host, %ip, error = %e, "could not use this exchanger");
                        errors.push((format!("{host}[{ip}]: {e}"), false));
                    }
                }
            }
        }
        let destination = match &self.relay {
            Some(r) => format!("relay {}", r.host),
            None => domain.to_string(),
        };
        // Only "no such host" for every exchanger is permanent: a refused or
        // failed connection may work later, and so may a relay's name (an
        // operator's typo must not bounce all outbound mail).
        let permanent =
            self.relay.is_none() && !errors.is_empty() && errors.iter().all(|(_, p)| *p);
        if self.relay.is_some() {
            // A relay's name that does not resolve is a configuration
            // problem to fix, not the recipient's: say so with a 4xx.
            for (text, p) in errors.iter_mut().filter(|(_, p)| *p) {
                *text = format!("451 4.4.3 {destination} does not resolve ({text})");
                *p = false;
            }
        }
        let text = match errors.as_slice() {
            [] => format!("451 4.4.4 no mail exchanger found for {destination}"),
            [(only, _)] if has_reply_code(only) => only.clone(),
            [(only, _)] => format!("451 4.4.1 {only}"),
            [.., (last, _)] => {
                format!("451 4.4.1 no exchanger for {destination} took the message; last: {last}")
            }
        };
        let text = match errors.last() {
            Some((last, _)) if permanent => last.clone(),
            _ => text,
        };
        Err(Failure { text, permanent })
    }

    /// One connection made ready for MAIL: greeting, EHLO, STARTTLS per
    /// policy, AUTH for the relay.
    async fn session(&self, addr: SocketAddr, host: &str) -> Result<SmtpClient, ClientError> {
        let connector = self
            .relay
            .as_ref()
            .map(|r| &r.connector)
            .unwrap_or(&self.connector);
        let implicit = self.relay.as_ref().is_some_and(|r| r.implicit_tls);
        let mut c =
            SmtpClient::connect(addr, host, self.timeouts, implicit.then_some(connector)).await?;
        c.hello(&self.helo).await?;
        if !c.is_tls() && self.tls != TlsPolicy::None {
            if c.extensions().starttls {
                match c.starttls(connector, host, &self.helo).await {
                    Ok(tls) => c = tls,
                    // A relay is a known host: a failed or unverified handshake
                    // never falls back to plaintext.
                    Err(e) if self.tls == TlsPolicy::Required || self.relay.is_some() => {
                        return Err(e)
                    }
                    Err(e) => {
                        // Opportunistic: a failed handshake falls back to a
                        // new plaintext connection, as RFC 3207 4.1 allows.
                        tracing::info!(%host, error = %e, "STARTTLS failed; retrying without TLS");
                        c = SmtpClient::connect(addr, host, self.timeouts, None).await?;
                        c.hello(&self.helo).await?;
                    }
                }
            } else if self.tls == TlsPolicy::Required {
                return Err(ClientError::Policy(format!(
                    "TLS is required but {host} does not offer STARTTLS"
                )));
            }
        }
        if let Some((user, pass)) = self.relay.as_ref().and_then(|r| r.credentials.as_ref()) {
            if !c.is_tls() && self.tls != TlsPolicy::None {
                return Err(ClientError::Policy(format!(
                    "not sending relay credentials to {host} without TLS"
                )));
            }
            c.auth_plain(user, pass).await?;
        }
        Ok(c)
    }
}

/// Whether a text already starts with an SMTP reply code.
fn has_reply_code(text: &str) -> bool {
    text.len() > 4
        && text.as_bytes()[..3].iter().all(u8::is_ascii_digit)
        && text.as_bytes()[3] == b' '
}
