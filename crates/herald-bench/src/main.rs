//! `herald-bench`: Herald side by side with the seed's Node stack, on
//! loopback, every run bounded in count and time.
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | starting and stopping the servers under test (Herald, the Node peers) |
//! | [`proc`] | their CPU seconds and memory, from `/proc` |
//! | [`sio`] | the Socket.IO v4 client both servers are driven with |
//! | [`population`] | the seed scenario's people, tokens and events |
//! | [`fanout`] | (a) fan-out: rate sweep, fastest, latency histograms |
//! | [`idle`] | (b) idle memory per connection and connect rate, Socket.IO and `/ws` |
//! | [`ingest`] | (c) durable ingest on SQLite and PostgreSQL |
//! | [`queue`] | (d) email/SMS/push dispatch from a filled queue, Herald (PostgreSQL + Redis, and embedded) and BullMQ, and the fake provider |
//! | [`e2e`] | (e) end to end: events over REST while the workers run, one email each |
//! | [`report`] | the table, the JSON and the plot |
//!
//! `benches/run.sh` builds everything and runs the whole table;
//! `herald-bench --smoke` is the 10-second version CI runs.

mod e2e;
mod fanout;
mod idle;
mod ingest;
mod population;
mod proc;
mod queue;
mod report;
mod server;
mod sio;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::population::Population;
use crate::server::{Db, HeraldSpec, Paths};

