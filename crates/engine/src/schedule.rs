//! Snapshot schedules with retention (incident 5: a scheduler that kept N
//! snapshots per VM was built outside the store, and its deletions fenced
//! the VM; here it is a feature of the store, run by the daemon).
//!
//! A schedule takes a snapshot of one image every `every` seconds and, with
//! `keep = N`, then removes the oldest snapshots *it* took beyond N. It is
//! stored as a [`ScheduleRecord`] in the `schedules` table, keyed by pool
//! id ‖ image id ‖ interval, so it follows the image through renames and
//! one image may have several schedules (hourly and daily, say).
//!
//! The logic is pure and takes the time as an argument (`now`, Unix
//! seconds): [`due`] decides whether a schedule runs and when it runs
//! next, [`plan_retention`] what a run removes. [`Store::schedule_run`]
//! executes one run with the same engine calls as the CLI
//! ([`Store::snap_create`], [`Store::snap_remove`]).
//!
//! Rules:
//! - Runs happen at multiples of the interval since Monday 1970-01-05
//!   00:00 UTC (`1h` on the hour, `1d` at midnight UTC, `1w` on Mondays),
//!   so names are predictable and a restart does not shift them.
//! - After downtime, the missed slots are caught up by **one** run, at
//!   once; the next run is the next slot after now.
//! - Names are `sched-YYYYMMDDTHHMMSSZ` (UTC, the time of the run),
//!   `-2`, `-3`... appended when taken.
//! - A snapshot is the schedule's only if its name has the prefix **and**
//!   its (id, name) is in the record's `snaps` list, written right after
//!   the schedule created it. A manual snapshot named like a scheduled one
//!   (its id is not in the list), or a scheduled one renamed (its name no
//!   longer matches), is never removed by retention.
//! - Retention skips protected snapshots and snapshots with clones (the
//!   run reports them, it does not fail) and never removes the snapshot
//!   the run just took.
//! - A schedule whose image is gone is disabled with the reason (shown by
//!   `snap schedule status`) and never runs again; `snap schedule rm`
//!   removes it.
//!
//! Crash safety: a run first commits its new `next_due` (so a crash never
//! makes it run in a loop), then creates the snapshot, then records it. A
//! crash between the last two leaves a snapshot the schedule does not
//! know: retention treats it as manual (kept), the safe side.

use crate::error::{Error, Result};
use crate::record::{self, keys, ImageRecord, Kind, SnapRecord};
use crate::report::fmt_time;
use crate::spec::ImageSpec;
use crate::{NoProgress, Store};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vdisk_storage::MetaOp;

/// Says why a snapshot must be kept for now (e.g. clients read it), if it
/// must: given to [`Store::schedule_run_guarded`].
pub type InUse<'a> = dyn Fn(&ImageSpec) -> Option<String> + 'a;

/// Prefix of the names of scheduled snapshots.
pub const SCHEDULED_PREFIX: &str = "sched-";
/// The shortest interval accepted (seconds).
pub const MIN_EVERY: u64 = 60;
/// The longest interval accepted (seconds): about ten years.
pub const MAX_EVERY: u64 = 3650 * 86400;
/// Slots are aligned to this instant: Monday 1970-01-05 00:00 UTC (a
/// multiple of every interval that divides a day, and a Monday for weeks).
const ANCHOR: u64 = 4 * 86400;

/// Serializes read-modify-write of schedule records within the process
/// (the data directory's lock keeps other processes out). Never held
/// across engine operations.
static RECORDS: Mutex<()> = Mutex::new(());

/// A schedule, as stored (CBOR in the record envelope, kind 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub pool_id: u64,
    pub image_id: u64,
    /// The pool and image names when the schedule last resolved them (the
    /// ids are what count; names are refreshed on every run).
    pub pool: String,
    pub image: String,
    /// Interval in seconds.
    pub every: u64,
    /// How many of its snapshots the schedule keeps (`None`: all).
    #[serde(default)]
    pub keep: Option<u64>,
    /// When the schedule was added (Unix seconds).
    #[serde(default)]
    pub created: u64,
    /// When it last ran.
    #[serde(default)]
    pub last_run: Option<u64>,
    /// When it runs next (a slot; see [`due`]).
    pub next_due: u64,
    /// How many runs it made.
    #[serde(default)]
    pub runs: u64,
    /// The outcome of the last run.
    #[serde(default)]
    pub last_result: Option<RunResult>,
    /// The snapshots this schedule took that still exist, oldest first.
    #[serde(default)]
    pub snaps: Vec<ScheduledSnap>,
    /// Why the schedule no longer runs (its image is gone), if it stopped.
    #[serde(default)]
    pub disabled: Option<String>,
}

/// A snapshot a schedule took: both must still match for it to count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSnap {
    pub id: u64,
    pub name: String,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// When it ran (Unix seconds).
    pub time: u64,
    /// Whether the snapshot was taken and retention met no error
    /// (skipped snapshots are not errors).
    pub ok: bool,
    /// The snapshot taken.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Slots missed (daemon down) that this run caught up.
    #[serde(default)]
    pub missed: u64,
    /// Snapshots removed by retention.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Snapshots retention would have removed but could not.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
}

/// A snapshot retention left in place, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Identifies a schedule: its image (ids) and interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleId {
    pub pool_id: u64,
    pub image_id: u64,
    pub every: u64,
}

impl ScheduleRecord {
    pub fn id(&self) -> ScheduleId {
        ScheduleId {
            pool_id: self.pool_id,
            image_id: self.image_id,
            every: self.every,
        }
    }

    /// `pool/image` as last resolved.
    pub fn spec(&self) -> ImageSpec {
        ImageSpec {
            pool: self.pool.clone(),
            image: self.image.clone(),
            snap: None,
        }
    }

