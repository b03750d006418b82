//! The data lifecycle of a Herald process: the retention purge that runs on
//! an interval in `herald serve` and `herald worker` (and once in `herald
//! purge`), and a user's erase, shared by REST and the purge's outbox.
//!
//! Several nodes may purge at once, and they do not coordinate: every
//! delete is idempotent (a row is deleted once, whoever gets there first),
//! and each node starts its first pass at a random point of its first
//! interval so their passes seldom overlap. The database work is
//! [`herald_store::lifecycle`]'s; this module adds the clock, the outbox
//! directory, the schedule and the metrics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald_core::UserId;
use herald_delivery::Clock;
use herald_store::Store;
use herald_store::lifecycle::{Erased, Purged, Retention};
/// The registry a [`Purger`] counts into.
pub use prometheus::Registry;
use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Why a purge or an erase stopped.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] herald_store::Error),
    /// The outbox directory could not be read or a file not removed.
    #[error("outbox: {0}")]
    Outbox(#[from] std::io::Error),
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
        .map_err(LifecycleError::from)
}

/// The largest `retention.batch_size`.
pub const MAX_BATCH: u32 = 10_000;

/// `[retention]`, typed (see [`crate::config::Settings::retention`]):
/// `None` keeps a kind forever, or (`interval`) runs no purge job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgePolicy {
    pub inbox_read: Option<Duration>,
    pub inbox_unread: Option<Duration>,
    pub events: Option<Duration>,
    pub deliveries: Option<Duration>,
    pub actions: Option<Duration>,
    pub audit: Option<Duration>,
    pub outbox_files: Option<Duration>,
    pub interval: Option<Duration>,
    pub batch_size: u32,
    pub batch_pause: Duration,
}

impl PurgePolicy {
    /// The database's part, in milliseconds.
    pub fn retention(&self) -> Retention {
        let ms = |d: Option<Duration>| d.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Retention {
            inbox_read: ms(self.inbox_read),
            inbox_unread: ms(self.inbox_unread),
            events: ms(self.events),
            deliveries: ms(self.deliveries),
            actions: ms(self.actions),
            audit: ms(self.audit),
        }
    }
}

/// What one purge pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    #[serde(flatten)]
    pub rows: Purged,
    pub outbox_files: u64,
}

impl PurgeReport {
    /// Each kind with its count, as the metric labels them.
    pub fn by_kind(&self) -> Vec<(&'static str, u64)> {
        let mut kinds = self.rows.by_kind().to_vec();
        kinds.push(("outbox_files", self.outbox_files));
        kinds
    }
}

/// The retention purge of one process.
#[derive(Debug, Clone)]
pub struct Purger {
    store: Store,
    policy: PurgePolicy,
    outbox_dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// Rows (and files) purged, by kind: `herald_purged_total{kind}`.
    purged: IntCounterVec,
}

impl Purger {
    /// A purger on `store`, judging age by `clock`, counting into `registry`.
    pub fn new(
        store: Store,
        policy: PurgePolicy,
        outbox_dir: PathBuf,
        clock: Arc<dyn Clock>,
        registry: &Registry,
    ) -> Purger {
        let purged = IntCounterVec::new(
            Opts::new(
                "herald_purged_total",
                "Records deleted by the retention purge, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        // A registry that has it already (a second purger in one process)
        // keeps counting the first one's: only the registration is skipped.
        let _ = registry.register(Box::new(purged.clone()));
        Purger {
            store,
            policy,
            outbox_dir,
            clock,
            purged,
        }
    }

    pub fn policy(&self) -> &PurgePolicy {
        &self.policy
    }

    /// What this purger has deleted of `kind` (a label of
    /// [`PurgeReport::by_kind`]) since it was made.
    pub fn purged(&self, kind: &str) -> u64 {
        self.purged.with_label_values(&[kind]).get()
    }

    /// One pass: every kind older than its retention at `now`, the
    /// database a batch at a time, then the outbox.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn purge_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PurgeReport, LifecycleError> {
        let p = &self.policy;
        let rows = self
            .store
            .purge(
                &p.retention(),
                now.timestamp_millis(),
                p.batch_size,
                p.batch_pause,
                |batch| {
                    for (kind, n) in batch.by_kind() {
                        if n > 0 {
                            self.purged.with_label_values(&[kind]).inc_by(n);
                        }
                    }
                },
            )
            .await?;
        let mut outbox_files = 0;
        if let Some(keep) = p.outbox_files {
            let before = std::time::SystemTime::from(now)
                .checked_sub(keep)
                .unwrap_or(std::time::UNIX_EPOCH);
            loop {
                let dir = self.outbox_dir.clone();
                let limit = p.batch_size as usize;
                let n = blocking(move || {
                    herald_channels::outbox::remove_older_than(&dir, before, limit)
                })
                .await?;
                outbox_files += n;
                self.purged.with_label_values(&["outbox_files"]).inc_by(n);
                if (n as usize) < limit {
                    break;
                }
                tokio::time::sleep(p.batch_pause).await;
            }
        }
        let report = PurgeReport { rows, outbox_files };
        if report.rows.total() + outbox_files > 0 {
            tracing::info!(report = ?report, "retention purge");
        }
        Ok(report)
    }

    /// One pass at the clock's now.
    pub async fn purge_now(&self) -> Result<PurgeReport, LifecycleError> {
        self.purge_at(self.clock.now()).await
    }

    /// Purges every `retention.purge_interval` until `stop`; nothing when
    /// the interval is `off`. The first pass comes at a random point of the
    /// first interval, so nodes started together do not purge together.
    pub async fn run(self, stop: CancellationToken) {
        let Some(interval) = self.policy.interval else {
            return;
        };
        let mut wait = interval.mul_f64(rand::random::<f64>());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                result = self.purge_now() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "retention purge failed; trying again at the next interval");
                    }
                }
            }
            wait = interval;
        }
    }
}

/// What an erase deleted: rows by kind, and outbox files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReport {
    #[serde(flatten)]
    pub rows: Erased,
    pub outbox_files: u64,
}

/// Erases `user` (see [`herald_store::lifecycle`]) and the outbox files of
/// their deliveries; `None` when Herald knows nothing about them.
///
/// The files of the deliveries known beforehand go first, so an erase that
/// fails half way leaves the user known and can be asked again; then the
/// database; then the files of any delivery that arrived meanwhile.
#[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
pub async fn erase_user(
    store: &Store,
    outbox_dir: &Path,
    policy: &PurgePolicy,
    user: &UserId,
) -> Result<Option<ErasureReport>, LifecycleError> {
    if !store.user_known(user).await? {
        return Ok(None);
    }
    let before: HashSet<String> = store.delivery_ids_of(user).await?.into_iter().collect();
    let mut outbox_files = remove_files(outbox_dir, before.clone()).await?;
    let Some(erasure) = store
        .erase_user(user, policy.batch_size, policy.batch_pause)
        .await?
    else {
        return Ok(None);
    };
    let late: HashSet<String> = erasure
        .deliveries
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    outbox_files += remove_files(outbox_dir, late).await?;
    tracing::info!(erased = ?erasure.erased, outbox_files, "user erased");
    Ok(Some(ErasureReport {
        rows: erasure.erased,
        outbox_files,
    }))
}

async fn remove_files(dir: &Path, deliveries: HashSet<String>) -> Result<u64, LifecycleError> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let dir = dir.to_owned();
    blocking(move || herald_channels::outbox::remove_deliveries(&dir, &deliveries)).await
}
