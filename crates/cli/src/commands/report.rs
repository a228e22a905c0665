//! Reports: `du`, `diff`, `object-map check|rebuild`, `check`.

use super::{any_spec, image_spec, Ctx};
use crate::args::{CheckArgs, DiffArgs, DuArgs, ObjectMapCmd};
use crate::error::{CliError, Result};
use crate::output::{Align, Table};
use serde::Serialize;
use vdisk_engine::check::CheckReport;
use vdisk_engine::report::DuEntry;
use vdisk_engine::spec::{validate_name, DEFAULT_POOL};
use vdisk_engine::{human_size, ErrorKind, Features, ImageSpec};

/// `du --format json`.
#[derive(Debug, Serialize)]
struct DuReport {
    images: Vec<DuEntry>,
    total_provisioned: u64,
    total_used: u64,
}

pub fn du(ctx: &Ctx, a: DuArgs) -> Result<()> {
    let mut entries = Vec::new();
    let mut first_err: Option<CliError> = None;
    match &a.spec {
        Some(s) => entries = ctx.store.du(&any_spec(s)?)?,
        None => {
            let pool = a.pool.unwrap_or_else(|| DEFAULT_POOL.to_string());
            validate_name(&pool)?;
            for rec in ctx.store.list(&pool)? {
                let spec = ImageSpec {
                    pool: pool.clone(),
                    image: rec.name,
                    snap: None,
                };
                // One image that cannot be read does not hide the others.
                match ctx.store.du(&spec) {
                    Ok(e) => entries.extend(e),
                    Err(e) => {
                        ctx.warn(format!("{spec}: {e}"));
                        first_err.get_or_insert(e.into());
                    }
                }
            }
        }
    }
    let heads: Vec<&DuEntry> = entries.iter().filter(|e| !e.name.contains('@')).collect();
    let total_provisioned = if heads.is_empty() {
        entries.iter().map(|e| e.provisioned).sum()
    } else {
        heads.iter().map(|e| e.provisioned).sum()
    };
    let total_used = entries.iter().map(|e| e.used).sum();
    if ctx.out.is_json() {
        ctx.out.json(&DuReport {
            images: entries,
            total_provisioned,
            total_used,
        })?;
    } else {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("PROVISIONED", Align::Right),
            ("USED", Align::Right),
        ]);
        let many = entries.len() > 1;
        for e in entries {
            t.row(vec![e.name, human_size(e.provisioned), human_size(e.used)]);
        }
        if many {
            t.row(vec![
                "<TOTAL>".into(),
                human_size(total_provisioned),
                human_size(total_used),
            ]);
        }
        ctx.out.text(&t.render())?;
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub fn diff(ctx: &Ctx, a: DiffArgs) -> Result<()> {
    let spec = any_spec(&a.spec)?;
    if let Some(f) = &a.from_snap {
        validate_name(f)?;
    }
    let extents = ctx.store.diff(&spec, a.from_snap.as_deref())?;
    if ctx.out.is_json() {
        return ctx.out.json(&extents);
    }
    let mut t = Table::new(&[
        ("Offset", Align::Left),
        ("Length", Align::Left),
        ("Type", Align::Left),
    ]);
    for e in extents {
        t.row(vec![
            e.offset.to_string(),
            e.length.to_string(),
            if e.exists { "data" } else { "zero" }.into(),
        ]);
    }
    ctx.out.text(&t.render())
}

