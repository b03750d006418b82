//! The `herald` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use herald_server::Settings;
use herald_server::cli::{self, Cli};

/// mimalloc instead of the system allocator: Herald allocates small,
/// short-lived buffers on every hop of an event (request bodies, JSON
/// values, frames for each socket), where glibc's malloc spent an eighth of
/// the CPU under load and fragmented across threads (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with its causes; no backtrace for a configuration mistake.
            eprintln!("herald: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings first: they say how many threads the runtime gets.
fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.runtime_threads())
        .enable_all()
        .build()?
        .block_on(cli::run(cli, settings))
}
