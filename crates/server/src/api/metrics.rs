//! `GET /metrics`: Prometheus text exposition format (version 0.0.4).
//!
//! Per export (`export="pool/image[@snap]"`, canonical names; counters
//! live as long as the daemon):
//! - `vdisk_nbd_connections` (gauge), `vdisk_nbd_connections_total`;
//! - `vdisk_nbd_received_bytes_total`, `vdisk_nbd_sent_bytes_total`: bytes
//!   on the wire in transmission;
//! - `vdisk_nbd_writes_in_place_total`: large WRITEs whose payload was
//!   received straight into the page cache;
//! - per `op` (`read`, `write`, `write_zeroes`, `trim`, `flush`,
//!   `block_status`, `cache`, `other`): `vdisk_nbd_requests_total`,
//!   `vdisk_nbd_request_errors_total`, `vdisk_nbd_request_bytes_total`
//!   (payload) and the histogram `vdisk_nbd_request_duration_seconds`
//!   (fixed buckets, 50 µs to 10 s).
//!
//! Per-op series appear once the op has been seen on the export.
//! Daemon-wide: `vdisk_jobs{state}`, `vdisk_api_requests_total`, and the
//! I/O threads: `vdisk_engine_workers`, `vdisk_copy_threads` and their
//! `_max` (gauges).

use crate::api::types::JobState;
use crate::registry::{ExportStats, Op, Registry, LATENCY_BUCKETS};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub(crate) fn render(registry: &Registry) -> String {
    let exports = registry.export_snapshot();
    let mut out = String::new();
    let per_export = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      get: &dyn Fn(&ExportStats) -> u64| {
        header(out, name, kind, help);
        for (export, s) in &exports {
            let _ = writeln!(out, "{name}{{export=\"{}\"}} {}", label(export), get(s));
        }
    };
    per_export(
        &mut out,
        "vdisk_nbd_connections",
        "gauge",
        "NBD connections open now.",
        &|s| s.connections.load(Ordering::Relaxed),
    );
    per_export(
        &mut out,
        "vdisk_nbd_connections_total",
        "counter",
        "NBD connections opened.",
        &|s| s.connections_total.load(Ordering::Relaxed),
    );
    per_export(
        &mut out,
        "vdisk_nbd_received_bytes_total",
        "counter",
        "Bytes received from NBD clients in transmission (headers and payloads).",
        &|s| s.received.load(Ordering::Relaxed),
    );
    per_export(
        &mut out,
        "vdisk_nbd_sent_bytes_total",
        "counter",
        "Bytes sent to NBD clients in transmission (replies and data).",
        &|s| s.sent.load(Ordering::Relaxed),
    );

    per_export(
        &mut out,
        "vdisk_nbd_writes_in_place_total",
        "counter",
        "Large WRITEs whose payload was received straight into the page cache (one copy of the data, not two).",
        &|s| s.writes_in_place.load(Ordering::Relaxed),
    );

    // Per op: only ops seen on the export.
    let seen = |s: &ExportStats, op: Op| -> bool {
        s.ops[op as usize].requests.load(Ordering::Relaxed) > 0
    };
    let per_op =
        |out: &mut String, name: &str, help: &str, get: &dyn Fn(&ExportStats, Op) -> u64| {
            header(out, name, "counter", help);
            for (export, s) in &exports {
                for op in Op::ALL {
                    if seen(s, op) {
                        let _ = writeln!(
                            out,
                            "{name}{{export=\"{}\",op=\"{}\"}} {}",
                            label(export),
                            op.name(),
                            get(s, op)
                        );
                    }
                }
            }
        };
    per_op(
        &mut out,
        "vdisk_nbd_requests_total",
        "NBD requests served.",
        &|s, op| s.ops[op as usize].requests.load(Ordering::Relaxed),
    );
    per_op(
        &mut out,
        "vdisk_nbd_request_errors_total",
        "NBD requests answered with an error.",
        &|s, op| s.ops[op as usize].errors.load(Ordering::Relaxed),
    );
    per_op(
        &mut out,
        "vdisk_nbd_request_bytes_total",
        "Payload bytes of NBD requests (read, written, zeroed, trimmed).",
        &|s, op| s.ops[op as usize].bytes.load(Ordering::Relaxed),
    );

    let name = "vdisk_nbd_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from reading an NBD request to queueing its reply.",
    );
    for (export, s) in &exports {
        for op in Op::ALL {
            if !seen(s, op) {
                continue;
            }
            let o = &s.ops[op as usize];
            let labels = format!("export=\"{}\",op=\"{}\"", label(export), op.name());
            let mut cumulative = 0u64;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += o.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            cumulative += o.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = o.latency_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }

    header(
        &mut out,
        "vdisk_jobs",
        "gauge",
        "Jobs known to the daemon, by state.",
    );
    let jobs = registry.jobs();
    for state in [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
    ] {
        let n = jobs.iter().filter(|j| j.state == state).count();
        let _ = writeln!(out, "vdisk_jobs{{state=\"{}\"}} {n}", state.name());
    }
    header(
        &mut out,
        "vdisk_api_requests_total",
        "counter",
        "Requests to the management API.",
    );
    let _ = writeln!(out, "vdisk_api_requests_total {}", registry.api_requests());
    threads(&mut out, crate::transmission::threads());
    out
}

