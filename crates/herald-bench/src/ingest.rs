//! Scenario (c): durable ingest. `points_added` events over REST into
//! Herald with no socket listening: each 202 is an event, an inbox row and
//! a delivery record committed to the database (SQLite with
//! `synchronous = FULL`, or PostgreSQL with its default fsync on commit).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::fanout::{Publisher, closed_loop};
use crate::population::Population;
use crate::proc::Switches;
use crate::server::{self, Db, HeraldSpec, Paths};

#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    pub db: &'static str,
    pub batch: u64,
    pub concurrency: usize,
    pub events: u64,
    pub errors: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub server_cpu_s: f64,
    /// Accepted events per CPU-second of the server process.
    pub events_per_cpu_s: f64,
    /// Context switches of the server's threads over the step (`perf
    /// stat -e context-switches -p`), when perf could count them.
    pub context_switches: Option<u64>,
    pub switches_per_event: Option<f64>,
}

pub async fn run(
    paths: &Paths,
    secret: &str,
    db: Db,
    runs: &[(u64, usize)],
    duration: Duration,
) -> Result<Vec<Ingest>> {
    let spec = HeraldSpec {
        db,
        ..HeraldSpec::embedded()
    };
    let env = server::prepare_herald(paths, &spec, secret).await?;
    let herald = server::start_herald(paths, &env).await?;
    let p = Publisher::new(&herald, secret, Population::SEED);
    let mut seq = 0;
    // Warm-up: pages, prepared statements, connections.
    let warm = closed_loop(&p, None, seq, 8, Duration::from_secs(1), 10, 20_000).await;
    seq += warm.events + 10;
    let mut results = Vec::new();
    for &(batch, concurrency) in runs {
        let switches = Switches::start(herald.pid());
        let before = herald.sample()?;
        let r = closed_loop(&p, None, seq, concurrency, duration, batch, 5_000_000).await;
        seq += r.events + batch;
        let after = herald.sample()?;
        let context_switches = switches.and_then(Switches::stop);
        let accepted = r.events - r.errors;
        let server_cpu_s = after.cpu_secs - before.cpu_secs;
        let result = Ingest {
            db: db.as_str(),
            batch,
            concurrency,
            events: accepted,
            errors: r.errors,
            seconds: r.seconds,
            events_per_s: accepted as f64 / r.seconds,
            server_cpu_s,
            events_per_cpu_s: accepted as f64 / server_cpu_s.max(0.01),
            context_switches,
            switches_per_event: context_switches.map(|n| n as f64 / accepted.max(1) as f64),
        };
        eprintln!(
            "  Herald on {}: batch {batch} × {concurrency} in flight: {:.0} events/s, \
             {:.0} events per server CPU-s, {} context switches per event ({} errors)",
            db.as_str(),
            result.events_per_s,
            result.events_per_cpu_s,
            result
                .switches_per_event
                .map_or("?".to_owned(), |s| format!("{s:.2}")),
            r.errors
        );
        results.push(result);
    }
    herald.stop().await;
    Ok(results)
}
