//! The routing table a process runs on, and how it follows a table an
//! admin replaces over REST.
//!
//! The file (`routing.file`) is the default. An admin's `PUT
//! /v1/admin/routing` stores a table in the database
//! ([`herald_store::routing`]) and `DELETE` stores "back to the file"; the
//! newest stored version is in force everywhere. Each process holds one
//! [`LiveRouting`]: ingest and the delivery workers read its
//! [`SharedRouting`], which is swapped whole, so a change applies without a
//! restart and an event is routed by one table from start to end.
//!
//! Keeping nodes in step: the node that took the change applies it as soon
//! as it commits; every process (each `herald serve` and `herald worker`)
//! also polls the newest version number every `routing.poll_interval_ms`
//! ([`LiveRouting::follow`]), a one-row read, and loads the table when the
//! number moved. Versions only grow, and a process applies a version only
//! if it is newer than the one it runs, so a slow poll never undoes a
//! newer change. At start a process takes the newest stored version, else
//! the file.
//!
//! A stored table is checked when it is stored, by the file's rules. One
//! that no longer compiles when read (a release that changed the catalog)
//! is logged and the file is used in its place, rather than stopping every
//! node at once; `PUT` a corrected table or `DELETE` to go back to the file.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::{RoutingTable, SharedRouting, ValidationError};
use herald_store::Store;
use herald_store::audit::Actor;
use herald_store::routing::{NewRouting, RoutingSource, RoutingVersion, RoutingWrite};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The table in force and where it came from.
#[derive(Debug, Clone)]
pub struct RoutingState {
    /// The stored version it is (0: the file, nothing ever stored).
    pub version: i64,
    pub source: RoutingSource,
    /// Who stored it, and when (epoch ms); `None` for version 0.
    pub updated_by: Option<Actor>,
    pub updated_at: Option<i64>,
    pub table: Arc<RoutingTable>,
}

impl RoutingState {
    /// The `ETag` of this version, and what `If-Match` must name.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// What `GET /v1/admin/routing` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingView<'a> {
    pub version: i64,
    pub etag: String,
    /// `file` or `api`.
    pub source: &'static str,
    /// The routing file this process falls back on.
    pub file: String,
    pub updated_by: Option<&'a Actor>,
    pub updated_at: Option<i64>,
    /// The table, in the routing file's shape.
    pub table: &'a Value,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The table breaks a rule of the routing file.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// `If-Match` named another version than the newest.
    #[error("the routing table is at version {current}")]
    Changed { current: i64 },
    #[error(transparent)]
    Store(#[from] herald_store::Error),
}

/// A process's routing table; cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveRouting {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// The routing file's table, as loaded at start.
    file: Arc<RoutingTable>,
    file_path: PathBuf,
    /// What ingest and the workers route by.
    shared: SharedRouting,
    current: RwLock<Arc<RoutingState>>,
    /// Applies one version at a time, so "newer than current" holds.
    applying: tokio::sync::Mutex<()>,
}

impl LiveRouting {
    /// Starts on the newest stored version, else on `file` (the table of
    /// the routing file at `file_path`).
    pub async fn start(
        store: Store,
        file: Arc<RoutingTable>,
        file_path: PathBuf,
    ) -> Result<LiveRouting, herald_store::Error> {
        let initial = RoutingState {
            version: 0,
            source: RoutingSource::File,
            updated_by: None,
            updated_at: None,
            table: file.clone(),
        };
        let live = LiveRouting {
            inner: Arc::new(Inner {
                store,
                shared: SharedRouting::new(file.clone()),
                file,
                file_path,
                current: RwLock::new(Arc::new(initial)),
                applying: tokio::sync::Mutex::new(()),
            }),
        };
        if let Some(latest) = live.inner.store.latest_routing().await? {
            live.apply(latest).await;
        }
        Ok(live)
    }

    /// The handle ingest and the delivery workers route by.
    pub fn shared(&self) -> SharedRouting {
        self.inner.shared.clone()
    }

