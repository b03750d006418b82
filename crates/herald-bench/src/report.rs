//! The results: JSON for machines, a Markdown table for BENCHMARKS.md and
//! an SVG plot of p99 latency against offered load.

use std::fmt::Write as _;

use serde::Serialize;

use crate::e2e::EndToEnd;
use crate::fanout::{Fanout, P99_BOUND_MS};
use crate::idle::Idle;
use crate::ingest::Ingest;
use crate::queue::Dispatch;

/// A line of the plot: its name, its colour, its (load, p99) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub machine: String,
    pub date: String,
    pub command: String,
    pub herald_commit: String,
    pub fanout: Vec<Fanout>,
    pub idle: Vec<Idle>,
    pub idle_ws: Vec<Idle>,
    pub ingest: Vec<Ingest>,
    pub dispatch: Vec<Dispatch>,
    pub e2e: Vec<EndToEnd>,
}

fn ratio(herald: f64, peer: f64) -> String {
    if peer > 0.0 && herald > 0.0 {
        format!("{:.1}×", herald / peer)
    } else {
        "—".to_owned()
    }
}

fn num(x: f64) -> String {
    if x == x.trunc() && x < 100.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        let n = x.round() as u64;
        // Thousands separated by commas, as the table reads better.
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

impl Results {
    fn find<T>(items: &[T], f: impl Fn(&T) -> bool) -> Option<&T> {
        items.iter().find(|x| f(x))
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "| metric | Herald | peer | Herald / peer | target |");
        let _ = writeln!(t, "|---|---|---|---|---|");
        let mut row = |m: &str, h: Option<f64>, p: Option<f64>, r: String, target: &str| {
            let cell = |v: Option<f64>| v.map_or("—".to_owned(), num);
            let _ = writeln!(t, "| {m} | {} | {} | {r} | {target} |", cell(h), cell(p));
        };
        let herald = Self::find(&self.fanout, |f| f.server == "herald");
        let peer = Self::find(&self.fanout, |f| f.server != "herald");
        if let (Some(h), Some(p)) = (herald, peer) {
            row(
                &format!(
                    "fan-out: max sustainable events/s, 1 per request (p99 < {P99_BOUND_MS} ms, 0 lost)"
                ),
                Some(h.max_sustainable),
                Some(p.max_sustainable),
                ratio(h.max_sustainable, p.max_sustainable),
                "≥ 10×",
            );
            for (label, hs, ps) in [
                ("batch 1", &h.fastest_batch_1, &p.fastest_batch_1),
                ("batch 10", &h.fastest_batch_10, &p.fastest_batch_10),
            ] {
                row(
                    &format!("fan-out, as fast as possible, {label}: events/s"),
                    Some(hs.events_per_s),
                    Some(ps.events_per_s),
                    ratio(hs.events_per_s, ps.events_per_s),
                    "",
                );
                row(
                    &format!("fan-out, as fast as possible, {label}: deliveries/s"),
                    Some(hs.deliveries_per_s),
                    Some(ps.deliveries_per_s),
                    ratio(hs.deliveries_per_s, ps.deliveries_per_s),
                    "",
                );
                row(
                    &format!("fan-out, as fast as possible, {label}: deliveries per server CPU-s"),
                    Some(hs.deliveries_per_cpu_s),
                    Some(ps.deliveries_per_cpu_s),
                    ratio(hs.deliveries_per_cpu_s, ps.deliveries_per_cpu_s),
                    if label == "batch 1" { "≥ 4×" } else { "" },
                );
                row(
                    &format!("fan-out, as fast as possible, {label}: p50 / p99 / p99.9 ms"),
                    None,
                    None,
                    format!(
                        "Herald {} / {} / {}; peer {} / {} / {}",
                        num(hs.p50_ms),
                        num(hs.p99_ms),
                        num(hs.p999_ms),
                        num(ps.p50_ms),
                        num(ps.p99_ms),
                        num(ps.p999_ms)
                    ),
                    "",
                );
                row(
                    &format!("fan-out, as fast as possible, {label}: lost / duplicated"),
                    Some((hs.lost + hs.duplicated) as f64),
                    Some((ps.lost + ps.duplicated) as f64),
                    String::new(),
                    "0",
                );
                row(
                    &format!("fan-out, as fast as possible, {label}: server peak RSS MiB"),
                    Some(hs.peak_rss_mib),
                    Some(ps.peak_rss_mib),
                    ratio(hs.peak_rss_mib, ps.peak_rss_mib),
                    "",
                );
            }
            let peer_at_max = p
                .sweep
                .iter()
                .filter(|s| s.sustainable)
                .max_by(|a, b| a.offered.partial_cmp(&b.offered).expect("numbers"));
            row(
                &format!(
                    "p99 ms at the peer's max sustainable rate ({} events/s)",
                    num(p.max_sustainable)
                ),
                h.at_rate.as_ref().map(|s| s.p99_ms),
                peer_at_max.map(|s| s.p99_ms),
                String::new(),
                "Herald ≤ 10 ms",
            );
            row(
                &format!(
                    "p99 ms at twice the peer's max sustainable rate ({} events/s)",
                    num(2.0 * p.max_sustainable)
                ),
                h.at_twice_rate.as_ref().map(|s| s.p99_ms),
                None,
                h.at_twice_rate
                    .as_ref()
                    .map_or(String::new(), |s| format!("Herald lost {}", s.lost)),
                "Herald ≤ 10 ms",
            );
            let (hf, pf) = (&h.fixed, &p.fixed);
            row(
                &format!(
                    "fan-out at {} events/s: server CPU µs per event",
                    num(hf.offered.unwrap_or(0.0))
                ),
                Some(hf.cpu_us_per_event),
                Some(pf.cpu_us_per_event),
                ratio(hf.cpu_us_per_event, pf.cpu_us_per_event),
                "≤ 0.25×",
            );
            row(
                &format!(
                    "fan-out at {} events/s: server context switches per event",
                    num(hf.offered.unwrap_or(0.0))
                ),
                Some(hf.ctx_switches_per_event),
                Some(pf.ctx_switches_per_event),
                ratio(hf.ctx_switches_per_event, pf.ctx_switches_per_event),
                "",
            );
            row(
                &format!(
                    "fan-out at {} events/s: p99 ms / lost",
                    num(hf.offered.unwrap_or(0.0))
                ),
                None,
                None,
                format!(
                    "Herald {} / {}; peer {} / {}",
                    num(hf.p99_ms),
                    hf.lost,
                    num(pf.p99_ms),
                    pf.lost
                ),
                "",
            );
        }
        let hi = Self::find(&self.idle, |i| i.server == "herald");
        let pi = Self::find(&self.idle, |i| i.server != "herald");
        if let (Some(h), Some(p)) = (hi, pi) {
            row(
                &format!(
                    "idle memory per connection, KiB ({} connections)",
                    h.connections
                ),
                Some(h.kib_per_connection),
                Some(p.kib_per_connection),
                ratio(h.kib_per_connection, p.kib_per_connection),
                "Herald ≤ 6 KiB",
            );
            row(
                "server CPU ms per connect (handshake, JWT, `connected`)",
                Some(h.connect_cpu_ms_each),
                Some(p.connect_cpu_ms_each),
                ratio(h.connect_cpu_ms_each, p.connect_cpu_ms_each),
                "≤ 0.2×",
            );
            row(
                "connect rate, connections/s (handshake, JWT, `connected`)",
                Some(h.connects_per_s),
                Some(p.connects_per_s),
                ratio(h.connects_per_s, p.connects_per_s),
                "≥ 5×",
            );
        }
        for h in &self.idle_ws {
            row(
                &format!(
                    "idle memory per `/ws` connection, KiB ({} connections)",
                    h.connections
                ),
                Some(h.kib_per_connection),
                None,
                "(the peer has no `/ws`)".to_owned(),
                "Herald ≤ 4 KiB",
            );
            row(
                "server CPU ms per `/ws` connect",
                Some(h.connect_cpu_ms_each),
                None,
                String::new(),
                "",
            );
        }
        for h in self
            .dispatch
            .iter()
            .filter(|d| d.server.starts_with("Herald"))
        {
            let p = Self::find(&self.dispatch, |d| {
                !d.server.starts_with("Herald") && d.mode.label == h.mode.label
            });
            let target = if h.mode.latency_ms > 0 {
                format!(
                    "≥ {:.0} (90% of 16 / latency)",
                    0.9 * 16_000.0 / h.mode.latency_ms as f64
                )
            } else {
                "≥ 2×".to_owned()
            };
            row(
                &format!(
                    "queue dispatch, jobs/s, provider {} ({})",
                    h.mode.label, h.server
                ),
                Some(h.jobs_per_s),
                p.map(|p| p.jobs_per_s),
                p.map_or("—".to_owned(), |p| ratio(h.jobs_per_s, p.jobs_per_s)),
                &target,
            );
            row(
                &format!(
                    "queue dispatch, worker CPU-s per 1,000 jobs, provider {} ({})",
                    h.mode.label, h.server
                ),
                Some(h.worker_cpu_s * 1000.0 / h.jobs as f64),
                p.map(|p| p.worker_cpu_s * 1000.0 / p.jobs as f64),
                String::new(),
                "",
            );
        }
        let pe = Self::find(&self.e2e, |e| !e.server.starts_with("Herald"));
        for h in self.e2e.iter().filter(|e| e.server.starts_with("Herald")) {
            let target = if h.server.contains("embedded") {
                "≥ 1,500"
            } else {
                "≥ 3,000"
            };
            row(
                &format!(
                    "end to end, emails/s, REST in → provider out ({})",
                    h.server
                ),
                Some(h.emails_per_s),
                pe.map(|p| p.emails_per_s),
                pe.map_or("—".to_owned(), |p| ratio(h.emails_per_s, p.emails_per_s)),
                target,
            );
            row(
                &format!(
                    "end to end, CPU-s per 1,000 emails, server + worker ({})",
                    h.server
                ),
                Some(h.cpu_s_per_1000),
                pe.map(|p| p.cpu_s_per_1000),
                String::new(),
                "",
            );
            row(
                &format!("end to end, lost / duplicated ({})", h.server),
                Some((h.lost as u64 + h.duplicates) as f64),
                pe.map(|p| (p.lost as u64 + p.duplicates) as f64),
                String::new(),
                "0",
            );
        }
        for i in &self.ingest {
            row(
                &format!(
                    "durable ingest on {}, events/s, batch {} × {} in flight",
                    i.db, i.batch, i.concurrency
                ),
                Some(i.events_per_s),
                None,
                "(the peer stores nothing)".to_owned(),
                if i.db == "PostgreSQL" && i.batch > 1 {
                    "≥ 30,000"
                } else {
                    ""
                },
            );
        }
        t
    }

    /// p99 against offered load, both servers, log-log.
    pub fn plot(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 20.0, 40.0, 50.0);
        let series: Vec<Series> = self
            .fanout
            .iter()
            .map(|f| {
                let color = if f.server == "herald" {
                    "#c0392b"
                } else {
                    "#2c3e50"
                };
                let name = if f.server == "herald" {
                    "Herald"
                } else {
                    "socket.io peer"
                };
                let pts = f
                    .sweep
                    .iter()
                    .filter_map(|s| Some((s.offered?, s.p99_ms.max(0.1))))
                    .collect();
                (name, color, pts)
            })
            .collect();
        let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
        let (x_min, x_max) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (x_min, x_max) = if all.is_empty() {
            (100.0, 1000.0)
        } else {
            (x_min / 1.5, x_max * 1.5)
        };
        let (y_min, y_max) = (
            0.1_f64,
            all.iter().fold(1000.0_f64, |m, p| m.max(p.1 * 2.0)),
        );
        let x =
            |v: f64| left + (v.ln() - x_min.ln()) / (x_max.ln() - x_min.ln()) * (w - left - right);
        let y = |v: f64| {
            h - bottom - (v.ln() - y_min.ln()) / (y_max.ln() - y_min.ln()) * (h - top - bottom)
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Fan-out: p99 publish→receive latency against offered load (one event per request)</text>"#,
            w / 2.0
        );
        // Grid: decades on y, powers of two on x.
        let mut v = 0.1;
        while v <= y_max {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v} ms</text>"##,
                w - right,
                left - 6.0,
                y(v) + 4.0,
                y0 = y(v),
            );
            v *= 10.0;
        }
        let mut v = 2f64.powi(x_min.log2().ceil() as i32);
        while v <= x_max {
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{x0:.1}" y="{}" text-anchor="middle">{}</text>"##,
                h - bottom,
                h - bottom + 16.0,
                num(v),
                x0 = x(v),
            );
            v *= 2.0;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{b:.1}" y2="{b:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#888">p99 bound {P99_BOUND_MS} ms</text>"##,
            w - right,
            w - right - 4.0,
            y(P99_BOUND_MS) - 5.0,
            b = y(P99_BOUND_MS)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">offered load, events/s (log scale)</text>"#,
            (left + w - right) / 2.0,
            h - 12.0
        );
        for (i, (name, color, pts)) in series.iter().enumerate() {
            let path: Vec<String> = pts
                .iter()
                .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for &(a, b) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                    x(a),
                    y(b)
                );
            }
            let ly = top + 16.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
                left + 12.0,
                ly - 4.0,
                left + 32.0,
                ly + 2.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
