//! `tern user add|list|remove|passwd`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use tern_core::Config;
use tern_store::StoreError;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user. The password is asked for at a terminal, or read from the
    /// first line of standard input.
    Add { name: String },
    /// List users.
    List,
    /// Remove a user.
    Remove { name: String },
    /// Change a user's password (read like `add`).
    Passwd { name: String },
}

pub async fn run(config: &Config, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(config).await?;
    match cmd {
        UserCommand::Add { name } => {
            let name = tern_auth::normalize_user_name(&name)?;
            let hash = tern_auth::hash_password(&read_password()?)?;
            match store.add_user(&name, &hash, tern_core::unix_now()).await {
                Ok(()) => println!("user {name} added"),
                Err(StoreError::Exists(_)) => bail!("user {name} already exists"),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::Passwd { name } => {
            let name = name.to_ascii_lowercase();
            let hash = tern_auth::hash_password(&read_password()?)?;
            if !store.set_password(&name, &hash).await? {
                bail!("no user {name}");
            }
            println!("password of {name} changed");
        }
        UserCommand::List => {
            for name in store.list_users().await? {
                println!("{name}");
            }
        }
        UserCommand::Remove { name } => {
            let name = name.to_ascii_lowercase();
            if !store.remove_user(&name).await? {
                bail!("no user {name}");
            }
            println!("user {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again = rpassword::prompt_password("Again: ").context("reading the password")?;
        if p != again {
            bail!("the passwords differ");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("no password on standard input");
    }
    Ok(p)
}