    /// The table in force and its version.
    pub fn current(&self) -> Arc<RoutingState> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current state as `GET /v1/admin/routing` shows it.
    pub fn view<'a>(&self, state: &'a RoutingState) -> RoutingView<'a> {
        RoutingView {
            version: state.version,
            etag: state.etag(),
            source: state.source.as_str(),
            file: self.inner.file_path.display().to_string(),
            updated_by: state.updated_by.as_ref(),
            updated_at: state.updated_at,
            table: state.table.document(),
        }
    }

    /// Looks for a newer stored version, and applies it.
    pub async fn refresh(&self) -> Result<(), herald_store::Error> {
        let newest = self.inner.store.routing_version().await?;
        if newest <= self.current().version {
            return Ok(());
        }
        if let Some(latest) = self.inner.store.latest_routing().await? {
            self.apply(latest).await;
        }
        Ok(())
    }

    /// Polls for changes every `interval` until `stop`.
    pub async fn follow(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "could not look for a new routing table; trying again");
            }
        }
    }

    /// Replaces the table with `document` (the routing file's shape), if
    /// the newest version is `expected` (when given); the change is stored,
    /// audited, and in force on this process at once.
    pub async fn replace(
        &self,
        document: Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<Arc<RoutingState>, ChangeError> {
        let table = RoutingTable::from_json(document)?;
        let change = NewRouting {
            expected,
            document: Some(table.document()),
            actor,
            action: "replace",
        };
        self.store(change).await
    }

    /// Goes back to the routing file, if the newest version is `expected`
    /// (when given). Nothing is stored when the file is in force already.
    pub async fn revert(
        &self,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<Arc<RoutingState>, ChangeError> {
        let latest = self.inner.store.latest_routing().await?;
        let current = latest.as_ref().map_or(0, |v| v.version);
        if expected.is_some_and(|e| e != current) {
            return Err(ChangeError::Changed { current });
        }
        match latest {
            None => return Ok(self.current()),
            Some(v) if v.source == RoutingSource::File => {
                self.apply(v).await;
                return Ok(self.current());
            }
            Some(_) => {}
        }
        let change = NewRouting {
            expected: Some(current),
            document: None,
            actor,
            action: "revert",
        };
        self.store(change).await
    }

    async fn store(&self, change: NewRouting<'_>) -> Result<Arc<RoutingState>, ChangeError> {
        let file = self.inner.file.clone();
        let describe = |v: Option<&RoutingVersion>| match v {
            Some(RoutingVersion {
                version,
                source: RoutingSource::Api,
                document: Some(doc),
                ..
            }) => json!({ "version": version, "source": "api", "table": doc }),
            other => json!({
                "version": other.map_or(0, |v| v.version),
                "source": "file",
                "table": file.document(),
            }),
        };
        match self.inner.store.store_routing(change, describe).await? {
            RoutingWrite::Stored(version) => {
                tracing::info!(
                    version = version.version,
                    source = version.source.as_str(),
                    actor = %version.actor.subject,
                    "routing table changed"
                );
                self.apply(version).await;
                Ok(self.current())
            }
            RoutingWrite::Conflict { current } => Err(ChangeError::Changed { current }),
        }
    }

    /// Puts `version` in force, if it is newer than the one in force.
    async fn apply(&self, version: RoutingVersion) {
        let _one_at_a_time = self.inner.applying.lock().await;
        if version.version <= self.current().version {
            return;
        }
        let table = match (&version.source, &version.document) {
            (RoutingSource::Api, Some(doc)) => match RoutingTable::from_json(doc.clone()) {
                Ok(table) => Arc::new(table),
                Err(e) => {
                    tracing::error!(
                        version = version.version,
                        error = %e,
                        "the stored routing table does not compile; using the routing file until one that does is stored"
                    );
                    self.inner.file.clone()
                }
            },
            _ => self.inner.file.clone(),
        };
        let state = RoutingState {
            version: version.version,
            source: version.source,
            updated_by: Some(version.actor),
            updated_at: Some(version.created_at),
            table: table.clone(),
        };
        self.inner.shared.replace(table);
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(state);
        tracing::debug!(version = version.version, "routing table applied");
    }
}
