//! `tern queue list|show|delete|retry`, acting on the store directly so it
//! works whether or not the server runs.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use tern_core::{Config, MessageId};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Messages with recipients still waiting for delivery.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One message: envelope, each recipient's state, and its history.
    Show { id: MessageId },
    /// Remove a message from the queue (no bounce is sent).
    Delete { id: MessageId },
    /// Make waiting recipients due now.
    Retry {
        id: Option<MessageId>,
        /// Every message in the queue.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

pub async fn run(config: &Config, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let store = crate::open_store(config).await?;
    match cmd {
        QueueCommand::List { limit } => {
            let messages = store.list_messages(limit).await?;
            if messages.is_empty() {
                println!("queue is empty");
            }
            for m in messages {
                let pending = m.recipients.iter().filter(|r| !r.status.is_final()).count();
                println!(
                    "{}  {}  {:>8}  <{}>  {} of {} recipients pending",
                    m.id,
                    time(m.created_at),
                    m.size,
                    m.sender,
                    pending,
                    m.recipients.len()
                );
            }
        }
        QueueCommand::Show { id } => {
            let Some(m) = store.get_message(id).await? else {
                bail!("no message {id}");
            };
            println!("id:       {}", m.id);
            println!("from:     <{}>", m.sender);
            println!("arrived:  {}", time(m.created_at));
            println!("size:     {}", m.size);
            println!("recipients:");
            for r in &m.recipients {
                let next = if r.status.is_final() {
                    String::new()
                } else {
                    format!(", next attempt {}", time(r.next_attempt))
                };
                println!(
                    "  <{}>  {}  ({} attempts{next})  {}",
                    r.address,
                    r.status.kind(),
                    r.attempts,
                    r.status.detail().unwrap_or("")
                );
            }
            println!("history:");
            for e in store.message_events(id).await? {
                println!(
                    "  {}  {:<9}  {}  {}",
                    time(e.at),
                    e.kind,
                    e.recipient
                        .as_deref()
                        .map(|r| format!("<{r}>"))
                        .unwrap_or_default(),
                    e.detail.unwrap_or_default()
                );
            }
        }
        QueueCommand::Delete { id } => {
            if !store.delete_message(id).await? {
                bail!("no message {id}");
            }
            println!("deleted {id}");
        }
        QueueCommand::Retry { id, all } => {
            if id.is_none() && !all {
                bail!("give a message id, or --all");
            }
            let n = store.retry_now(id, tern_core::unix_now()).await?;
            if let (Some(id), 0) = (id, n) {
                bail!("no waiting recipients for {id}");
            }
            println!("{n} recipients due now");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}
