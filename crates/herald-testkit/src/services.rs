//! The services tests run against: the test PostgreSQL
//! ([`postgres_available`]), the test Redis ([`redis_available`]), and
//! Redis servers of a test's own ([`PrivateRedis`]) to kill and start
//! again. A missing service skips the test (see [`skip`]), unless
//! services are required.

use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use tokio::process::{Child, Command};

use crate::{eventually, postgres_base, redis_server, redis_url, skip};

/// Whether the test PostgreSQL answers; if not, the caller's PostgreSQL
/// part is skipped (see [`skip`]), unless services are required.
pub async fn postgres_available() -> bool {
    let base = postgres_base();
    let url = format!("{base}/postgres");
    let why = match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer in 5s".to_owned(),
    };
    skip(&format!("PostgreSQL unreachable at {base}"), &why);
    false
}

/// How long a Redis may take to answer before it counts as missing.
const ANSWER: Duration = Duration::from_secs(3);

/// Whether the Redis at `url` answers a PING (the error otherwise).
async fn ping(url: &str) -> Result<(), String> {
    let ping = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(ANSWER, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {ANSWER:?}")),
    }
}

/// Database `db` of the test Redis ([`redis_url`]) if it answers; `None`
/// (the test skipped, see [`skip`]) if not, unless services are required.
pub async fn redis_available(db: u8) -> Option<String> {
    let url = redis_url(db);
    match ping(&url).await {
        Ok(()) => Some(url),
        Err(why) => {
            skip(
                &format!("Redis unreachable at {}", redis_server()),
                &format!("database {db}: {why}"),
            );
            None
        }
    }
}

/// A `redis-server` of the test's own on a free port, to kill with SIGKILL
/// and start again on the same port: empty, or from the snapshot it last
/// saved ([`PrivateRedis::snapshot`]). Killed, and its directory removed,
/// when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    /// Where `SAVE` writes its snapshot, and a restart loads it from.
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers. `None` (the test skipped)
    /// when `redis-server` cannot be run, unless services are required.
    pub async fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free local port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("herald-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut redis = PrivateRedis {
            port,
            dir,
            child: None,
        };
        match redis.spawn() {
            Ok(()) => {
                redis.answering().await;
                Some(redis)
            }
            Err(e) => {
                skip("redis-server cannot be started", &e.to_string());
                None
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SAVE`: what a restart will load.
    pub async fn snapshot(&self) {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("the private Redis answers");
        redis::cmd("SAVE")
            .query_async::<String>(&mut conn)
            .await
            .expect("SAVE");
    }

    /// `kill -9`: no goodbye to the clients. Waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server is killed");
        }
    }

    /// Starts it again on the same port (from the last snapshot, if one was
    /// saved) and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed redis-server only");
        self.spawn().expect("redis-server starts again");
        self.answering().await;
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn answering(&self) {
        let url = self.url();
        eventually(
            &format!("redis-server at {url} to answer"),
            Duration::from_secs(15),
            || async { ping(&url).await.ok() },
        )
        .await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