    /// Whether `s` is a snapshot this schedule took (name prefix and
    /// recorded id and name).
    pub fn owns(&self, s: &SnapRecord) -> bool {
        s.name.starts_with(SCHEDULED_PREFIX)
            && self.snaps.iter().any(|o| o.id == s.id && o.name == s.name)
    }
}

impl ScheduleId {
    fn key(&self) -> Vec<u8> {
        keys::k3(self.pool_id, self.image_id, self.every)
    }
}

/// What a due schedule does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    /// The newest slot that has passed: the one this run stands for.
    pub slot: u64,
    /// Older slots that passed without a run (caught up by this one).
    pub missed: u64,
    /// When the schedule runs next (the first slot after now).
    pub next_due: u64,
}

/// The first slot of interval `every` strictly after `now`.
pub fn next_slot(now: u64, every: u64) -> u64 {
    let every = every.max(1);
    if now < ANCHOR {
        return ANCHOR;
    }
    let k = (now - ANCHOR) / every + 1;
    ANCHOR.saturating_add(k.saturating_mul(every))
}

/// When the schedule really runs next: its `next_due`, unless that is
/// beyond the first slot after `now`, which only happens when the clock
/// went back by more than an interval since it was computed: then at
/// once, and the run realigns the schedule (else it would stall until the
/// clock caught up again).
pub fn effective_next_due(s: &ScheduleRecord, now: u64) -> u64 {
    if s.next_due > next_slot(now, s.every) {
        now
    } else {
        s.next_due
    }
}

/// Whether `s` runs at `now`, and what that run stands for. Any number of
/// missed slots gives one run; disabled schedules never run.
pub fn due(s: &ScheduleRecord, now: u64) -> Option<RunPlan> {
    if s.disabled.is_some() || now < effective_next_due(s, now) {
        return None;
    }
    let next_due = next_slot(now, s.every);
    let slot = next_due.saturating_sub(s.every);
    let missed = slot.saturating_sub(s.next_due) / s.every.max(1);
    Some(RunPlan {
        slot,
        missed,
        next_due,
    })
}

/// `sched-YYYYMMDDTHHMMSSZ` for `now`, with `-2`, `-3`... if `taken`.
pub fn snapshot_name(now: u64, taken: impl Fn(&str) -> bool) -> String {
    let stamp: String = fmt_time(now)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = format!("{SCHEDULED_PREFIX}{stamp}");
    if !taken(&base) {
        return base;
    }
    (2u64..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

/// What retention does after a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// To remove, oldest first.
    pub remove: Vec<String>,
    /// Would be removed but cannot (protected, has clones).
    pub skipped: Vec<Skipped>,
}

/// The oldest of `s`'s own snapshots among `snaps` beyond `s.keep`,
/// never `newest` (the snapshot the run just took). `busy` says why a
/// snapshot cannot be removed (protected, clones), if it cannot: such a
/// snapshot is skipped and reported, and still counts as kept.
pub fn plan_retention(
    s: &ScheduleRecord,
    snaps: &[SnapRecord],
    newest: Option<u64>,
    busy: impl Fn(&SnapRecord) -> Option<String>,
) -> Retention {
    let mut out = Retention::default();
    let Some(keep) = s.keep else {
        return out;
    };
    let mut own: Vec<&SnapRecord> = snaps.iter().filter(|x| s.owns(x)).collect();
    own.sort_by_key(|x| x.id);
    let mut excess = (own.len() as u64).saturating_sub(keep);
    for snap in own {
        if excess == 0 {
            break;
        }
        if Some(snap.id) == newest {
            continue;
        }
        match busy(snap) {
            Some(reason) => out.skipped.push(Skipped {
                name: snap.name.clone(),
                reason,
            }),
            None => {
                out.remove.push(snap.name.clone());
                excess -= 1;
            }
        }
    }
    out
}

/// Parses an interval: numbers with units `s`, `m`, `h`, `d`, `w`, largest
/// unit first, each at most once (`30s`, `15m`, `1h30m`, `1w`). The
/// minimum is [`MIN_EVERY`].
pub fn parse_every(input: &str) -> Result<u64> {
    let secs = parse_duration(input)?;
    if secs < MIN_EVERY {
        return Err(Error::InvalidArgument(format!(
            "interval {input:?} is shorter than the minimum of {}",
            format_duration(MIN_EVERY)
        )));
    }
    Ok(secs)
}

/// Parses a duration as [`parse_every`] does, without the minimum.
pub fn parse_duration(input: &str) -> Result<u64> {
    let bad = |reason: &str| {
        Error::InvalidArgument(format!(
            "invalid interval {input:?}: {reason} (examples: 15m, 1h, 1h30m, 1d, 1w)"
        ))
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    const UNITS: [(char, u64); 5] = [
        ('w', 7 * 86400),
        ('d', 86400),
        ('h', 3600),
        ('m', 60),
        ('s', 1),
    ];
    let mut total: u64 = 0;
    let mut last_rank: Option<usize> = None;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == c.to_ascii_lowercase()) else {
            return Err(bad(&format!("{c:?} is not a unit (s, m, h, d, w)")));
        };
        if digits.is_empty() {
            return Err(bad(&format!("no number before {c:?}")));
        }
        if last_rank.is_some_and(|r| rank <= r) {
            return Err(bad("give each unit once, largest first"));
        }
        last_rank = Some(rank);
        let n: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
        digits.clear();
        total = n
            .checked_mul(UNITS[rank].1)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= MAX_EVERY)
            .ok_or_else(|| bad("longer than ten years"))?;
    }
    if !digits.is_empty() {
        return Err(bad("a number needs a unit"));
    }
    if total == 0 {
        return Err(bad("it must be longer than zero"));
    }
    Ok(total)
}

