//! The `herald` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

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
