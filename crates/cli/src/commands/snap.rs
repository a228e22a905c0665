//! `snap create|ls|rm|rename|rollback|protect|unprotect|purge|limit`
//! (`snap schedule` is in `schedule.rs`).

use super::{describe_clients, image_spec, snap_spec, Ctx};
use crate::args::{LimitCmd, SnapCmd};
use crate::error::{CliError, Result};
use crate::output::{Align, Table};
use vdisk_engine::report::SnapInfo;
use vdisk_engine::spec::validate_name;
use vdisk_engine::{human_size, ImageSpec};

pub fn run(ctx: &Ctx, cmd: SnapCmd) -> Result<()> {
    let store = &ctx.store;
    match cmd {
        SnapCmd::Create(a) => {
            store.snap_create(&snap_spec(&a.spec)?)?;
        }
        SnapCmd::Ls(a) => return ls(ctx, &a.spec),
        SnapCmd::Rm(a) => {
            let spec = snap_spec(&a.spec)?;
            refuse_if_exported(ctx, &spec, Some(&spec))?;
            store.snap_remove(&spec, &ctx.progress())?
        }
        SnapCmd::Rename { src, dst } => {
            let src_spec = snap_spec(&src)?;
            let new_name = new_snap_name(&src_spec, &dst)?;
            store.snap_rename(&src_spec, &new_name)?;
        }
        SnapCmd::Rollback(a) => {
            let spec = snap_spec(&a.spec)?;
            // Clients writing the image would find their disk changed
            // under them (their caches still hold what was rolled away).
            let writers = ctx.writers_of(&spec)?;
            if !writers.is_empty() && !a.force {
                return Err(CliError::refused(format!(
                    "image {} is open read-write by {}",
                    spec.image_only(),
                    describe_clients(&writers)
                ))
                .with_hint(
                    "disconnect them (shut the VM down) first, or pass --force to roll back \
                     under them",
                ));
            }
            store.snap_rollback(&spec, &ctx.progress())?
        }
        SnapCmd::Protect(a) => store.snap_protect(&snap_spec(&a.spec)?)?,
        SnapCmd::Unprotect(a) => store.snap_unprotect(&snap_spec(&a.spec)?)?,
        SnapCmd::Purge(a) => {
            let spec = image_spec(&a.spec)?;
            refuse_if_exported(ctx, &spec, None)?;
            store.snap_purge(&spec, &ctx.progress())?;
        }
        SnapCmd::Limit(LimitCmd::Set { spec, limit }) => {
            store.snap_limit(&image_spec(&spec)?, Some(limit))?
        }
        SnapCmd::Limit(LimitCmd::Clear { spec }) => store.snap_limit(&image_spec(&spec)?, None)?,
        SnapCmd::Schedule(c) => return super::schedule::run(ctx, c),
    }
    Ok(())
}

/// Refuses to remove a snapshot (`snap`; any of the image's with `None`)
/// that clients of the daemon are reading: its space is trimmed once it is
/// gone, and they would read what is left.
fn refuse_if_exported(ctx: &Ctx, image: &ImageSpec, snap: Option<&ImageSpec>) -> Result<()> {
    let readers: Vec<_> = ctx
        .clients_of(image)?
        .into_iter()
        .filter(|c| match snap {
            Some(s) => c.export == s.to_string(),
            None => c.export.contains('@'),
        })
        .collect();
    if readers.is_empty() {
        return Ok(());
    }
    Err(CliError::refused(format!(
        "snapshot {} is being read by {}",
        readers[0].export,
        describe_clients(&readers)
    ))
    .with_hint("disconnect them first (e.g. let the backup finish), then remove it"))
}

fn ls(ctx: &Ctx, spec: &str) -> Result<()> {
    let spec = image_spec(spec)?;
    let snaps: Vec<SnapInfo> = ctx
        .store
        .snap_list(&spec)?
        .iter()
        .map(SnapInfo::from_record)
        .collect();
    if ctx.out.is_json() {
        return ctx.out.json(&snaps);
    }
    if snaps.is_empty() {
        return Ok(());
    }
    let mut t = Table::new(&[
        ("SNAPID", Align::Right),
        ("NAME", Align::Left),
        ("SIZE", Align::Right),
        ("PROTECTED", Align::Left),
        ("TIMESTAMP", Align::Left),
    ]);
    for s in snaps {
        t.row(vec![
            s.id.to_string(),
            s.name,
            human_size(s.size),
            if s.protected { "yes" } else { "" }.into(),
            s.timestamp,
        ]);
    }
    ctx.out.text(&t.render())
}

/// The new name of `snap rename SRC DST`: DST is `[POOL/]IMAGE@NEW` naming
/// the same image (the pool defaults to SRC's, as in rbd), or `NEW` alone.
fn new_snap_name(src: &ImageSpec, dst: &str) -> Result<String> {
    if !dst.contains('@') {
        validate_name(dst)?;
        return Ok(dst.to_string());
    }
    let d = snap_spec(dst)?;
    let pool = if dst.contains('/') {
        d.pool.as_str()
    } else {
        src.pool.as_str()
    };
    if pool != src.pool || d.image != src.image {
        return Err(CliError::invalid(format!(
            "a snapshot is renamed within its image: {dst} is not a snapshot of {}",
            src.image_only()
        )));
    }
    Ok(d.snap.unwrap_or_default())
}
