//! `tern key create|list|revoke`: API keys for the HTTP API.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use tern_auth::keys::Scope;
use tern_core::Config;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key and print it. It is shown this once: only a hash is kept.
    Create {
        /// A name to know it by (unique among live keys).
        #[arg(long)]
        name: String,
        /// What it may do: send mail, read (search, stats, suppressions), or
        /// admin (everything, including the queue and webhooks).
        #[arg(long, value_enum, default_value_t = KeyScope::Send)]
        scope: KeyScope,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id or name: requests with it get 401 from now on.
    Revoke { key: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyScope {
    Send,
    Read,
    Admin,
}

impl From<KeyScope> for Scope {
    fn from(s: KeyScope) -> Scope {
        match s {
            KeyScope::Send => Scope::Send,
            KeyScope::Read => Scope::Read,
            KeyScope::Admin => Scope::Admin,
        }
    }
}

pub async fn run(config: &Config, cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(config).await?;
    match cmd {
        KeyCommand::Create { name, scope } => {
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                bail!("a key name has 1 to 64 characters and no control characters");
            }
            let live = store.list_api_keys().await?;
            if live
                .iter()
                .any(|k| k.name == name && k.revoked_at.is_none())
            {
                bail!("a live key named {name} exists; revoke it or pick another name");
            }
            let (record, key) =
                tern_auth::keys::generate(&name, scope.into(), tern_core::unix_now());
            store.add_api_key(&record).await?;
            eprintln!(
                "key {} ({}, scope {}) created; it is shown only now:",
                record.id, record.name, record.scope
            );
            println!("{key}");
        }
        KeyCommand::List => {
            println!(
                "{:<14} {:<24} {:<6} {:<20} STATUS",
                "ID", "NAME", "SCOPE", "CREATED"
            );
            for k in store.list_api_keys().await? {
                let status = match k.revoked_at {
                    Some(t) => format!("revoked {}", crate::cli::queue::time(t)),
                    None => "live".into(),
                };
                println!(
                    "{:<14} {:<24} {:<6} {:<20} {status}",
                    k.id,
                    k.name,
                    k.scope,
                    crate::cli::queue::time(k.created_at)
                );
            }
        }
        KeyCommand::Revoke { key } => {
            if !store.revoke_api_key(&key, tern_core::unix_now()).await? {
                bail!("no live key with id or name {key}");
            }
            println!("key {key} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
