//! `tern domain`: sender domains, their DKIM keys, and the DNS records to
//! publish for them.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use tern_auth::dkim::{self, Algorithm};
use tern_core::Config;
use tern_store::{Store, StoreError};

#[derive(Subcommand, Debug)]
pub enum DomainCommand {
    /// Add a sender domain with a new DKIM key, and print the DNS records
    /// to publish.
    Add {
        domain: String,
        /// DKIM selector. Default: the algorithm and today's date.
        #[arg(long)]
        selector: Option<String>,
        #[arg(long, default_value = "rsa2048", value_parser = ["rsa2048", "ed25519"])]
        algorithm: String,
    },
    /// List sender domains and their keys.
    List,
    /// Remove a sender domain and all its keys.
    Remove { domain: String },
    /// Print the DNS records to publish for a domain.
    Records { domain: String },
    /// Look the records up and report each as ok, missing or wrong; exits
    /// non-zero when something needs fixing.
    Check { domain: String },
    /// Add another key (e.g. an Ed25519 key beside the RSA one: both sign).
    AddKey {
        domain: String,
        #[arg(long)]
        selector: Option<String>,
        #[arg(long, value_parser = ["rsa2048", "ed25519"])]
        algorithm: String,
    },
    /// Make a new key for an algorithm and retire the old one: it stops
    /// signing but stays (publish both records) until `remove-key`.
    RotateKey {
        domain: String,
        #[arg(long)]
        selector: Option<String>,
        #[arg(long, default_value = "rsa2048", value_parser = ["rsa2048", "ed25519"])]
        algorithm: String,
    },
    /// Remove one key (once its DNS record is gone or no longer needed).
    RemoveKey { domain: String, selector: String },
}

pub async fn run(config: &Config, cmd: DomainCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(config).await?;
    let now = tern_core::unix_now();
    match cmd {
        DomainCommand::Add {
            domain,
            selector,
            algorithm,
        } => {
            let domain = check_domain(&domain)?;
            // The key is made before the domain is stored, so a bad selector
            // never leaves a domain without a key behind.
            let key = make_key(&domain, selector, &algorithm, now).await?;
            match store.add_domain(&domain, now).await {
                Ok(()) => {}
                Err(StoreError::Exists(_)) => {
                    bail!("domain {domain} already exists (see `tern domain records {domain}`)")
                }
                Err(e) => return Err(e.into()),
            }
            store.add_dkim_key(&key).await?;
            println!("domain {domain} added\n");
            print_records(config, &*store, &domain).await?;
        }
        DomainCommand::List => {
            let domains = store.list_domains().await?;
            if domains.is_empty() {
                println!("no sender domains (add one with `tern domain add DOMAIN`)");
            }
            for d in domains {
                println!("{d}");
                for k in store.dkim_keys(Some(&d)).await? {
                    let state = if k.active { "signing" } else { "retired" };
                    println!("  {:<20} {:<8} {state}", k.selector, k.algorithm);
                }
            }
        }
        DomainCommand::Remove { domain } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !store.remove_domain(&domain).await? {
                bail!("no domain {domain}");
            }
            println!("domain {domain} removed, with its keys");
        }
        DomainCommand::Check { domain } => return check(config, &domain).await,
        DomainCommand::Records { domain } => {
            let domain = existing(&*store, &domain).await?;
            print_records(config, &*store, &domain).await?;
        }
        DomainCommand::AddKey {
            domain,
            selector,
            algorithm,
        } => {
            let domain = existing(&*store, &domain).await?;
            new_key(&*store, &domain, selector, &algorithm, now).await?;
            print_records(config, &*store, &domain).await?;
        }
        DomainCommand::RotateKey {
            domain,
            selector,
            algorithm,
        } => {
            let domain = existing(&*store, &domain).await?;
            let old: Vec<_> = store
                .dkim_keys(Some(&domain))
                .await?
                .into_iter()
                .filter(|k| k.active && k.algorithm == algorithm)
                .collect();
            let key = new_key(&*store, &domain, selector, &algorithm, now).await?;
            for k in &old {
                store
                    .set_dkim_key_active(&domain, &k.selector, false)
                    .await?;
                println!("retired {} (keep its record published until mail signed with it has been delivered, then `tern domain remove-key {domain} {}`)", k.selector, k.selector);
            }
            println!("new key {} signs from now on\n", key.selector);
            print_records(config, &*store, &domain).await?;
        }
        DomainCommand::RemoveKey { domain, selector } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !store.remove_dkim_key(&domain, &selector).await? {
                bail!("no key {selector} for {domain}");
            }
            println!("key {selector} of {domain} removed; its DNS record can go too");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_domain(d: &str) -> anyhow::Result<String> {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    if tern_core::Address::parse(&format!("x@{d}")).is_err()
        || d.starts_with('[')
        || !d.contains('.')
    {
        bail!("{d:?} is not a domain name");
    }
    Ok(d)
}

async fn existing(store: &dyn Store, domain: &str) -> anyhow::Result<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if !store.list_domains().await?.contains(&d) {
        bail!("no domain {d} (add it with `tern domain add {d}`)");
    }
    Ok(d)
}

async fn new_key(
    store: &dyn Store,
    domain: &str,
    selector: Option<String>,
    algorithm: &str,
    now: i64,
) -> anyhow::Result<tern_store::DkimKeyRecord> {
    let key = make_key(domain, selector, algorithm, now).await?;
    match store.add_dkim_key(&key).await {
        Ok(()) => Ok(key),
        Err(StoreError::Exists(_)) => {
            bail!("{domain} already has a key with selector {}", key.selector)
        }
        Err(e) => Err(e.into()),
    }
}

