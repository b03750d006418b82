//! What a server process costs, read from `/proc`: CPU seconds (user +
//! system), resident memory now and at its peak, and context switches.

use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
const TICKS: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_secs: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Voluntary and involuntary context switches of the process's live
    /// threads (what `perf stat -e context-switches -p` counts, for the
    /// threads that outlive the window).
    pub ctx_switches: u64,
}

pub fn sample(pid: u32) -> Result<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).context("process is gone")?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample {
        cpu_secs: ticks as f64 / TICKS,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        ctx_switches: context_switches(pid),
    })
}

/// The sum over the process's threads of `voluntary_ctxt_switches` and
/// `nonvoluntary_ctxt_switches` (the process's own status line counts its
/// main thread only).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Starts a new peak: the kernel resets VmHWM to the current RSS.
pub fn reset_peak(pid: u32) {
    // Best effort: without permission the peak is the process's lifetime peak.
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Counts a process's context switches (all its threads) from now until
/// [`Switches::stop`], with `perf stat -e context-switches -p PID`: the
/// cost of each hand-off between threads (the HTTP runtime, SQLite's
/// connection threads) that CPU seconds alone do not show. `None` when
/// perf is missing or not permitted; the figure is then left out.
#[derive(Debug)]
pub struct Switches {
    child: std::process::Child,
}

impl Switches {
    pub fn start(pid: u32) -> Option<Switches> {
        let child = std::process::Command::new("perf")
            .args(["stat", "-x", ",", "-e", "context-switches", "-p"])
            .arg(pid.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // (perf attaches within milliseconds of starting: against a step
        // of seconds, the switches it misses meanwhile do not show.)
        Some(Switches { child })
    }

    /// Stops counting (SIGINT, as Ctrl-C: perf prints its count) and
    /// returns it.
    pub fn stop(self) -> Option<u64> {
        let Switches { child } = self;
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().ok()?;
        parse_switches(&String::from_utf8_lossy(&out.stderr))
    }
}

/// The count in `perf stat -x ,` output: `12345,,context-switches,…`.
fn parse_switches(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let mut fields = line.split(',');
        let count = fields.next()?;
        let event = fields.nth(1)?;
        (event.starts_with("context-switches") || event.starts_with("cs"))
            .then(|| count.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_counts_are_read_from_its_csv() {
        let out = "41234,,context-switches,2000123456,100.00,,\n";
        assert_eq!(super::parse_switches(out), Some(41234));
        assert_eq!(
            super::parse_switches("<not counted>,,context-switches,0,0,,"),
            None
        );
        assert_eq!(super::parse_switches("Error: no permission"), None);
    }
}
