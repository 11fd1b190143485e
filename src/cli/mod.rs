//! The command line: `tern serve`, `tern user`, `tern domain`, `tern key`,
//! `tern queue`, `tern send`, `tern bench`.

mod domain;
mod key;
pub(crate) mod queue;
mod send;
mod user;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_core::Config;

#[derive(Parser, Debug)]
#[command(
    name = "tern",
    version,
    about = "Tern: SMTP relay and mail delivery service"
)]
pub struct Cli {
    /// Configuration file. Default: ./tern.toml when it exists, else built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (SMTP listeners, HTTP API, queue, delivery).
    Serve,
    /// Manage users (SMTP AUTH accounts and local mailboxes).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Sender domains: DKIM keys and the DNS records to publish.
    #[command(subcommand)]
    Domain(domain::DomainCommand),
    /// API keys for the HTTP API.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Inspect and act on the queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Send one message to an SMTP server (a client for scripts).
    Send(send::SendArgs),
    /// Load an SMTP server and measure it, or run a counting sink.
    Bench(crate::bench::BenchArgs),
}

/// Reads the configuration: the given path, else `./tern.toml` when present,
/// else the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new("tern.toml").exists() => Ok(Config::load(Path::new("tern.toml"))?),
        None => Ok(Config::default()),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Serve | Command::Bench(_)) {
        // A command whose output goes to `head` should end quietly when the
        // pipe closes, as Unix tools do, not panic on the write.
        // SAFETY: restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    } else {
        raise_fd_limit();
    }
    match cli.command {
        Command::Serve => {
            let config = load_config(cli.config.as_deref())?;
            serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::User(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            user::run(&config, cmd).await
        }
        Command::Domain(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            domain::run(&config, cmd).await
        }
        Command::Key(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            key::run(&config, cmd).await
        }
        Command::Queue(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            queue::run(&config, cmd).await
        }
        Command::Send(args) => send::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging();
    // Connections, the listeners, the database and the spool each take a
    // descriptor; warn when the limit cannot hold `max_connections`.
    let wanted = config.limits.max_connections as u64 + 100;
    if let Some(have) = fd_limit().filter(|&have| have < wanted) {
        tracing::warn!(
            limit = have,
            max_connections = config.limits.max_connections,
            "the open-files limit is below max_connections + 100; raise it (ulimit -n, LimitNOFILE=) or connections will be refused"
        );
    }
    // Before anything listens. A stop asked for while the server starts
    // ends the start where it is: nothing has been acknowledged yet, and a
    // start can wait long (a database that does not answer).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server = tokio::select! {
        server = crate::Server::start(config) => server?,
        _ = int.recv() => return stopped_while_starting(),
        _ = term.recv() => return stopped_while_starting(),
    };
    let mut lost = server.node_lost();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = lost.wait() => {
            // The store has logged why; main prints the error below.
            server.stop().await;
            anyhow::bail!("this node's name ([store] node_id) was taken by another running node");
        }
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

fn stopped_while_starting() -> anyhow::Result<()> {
    tracing::info!("stopped while starting");
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every
/// connection is a descriptor, and the usual soft limit (1024 under
/// systemd and most shells) would cap a server far below
/// `[limits] max_connections`. The hard limit is the operator's to set
/// (`LimitNOFILE=`, `ulimit -Hn`).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The soft limit on open files, for the start-up check.
pub(crate) fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `lim`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // Standard error, so that a command's output on standard output
    // (`tern queue list`, `tern apikey create`) is never mixed with log
    // lines. Colours for a terminal only: in a file, journald or a log
    // shipper the escape sequences are noise in every line (NO_COLOR, as
    // no-color.org asks, turns them off on a terminal too).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
