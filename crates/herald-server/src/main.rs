//! The `herald` binary: parse the command line, hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_server::cli::run(herald_server::cli::Cli::parse()).await
}
