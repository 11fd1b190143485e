use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the hot path allocates and frees
/// small buffers across threads (sessions, the SQLite worker), where
/// glibc spent about a tenth of the CPU (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Everything Tern creates is its own user's only: queued and delivered
    // mail, password hashes and DKIM private keys (in tern.db). Postfix
    // keeps its queue and the mailboxes it writes the same way.
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    let cli = tern::cli::Cli::parse();
    match tern::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::from(1)
        }
    }
}
