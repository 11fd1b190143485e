use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the hot path allocates and frees
/// small buffers across threads (sessions, the SQLite worker), where
/// glibc spent about a tenth of the CPU (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = tern::cli::Cli::parse();
    match tern::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::from(1)
        }
    }
}
