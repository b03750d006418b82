//! The part of Herald's test helpers that needs nothing of Herald.
//!
//! `herald-testkit` depends on `herald-store` and `herald-delivery`, so
//! their own unit tests cannot use it; they use this crate instead, and
//! `herald-testkit` re-exports all of it, so integration tests see one kit.
//!
//! | item | owns |
//! |---|---|
//! | [`services_required`] | whether a missing service fails a test (`HERALD_REQUIRE_SERVICES=1`, as CI sets) or skips it |
//! | [`postgres_base`], [`redis_server`], [`redis_url`] | where the test PostgreSQL and Redis are (`HERALD_TEST_POSTGRES`, `HERALD_TEST_REDIS`) |
//! | [`skip`] | a test that cannot run for want of a service: a failure when services are required; otherwise counted, and the count said in one line when the test binary exits |
//! | [`eventually`] | a bounded wait for what other tasks do |
//!
//! Why one summary line: a skipped test passes as far as the test harness
//! is concerned, and a note inside a passing test's captured output is
//! never shown. So every skip is counted here, and the test binary says at
//! exit, on its own line, how many tests did not run and why.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write as _;
use std::sync::{Mutex, Once, TryLockError};
use std::time::Duration;

/// Whether a missing service fails the test instead of skipping it
/// (`HERALD_REQUIRE_SERVICES=1` or `true`, as CI sets).
pub fn services_required() -> bool {
    std::env::var("HERALD_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// The test PostgreSQL server, without a database:
/// `HERALD_TEST_POSTGRES`, by default `postgres://postgres@127.0.0.1:5432`.
pub fn postgres_base() -> String {
    std::env::var("HERALD_TEST_POSTGRES")
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The test Redis server, without a database: `HERALD_TEST_REDIS`, by
/// default `redis://127.0.0.1:6379`. A database in the variable is
/// ignored: each test names its own (see [`redis_url`]).
pub fn redis_server() -> String {
    let url = std::env::var("HERALD_TEST_REDIS").unwrap_or_default();
    let url = if url.is_empty() {
        "redis://127.0.0.1:6379"
    } else {
        url.as_str()
    };
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => url.to_owned(),
    }
}

/// Database `db` of the test Redis. Tests that flush or fill a database
/// take one of their own, so they cannot disturb each other.
pub fn redis_url(db: u8) -> String {
    format!("{}/{db}", redis_server())
}

/// Tests skipped so far in this test binary, by reason.
#[derive(Debug)]
struct Skips {
    /// Reason → the tests it skipped (by test name).
    by_reason: BTreeMap<String, BTreeSet<String>>,
    /// Skips outside a named test thread, each counted as a test.
    unnamed: usize,
}

static SKIPS: Mutex<Skips> = Mutex::new(Skips {
    by_reason: BTreeMap::new(),
    unnamed: 0,
});

static REPORT_AT_EXIT: Once = Once::new();

/// A test cannot run (or run in full) because `reason` — for example
/// "PostgreSQL unreachable at postgres://…" — with `detail` the error seen.
///
/// With services required this panics, failing the test. Otherwise it
/// notes the skip in the test's output, counts it for the summary line the
/// test binary prints when it exits, and returns: the caller then returns
/// (or moves on to the part it can run). A test skipped twice, or for two
/// reasons, counts once in the total.
#[track_caller]
pub fn skip(reason: &str, detail: &str) {
    assert!(
        !services_required(),
        "{reason}: {detail} (a required service: HERALD_REQUIRE_SERVICES=1)"
    );
    eprintln!("skipped: {reason}: {detail}");
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_owned);
    {
        let mut skips = SKIPS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let skips = &mut *skips;
        match test {
            Some(test) => {
                skips
                    .by_reason
                    .entry(reason.to_owned())
                    .or_default()
                    .insert(test);
            }
            None => {
                skips.unnamed += 1;
                skips.by_reason.entry(reason.to_owned()).or_default();
            }
        }
    }
    REPORT_AT_EXIT.call_once(report_at_exit);
}

/// The summary line, if anything was skipped.
fn summary(skips: &Skips) -> Option<String> {
    if skips.by_reason.is_empty() {
        return None;
    }
    let tests: BTreeSet<&String> = skips.by_reason.values().flatten().collect();
    let total = tests.len() + skips.unnamed;
    let reasons: Vec<String> = skips
        .by_reason
        .iter()
        .map(|(reason, tests)| match tests.len() {
            0 => reason.clone(),
            n => format!("{reason} ({n})"),
        })
        .collect();
    let tests = if total == 1 { "test" } else { "tests" };
    Some(format!(
        "herald: {total} {tests} skipped, wholly or in part: {}; set HERALD_REQUIRE_SERVICES=1 to fail instead",
        reasons.join("; ")
    ))
}

/// Prints the summary line when the process exits, after the test
/// harness's own summary. The harness captures the output of test threads
/// only, so this line always shows.
#[allow(unsafe_code)]
fn report_at_exit() {
    extern "C" fn report() {
        // A test thread still holding the lock at exit (one that timed
        // out) must not hang the exit: then there is no line.
        let skips = match SKIPS.try_lock() {
            Ok(skips) => skips,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(line) = summary(&skips) {
            let _ = writeln!(std::io::stderr().lock(), "\n{line}");
        }
    }
    // SAFETY: `atexit` takes a plain `extern "C" fn()`, which `report` is.
    // It runs once, on the exiting thread, while the process and its
    // statics are still whole; it cannot unwind (no operation in it panics:
    // the lock is tried, not awaited, and a write error is ignored).
    let registered = unsafe { libc::atexit(report) };
    if registered != 0 {
        eprintln!("herald: could not register the skip summary (atexit: {registered})");
    }
}

/// The pause between two tries of [`eventually`].
const PAUSE: Duration = Duration::from_millis(25);

/// Tries `check` until it yields a value, pausing briefly between tries,
/// for at most `within`: for awaiting work other tasks do (a worker
/// sending, a sweeper recovering, a server coming back). Panics on timeout
/// naming `what` was awaited, how long and how many tries.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    let mut tries = 0_u32;
    loop {
        tries += 1;
        if let Some(value) = check().await {
            return value;
        }
        let waited = started.elapsed();
        assert!(
            waited < within,
            "timed out waiting for {what}: still not so after {waited:?} and {tries} tries"
        );
        tokio::time::sleep(PAUSE.min(within - waited)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_each_test_once_and_names_every_reason() {
        let mut skips = Skips {
            by_reason: BTreeMap::new(),
            unnamed: 0,
        };
        assert_eq!(summary(&skips), None);
        for (reason, test) in [
            ("PostgreSQL unreachable at postgres://h:1", "a::postgres"),
            ("PostgreSQL unreachable at postgres://h:1", "b::postgres"),
            ("Redis unreachable at redis://h:2", "b::postgres"),
        ] {
            skips
                .by_reason
                .entry(reason.into())
                .or_default()
                .insert(test.into());
        }
        assert_eq!(
            summary(&skips).unwrap(),
            "herald: 2 tests skipped, wholly or in part: PostgreSQL unreachable at postgres://h:1 (2); \
             Redis unreachable at redis://h:2 (1); set HERALD_REQUIRE_SERVICES=1 to fail instead"
        );
        skips.unnamed = 1;
        assert!(
            summary(&skips)
                .unwrap()
                .starts_with("herald: 3 tests skipped")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_value_and_names_what_timed_out() {
        let mut calls = 0;
        let got = eventually("the third call", Duration::from_secs(1), || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);

        let waiting = tokio::spawn(eventually(
            "a value that never comes",
            Duration::from_millis(100),
            || async { None::<()> },
        ));
        let panic = waiting.await.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.starts_with("timed out waiting for a value that never comes"),
            "{message}"
        );
    }
}
