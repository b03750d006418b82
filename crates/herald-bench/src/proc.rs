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
