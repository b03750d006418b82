//! Statements that travel to the database together.
//!
//! sqlx runs a SQLite connection on a thread of its own, and every command
//! it sends there is a round trip: the runtime worker hands the command
//! over, the connection's thread wakes, runs it, hands the rows back and
//! wakes the worker. An ingest transaction of seven statements paid seven
//! of them (BEGIN and COMMIT included), and at a steady rate, when a group
//! holds one or two publishes, those hand-offs — not SQLite — were most of
//! what a publish cost the writer.
//!
//! A [`Script`] gathers statements. On SQLite it is one command: sqlx runs
//! a string of several statements in one go, binding the anonymous `?`
//! parameters of each in order, so the statements of a script share one
//! argument list. PostgreSQL's extended protocol takes one statement per
//! message: there a script is run statement by statement (its connection
//! is a socket, and the hand-off is what a network round trip costs anyway).
//!
//! On SQLite a script is prepared, and kept in the connection's statement
//! cache, as a whole. Its statements come in a few shapes (a power of two
//! of rows, see [`Table::push`](super::Table::push)), so the scripts of
//! common batch sizes stay prepared.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::encode::Encode;
use sqlx::error::BoxDynError;
use sqlx::{Any, AnyConnection, Arguments, AssertSqlSafe, Type};

use crate::{Backend, Result};

/// Statements to run in one round trip on SQLite, one by one on PostgreSQL.
pub(super) struct Script {
    /// Each statement with its binds; on SQLite, one entry holds them all.
    parts: Vec<(String, AnyArguments)>,
    backend: Backend,
    /// The first bind that failed to encode: reported when the script runs.
    error: Option<BoxDynError>,
}

impl Script {
    pub(super) fn new(backend: Backend) -> Script {
        Script {
            parts: Vec::new(),
            backend,
            error: None,
        }
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Adds a statement, and returns its binds (on SQLite, the script's:
    /// this statement's parameters follow those of the statements before).
    pub(super) fn statement(&mut self, sql: &str) -> Binds<'_> {
        match self.parts.last_mut() {
            Some((script, _)) if self.backend == Backend::Sqlite => {
                script.push_str(";\n");
                script.push_str(sql);
            }
            _ => self.parts.push((sql.to_owned(), AnyArguments::default())),
        }
        let (_, args) = self.parts.last_mut().expect("a statement was just added");
        Binds {
            args,
            error: &mut self.error,
        }
    }

    /// Runs the script on `conn`: every row its statements return, in
    /// order. The first error stops it (on SQLite the statements after the
    /// failing one do not run).
    pub(super) async fn fetch(self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>> {
        if let Some(error) = self.error {
            return Err(sqlx::Error::Encode(error).into());
        }
        let mut rows = Vec::new();
        for (sql, args) in self.parts {
            let query = sqlx::query_with::<Any, _>(AssertSqlSafe(sql), args);
            rows.extend(query.fetch_all(&mut *conn).await?);
        }
        Ok(rows)
    }
}

/// The binds of the statement being added to a [`Script`].
pub(super) struct Binds<'s> {
    args: &'s mut AnyArguments,
    error: &'s mut Option<BoxDynError>,
}

impl Binds<'_> {
    pub(super) fn bind<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        if let Err(error) = self.args.add(value) {
            self.error.get_or_insert(error);
        }
        self
    }
}