async fn make_key(
    domain: &str,
    selector: Option<String>,
    algorithm: &str,
    now: i64,
) -> anyhow::Result<tern_store::DkimKeyRecord> {
    let algorithm: Algorithm = algorithm.parse().map_err(anyhow::Error::msg)?;
    let selector = selector.unwrap_or_else(|| dkim::default_selector(algorithm, now));
    if !dkim::valid_selector(&selector) {
        bail!("{selector:?} is not a valid selector (letters, digits and hyphens)");
    }
    let d = domain.to_string();
    Ok(
        tokio::task::spawn_blocking(move || dkim::generate(&d, &selector, algorithm, now))
            .await
            .context("generating the key")??,
    )
}

async fn print_records(config: &Config, store: &dyn Store, domain: &str) -> anyhow::Result<()> {
    let keys = store.dkim_keys(Some(domain)).await?;
    let receives = config.local_domains().iter().any(|d| d == domain);
    println!("Publish these DNS records for {domain}:\n");
    for r in dkim::suggested_records(domain, &keys, &config.hostname, receives) {
        println!("; {}", r.purpose);
        println!("{r}\n");
    }
    Ok(())
}

/// How one published record compares with what Tern expects.
enum Finding {
    Ok,
    Missing,
    Wrong(String),
    Unknown(String),
}

/// `tern domain check`: looks every record up and says, record by record,
/// whether it is there and right, and what to publish when it is not.
pub async fn check(config: &Config, domain: &str) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(config).await?;
    let domain = existing(&*store, domain).await?;
    let dns = tern_delivery::dns::Dns::new(&config.dns).map_err(anyhow::Error::msg)?;
    let keys = store.dkim_keys(Some(&domain)).await?;
    let receives = config.local_domains().contains(&domain);
    let suggested = dkim::suggested_records(&domain, &keys, &config.hostname, receives);
    let mut problems = 0;
    for record in &suggested {
        let finding = match (record.kind, record.purpose) {
            ("TXT", p) if p.starts_with("DKIM") => check_dkim(&dns, record).await,
            ("TXT", p) if p.starts_with("SPF") => check_txt(&dns, &record.name, "v=spf1").await,
            ("TXT", _) => check_txt(&dns, &record.name, "v=DMARC1").await,
            _ => check_mx(&dns, &domain, &config.hostname).await,
        };
        let kind = record
            .purpose
            .split(':')
            .next()
            .unwrap_or(record.purpose)
            .split(' ')
            .next()
            .unwrap_or("");
        let (state, advice) = match finding {
            Finding::Ok => ("ok".to_string(), None),
            Finding::Missing => ("missing".to_string(), Some(format!("publish: {record}"))),
            Finding::Wrong(why) => (
                format!("wrong: {why}"),
                Some(format!("publish instead: {record}")),
            ),
            Finding::Unknown(why) => (
                format!("could not check: {why}"),
                Some("try again when DNS answers".to_string()),
            ),
        };
        if advice.is_some() {
            problems += 1;
        }
        println!("{kind:<6} {:<45} {state}", record.name);
        if let Some(a) = advice {
            println!("       {a}");
        }
    }
    if problems == 0 {
        println!("\nall records of {domain} are in place");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{problems} record(s) of {domain} need attention");
        Ok(ExitCode::from(1))
    }
}

async fn check_dkim(dns: &tern_delivery::dns::Dns, record: &dkim::DnsRecord) -> Finding {
    let published = match dns.txt(&record.name).await {
        Ok(t) => t,
        Err(e) => return Finding::Unknown(lookup_text(e)),
    };
    let want = tag(&record.value, "p");
    match published
        .iter()
        .find(|t| t.contains("v=DKIM1") || t.contains("p="))
    {
        None => Finding::Missing,
        Some(t) if tag(t, "p") == want => Finding::Ok,
        Some(_) => Finding::Wrong("the public key differs from this server's key".into()),
    }
}

async fn check_txt(dns: &tern_delivery::dns::Dns, name: &str, version: &str) -> Finding {
    let published = match dns.txt(name).await {
        Ok(t) => t,
        Err(e) => return Finding::Unknown(lookup_text(e)),
    };
    let matching: Vec<&String> = published
        .iter()
        .filter(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with(&version.to_ascii_lowercase())
        })
        .collect();
    match matching.len() {
        0 => Finding::Missing,
        1 => Finding::Ok,
        // RFC 7208 4.5 / RFC 7489 6.6.3: more than one record is an error.
        n => Finding::Wrong(format!("{n} {version} records; there must be exactly one")),
    }
}

async fn check_mx(dns: &tern_delivery::dns::Dns, domain: &str, hostname: &str) -> Finding {
    match dns.mx_hosts(domain).await {
        Ok(hosts) if hosts.is_empty() => Finding::Missing,
        Ok(hosts) if hosts.iter().any(|h| h.eq_ignore_ascii_case(hostname)) => Finding::Ok,
        Ok(hosts) => Finding::Wrong(format!(
            "MX points to {} instead of {hostname}",
            hosts.join(", ")
        )),
        Err(e) => Finding::Unknown(lookup_text(e)),
    }
}

/// The value of `name=` in a tag list, whitespace removed.
fn tag(list: &str, name: &str) -> String {
    list.split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
        .unwrap_or_default()
}

fn lookup_text(e: tern_delivery::dns::LookupError) -> String {
    match e {
        tern_delivery::dns::LookupError::Permanent(t)
        | tern_delivery::dns::LookupError::Temporary(t) => t,
    }
}