/// `5400` → `1h30m`; `0` → `0s`.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, len) in [
        ("w", 7 * 86400),
        ("d", 86400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ] {
        if rest >= len {
            out.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    out
}

/// What one run of a schedule did (returned by [`Store::schedule_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub schedule: ScheduleId,
    /// `pool/image`.
    pub spec: ImageSpec,
    pub result: RunResult,
    /// The schedule was removed while the run went on: the run's snapshot
    /// stays, as a manual one, and no retention was applied.
    pub schedule_removed: bool,
    /// The schedule is disabled now (its image is gone).
    pub disabled: bool,
}

impl Store {
    fn schedule_get(&self, id: ScheduleId) -> Result<Option<ScheduleRecord>> {
        match self.shared.meta.get(keys::SCHEDULES, &id.key())? {
            Some(v) => Ok(Some(record::decode(
                Kind::Schedule,
                &format!("schedule {id:?}"),
                &v,
            )?)),
            None => Ok(None),
        }
    }

    fn schedule_put(&self, rec: &ScheduleRecord) -> Result<()> {
        self.shared.meta.commit(vec![MetaOp::Put {
            table: keys::SCHEDULES,
            key: rec.id().key(),
            value: record::encode(Kind::Schedule, rec),
        }])?;
        Ok(())
    }

    /// Re-reads the record and applies `f` to it, under the records lock;
    /// `None` (nothing written) if it was removed meanwhile.
    fn schedule_update(
        &self,
        id: ScheduleId,
        f: impl FnOnce(&mut ScheduleRecord),
    ) -> Result<Option<ScheduleRecord>> {
        let _l = RECORDS.lock();
        let Some(mut rec) = self.schedule_get(id)? else {
            return Ok(None);
        };
        f(&mut rec);
        self.schedule_put(&rec)?;
        Ok(Some(rec))
    }

    /// The image's pool name and record by ids; `None` if either is gone.
    fn image_by_ids(&self, pool_id: u64, image_id: u64) -> Result<Option<(String, ImageRecord)>> {
        let Ok(pool) = self.shared.pool_by_id(pool_id) else {
            return Ok(None);
        };
        let Some(v) = self
            .shared
            .meta
            .get(keys::IMAGES, &keys::k2(pool_id, image_id))?
        else {
            return Ok(None);
        };
        let rec: ImageRecord =
            record::decode(Kind::Image, &format!("{}/id {image_id:x}", pool.name), &v)?;
        Ok(Some((pool.name, rec)))
    }

