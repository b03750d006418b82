//! The `herald` commands. `main` parses and calls [`run`]; the work is here.
//! `herald deliveries` re-drives through [`crate::redrive`], as the REST API does;
//! `herald purge` runs one pass of [`crate::lifecycle::Purger`]; `herald
//! openapi` prints [`crate::routes::openapi::spec`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_core::{EventKind, Role, ValidationError};
use herald_delivery::{Queue, SystemClock};
use herald_store::Store;
use herald_store::redrive::{AdminDelivery, RedriveReport};

use crate::auth::Authenticator;
use crate::config::{ConfigError, Settings};
use crate::delivery::Components;
use crate::lifecycle::Purger;
use crate::redrive::{self, FilterInput};
use crate::worker::Worker;
use crate::{Application, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: realtime, email, SMS, push and inbox notifications"
)]
pub struct Cli {
    /// An environment file layered over the defaults (TOML).
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Run delivery workers and the sweeper only, no HTTP (scale-out with a
    /// Redis queue).
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a signed token, for trying the API.
    Token {
        /// admin, restaurant, cashier, guest or service.
        #[arg(long)]
        role: String,
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// The restaurant id, for restaurant and cashier tokens.
        #[arg(long)]
        restaurant: Option<String>,
        /// Lifetime: 3600, 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Purge once what `[retention]` no longer keeps, report what went, and
    /// exit (for a scheduler, when `retention.purge_interval` is `off`).
    Purge {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI document `GET /openapi.json` serves, without a
    /// server (the TypeScript client's types are generated from it).
    Openapi,
    /// List and re-drive failed and expired deliveries.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
}

/// `herald deliveries …`: the admin re-drive, on the configured database
/// and queue (as `actor` `cli`).
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first (by default the failed and expired ones).
    List {
        #[command(flatten)]
        filter: FilterInput,
        /// Most deliveries to show (1 to 500).
        #[arg(long)]
        limit: Option<String>,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-drive deliveries by id, or every failed or expired one a filter
    /// matches (at most --max, 1,000 by default and at most).
    Retry {
        /// Delivery ids.
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterInput,
        /// Refuse, changing nothing, if the filter matches more than this.
        #[arg(long)]
        max: Option<i64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `cli`'s command with `settings` (loaded from `cli.config`).
pub async fn run(cli: Cli, mut settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Worker => worker(settings).await,
        Command::Migrate => {
            telemetry::init(&settings.log);
            let store = Store::connect(settings.database.url.expose(), 1).await?;
            store.migrate().await?;
            store.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Purge { json } => {
            telemetry::init_quiet();
            let store = Store::connect(settings.database.url.expose(), 2).await?;
            store.migrate().await?;
            let purger = Purger::new(
                store.clone(),
                settings.retention()?,
                settings.channels.outbox_dir.clone(),
                Arc::new(SystemClock),
                &crate::lifecycle::Registry::new(),
            );
            let result = purge(&store, &purger, json, &mut std::io::stdout().lock()).await;
            store.close().await;
            result
        }
        Command::Deliveries { command } => {
            telemetry::init_quiet();
            let store = Store::connect(settings.database.url.expose(), 2).await?;
            store.migrate().await?;
            let d = &settings.delivery;
            let queue = Queue::connect(d.queue_url.expose(), &d.queue_name, 1)
                .await
                .map_err(|e| ConfigError::new("delivery.queue_url", e.to_string()))?;
            let result = deliveries(&store, &queue, command, &mut std::io::stdout().lock()).await;
            store.close().await;
            result
        }
        Command::Openapi => {
            let doc = crate::routes::openapi::spec(settings.server.max_batch);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        Command::Token {
            role,
            sub,
            restaurant,
            ttl,
        } => {
            settings.ensure_dev_secret()?;
            let role = Role::parse(&role)
                .ok_or_else(|| ConfigError::new("--role", format!("`{role}` is not a role")))?;
            if role.is_staff() && restaurant.is_none() {
                return Err(ConfigError::new(
                    "--restaurant",
                    "is required for restaurant and cashier tokens",
                )
                .into());
            }
            let auth = Authenticator::from_settings(&settings.auth)?;
            println!(
                "{}",
                auth.mint(role, &sub, restaurant.as_deref(), parse_ttl(&ttl)?)?
            );
            Ok(())
        }
    }
}

async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    let _telemetry = telemetry::start(&settings)?;
    let dev_secret = settings.ensure_dev_secret()?;
    if dev_secret {
        tracing::warn!(
            path = %settings.server.data_dir.join("dev-secret").display(),
            "no auth.secret configured: using a development secret (never do this in production)"
        );
    }
    let auth = Authenticator::from_settings(&settings.auth)?;
    let app = Application::build(settings).await?;
    let addr = app.local_addr();
    tracing::info!(%addr, "Herald is listening");
    if dev_secret {
        print_quick_start(&auth, addr)?;
    }
    app.run_until(shutdown_signal()).await?;
    tracing::info!("Herald stopped");
    Ok(())
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    let _telemetry = telemetry::start(&settings)?;
    let worker = Worker::build(settings, Components::default()).await?;
    if let Some(addr) = worker.metrics_addr() {
        tracing::info!(%addr, "worker metrics at /metrics");
    }
    worker.run_until(shutdown_signal()).await?;
    Ok(())
}

/// Runs `herald purge`: one pass, then what went and what is left.
pub async fn purge(
    store: &Store,
    purger: &Purger,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let report = purger.purge_now().await?;
    let left = store.table_counts().await?;
    if json {
        let left: serde_json::Map<String, serde_json::Value> = left
            .into_iter()
            .map(|(table, n)| (table.to_owned(), n.into()))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "purged": report, "remaining": left })
        )?;
        return Ok(());
    }
    writeln!(out, "purged")?;
    for (kind, n) in report.by_kind() {
        writeln!(out, "  {kind:<18} {n:>10}")?;
    }
    writeln!(out, "remaining rows")?;
    for (table, n) in left {
        writeln!(out, "  {table:<18} {n:>10}")?;
    }
    Ok(())
}

/// The development banner: a token and a line to paste.
fn print_quick_start(auth: &Authenticator, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let token = auth.mint(Role::Admin, "admin", None, Duration::from_secs(24 * 3600))?;
    let sample =
        serde_json::json!({ "event": "points_added", "data": EventKind::PointsAdded.example() });
    let guest = EventKind::PointsAdded.example()["guestId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The command as this process was started, so the line works from `cargo run` too.
    let herald = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(
                p.strip_prefix(&cwd)
                    .map(|r| format!("./{}", r.display()))
                    .unwrap_or_else(|_| p.display().to_string()),
            )
        })
        .unwrap_or_else(|| "herald".to_owned());
    println!(
        "\nHerald (development mode) on http://{addr}\n\n\
         An admin token, valid 24 h:\n  export HERALD_TOKEN={token}\n\n\
         Publish a sample event:\n  curl -sS -X POST http://{addr}/v1/events \\\n    \
         -H \"Authorization: Bearer $HERALD_TOKEN\" -H 'Content-Type: application/json' \\\n    \
         -d '{sample}'\n\n\
         Read that guest's inbox:\n  curl -sS http://{addr}/v1/notifications \\\n    \
         -H \"Authorization: Bearer $({herald} token --role guest --sub {guest})\"\n\n\
         Mint other tokens with `{herald} token --role guest --sub <user-id>`.\n"
    );
    Ok(())
}

/// Runs `herald deliveries list|retry`, writing to `out`.
pub async fn deliveries(
    store: &Store,
    queue: &Queue,
    command: DeliveriesCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        DeliveriesCommand::List {
            filter,
            limit,
            cursor,
            json,
        } => {
            let request = redrive::list_request(&filter, cursor.as_deref(), limit.as_deref())
                .map_err(|e| flag_error(&e))?;
            let (items, next) = store
                .list_deliveries(&request.filter, request.cursor.as_ref(), request.limit)
                .await?;
            let next = next.as_ref().map(redrive::encode_cursor);
            if json {
                for item in &items {
                    writeln!(out, "{}", serde_json::to_string(item)?)?;
                }
                if let Some(next) = next {
                    eprintln!("next page: --cursor {next}");
                }
            } else {
                write_table(out, &items)?;
                if let Some(next) = next {
                    writeln!(out, "next page: --cursor {next}")?;
                }
            }
            Ok(())
        }
        DeliveriesCommand::Retry {
            ids,
            filter,
            max,
            json,
        } => {
            let ids = (!ids.is_empty()).then_some(ids);
            let filter = (!filter.is_empty()).then_some(filter);
            if ids.is_none() && filter.is_none() {
                anyhow::bail!(
                    "give delivery ids, or filter flags such as --status failed --channel email"
                );
            }
            let selection = redrive::selection(ids.as_deref(), filter.as_ref(), max)
                .map_err(|e| flag_error(&e))?;
            let now = chrono::Utc::now().timestamp_millis();
            let report = redrive::redrive(store, queue, &selection, "cli", now)
                .await
                .map_err(|e| match e {
                    redrive::RedriveError::Invalid(v) => flag_error(&v),
                    other => other.into(),
                })?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&report)?)?;
            } else {
                write_report(out, &report)?;
            }
            Ok(())
        }
    }
}

