//! The servers under test, each its own process so its CPU and memory can
//! be read apart from the harness's: Herald (`herald serve`, `herald
//! worker`) and the seed's Node stack (socket.io server, BullMQ worker).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::proc::{self, Sample};

/// Where things are: the repository (config, templates, peers) and the
/// `herald` binary.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub herald: PathBuf,
    pub node: String,
    /// Scratch space for databases and outboxes, emptied per server.
    pub scratch: PathBuf,
}

impl Paths {
    pub fn peers(&self) -> PathBuf {
        self.root.join("benches/peers")
    }
}

/// A child process the harness owns; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub port: u16,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn sample(&self) -> Result<Sample> {
        proc::sample(self.pid())
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then SIGKILL if it lingers.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Which database Herald keeps its events in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn as_str(self) -> &'static str {
        match self {
            Db::Sqlite => "SQLite",
            Db::Postgres => "PostgreSQL",
        }
    }

    /// As `--ingest-db` names it.
    pub fn key(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const PG_BENCH_DB: &str = "herald_bench";

/// How Herald is started for one measurement.
#[derive(Debug, Clone)]
pub struct HeraldSpec {
    pub db: Db,
    /// `redis://…/N` for a Redis queue; None: the embedded SQLite queue.
    pub queue: Option<String>,
    pub workers_in_serve: bool,
    /// Extra `HERALD__…` variables (providers, routing file, retry).
    pub env: Vec<(String, String)>,
}

impl HeraldSpec {
    pub fn embedded() -> Self {
        HeraldSpec {
            db: Db::Sqlite,
            queue: None,
            workers_in_serve: true,
            env: Vec::new(),
        }
    }
}

/// Everything `herald serve` and `herald worker` of one spec share.
#[derive(Debug, Clone)]
pub struct HeraldEnv {
    vars: Vec<(String, String)>,
}

impl HeraldEnv {
    /// The same Herald with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> HeraldEnv {
        let mut vars: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(k, _)| k != key)
            .cloned()
            .collect();
        vars.push((key.to_owned(), value.to_owned()));
        HeraldEnv { vars }
    }

    /// The same Herald with its delivery workers inside `herald serve`.
    pub fn with_workers(&self) -> HeraldEnv {
        self.with("HERALD__DELIVERY__WORKERS_IN_SERVE", "true")
    }
}

