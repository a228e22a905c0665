//! `snap schedule add|ls|rm|status`: snapshot schedules with retention
//! (incident 5). The records live in the store (`vdisk_engine::schedule`);
//! `vdisk serve` runs them. Without a daemon the commands still work on
//! the records, and `status` says that nothing runs them.

use super::{image_spec, Ctx};
use crate::args::ScheduleCmd;
use crate::error::Result;
use crate::output::{Align, Table};
use serde::Serialize;
use vdisk_engine::report::fmt_time;
use vdisk_engine::schedule::{
    effective_next_due, format_duration, parse_duration, parse_every, ScheduleRecord, Skipped,
};

/// One schedule (`ls` and `status` JSON).
#[derive(Debug, Serialize)]
struct ScheduleInfo {
    spec: String,
    pool: String,
    image: String,
    every: String,
    every_seconds: u64,
    keep: Option<u64>,
    created: String,
    /// `active`, or `disabled` (its image is gone; see `disabled_reason`).
    state: &'static str,
    disabled_reason: Option<String>,
    /// `null` when disabled.
    next_run: Option<String>,
    last_run: Option<String>,
    runs: u64,
    /// The snapshots this schedule took that still exist, oldest first.
    snapshots: Vec<String>,
    last_result: Option<ResultInfo>,
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
struct ResultInfo {
    time: String,
    ok: bool,
    snapshot: Option<String>,
    missed: u64,
    removed: Vec<String>,
    skipped: Vec<Skipped>,
    error: Option<String>,
}

/// `snap schedule status` JSON.
#[derive(Debug, Serialize)]
struct StatusInfo {
    /// Whether a daemon (`vdisk serve`) runs the schedules now.
    daemon_running: bool,
    schedules: Vec<ScheduleInfo>,
}

impl ScheduleInfo {
    fn of(r: ScheduleRecord, now: u64) -> Self {
        let spec = r.spec().to_string();
        let next_run = r
            .disabled
            .is_none()
            .then(|| fmt_time(effective_next_due(&r, now)));
        ScheduleInfo {
            spec,
            every: format_duration(r.every),
            every_seconds: r.every,
            keep: r.keep,
            created: fmt_time(r.created),
            state: if r.disabled.is_some() {
                "disabled"
            } else {
                "active"
            },
            next_run,
            last_run: r.last_run.map(fmt_time),
            runs: r.runs,
            snapshots: r.snaps.into_iter().map(|s| s.name).collect(),
            last_result: r.last_result.map(|x| ResultInfo {
                time: fmt_time(x.time),
                ok: x.ok,
                snapshot: x.snapshot,
                missed: x.missed,
                removed: x.removed,
                skipped: x.skipped,
                error: x.error,
            }),
            disabled_reason: r.disabled,
            pool: r.pool,
            image: r.image,
        }
    }

    /// The RESULT column: what the last run did, briefly.
    fn result_text(&self) -> String {
        if let Some(why) = &self.disabled_reason {
            return format!("disabled: {why}");
        }
        let Some(r) = &self.last_result else {
            return "-".into();
        };
        let mut s = match (&r.error, &r.snapshot) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(snap)) => format!("ok: {snap}"),
            (None, None) => "ok".into(),
        };
        if r.missed > 0 {
            s.push_str(&format!(", caught up {} missed", r.missed));
        }
        if !r.removed.is_empty() {
            s.push_str(&format!(", removed {}", r.removed.len()));
        }
        if !r.skipped.is_empty() {
            let names: Vec<String> = r
                .skipped
                .iter()
                .map(|k| format!("{} ({})", k.name, k.reason))
                .collect();
            s.push_str(&format!(", kept {}", names.join(", ")));
        }
        s
    }
}

pub fn run(ctx: &Ctx, cmd: ScheduleCmd) -> Result<()> {
    let now = vdisk_engine::now();
    match cmd {
        ScheduleCmd::Add(a) => {
            let spec = image_spec(&a.spec)?;
            let every = parse_every(&a.every)?;
            let rec = ctx.store.schedule_add(&spec, every, a.keep, now)?;
            if ctx.daemon.is_none() {
                ctx.warn(format!(
                    "no daemon runs on this data directory: the schedule runs only while `vdisk serve` runs (first run due {})",
                    fmt_time(rec.next_due)
                ));
            }
            Ok(())
        }
        ScheduleCmd::Rm(a) => {
            let spec = image_spec(&a.spec)?;
            let every = a.every.as_deref().map(parse_duration).transpose()?;
            ctx.store.schedule_remove(&spec, every)?;
            Ok(())
        }
        ScheduleCmd::Ls(a) => {
            let list = list(ctx, a.spec.as_deref(), now)?;
            if ctx.out.is_json() {
                return ctx.out.json(&list);
            }
            if list.is_empty() {
                return Ok(());
            }
            let mut t = Table::new(&[
                ("SPEC", Align::Left),
                ("EVERY", Align::Left),
                ("KEEP", Align::Right),
                ("NEXT RUN", Align::Left),
                ("SNAPSHOTS", Align::Right),
            ]);
            for s in &list {
                t.row(vec![
                    s.spec.clone(),
                    s.every.clone(),
                    s.keep.map_or_else(|| "all".into(), |k| k.to_string()),
                    s.next_run.clone().unwrap_or_else(|| "disabled".into()),
                    s.snapshots.len().to_string(),
                ]);
            }
            ctx.out.text(&t.render())
        }
        ScheduleCmd::Status(a) => {
            let status = StatusInfo {
                daemon_running: ctx.daemon.is_some(),
                schedules: list(ctx, a.spec.as_deref(), now)?,
            };
            if ctx.out.is_json() {
                return ctx.out.json(&status);
            }
            let mut s = if status.daemon_running {
                "daemon: running; schedules run at their next run time\n".to_string()
            } else {
                format!(
                    "daemon: not running on {}: nothing runs the schedules until `vdisk serve` starts (missed runs are then caught up once)\n",
                    ctx.store
                        .dir()
                        .map_or_else(|| "?".into(), |d| d.display().to_string())
                )
            };
            if status.schedules.is_empty() {
                s.push_str("schedules: none\n");
                return ctx.out.text(&s);
            }
            let mut t = Table::new(&[
                ("SPEC", Align::Left),
                ("EVERY", Align::Left),
                ("KEEP", Align::Right),
                ("LAST RUN", Align::Left),
                ("NEXT RUN", Align::Left),
                ("RESULT", Align::Left),
            ]);
            for x in &status.schedules {
                t.row(vec![
                    x.spec.clone(),
                    x.every.clone(),
                    x.keep.map_or_else(|| "all".into(), |k| k.to_string()),
                    x.last_run.clone().unwrap_or_else(|| "-".into()),
                    x.next_run.clone().unwrap_or_else(|| "-".into()),
                    x.result_text(),
                ]);
            }
            s.push_str(&t.render());
            ctx.out.text(&s)
        }
    }
}

fn list(ctx: &Ctx, spec: Option<&str>, now: u64) -> Result<Vec<ScheduleInfo>> {
    let filter = spec.map(image_spec).transpose()?;
    Ok(ctx
        .store
        .schedule_list(filter.as_ref())?
        .into_iter()
        .map(|r| ScheduleInfo::of(r, now))
        .collect())
}