/// `object-map check --format json`.
#[derive(Debug, Serialize)]
struct MapCheck {
    image: String,
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// Whether a `check` message is about image `spec` (`pool/image`).
fn mentions(msg: &str, spec: &str) -> bool {
    msg.strip_prefix(spec)
        .is_some_and(|rest| rest.starts_with([':', '@', ' ']))
}

pub fn object_map(ctx: &Ctx, cmd: ObjectMapCmd) -> Result<()> {
    match cmd {
        ObjectMapCmd::Rebuild(a) => Ok(ctx.store.object_map_rebuild(&image_spec(&a.spec)?)?),
        ObjectMapCmd::Check(a) => {
            let spec = image_spec(&a.spec)?;
            let rec = ctx.store.record(&spec)?;
            if !Features(rec.features).contains(Features::OBJECT_MAP) {
                return Err(CliError::invalid(format!(
                    "{spec} does not have the object-map feature"
                ))
                .with_hint(format!(
                    "enable it with `vdisk feature enable {spec} object-map`"
                )));
            }
            let rep = ctx.store.check(false)?;
            let name = spec.to_string();
            let pick = |v: &[String]| -> Vec<String> {
                v.iter().filter(|m| mentions(m, &name)).cloned().collect()
            };
            let r = MapCheck {
                image: name.clone(),
                errors: pick(&rep.errors),
                warnings: pick(&rep.warnings),
            };
            if ctx.out.is_json() {
                ctx.out.json(&r)?;
            } else {
                let mut s = String::new();
                for e in &r.errors {
                    s.push_str(&format!("error: {e}\n"));
                }
                for w in &r.warnings {
                    s.push_str(&format!("warning: {w}\n"));
                }
                if r.errors.is_empty() {
                    s.push_str(&format!("{name}: object map is consistent\n"));
                }
                ctx.out.text(&s)?;
            }
            if r.errors.is_empty() {
                Ok(())
            } else {
                Err(CliError::new(
                    ErrorKind::Corrupt,
                    format!("{name}: {} object map error(s)", r.errors.len()),
                )
                .with_hint(format!("rebuild it: `vdisk object-map rebuild {name}`")))
            }
        }
    }
}

/// `check --repair --format json`: the repair pass's report and what a
/// second check still finds.
#[derive(Debug, Serialize)]
struct RepairReport<'a> {
    #[serde(flatten)]
    report: &'a CheckReport,
    remaining_errors: &'a [String],
}

pub fn check(ctx: &Ctx, a: CheckArgs) -> Result<()> {
    let rep = ctx.store.check(a.repair)?;
    let remaining = if a.repair {
        ctx.store.check(false)?.errors
    } else {
        rep.errors.clone()
    };
    if ctx.out.is_json() {
        if a.repair {
            ctx.out.json(&RepairReport {
                report: &rep,
                remaining_errors: &remaining,
            })?;
        } else {
            ctx.out.json(&rep)?;
        }
    } else {
        let mut s = format!(
            "pools: {}  images: {}  objects: {}  data objects: {}\n",
            rep.pools, rep.images, rep.objects, rep.data_objects
        );
        for e in &rep.errors {
            s.push_str(&format!("error: {e}\n"));
        }
        for w in &rep.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        for r in &rep.repaired {
            s.push_str(&format!("repaired: {r}\n"));
        }
        if a.repair && !rep.errors.is_empty() {
            s.push_str(&format!(
                "after repair: {} error(s) remain\n",
                remaining.len()
            ));
        }
        if remaining.is_empty() && rep.errors.is_empty() {
            s.push_str("no errors found\n");
        }
        ctx.out.text(&s)?;
    }
    if remaining.is_empty() {
        return Ok(());
    }
    let e = CliError::new(
        ErrorKind::Corrupt,
        if a.repair {
            format!("{} error(s) remain after repair", remaining.len())
        } else {
            format!("check found {} error(s)", remaining.len())
        },
    );
    Err(if a.repair {
        e.with_hint("`vdisk meta restore` restores metadata from a backup")
    } else {
        e.with_hint(
            "`vdisk check --repair` removes orphan data objects and rebuilds object maps; \
             `vdisk meta restore` restores metadata from a backup",
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mentions_matches_whole_names() {
        assert!(super::mentions("rbd/a: object map", "rbd/a"));
        assert!(super::mentions("rbd/a@s: x", "rbd/a"));
        assert!(super::mentions("rbd/a object 3: x", "rbd/a"));
        assert!(!super::mentions("rbd/ab: x", "rbd/a"));
    }
}