    /// Every schedule record, names refreshed from the images that still
    /// exist.
    fn schedule_all(&self) -> Result<Vec<ScheduleRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.shared.meta.scan(keys::SCHEDULES, b"")? {
            let mut rec: ScheduleRecord = record::decode(Kind::Schedule, "schedule", &v)?;
            if let Some((pool, image)) = self.image_by_ids(rec.pool_id, rec.image_id)? {
                rec.pool = pool;
                rec.image = image.name;
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Adds a schedule: a snapshot of `spec` every `every` seconds (at
    /// least [`MIN_EVERY`]), keeping the newest `keep` of them (`None`:
    /// all). The first run is the first slot after `now`.
    pub fn schedule_add(
        &self,
        spec: &ImageSpec,
        every: u64,
        keep: Option<u64>,
        now: u64,
    ) -> Result<ScheduleRecord> {
        let spec = schedule_spec(spec)?;
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(Error::InvalidArgument(format!(
                "interval {} is outside {}..{}",
                format_duration(every),
                format_duration(MIN_EVERY),
                format_duration(MAX_EVERY)
            )));
        }
        if keep == Some(0) {
            return Err(Error::InvalidArgument(
                "--keep 0 would remove every snapshot the schedule takes; keep at least 1, or leave --keep out to keep all".into(),
            ));
        }
        let pool = self.pool(&spec.pool)?;
        let image = self.record(&spec)?;
        let rec = ScheduleRecord {
            pool_id: pool.id,
            image_id: image.id,
            pool: pool.name,
            image: image.name,
            every,
            keep,
            created: now,
            last_run: None,
            next_due: next_slot(now, every),
            runs: 0,
            last_result: None,
            snaps: Vec::new(),
            disabled: None,
        };
        let _l = RECORDS.lock();
        if self.schedule_get(rec.id())?.is_some() {
            return Err(Error::ScheduleExists(format!(
                "{spec} already has a schedule every {}; remove it first (`vdisk snap schedule rm {spec} --every {}`) to change it",
                format_duration(every),
                format_duration(every)
            )));
        }
        self.schedule_put(&rec)?;
        Ok(rec)
    }

    /// The schedules of `filter`'s image (all without a filter), by pool,
    /// image and interval. A schedule whose image is gone matches the
    /// names it last had.
    pub fn schedule_list(&self, filter: Option<&ImageSpec>) -> Result<Vec<ScheduleRecord>> {
        let filter = filter.map(schedule_spec).transpose()?;
        let mut all = self.schedule_all()?;
        if let Some(f) = &filter {
            all.retain(|r| r.pool == f.pool && r.image == f.image);
        }
        all.sort_by(|a, b| (&a.pool, &a.image, a.every).cmp(&(&b.pool, &b.image, b.every)));
        Ok(all)
    }

    /// Removes `spec`'s schedule every `every` seconds, or all of its
    /// schedules; returns what was removed. The snapshots they took stay
    /// (as manual ones from then on).
    pub fn schedule_remove(
        &self,
        spec: &ImageSpec,
        every: Option<u64>,
    ) -> Result<Vec<ScheduleRecord>> {
        let spec = schedule_spec(spec)?;
        let _l = RECORDS.lock();
        let gone: Vec<ScheduleRecord> = self
            .schedule_list(Some(&spec))?
            .into_iter()
            .filter(|r| every.is_none_or(|e| e == r.every))
            .collect();
        if gone.is_empty() {
            return Err(Error::ScheduleNotFound(match every {
                Some(e) => format!("{spec} has no schedule every {}", format_duration(e)),
                None => format!("{spec} has no snapshot schedule"),
            }));
        }
        self.shared.meta.commit(
            gone.iter()
                .map(|r| MetaOp::Delete {
                    table: keys::SCHEDULES,
                    key: r.id().key(),
                })
                .collect(),
        )?;
        Ok(gone)
    }

    /// When the earliest schedule runs next (for the daemon's sleep), if
    /// any schedule is active.
    pub fn schedule_next_due(&self, now: u64) -> Result<Option<u64>> {
        Ok(self
            .schedule_all()?
            .iter()
            .filter(|r| r.disabled.is_none())
            .map(|r| effective_next_due(r, now))
            .min())
    }

    /// The schedules due at `now`.
    pub fn schedules_due(&self, now: u64) -> Result<Vec<ScheduleRecord>> {
        let mut all = self.schedule_all()?;
        all.retain(|r| due(r, now).is_some());
        Ok(all)
    }

    /// Runs every schedule due at `now`, one after the other.
    pub fn schedule_run_due(&self, now: u64) -> Result<Vec<RunReport>> {
        let mut out = Vec::new();
        for rec in self.schedules_due(now)? {
            out.extend(self.schedule_run(rec.id(), now)?);
        }
        Ok(out)
    }

    /// Runs schedule `id` if it is due at `now`: takes its snapshot, then
    /// applies retention. `Ok(None)`: not due (or gone). Failures of the
    /// run itself (snapshot refused, image gone) are in the report and the
    /// record, not errors; errors are failures to read or write records.
    pub fn schedule_run(&self, id: ScheduleId, now: u64) -> Result<Option<RunReport>> {
        self.schedule_run_with(id, now, &|_| {}, &|_| None)
    }

    /// [`Store::schedule_run`], keeping also the snapshots for which
    /// `in_use` gives a reason (the daemon: clients are reading them; their
    /// space would be trimmed under them).
    pub fn schedule_run_guarded(
        &self,
        id: ScheduleId,
        now: u64,
        in_use: &InUse<'_>,
    ) -> Result<Option<RunReport>> {
        self.schedule_run_with(id, now, &|_| {}, in_use)
    }

    /// [`Store::schedule_run`] calling `hook` after the snapshot was taken
    /// (tests change the world there: remove the schedule, the image...).
    fn schedule_run_with(
        &self,
        id: ScheduleId,
        now: u64,
        hook: &dyn Fn(&SnapRecord),
        in_use: &InUse<'_>,
    ) -> Result<Option<RunReport>> {
        // Claim the slot first: whatever happens next, it is not run again.
        let claimed = {
            let _l = RECORDS.lock();
            let Some(mut rec) = self.schedule_get(id)? else {
                return Ok(None);
            };
            let Some(plan) = due(&rec, now) else {
                return Ok(None);
            };
            let image = self.image_by_ids(rec.pool_id, rec.image_id)?;
            rec.last_run = Some(now);
            rec.runs += 1;
            rec.next_due = plan.next_due;
            let Some((pool, image)) = image else {
                let why = format!(
                    "image {}/{} (id {:x}) no longer exists; remove the schedule with `vdisk snap schedule rm {}/{}`",
                    rec.pool, rec.image, rec.image_id, rec.pool, rec.image
                );
                let result = RunResult {
                    time: now,
                    ok: false,
                    missed: plan.missed,
                    error: Some(why.clone()),
                    ..RunResult::default()
                };
                rec.disabled = Some(why);
                rec.last_result = Some(result.clone());
                self.schedule_put(&rec)?;
                return Ok(Some(RunReport {
                    schedule: id,
                    spec: rec.spec(),
                    result,
                    schedule_removed: false,
                    disabled: true,
                }));
            };
            rec.pool = pool;
            rec.image = image.name.clone();
            self.schedule_put(&rec)?;
            (rec, plan, image)
        };
        let (rec, plan, image) = claimed;
        let spec = rec.spec();
        let mut result = RunResult {
            time: now,
            missed: plan.missed,
            ..RunResult::default()
        };
        let mut report = RunReport {
            schedule: id,
            spec: spec.clone(),
            result: RunResult::default(),
            schedule_removed: false,
            disabled: false,
        };

        let name = snapshot_name(now, |n| image.snaps.iter().any(|s| s.name == n));
        let snap = match self.snap_create(&spec.with_snap(&name)) {
            Ok(s) => s,
            Err(e) => {
                result.error = Some(format!("snapshot {spec}@{name}: {e}"));
                report.schedule_removed = self.finish_run(id, &result)?;
                report.result = result;
                return Ok(Some(report));
            }
        };
        result.snapshot = Some(snap.name.clone());
        hook(&snap);
        // Mark it as the schedule's before anything else can look.
        let owned = self.schedule_update(id, |r| {
            r.snaps.push(ScheduledSnap {
                id: snap.id,
                name: snap.name.clone(),
            })
        })?;
        let Some(rec) = owned else {
            result.ok = true;
            report.schedule_removed = true;
            report.result = result;
            return Ok(Some(report));
        };

        let mut errors = Vec::new();
        match self.snap_list(&spec) {
            Ok(snaps) => {
                let plan = plan_retention(&rec, &snaps, Some(snap.id), |s| {
                    in_use(&spec.with_snap(&s.name)).or_else(|| self.busy(&spec, s))
                });
                result.skipped = plan.skipped;
                for victim in plan.remove {
                    match self.snap_remove(&spec.with_snap(&victim), &NoProgress) {
                        Ok(()) => result.removed.push(victim),
                        // Protected or cloned since the plan: report, go on.
                        Err(e @ (Error::SnapProtected(_) | Error::HasChildren { .. })) => {
                            result.skipped.push(Skipped {
                                name: victim,
                                reason: e.to_string(),
                            })
                        }
                        Err(Error::SnapNotFound(_)) => {}
                        Err(e) => errors.push(format!("removing {spec}@{victim}: {e}")),
                    }
                }
            }
            Err(e) => errors.push(format!("listing the snapshots of {spec}: {e}")),
        }
        result.ok = errors.is_empty();
        if !errors.is_empty() {
            result.error = Some(errors.join("; "));
        }
        report.schedule_removed = self.finish_run(id, &result)?;
        report.result = result;
        Ok(Some(report))
    }

    /// Why `s` cannot be removed, if it cannot.
    fn busy(&self, spec: &ImageSpec, s: &SnapRecord) -> Option<String> {
        if s.protected {
            return Some("protected".into());
        }
        match self.children(&spec.with_snap(&s.name)) {
            Ok(c) if c.is_empty() => None,
            Ok(c) => Some(format!(
                "has {} clone(s): {}",
                c.len(),
                c.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => Some(format!("cannot list its clones: {e}")),
        }
    }

    /// Stores the run's result and forgets snapshots that are gone;
    /// returns whether the schedule was removed meanwhile.
    fn finish_run(&self, id: ScheduleId, result: &RunResult) -> Result<bool> {
        let existing = match self.image_by_ids(id.pool_id, id.image_id)? {
            Some((_, image)) => Some(image.snaps),
            None => None,
        };
        let updated = self.schedule_update(id, |r| {
            if let Some(snaps) = &existing {
                r.snaps
                    .retain(|o| snaps.iter().any(|s| s.id == o.id && s.name == o.name));
            }
            r.last_result = Some(result.clone());
        })?;
        Ok(updated.is_none())
    }
}

/// A schedule is on an image: `[POOL/]IMAGE`, no snapshot.
fn schedule_spec(spec: &ImageSpec) -> Result<ImageSpec> {
    if spec.snap.is_some() {
        return Err(Error::InvalidSpec {
            spec: spec.to_string(),
            reason: "a schedule is on an image, not a snapshot: give [POOL/]IMAGE".into(),
        });
    }
    Ok(spec.clone())
}

#[cfg(test)]
mod tests {
    //! Every test passes the time explicitly (the injected clock): nothing
    //! sleeps.
    use super::*;
    use crate::{Config, CreateOptions, Features, SingleDataBackend};
    use std::sync::Arc;
    use vdisk_storage::{MemMetaStore, MemObjectStore, MetaStore};

    const H: u64 = 3600;
    /// 2024-01-01T00:00:00Z, a slot of every interval that divides a day.
    const T0: u64 = 1_704_067_200;

    fn store() -> Store {
        Store::open_with(
            Arc::new(MemMetaStore::new()) as Arc<dyn MetaStore>,
            Box::new(SingleDataBackend(Arc::new(MemObjectStore::new()))),
            Config {
                default_features: Features::DEFAULT,
                default_order: 16,
                ..Default::default()
            },
        )
        .expect("open store")
    }

    fn spec(s: &str) -> ImageSpec {
        ImageSpec::parse(s).expect("spec")
    }

    fn create(store: &Store, name: &str) {
        store
            .create(
                &spec(name),
                &CreateOptions {
                    size: 1 << 20,
                    order: None,
                    features: None,
                },
            )
            .expect("create");
    }

    fn snap_names(store: &Store, image: &str) -> Vec<String> {
        store
            .snap_list(&spec(image))
            .expect("snap ls")
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    fn one(store: &Store, image: &str) -> ScheduleRecord {
        let mut l = store.schedule_list(Some(&spec(image))).expect("ls");
        assert_eq!(l.len(), 1, "{l:?}");
        l.remove(0)
    }

    #[test]
    fn durations_parse_and_print() {
        for (s, v) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("1d", 86400),
            ("1w", 604_800),
            ("1h30m", 5400),
            ("2d12h", 216_000),
            ("1H", 3600),
            (" 90s ", 90),
        ] {
            assert_eq!(parse_duration(s).expect(s), v, "{s}");
        }
        for bad in [
            "",
            "h",
            "10",
            "1x",
            "1m1h",
            "1h1h",
            "0m",
            "-1h",
            "1.5h",
            "99999999999999999999s",
            "5000w",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{bad}: {e}");
            assert!(e.to_string().contains("invalid interval"), "{bad}: {e}");
        }
        assert!(parse_every("30s")
            .unwrap_err()
            .to_string()
            .contains("minimum of 1m"));
        assert_eq!(parse_every("1m").unwrap(), 60);
        for v in [60, 90, 5400, 86400 + 60, 604_800] {
            assert_eq!(parse_duration(&format_duration(v)).unwrap(), v);
        }
        assert_eq!(format_duration(5400), "1h30m");
    }

    #[test]
    fn slots_align_and_names_carry_the_time() {
        assert_eq!(next_slot(T0, H), T0 + H);
        assert_eq!(next_slot(T0 - 1, H), T0);
        assert_eq!(next_slot(T0 + 1, 86400), T0 + 86400);
        // Weeks start on Mondays; 2024-01-01 was one.
        assert_eq!(next_slot(T0 - 1, 7 * 86400), T0);
        assert_eq!(
            snapshot_name(T0 + 3723, |_| false),
            "sched-20240101T010203Z"
        );
        let taken = ["sched-20240101T000000Z", "sched-20240101T000000Z-2"];
        assert_eq!(
            snapshot_name(T0, |n| taken.contains(&n)),
            "sched-20240101T000000Z-3"
        );
    }

    #[test]
    fn first_run_then_regular_cadence() {
        let s = store();
        create(&s, "vm");
        let rec = s.schedule_add(&spec("vm"), H, None, T0 + 10).unwrap();
        assert_eq!(rec.next_due, T0 + H);
        assert!(s.schedule_run_due(T0 + 10).unwrap().is_empty());
        assert!(s.schedule_run_due(T0 + H - 1).unwrap().is_empty());
        assert_eq!(s.schedule_next_due(T0 + 10).unwrap(), Some(T0 + H));

        let r = s.schedule_run_due(T0 + H).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].result.ok, "{r:?}");
        assert_eq!(r[0].result.missed, 0);
        assert_eq!(
            r[0].result.snapshot.as_deref(),
            Some("sched-20240101T010000Z")
        );
        // Not again within the same slot.
        assert!(s.schedule_run_due(T0 + H + 5).unwrap().is_empty());
        for k in 2..=4 {
            assert!(s.schedule_run_due(T0 + k * H - 1).unwrap().is_empty());
            assert_eq!(s.schedule_run_due(T0 + k * H + 2).unwrap().len(), 1);
        }
        let rec = one(&s, "vm");
        assert_eq!(rec.runs, 4);
        assert_eq!(rec.next_due, T0 + 5 * H);
        assert_eq!(rec.last_run, Some(T0 + 4 * H + 2));
        assert_eq!(
            snap_names(&s, "vm"),
            [
                "sched-20240101T010000Z",
                "sched-20240101T020002Z",
                "sched-20240101T030002Z",
                "sched-20240101T040002Z"
            ]
        );
        assert_eq!(rec.snaps.len(), 4);
    }

    #[test]
    fn downtime_of_ten_periods_is_caught_up_once() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, Some(5), T0).unwrap();
        assert_eq!(s.schedule_run_due(T0 + H).unwrap().len(), 1);
        // Down from T0+1h to T0+11h30: the slots 2h..11h were missed.
        let now = T0 + 11 * H + 1800;
        let r = s.schedule_run_due(now).unwrap();
        assert_eq!(r.len(), 1, "one catch-up run, not ten: {r:?}");
        assert_eq!(r[0].result.missed, 9);
        assert!(s.schedule_run_due(now).unwrap().is_empty());
        assert!(s.schedule_run_due(now + 1000).unwrap().is_empty());
        assert_eq!(one(&s, "vm").next_due, T0 + 12 * H);
        assert_eq!(snap_names(&s, "vm").len(), 2);
        assert_eq!(s.schedule_run_due(T0 + 12 * H).unwrap().len(), 1);
    }

