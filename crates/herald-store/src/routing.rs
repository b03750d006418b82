//! The routing table's stored versions: what an admin put over REST, or
//! their going back to the routing file.
//!
//! Versions count up from 1; the newest row is in force on every node (each
//! node polls [`Store::routing_version`] and reads the row when it moved).
//! No row at all means the routing file, as version 0. A write is a
//! compare-and-set on the newest version: [`Store::store_routing`] refuses
//! (with the current version) when the caller's expected version is not the
//! newest, and two writers racing for the same next version meet the
//! primary key, so one of them wins and the other is told. The change's
//! audit row is written in the same transaction.

use serde_json::Value;
use sqlx::Row;

use crate::audit::{self, Actor, AuditKind, Change};
use crate::{Error, Result, Store, now_ms};

/// Where a version's table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingSource {
    /// The routing file (`routing.file`) of each node.
    File,
    /// A table an admin stored over REST.
    Api,
}

impl RoutingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingSource::File => "file",
            RoutingSource::Api => "api",
        }
    }
}

/// One stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingVersion {
    pub version: i64,
    pub source: RoutingSource,
    /// The table, in the routing file's shape; `None` for the file.
    pub document: Option<Value>,
    pub actor: Actor,
    pub created_at: i64,
}

/// What [`Store::store_routing`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum RoutingWrite {
    Stored(RoutingVersion),
    /// The newest version is not the one the caller expected.
    Conflict {
        current: i64,
    },
}

/// A routing change to store.
#[derive(Debug, Clone, Copy)]
pub struct NewRouting<'a> {
    /// The version the caller read; `None` writes over whatever is newest.
    pub expected: Option<i64>,
    /// The table (`Some`) or the file (`None`).
    pub document: Option<&'a Value>,
    pub actor: &'a Actor,
    /// The audit row's action: `replace`, `revert`.
    pub action: &'a str,
}

/// How often a write without an expected version tries again when another
/// took the version it meant to write.
const ATTEMPTS: usize = 5;

impl Store {
    /// The newest version's number; 0 when none was ever stored (the file).
    pub async fn routing_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM routing_versions")
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    /// The newest version, if one was ever stored.
    pub async fn latest_routing(&self) -> Result<Option<RoutingVersion>> {
        let row = sqlx::query(
            "SELECT version, source, document, actor_id, actor_role, created_at \
             FROM routing_versions ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| version_of(&r)).transpose()
    }

    /// Stores a new version after the newest, if the newest is `expected`
    /// (when given), with its audit row (`kind` = `routing`): `before` is
    /// what `describe` makes of the version it replaces (`None`: the file,
    /// never replaced), `after` what it makes of the new one.
    #[tracing::instrument(level = "debug", skip_all, fields(action = change.action))]
    pub async fn store_routing(
        &self,
        change: NewRouting<'_>,
        describe: impl Fn(Option<&RoutingVersion>) -> Value,
    ) -> Result<RoutingWrite> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.write.begin().await?;
            let latest = sqlx::query(
                "SELECT version, source, document, actor_id, actor_role, created_at \
                 FROM routing_versions ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| version_of(&r))
            .transpose()?;
            let current = latest.as_ref().map_or(0, |v| v.version);
            if change.expected.is_some_and(|e| e != current) {
                tx.rollback().await?;
                return Ok(RoutingWrite::Conflict { current });
            }
            let now = now_ms();
            let stored = RoutingVersion {
                version: current + 1,
                source: if change.document.is_some() {
                    RoutingSource::Api
                } else {
                    RoutingSource::File
                },
                document: change.document.cloned(),
                actor: change.actor.clone(),
                created_at: now,
            };
            let inserted = sqlx::query(
                "INSERT INTO routing_versions (version, source, document, actor_id, actor_role, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(stored.version)
            .bind(stored.source.as_str())
            .bind(change.document.map(Value::to_string))
            .bind(stored.actor.subject.clone())
            .bind(stored.actor.role.clone())
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    // Another writer took this version first.
                    tx.rollback().await?;
                    if change.expected.is_some() || attempt >= ATTEMPTS {
                        return Ok(RoutingWrite::Conflict {
                            current: self.routing_version().await?,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let before = describe(latest.as_ref());
            let after = describe(Some(&stored));
            let audited = Change {
                target: None,
                kind: AuditKind::Routing,
                action: change.action,
                before: Some(&before),
                after: Some(&after),
            };
            audit::record(&mut tx, change.actor, audited, now).await?;
            tx.commit().await?;
            return Ok(RoutingWrite::Stored(stored));
        }
    }
}

fn version_of(r: &sqlx::any::AnyRow) -> Result<RoutingVersion> {
    let source: String = r.try_get("source")?;
    let document: Option<String> = r.try_get("document")?;
    Ok(RoutingVersion {
        version: r.try_get("version")?,
        source: match source.as_str() {
            "api" => RoutingSource::Api,
            "file" => RoutingSource::File,
            other => return Err(Error::Corrupt(format!("routing source `{other}`"))),
        },
        document: document
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("routing document: {e}")))?,
        actor: Actor {
            subject: r.try_get("actor_id")?,
            role: r.try_get("actor_role")?,
        },
        created_at: r.try_get("created_at")?,
    })
}