/// The I/O threads, all exports together: how busy the server is, and
/// how close to its limits.
fn threads(out: &mut String, t: crate::transmission::Threads) {
    for (name, help, value) in [
        (
            "vdisk_engine_workers",
            "Engine worker threads alive (shared by every connection; idle ones end after 10 s).",
            t.engine,
        ),
        (
            "vdisk_engine_workers_max",
            "Most engine worker threads.",
            t.engine_max,
        ),
        (
            "vdisk_copy_threads",
            "Connection threads beyond each connection's first (they copy large WRITE payloads), all connections together.",
            t.copy,
        ),
        (
            "vdisk_copy_threads_max",
            "Most such threads (8 per CPU); beyond it a connection goes on with the threads it has.",
            t.copy_max,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ImageRef, Peer};
    use std::time::Duration;

    #[test]
    fn exposition() {
        let r = Registry::new(false);
        let g = r
            .conn_opened(
                1,
                Peer::Tcp("127.0.0.1:9".parse().unwrap()),
                ImageRef {
                    pool: "rbd".into(),
                    id: 1,
                },
                "rbd/a\"b",
                true,
            )
            .unwrap();
        g.handle()
            .record(Op::Read, 4096, Duration::from_micros(300), true);
        g.handle()
            .record(Op::Read, 4096, Duration::from_millis(20), true);
        let text = render(&r);
        assert!(
            text.contains("vdisk_nbd_connections{export=\"rbd/a\\\"b\"} 1"),
            "{text}"
        );
        assert!(text.contains("vdisk_nbd_requests_total{export=\"rbd/a\\\"b\",op=\"read\"} 2"));
        assert!(
            text.contains("vdisk_nbd_request_bytes_total{export=\"rbd/a\\\"b\",op=\"read\"} 8192")
        );
        assert!(text.contains(
            "vdisk_nbd_request_duration_seconds_bucket{export=\"rbd/a\\\"b\",op=\"read\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "vdisk_nbd_request_duration_seconds_bucket{export=\"rbd/a\\\"b\",op=\"read\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains(
            "vdisk_nbd_request_duration_seconds_count{export=\"rbd/a\\\"b\",op=\"read\"} 2"
        ));
        assert!(!text.contains("op=\"write\""), "unseen ops are left out");
        let t = crate::transmission::threads();
        assert!(
            text.contains(&format!("vdisk_copy_threads_max {}\n", t.copy_max)),
            "{text}"
        );
        assert!(text.contains("# TYPE vdisk_engine_workers gauge\nvdisk_engine_workers "));
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with('#')
                    || line
                        .rsplit_once(' ')
                        .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
                "{line}"
            );
        }
    }
}
