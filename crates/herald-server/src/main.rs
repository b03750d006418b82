//! The `herald` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: Herald allocates small,
/// short-lived buffers on every hop of an event (request bodies, JSON
/// values, frames for each socket), where glibc's malloc spent an eighth of
/// the CPU under load and fragmented across threads (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match herald_server::cli::run(herald_server::cli::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with its causes; no backtrace for a configuration mistake.
            eprintln!("herald: {err:#}");
            ExitCode::FAILURE
        }
    }
}