    #[test]
    fn a_clock_that_went_back_does_not_stall_the_schedule() {
        let s = store();
        create(&s, "vm");
        // Added while the clock was 100 h ahead; it is then set right.
        s.schedule_add(&spec("vm"), H, None, T0 + 100 * H).unwrap();
        assert_eq!(s.schedule_next_due(T0 + 10).unwrap(), Some(T0 + 10));
        let r = s.schedule_run_due(T0 + 10).unwrap();
        assert_eq!(r.len(), 1, "runs at once and realigns");
        assert_eq!(r[0].result.missed, 0);
        assert_eq!(one(&s, "vm").next_due, T0 + H);
        assert!(s.schedule_run_due(T0 + 20).unwrap().is_empty());
        assert_eq!(s.schedule_run_due(T0 + H).unwrap().len(), 1);
    }

    #[test]
    fn keep_n_removes_the_oldest_scheduled_snapshots_only() {
        let s = store();
        create(&s, "vm");
        s.snap_create(&spec("vm@manual-before")).unwrap();
        s.schedule_add(&spec("vm"), H, Some(3), T0).unwrap();
        let mut removed = Vec::new();
        for k in 1..=6 {
            if k == 2 {
                // Named like a scheduled snapshot, but manual.
                s.snap_create(&spec("vm@sched-20000101T000000Z")).unwrap();
            }
            let r = s.schedule_run_due(T0 + k * H).unwrap();
            assert_eq!(r.len(), 1);
            assert!(r[0].result.ok, "{r:?}");
            removed.extend(r[0].result.removed.clone());
        }
        assert_eq!(
            removed,
            [
                "sched-20240101T010000Z",
                "sched-20240101T020000Z",
                "sched-20240101T030000Z"
            ],
            "oldest first, one per run once 3 are kept"
        );
        assert_eq!(
            snap_names(&s, "vm"),
            [
                "manual-before",
                "sched-20000101T000000Z",
                "sched-20240101T040000Z",
                "sched-20240101T050000Z",
                "sched-20240101T060000Z"
            ]
        );
        let rec = one(&s, "vm");
        assert_eq!(
            rec.snaps
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>(),
            [
                "sched-20240101T040000Z",
                "sched-20240101T050000Z",
                "sched-20240101T060000Z"
            ]
        );
    }