/// A validation error, naming the flag instead of the API's field.
fn flag_error(e: &ValidationError) -> anyhow::Error {
    let field = e.field.strip_prefix("filter.").unwrap_or(&e.field);
    let flag = match field {
        "eventId" => "--event-id".to_owned(),
        "filter" => "the filter".to_owned(),
        "ids" => "ids".to_owned(),
        f if f.starts_with("ids[") => f.to_owned(),
        f => format!("--{f}"),
    };
    anyhow::anyhow!("{flag}: {}", e.message)
}

fn write_table(out: &mut impl Write, items: &[AdminDelivery]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<36} {:<9} {:<7} {:<10} {:<36} {:<25} {:>3}  LAST ERROR",
        "UPDATED", "ID", "STATUS", "CHANNEL", "PROVIDER", "RECIPIENT", "EVENT", "TRY"
    )?;
    for d in items {
        let updated = chrono::DateTime::from_timestamp_millis(d.updated_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| d.updated_at.to_string());
        let error: String = d
            .last_error
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        writeln!(
            out,
            "{:<24} {:<36} {:<9} {:<7} {:<10} {:<36} {:<25} {:>3}  {}",
            updated,
            d.id,
            d.status,
            d.channel,
            d.provider.as_deref().unwrap_or("-"),
            d.recipient,
            d.event,
            d.attempts,
            error
        )?;
    }
    if items.is_empty() {
        writeln!(out, "(no deliveries match)")?;
    }
    Ok(())
}

fn write_report(out: &mut impl Write, report: &RedriveReport) -> std::io::Result<()> {
    writeln!(
        out,
        "requeued {}, already queued {}, not retryable {}, unknown {}",
        report.requeued.len(),
        report.already_queued.len(),
        report.not_retryable.len(),
        report.unknown.len()
    )?;
    for id in &report.requeued {
        writeln!(out, "requeued       {id}")?;
    }
    for id in &report.already_queued {
        writeln!(out, "already queued {id}")?;
    }
    for d in &report.not_retryable {
        writeln!(out, "not retryable  {} ({})", d.id, d.status)?;
    }
    for id in &report.unknown {
        writeln!(out, "unknown        {id}")?;
    }
    Ok(())
}

/// `3600`, `90s`, `30m`, `12h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::new(
            "--ttl",
            format!("`{s}` is not a duration such as 30m, 12h or 7d"),
        )
    };
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err(bad()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(ConfigError::new("--ttl", format!("`{s}` is too long"))),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        // A lifetime that overflows is refused, not wrapped.
        assert!(parse_ttl("999999999999999999d").is_err());
    }
}