pub async fn prepare_herald(paths: &Paths, spec: &HeraldSpec, secret: &str) -> Result<HeraldEnv> {
    let dir = paths.scratch.join("herald");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let database = match spec.db {
        Db::Sqlite => format!("sqlite://{}", dir.join("herald.db").display()),
        Db::Postgres => {
            recreate_pg_database().await?;
            format!("postgres://postgres@127.0.0.1:5432/{PG_BENCH_DB}")
        }
    };
    let queue = match &spec.queue {
        Some(url) => {
            flush_redis(url).await?;
            url.clone()
        }
        None => format!("sqlite://{}", dir.join("queue.db").display()),
    };
    let mut vars: Vec<(String, String)> = [
        ("HERALD__SERVER__HOST", "127.0.0.1".to_owned()),
        ("HERALD__SERVER__DATA_DIR", dir.display().to_string()),
        ("HERALD__AUTH__SECRET", secret.to_owned()),
        ("HERALD__DATABASE__URL", database),
        ("HERALD__DELIVERY__QUEUE_URL", queue),
        (
            "HERALD__DELIVERY__WORKERS_IN_SERVE",
            spec.workers_in_serve.to_string(),
        ),
        (
            "HERALD__CHANNELS__OUTBOX_DIR",
            dir.join("outbox").display().to_string(),
        ),
        ("HERALD__LOG__FILTER", "warn".to_owned()),
        // Every socket of the harness comes from 127.0.0.1, and its
        // token travels in the Socket.IO CONNECT, after the upgrade: the
        // per-address handshake limit (20/s, meant for one client) would
        // measure itself, so it is lifted. The per-connection limits stay
        // as shipped.
        (
            "HERALD__REALTIME__HANDSHAKES_PER_SECOND_PER_ADDRESS",
            "1000000".to_owned(),
        ),
        (
            "HERALD__REALTIME__HANDSHAKE_BURST_PER_ADDRESS",
            "1000000".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(spec.env.iter().cloned());
    Ok(HeraldEnv { vars })
}

/// `herald serve`, ready when `/readyz` answers 200.
pub async fn start_herald(paths: &Paths, env: &HeraldEnv) -> Result<Proc> {
    let port = free_port()?;
    let mut cmd = Command::new(&paths.herald);
    cmd.arg("serve")
        .current_dir(&paths.root)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env("HERALD__SERVER__PORT", port.to_string());
    let child = spawn(cmd, "herald serve", Stdout::Ignore)?;
    let mut proc = Proc {
        name: "herald".into(),
        child,
        port,
    };
    let ready = format!("{}/readyz", proc.base());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!("herald serve exited ({status}); its log is above");
        }
        if let Ok(r) = client.get(&ready).send().await
            && r.status().is_success()
        {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("{ready} did not answer 200 within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `herald worker`: delivery workers only. Ready once its process runs (it
/// starts taking jobs at once).
pub fn start_herald_worker(paths: &Paths, env: &HeraldEnv) -> Result<Proc> {
    let mut cmd = Command::new(&paths.herald);
    cmd.arg("worker")
        .current_dir(&paths.root)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env("HERALD__SERVER__PORT", free_port()?.to_string())
        // Its /metrics listener, on a port of its own: several may run.
        .env("HERALD__WORKER__METRICS_PORT", free_port()?.to_string());
    Ok(Proc {
        name: "herald worker".into(),
        child: spawn(cmd, "herald worker", Stdout::Ignore)?,
        port: 0,
    })
}

/// The seed's socket.io server.
pub async fn start_peer(paths: &Paths, secret: &str) -> Result<Proc> {
    let port = free_port()?;
    let mut cmd = Command::new(&paths.node);
    cmd.arg(paths.peers().join("socketio/server.mjs"))
        .current_dir(paths.peers())
        .env("PORT", port.to_string())
        .env("JWT_SECRET", secret)
        .env("NODE_ENV", "production");
    let child = spawn(cmd, "socket.io peer", Stdout::Read)?;
    let mut proc = Proc {
        name: "socket.io".into(),
        child,
        port,
    };
    wait_line(&mut proc, "ready", Duration::from_secs(30)).await?;
    Ok(proc)
}

/// The BullMQ worker, sending to `provider`.
pub async fn start_bullmq_worker(
    paths: &Paths,
    redis: &str,
    provider: &str,
    concurrency: usize,
) -> Result<Proc> {
    let mut cmd = Command::new(&paths.node);
    cmd.arg(paths.peers().join("bullmq/worker.mjs"))
        .current_dir(paths.peers())
        .env("REDIS_URL", redis)
        .env("PROVIDER_URL", provider)
        .env("CONCURRENCY", concurrency.to_string())
        .env("NODE_ENV", "production");
    let mut proc = Proc {
        name: "bullmq worker".into(),
        child: spawn(cmd, "BullMQ worker", Stdout::Read)?,
        port: 0,
    };
    wait_line(&mut proc, "ready", Duration::from_secs(30)).await?;
    Ok(proc)
}

/// Fills the BullMQ queue: `email`, `sms` and `push` jobs.
pub async fn bullmq_enqueue(
    paths: &Paths,
    redis: &str,
    counts: [usize; 3],
    backoff_ms: u64,
) -> Result<()> {
    let status = Command::new(&paths.node)
        .arg(paths.peers().join("bullmq/enqueue.mjs"))
        .current_dir(paths.peers())
        .env("REDIS_URL", redis)
        .env("EMAIL", counts[0].to_string())
        .env("SMS", counts[1].to_string())
        .env("PUSH", counts[2].to_string())
        .env("BACKOFF_MS", backoff_ms.to_string())
        .stdout(Stdio::null())
        .status()
        .await
        .context("running benches/peers/bullmq/enqueue.mjs")?;
    if !status.success() {
        bail!("enqueue.mjs failed: {status}");
    }
    Ok(())
}

/// What a live enqueue (jobs added while the worker runs) took.
#[derive(Debug, Clone, Copy)]
pub struct LiveEnqueue {
    /// When the enqueuer was about to add its first batch.
    pub started: Instant,
    /// The enqueuer's own CPU seconds from then to its last batch.
    pub cpu_s: f64,
}

/// Adds `emails` email jobs to the BullMQ queue while its worker runs, in
/// `addBulk`s of `batch`, `in_flight` at a time, as a producer would.
pub async fn bullmq_enqueue_live(
    paths: &Paths,
    redis: &str,
    emails: usize,
    batch: usize,
    in_flight: usize,
    backoff_ms: u64,
) -> Result<LiveEnqueue> {
    let mut cmd = Command::new(&paths.node);
    cmd.arg(paths.peers().join("bullmq/enqueue.mjs"))
        .current_dir(paths.peers())
        .env("REDIS_URL", redis)
        .env("EMAIL", emails.to_string())
        .env("LIVE", "1")
        .env("CHUNK", batch.to_string())
        .env("IN_FLIGHT", in_flight.to_string())
        .env("BACKOFF_MS", backoff_ms.to_string());
    let mut child = spawn(cmd, "BullMQ enqueue", Stdout::Read)?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut started = None;
    let mut cpu_s = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("enqueue.mjs went quiet")??
    {
        if line.starts_with("adding") {
            started = Some(Instant::now());
        } else if let Some(rest) = line.strip_prefix("enqueued ") {
            cpu_s = rest
                .split_whitespace()
                .skip_while(|w| *w != "cpu_ms")
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
                .map(|ms| ms / 1000.0);
        }
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("enqueue.mjs failed: {status}");
    }
    Ok(LiveEnqueue {
        started: started.context("enqueue.mjs never said `adding`")?,
        cpu_s: cpu_s.unwrap_or(0.0),
    })
}

/// What becomes of a child's stdout.
#[derive(Debug, Clone, Copy)]
enum Stdout {
    /// Piped: the Node peers announce readiness there (see `wait_line`).
    Read,
    /// Discarded: Herald's log is not read, so no pipe can fill and stall it.
    Ignore,
}

fn spawn(mut cmd: Command, what: &str, stdout: Stdout) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(match stdout {
            Stdout::Read => Stdio::piped(),
            Stdout::Ignore => Stdio::null(),
        })
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().with_context(|| format!("starting {what}"))
}

/// Waits for a line on the child's stdout, then keeps draining it so the
/// child never blocks on a full pipe.
async fn wait_line(proc: &mut Proc, want: &str, within: Duration) -> Result<()> {
    let stdout = proc.child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(want) {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .with_context(|| format!("{} did not print `{want}`", proc.name))??;
    if !found {
        bail!("{} exited before it was ready", proc.name);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

async fn recreate_pg_database() -> Result<()> {
    for sql in [
        format!("DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)"),
        format!("CREATE DATABASE {PG_BENCH_DB}"),
    ] {
        let status = Command::new("psql")
            .args([PG_ADMIN, "-qc", &sql])
            .stdout(Stdio::null())
            .status()
            .await
            .context("psql")?;
        if !status.success() {
            bail!("`{sql}` failed");
        }
    }
    Ok(())
}

/// Refreshes the planner's statistics of the bench database, as
/// autovacuum would within its minute: without them, tables filled
/// seconds ago look empty, and a lookup by a list of ids may be planned as
/// a scan of the whole table.
pub async fn analyze_pg() -> Result<()> {
    let url = format!("postgres://postgres@127.0.0.1:5432/{PG_BENCH_DB}");
    let status = Command::new("psql")
        .args([url.as_str(), "-qc", "ANALYZE"])
        .stdout(Stdio::null())
        .status()
        .await
        .context("psql")?;
    if !status.success() {
        bail!("ANALYZE on {PG_BENCH_DB} failed");
    }
    Ok(())
}

/// Empties the Redis database a queue URL names.
pub async fn flush_redis(url: &str) -> Result<()> {
    let db = url.rsplit('/').next().unwrap_or("0");
    let status = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "-n", db, "FLUSHDB"])
        .stdout(Stdio::null())
        .status()
        .await
        .context("redis-cli")?;
    if !status.success() {
        bail!("FLUSHDB on {url} failed");
    }
    Ok(())
}

/// The repository root: the nearest ancestor holding `config/routing.toml`.
pub fn find_root(start: &Path) -> Result<PathBuf> {
    start
        .ancestors()
        .find(|p| p.join("config/routing.toml").is_file())
        .map(Path::to_path_buf)
        .context("run herald-bench inside the Herald repository (no config/routing.toml above)")
}