#[derive(Debug, Parser)]
#[command(about = "Herald's load harness: Herald and the seed's Node stack, side by side")]
struct Args {
    /// A quick pass over every scenario (seconds, not minutes): proves the
    /// harness works; its figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run: fanout, idle, idle-ws, ingest, queue, e2e.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,idle,idle-ws,ingest,queue,e2e"
    )]
    only: Vec<String>,
    /// Where results.json, table.md and fanout-p99.svg go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// The `herald` binary (default: next to this one).
    #[arg(long)]
    herald: Option<PathBuf>,
    /// Idle connections for scenario (b).
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Events per provider mode in scenario (d) (three jobs each).
    #[arg(long, default_value_t = 2_000)]
    queue_events: u64,
    /// Events (one email each) in scenario (e).
    #[arg(long, default_value_t = 5_000)]
    e2e_emails: u64,
    /// Leave PostgreSQL's statistics as they are after the guests are set
    /// up in (d) and (e), instead of running ANALYZE as autovacuum would
    /// within its minute (tables filled seconds ago then look empty).
    #[arg(long)]
    no_analyze: bool,
    /// Measure Herald alone (profiling runs); the table then has no ratios.
    #[arg(long)]
    herald_only: bool,
    /// The databases scenario (c) runs on: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    ingest_db: Vec<String>,
    /// Seconds per measured step.
    #[arg(long, default_value_t = 5)]
    step_seconds: u64,
    /// The fixed rate of fan-out's CPU-per-event step, events/s.
    #[arg(long, default_value_t = 1_000.0)]
    fixed_rate: f64,
    /// Seconds of that step (default: `--step-seconds`); longer to attach
    /// `perf stat` / `perf record` to the server meanwhile.
    #[arg(long)]
    fixed_seconds: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = server::find_root(&std::env::current_dir()?)?;
    let herald = match &args.herald {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("herald"),
    };
    anyhow::ensure!(
        herald.is_file(),
        "no herald binary at {} (cargo build --release -p herald-server)",
        herald.display()
    );
    let scratch = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let paths = Paths {
        root: root.clone(),
        herald,
        node: "node".into(),
        scratch: scratch.clone(),
    };
    // Herald alone (`--herald-only`) needs none of the Node peers.
    anyhow::ensure!(
        args.herald_only || paths.peers().join("node_modules").is_dir(),
        "the Node peers are not installed: npm ci --prefix benches/peers"
    );
    let secret = format!("herald-bench-{:032x}", rand::random::<u128>());
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let step = Duration::from_secs(if args.smoke { 1 } else { args.step_seconds });

    let mut results = report::Results {
        machine: machine(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        herald_commit: git_commit(&root),
        ..Default::default()
    };

    if wants("fanout") {
        eprintln!("(a) fan-out, seed scenario, Socket.IO");
        let plan = if args.smoke {
            fanout::Plan {
                step,
                start_rate: 200.0,
                max_rate: 400.0,
                bisections: 0,
                concurrency: 8,
                max_events: 2_000,
                fixed_rate: 200.0,
                fixed_step: step,
            }
        } else {
            fanout::Plan {
                step,
                start_rate: 500.0,
                max_rate: 128_000.0,
                bisections: 3,
                concurrency: 64,
                max_events: 1_000_000,
                fixed_rate: args.fixed_rate,
                fixed_step: Duration::from_secs(args.fixed_seconds.unwrap_or(args.step_seconds)),
            }
        };
        let pop = if args.smoke {
            Population::SMOKE
        } else {
            Population::SEED
        };
        let mut peer_result = None;
        if !args.herald_only {
            let peer = server::start_peer(&paths, &secret).await?;
            peer_result = Some(fanout::run(&peer, &secret, pop, plan, None).await?);
            peer.stop().await;
        }
        let env = server::prepare_herald(&paths, &HeraldSpec::embedded(), &secret).await?;
        let herald = server::start_herald(&paths, &env).await?;
        let at_rate = peer_result.as_ref().map(|p| p.max_sustainable);
        let h = fanout::run(&herald, &secret, pop, plan, at_rate).await?;
        herald.stop().await;
        results.fanout = std::iter::once(h).chain(peer_result).collect();
    }
    if wants("idle") {
        let n = if args.smoke { 200 } else { args.connections };
        eprintln!("(b) idle connections: {n}");
        if !args.herald_only {
            let peer = server::start_peer(&paths, &secret).await?;
            results.idle.push(idle::run(&peer, &secret, n).await?);
            peer.stop().await;
        }
        let env = server::prepare_herald(&paths, &HeraldSpec::embedded(), &secret).await?;
        let herald = server::start_herald(&paths, &env).await?;
        results
            .idle
            .insert(0, idle::run(&herald, &secret, n).await?);
        herald.stop().await;
    }
    if wants("idle-ws") {
        let n = if args.smoke { 200 } else { args.connections };
        eprintln!("(b) idle /ws connections (Herald only): {n}");
        let env = server::prepare_herald(&paths, &HeraldSpec::embedded(), &secret).await?;
        let herald = server::start_herald(&paths, &env).await?;
        results
            .idle_ws
            .push(idle::run_ws(&herald, &secret, n).await?);
        herald.stop().await;
    }
    if wants("ingest") {
        eprintln!("(c) durable ingest");
        let runs: &[(u64, usize)] = &[(1, 64), (100, 8)];
        let duration = if args.smoke { step } else { step * 2 };
        for db in [Db::Sqlite, Db::Postgres]
            .into_iter()
            .filter(|db| args.ingest_db.iter().any(|d| d == db.key()))
        {
            results
                .ingest
                .extend(ingest::run(&paths, &secret, db, runs, duration).await?);
        }
    }
    let provider = if wants("queue") || wants("e2e") {
        Some(queue::Provider::start().await?)
    } else {
        None
    };
    if let (true, Some((provider, url))) = (wants("queue"), &provider) {
        let events = if args.smoke { 20 } else { args.queue_events };
        eprintln!("(d) queue dispatch: {} jobs per mode", 3 * events);
        let mut herald = Vec::new();
        for deployment in queue::Deployment::ALL {
            herald.extend(
                queue::herald(
                    &paths,
                    &secret,
                    provider,
                    url,
                    events,
                    deployment,
                    !args.no_analyze,
                )
                .await?,
            );
        }
        if !args.herald_only {
            results
                .dispatch
                .extend(queue::bullmq(&paths, provider, url, events).await?);
        }
        results.dispatch.splice(0..0, herald);
    }
    if let (true, Some((provider, url))) = (wants("e2e"), &provider) {
        let emails = if args.smoke { 200 } else { args.e2e_emails };
        eprintln!("(e) end to end: {emails} events over REST, one email each");
        for deployment in queue::Deployment::ALL {
            results.e2e.push(
                e2e::herald(
                    &paths,
                    &secret,
                    provider,
                    url,
                    emails,
                    deployment,
                    !args.no_analyze,
                )
                .await?,
            );
        }
        if !args.herald_only {
            results
                .e2e
                .push(e2e::bullmq(&paths, provider, url, emails).await?);
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let table = results.table();
    std::fs::write(args.out.join("table.md"), &table)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    if !results.fanout.is_empty() {
        std::fs::write(args.out.join("fanout-p99.svg"), results.plot())?;
    }
    println!("{} — {}\n\n{table}", results.machine, results.date);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} vCPU ({model}), {} GiB, Linux",
        (mem as f64 / 1024.0 / 1024.0).round()
    )
}

fn git_commit(root: &std::path::Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
