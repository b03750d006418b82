//! The `herald` commands. `main` parses and calls [`run`]; the work is here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_core::{EventKind, Role};
use herald_store::Store;

use crate::auth::Authenticator;
use crate::config::{ConfigError, Settings};
use crate::delivery::{Components, DeliveryRuntime};
use crate::startup::load_policy;
use crate::{Application, telemetry};
use tokio_util::sync::CancellationToken;

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
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
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
    telemetry::init(&settings.log);
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
    telemetry::init(&settings.log);
    if settings.delivery.queue_url.expose().starts_with("sqlite:") {
        tracing::warn!("a SQLite queue serves one node: run `herald worker` against a Redis queue");
    }
    let (routing, templates) = load_policy(&settings)?;
    let store = Store::connect(
        settings.database.url.expose(),
        settings.database.max_connections,
    )
    .await?;
    store.migrate().await?;
    let runtime = DeliveryRuntime::build(
        &settings,
        store.clone(),
        routing,
        templates,
        &Components::default(),
    )
    .await?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    runtime.run(stop).await?;
    store.close().await;
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
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
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
    }
}