    #[test]
    fn renamed_and_impostor_snapshots_are_never_removed() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, Some(1), T0).unwrap();
        s.schedule_run_due(T0 + H).unwrap();
        // The user renames the schedule's snapshot to keep it...
        s.snap_rename(&spec("vm@sched-20240101T010000Z"), "keep-me")
            .unwrap();
        s.schedule_run_due(T0 + 2 * H).unwrap();
        // ...and removes the next one, then takes its name by hand.
        s.snap_remove(&spec("vm@sched-20240101T020000Z"), &NoProgress)
            .unwrap();
        s.snap_create(&spec("vm@sched-20240101T020000Z")).unwrap();
        let r = s.schedule_run_due(T0 + 3 * H).unwrap();
        assert!(r[0].result.ok && r[0].result.removed.is_empty(), "{r:?}");
        assert_eq!(
            snap_names(&s, "vm"),
            [
                "keep-me",
                "sched-20240101T020000Z",
                "sched-20240101T030000Z"
            ]
        );
        let r = s.schedule_run_due(T0 + 4 * H).unwrap();
        assert_eq!(r[0].result.removed, ["sched-20240101T030000Z"]);
        assert_eq!(
            snap_names(&s, "vm"),
            [
                "keep-me",
                "sched-20240101T020000Z",
                "sched-20240101T040000Z"
            ]
        );
    }

    #[test]
    fn protected_and_cloned_snapshots_are_skipped_and_reported() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, Some(1), T0).unwrap();
        s.schedule_run_due(T0 + H).unwrap();
        s.snap_protect(&spec("vm@sched-20240101T010000Z")).unwrap();
        s.schedule_run_due(T0 + 2 * H).unwrap();
        s.snap_protect(&spec("vm@sched-20240101T020000Z")).unwrap();
        s.clone_image(
            &spec("vm@sched-20240101T020000Z"),
            &spec("child"),
            None,
            None,
        )
        .unwrap();
        let r = s.schedule_run_due(T0 + 3 * H).unwrap();
        let res = &r[0].result;
        assert!(res.ok, "skipping is not a failure: {res:?}");
        assert_eq!(res.snapshot.as_deref(), Some("sched-20240101T030000Z"));
        assert!(res.removed.is_empty());
        assert_eq!(res.skipped.len(), 2, "{res:?}");
        assert_eq!(res.skipped[0].name, "sched-20240101T010000Z");
        assert_eq!(res.skipped[0].reason, "protected");
        assert_eq!(res.skipped[1].name, "sched-20240101T020000Z");
        // Unprotected and without clones: removed at the next run.
        s.snap_unprotect(&spec("vm@sched-20240101T010000Z"))
            .unwrap();
        let r = s.schedule_run_due(T0 + 4 * H).unwrap();
        assert_eq!(
            r[0].result.removed,
            ["sched-20240101T010000Z", "sched-20240101T030000Z"]
        );
        assert_eq!(r[0].result.skipped.len(), 1);
    }

    #[test]
    fn plan_never_removes_the_new_snapshot() {
        let snap = |id: u64, name: &str| SnapRecord {
            id,
            name: name.into(),
            size: 0,
            protected: false,
            create_time: 0,
            hidden: vec![],
            parent_overlap: None,
        };
        let mut rec = ScheduleRecord {
            pool_id: 1,
            image_id: 1,
            pool: "rbd".into(),
            image: "vm".into(),
            every: H,
            keep: Some(1),
            created: 0,
            last_run: None,
            next_due: 0,
            runs: 0,
            last_result: None,
            snaps: vec![],
            disabled: None,
        };
        let snaps = vec![snap(1, "sched-a"), snap(2, "sched-b")];
        rec.snaps = snaps
            .iter()
            .map(|s| ScheduledSnap {
                id: s.id,
                name: s.name.clone(),
            })
            .collect();
        let busy = |s: &SnapRecord| (s.id == 1).then(|| "protected".to_string());
        let p = plan_retention(&rec, &snaps, Some(2), busy);
        assert!(p.remove.is_empty());
        assert_eq!(p.skipped.len(), 1);
        let p = plan_retention(&rec, &snaps, Some(2), |_| None);
        assert_eq!(p.remove, ["sched-a"]);
        rec.keep = None;
        assert_eq!(
            plan_retention(&rec, &snaps, Some(2), |_| None),
            Retention::default()
        );
    }

    #[test]
    fn schedule_removed_mid_run_is_not_resurrected() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, Some(1), T0).unwrap();
        s.schedule_run_due(T0 + H).unwrap();
        let id = one(&s, "vm").id();
        let r = s
            .schedule_run_with(
                id,
                T0 + 2 * H,
                &|_| {
                    s.schedule_remove(&spec("vm"), None).unwrap();
                },
                &|_| None,
            )
            .unwrap()
            .unwrap();
        assert!(r.schedule_removed);
        assert_eq!(r.result.snapshot.as_deref(), Some("sched-20240101T020000Z"));
        assert!(r.result.removed.is_empty(), "no retention once removed");
        assert!(s.schedule_list(None).unwrap().is_empty());
        assert_eq!(snap_names(&s, "vm").len(), 2);
        assert!(s.schedule_run_due(T0 + 3 * H).unwrap().is_empty());
    }

    #[test]
    fn snapshots_in_use_are_kept() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, Some(1), T0).unwrap();
        s.schedule_run_due(T0 + H).unwrap();
        let first = snap_names(&s, "vm");
        let id = one(&s, "vm").id();
        let reading = |snap: &ImageSpec| {
            first
                .iter()
                .any(|n| snap.snap.as_deref() == Some(n.as_str()))
                .then(|| "being read by 1 client(s)".to_string())
        };
        let r = s
            .schedule_run_guarded(id, T0 + 2 * H, &reading)
            .unwrap()
            .unwrap();
        assert!(r.result.ok);
        assert!(r.result.removed.is_empty());
        assert_eq!(r.result.skipped.len(), 1);
        assert!(r.result.skipped[0].reason.contains("being read"));
        assert_eq!(snap_names(&s, "vm").len(), 2);
    }

    #[test]
    fn removed_image_disables_the_schedule() {
        let s = store();
        create(&s, "vm");
        create(&s, "other");
        s.schedule_add(&spec("vm"), H, Some(2), T0).unwrap();
        s.schedule_add(&spec("other"), H, None, T0).unwrap();
        s.schedule_run_due(T0 + H).unwrap();
        // `rm` takes the image's schedules with it.
        create(&s, "tmp");
        s.schedule_add(&spec("tmp"), H, None, T0).unwrap();
        s.remove(&spec("tmp")).unwrap();
        assert_eq!(s.schedule_list(None).unwrap().len(), 2);
        // An image gone by other means (a metadata restore): its schedule
        // is disabled at its next run.
        s.snap_purge(&spec("vm"), &NoProgress).unwrap();
        let pool = s.pool("rbd").unwrap();
        let id = s.record(&spec("vm")).unwrap().id;
        s.meta_store()
            .commit(vec![
                MetaOp::Delete {
                    table: keys::IMAGES,
                    key: keys::k2(pool.id, id),
                },
                MetaOp::Delete {
                    table: keys::NAMES,
                    key: keys::name_key(pool.id, "vm"),
                },
            ])
            .unwrap();
        let r = s.schedule_run_due(T0 + 2 * H).unwrap();
        assert_eq!(r.len(), 2, "the other schedule still runs: {r:?}");
        let gone = r.iter().find(|r| r.spec.image == "vm").unwrap();
        assert!(gone.disabled && !gone.result.ok);
        assert!(gone
            .result
            .error
            .as_deref()
            .unwrap()
            .contains("no longer exists"));
        let rec = one(&s, "vm");
        assert!(rec.disabled.is_some());
        assert!(due(&rec, T0 + 100 * H).is_none());
        assert_eq!(s.schedule_run_due(T0 + 3 * H).unwrap().len(), 1);
        // A new image of the same name is not the old schedule's.
        create(&s, "vm");
        let r = s.schedule_run_due(T0 + 4 * H).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].spec.image, "other");
        assert!(snap_names(&s, "vm").is_empty());
        // It may get its own; `rm` by name removes both.
        s.schedule_add(&spec("vm"), H, None, T0 + 4 * H).unwrap();
        assert_eq!(s.schedule_list(Some(&spec("vm"))).unwrap().len(), 2);
        assert_eq!(s.schedule_remove(&spec("vm"), Some(H)).unwrap().len(), 2);
        assert_eq!(s.schedule_list(None).unwrap().len(), 1);
    }

    #[test]
    fn schedules_follow_renames_and_snapshot_failures_are_reported() {
        let s = store();
        create(&s, "vm");
        s.schedule_add(&spec("vm"), H, None, T0).unwrap();
        s.schedule_add(&spec("vm"), 86400, Some(7), T0).unwrap();
        s.rename(&spec("vm"), "vm2").unwrap();
        assert!(s.schedule_list(Some(&spec("vm"))).unwrap().is_empty());
        assert_eq!(s.schedule_list(Some(&spec("vm2"))).unwrap().len(), 2);
        s.snap_limit(&spec("vm2"), Some(0)).unwrap();
        let r = s.schedule_run_due(T0 + H).unwrap();
        assert_eq!(r[0].spec.to_string(), "rbd/vm2");
        assert!(!r[0].result.ok);
        assert!(r[0].result.error.as_deref().unwrap().contains("limit"));
        let rec = &s.schedule_list(Some(&spec("vm2"))).unwrap()[0];
        assert_eq!(
            rec.next_due,
            T0 + 2 * H,
            "a failed run is not retried at once"
        );
        assert_eq!(rec.last_result.as_ref().unwrap(), &r[0].result);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let s = store();
        create(&s, "vm");
        let cases = [
            s.schedule_add(&spec("vm@x"), H, None, T0).unwrap_err(),
            s.schedule_add(&spec("vm"), 30, None, T0).unwrap_err(),
            s.schedule_add(&spec("vm"), H, Some(0), T0).unwrap_err(),
            s.schedule_add(&spec("nope"), H, None, T0).unwrap_err(),
            s.schedule_add(&spec("nopool/vm"), H, None, T0).unwrap_err(),
            s.schedule_remove(&spec("vm"), None).unwrap_err(),
        ];
        let kinds: Vec<_> = cases.iter().map(|e| e.kind()).collect();
        use crate::ErrorKind::*;
        assert_eq!(
            kinds,
            [
                InvalidInput,
                InvalidInput,
                InvalidInput,
                NotFound,
                NotFound,
                NotFound
            ]
        );
        assert!(s.schedule_list(None).unwrap().is_empty());
    }

    #[test]
    fn schedules_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open_dir(dir.path(), "test").unwrap();
            create(&s, "vm");
            s.schedule_add(&spec("vm"), H, Some(2), T0).unwrap();
            s.schedule_run_due(T0 + H).unwrap();
            s.schedule_run_due(T0 + 2 * H).unwrap();
        }
        let s = Store::open_dir(dir.path(), "test").unwrap();
        let rec = one(&s, "vm");
        assert_eq!(rec.next_due, T0 + 3 * H);
        assert_eq!(rec.runs, 2);
        assert_eq!(rec.snaps.len(), 2);
        assert_eq!(rec.keep, Some(2));
        // Down for a day: one catch-up run, and retention still knows
        // which snapshots are the schedule's.
        let r = s.schedule_run_due(T0 + 26 * H).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].result.missed, 23);
        assert_eq!(r[0].result.removed, ["sched-20240101T010000Z"]);
        assert_eq!(
            snap_names(&s, "vm"),
            ["sched-20240101T020000Z", "sched-20240102T020000Z"]
        );
    }

    #[test]
    fn records_decode_structurally() {
        let rec = ScheduleRecord {
            pool_id: 1,
            image_id: 2,
            pool: "rbd".into(),
            image: "vm".into(),
            every: H,
            keep: Some(3),
            created: T0,
            last_run: Some(T0 + H),
            next_due: T0 + 2 * H,
            runs: 1,
            last_result: Some(RunResult {
                time: T0 + H,
                ok: true,
                snapshot: Some("sched-x".into()),
                ..RunResult::default()
            }),
            snaps: vec![ScheduledSnap {
                id: 1,
                name: "sched-x".into(),
            }],
            disabled: None,
        };
        let b = record::encode(Kind::Schedule, &rec);
        let d: ScheduleRecord = record::decode(Kind::Schedule, "s", &b).unwrap();
        assert_eq!(d, rec);
        assert!(record::decode::<ScheduleRecord>(Kind::Image, "s", &b).is_err());
    }
}
