//! `vdisk status [SPEC]`: the running daemon, its connected clients and
//! its jobs. Without a daemon: says so, empty lists, exit 0.

use super::{any_spec, Ctx};
use crate::args::{Format, StatusArgs};
use crate::error::{CliError, Result};
use crate::output::{Align, Out, Sink, Table};
use std::path::Path;
use vdisk_engine::human_size;
use vdisk_server::api::types::{JobInfo, StatusReport};

/// `status` from the command line: asks the daemon of `dir`, if one runs.
pub fn run(dir: &Path, format: Format, a: StatusArgs) -> Result<()> {
    if let Some(s) = &a.spec {
        any_spec(s)?;
    }
    let report = match crate::remote::find_daemon(dir)? {
        Some(client) => client.status(a.spec.as_deref())?,
        None => StatusReport::default(),
    };
    print(&Out::new(format, Sink::Stdout), &report, dir)
}

/// `status` sent to the daemon as a command (`POST /v1/commands`).
pub fn in_daemon(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let filter = a.spec.as_deref().map(any_spec).transpose()?;
    let Some(d) = &ctx.daemon else {
        return Err(CliError::invalid("status runs against a daemon"));
    };
    let report = vdisk_server::api::status_report(&d.registry, filter.as_ref());
    let dir = ctx.store.dir().unwrap_or(Path::new("?"));
    print(&ctx.out, &report, dir)
}

fn print(out: &Out, r: &StatusReport, dir: &Path) -> Result<()> {
    if out.is_json() {
        return out.json(r);
    }
    let Some(d) = &r.daemon else {
        return out.line(format!("no daemon is running on {}", dir.display()));
    };
    let mut s = format!(
        "daemon: pid {}, since {}, vdisk {}\n",
        d.pid, d.since, d.version
    );
    let mut nbd: Vec<String> = d.listen.clone();
    nbd.extend(d.socket.clone());
    s.push_str(&format!(
        "nbd: {}; {}\n",
        if nbd.is_empty() {
            "no listener".to_owned()
        } else {
            nbd.join(", ")
        },
        if d.shared {
            "several writers per image allowed (--shared)"
        } else {
            "one writer per image"
        }
    ));
    if r.connections.is_empty() {
        s.push_str("connections: none\n");
    } else {
        s.push_str(&format!("connections: {}\n", r.connections.len()));
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("CLIENT", Align::Left),
            ("EXPORT", Align::Left),
            ("MODE", Align::Left),
            ("SINCE", Align::Left),
            ("RECEIVED", Align::Right),
            ("SENT", Align::Right),
        ]);
        for c in &r.connections {
            t.row(vec![
                c.id.to_string(),
                c.client.clone(),
                c.export.clone(),
                c.mode.clone(),
                c.since.clone(),
                human_size(c.bytes_received),
                human_size(c.bytes_sent),
            ]);
        }
        s.push_str(&t.render());
    }
    if r.jobs.is_empty() {
        s.push_str("jobs: none\n");
    } else {
        s.push_str(&format!("jobs: {}\n", r.jobs.len()));
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("KIND", Align::Left),
            ("SPEC", Align::Left),
            ("STATE", Align::Left),
            ("PROGRESS", Align::Left),
            ("ERROR", Align::Left),
        ]);
        for j in &r.jobs {
            t.row(vec![
                j.id.to_string(),
                j.kind.clone(),
                j.spec.clone(),
                j.state.name().to_owned(),
                progress(j),
                j.error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            ]);
        }
        s.push_str(&t.render());
    }
    out.text(&s)
}

/// `PHASE DONE/TOTAL (P%)`.
fn progress(j: &JobInfo) -> String {
    if j.phase.is_empty() {
        return String::new();
    }
    if j.total == 0 {
        return format!("{} {}", j.phase, j.done);
    }
    let pct = (j.done.min(j.total) as f64 * 100.0 / j.total as f64).floor();
    format!("{} {}/{} ({pct}%)", j.phase, j.done, j.total)
}
