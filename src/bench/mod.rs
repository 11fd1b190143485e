//! `tern bench`: a load generator that speaks SMTP like a real client
//! (pipelined, optionally over TLS with AUTH), and `tern bench sink`, a fast
//! SMTP server that counts what it receives, for end-to-end runs, and
//! `tern bench idle`, which holds many idle connections open.

mod idle;
mod load;
mod sink;
mod stats;

use clap::{Args, Subcommand};

pub use idle::IdleArgs;
pub use load::LoadArgs;
pub use sink::SinkArgs;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub load: Option<LoadArgs>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Run an SMTP sink that accepts (or refuses) everything and counts it.
    Sink(SinkArgs),
    /// Open many connections and hold them idle, reporting the server's
    /// memory (with --pid).
    Idle(IdleArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    match (args.command, args.load) {
        (Some(BenchCommand::Sink(s)), _) => sink::run(s).await,
        (Some(BenchCommand::Idle(i)), _) => idle::run(i).await,
        (None, Some(l)) => load::run(l).await,
        (None, None) => anyhow::bail!("give --server ... (load) or `sink`"),
    }
}
