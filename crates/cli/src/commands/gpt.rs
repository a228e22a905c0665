//! `gpt SRC`: checks a GPT partition table (protective MBR, both headers,
//! both entry arrays) on an image, a snapshot, a raw file or a block
//! device; and the `--fix-gpt` half of `resize`: the backup GPT moves to
//! the image's new end. The parsing and the checks are `vdisk-gpt`'s; this
//! module does the I/O and the printing.

use super::{any_spec, describe_clients, Ctx};
use crate::args::GptArgs;
use crate::error::{CliError, Result};
use crate::output::{Align, Table};
use serde::Serialize;
use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use vdisk_engine::{human_size, Image, ImageSpec};
use vdisk_gpt::{GptError, GptReport, Relocation, Role, Status, Structure};

/// Whether `gpt`'s SRC names a file (or block device) rather than an
/// image: it starts with `/` or `.` (`/dev/sdb`, `./disk.raw`,
/// `../vm.img`). Image names never start with `.`, so this is never
/// ambiguous; a relative file path needs its `./`.
pub fn is_file_source(src: &str) -> bool {
    src.starts_with('/') || src.starts_with('.')
}

pub fn gpt(ctx: &Ctx, a: GptArgs) -> Result<()> {
    let (report, fix) = if is_file_source(&a.src) {
        (check_file(ctx, &a.src)?, Fix::File(a.src.clone()))
    } else {
        let spec = any_spec(&a.src).map_err(|e| file_hint(ctx, &a.src, e))?;
        let img = ctx
            .store
            .open(&spec)
            .map_err(|e| file_hint(ctx, &a.src, e.into()))?;
        let fix = match spec.snap {
            Some(_) => Fix::Snapshot,
            None => Fix::Image {
                spec: spec.to_string(),
                size: img.size(),
            },
        };
        (check_image(&img)?, fix)
    };
    let name = a.shown_as.as_deref().unwrap_or(&a.src);
    if ctx.out.is_json() {
        #[derive(Serialize)]
        struct Json<'a> {
            source: &'a str,
            #[serde(flatten)]
            report: &'a GptReport,
        }
        ctx.out.json(&Json {
            source: name,
            report: &report,
        })?;
    } else {
        ctx.out.text(&render(name, &report))?;
    }
    verdict(name, &report, &fix)
}

/// What can repair a damaged table, for the hint.
enum Fix {
    Image { spec: String, size: u64 },
    Snapshot,
    File(String),
}

/// A spec that is not an image, but a file of that name exists: say how
/// to name the file.
fn file_hint(ctx: &Ctx, src: &str, e: CliError) -> CliError {
    if ctx.daemon.is_none() && std::path::Path::new(src).exists() {
        return e.with_hint(format!(
            "{src} was read as an image spec; to check the file {src}, write it as ./{src}"
        ));
    }
    e
}

fn check_file(ctx: &Ctx, src: &str) -> Result<GptReport> {
    let path = ctx.path(src)?;
    let mut f = File::open(&path).map_err(|e| CliError::io(src, e))?;
    if f.metadata().map_err(|e| CliError::io(src, e))?.is_dir() {
        return Err(CliError::invalid(format!(
            "{src} is a directory, not a disk image or block device"
        )));
    }
    // The end, not the metadata's length: block devices report 0 there.
    let size = f.seek(SeekFrom::End(0)).map_err(|e| CliError::io(src, e))?;
    vdisk_gpt::check(size, |off, buf| f.read_exact_at(buf, off)).map_err(|e| match e {
        GptError::Io { source, .. } => CliError::io(format!("reading {src}"), source),
        other => CliError::new(vdisk_engine::ErrorKind::Io, format!("{src}: {other}")),
    })
}

/// Checks an image or snapshot; an engine failure keeps its own kind
/// (and exit code).
fn check_image(img: &Image) -> Result<GptReport> {
    let failure = RefCell::new(None);
    let r = vdisk_gpt::check(img.size(), |off, buf| {
        engine_io(&failure, img.read_at(off, buf))
    });
    r.map_err(|e| gpt_failure(&failure, img.spec(), e))
}

/// An engine result as `io::Result` for vdisk-gpt's callbacks; the engine
/// error is kept in `failure` (its kind decides the exit code).
fn engine_io(
    failure: &RefCell<Option<vdisk_engine::Error>>,
    r: vdisk_engine::Result<()>,
) -> std::io::Result<()> {
    r.map_err(|e| {
        let io = std::io::Error::other(e.to_string());
        *failure.borrow_mut() = Some(e);
        io
    })
}

fn gpt_failure(
    failure: &RefCell<Option<vdisk_engine::Error>>,
    spec: &ImageSpec,
    e: GptError,
) -> CliError {
    match failure.borrow_mut().take() {
        Some(engine) => engine.into(),
        None => CliError::new(vdisk_engine::ErrorKind::Io, format!("{spec}: {e}")),
    }
}

/// Exit 0 for an intact table, else the "damaged" error (exit 9) naming
/// the first error and what can repair it.
fn verdict(name: &str, r: &GptReport, fix: &Fix) -> Result<()> {
    let first = r.errors().next().map(|p| p.message()).unwrap_or_default();
    let more = match r.errors {
        0 | 1 => String::new(),
        n => format!(" (and {} more error(s))", n - 1),
    };
    match r.status {
        Status::Intact => Ok(()),
        Status::Absent => Err(CliError::damaged(format!(
            "{name}: {}",
            first.strip_prefix("disk: ").unwrap_or(&first)
        ))
        .with_hint(
            "a disk without a partition table, or one wiped: `vdisk gpt` checks GPT disks only",
        )),
        Status::Damaged => Err(
            CliError::damaged(format!("{name}: GPT damaged: {first}{more}"))
                .with_hint(repair_hint(r, fix)),
        ),
    }
}

fn repair_hint(r: &GptReport, fix: &Fix) -> String {
    let only_backup_side = r
        .errors()
        .all(|p| !matches!(p.structure, Structure::ProtectiveMbr | Structure::Disk));
    let gdisk_on = match fix {
        Fix::File(f) => format!("on {f}"),
        _ => "on the disk (serve it with `vdisk serve` and connect it as a block device)".into(),
    };
    if r.backup_rebuildable() && only_backup_side {
        return match fix {
            Fix::Image { spec, size } => format!(
                "the primary GPT is intact: `vdisk resize {spec} --size {size}B --fix-gpt` rebuilds \
                 the backup at the end of the image"
            ),
            Fix::Snapshot => "the primary GPT is intact: `vdisk resize IMAGE --size SIZE --fix-gpt` on \
                 the image (snapshots are read-only) rebuilds the backup"
                .into(),
            Fix::File(f) => format!(
                "the primary GPT is intact: `sfdisk --relocate gpt-bak-std {f}` rebuilds the backup \
                 at the end"
            ),
        };
    }
    if r.backup_rebuildable() {
        return format!(
            "the GPT itself is intact; gdisk or sgdisk {gdisk_on} writes a new protective MBR when it \
             saves the table"
        );
    }
    if r.partitions_from == Some(Role::Backup) {
        return format!(
            "the backup GPT is intact: gdisk's recovery menu {gdisk_on} rebuilds the primary from it \
             (r, b, c, then w)"
        );
    }
    "neither copy of the table can be trusted: restore the partition table from a backup \
     (`sgdisk --load-backup`, `sfdisk` with a saved dump)"
        .into()
}

/// The text report.
fn render(name: &str, r: &GptReport) -> String {
    let mut s = String::new();
    let mut l = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    match (r.sector_size, r.last_lba) {
        (Some(ss), Some(last)) => l(format!(
            "disk: {}, {} sectors of {ss} bytes",
            human_size(r.disk_size),
            last + 1
        )),
        _ => l(format!("disk: {}", human_size(r.disk_size))),
    }
    let mbr = match r.mbr.kind {
        vdisk_gpt::MbrKind::Missing => "missing (no 55 AA signature)".to_string(),
        vdisk_gpt::MbrKind::Plain => format!(
            "an MBR partition table with {} partition(s), no 0xEE entry",
            r.mbr.partitions.len()
        ),
        vdisk_gpt::MbrKind::Protective | vdisk_gpt::MbrKind::Hybrid => {
            let kind = if r.mbr.kind == vdisk_gpt::MbrKind::Hybrid {
                format!(
                    "hybrid ({} MBR partition(s) besides 0xEE)",
                    r.mbr.partitions.len().saturating_sub(1)
                )
            } else {
                "protective".into()
            };
            match r.mbr.protective() {
                Some(p) => format!(
                    "{kind}, 0xEE over LBA {}-{}",
                    p.first_lba,
                    (u64::from(p.first_lba) + u64::from(p.sectors)).saturating_sub(1)
                ),
                None => kind,
            }
        }
    };
    l(format!("protective MBR: {mbr}"));
    for (what, h) in [("primary", &r.primary), ("backup", &r.backup)] {
        let Some(h) = h else {
            l(format!("{what} header: missing"));
            continue;
        };
        let hd = &h.header;
        let entries = match (h.entries_intact, r.sector_size) {
            (Some(ok), Some(ss)) => format!(
                "entries LBA {}-{} ({} x {} bytes), {}",
                hd.partition_entry_lba,
                (hd.partition_entry_lba + hd.array_sectors(ss)).saturating_sub(1),
                hd.num_partition_entries,
                hd.partition_entry_size,
                if ok { "intact" } else { "CRC32 mismatch" }
            ),
            _ => "entries not checked".into(),
        };
        l(format!(
            "{what} header: LBA {}, {}; {entries}",
            h.lba,
            if h.intact { "intact" } else { "damaged" }
        ));
    }
    let source = match r.partitions_from {
        Some(Role::Primary) => r.primary.as_ref(),
        Some(Role::Backup) => r.backup.as_ref(),
        None => None,
    };
    if let Some(h) = source {
        l(format!("disk GUID: {}", h.header.disk_guid));
        l(format!(
            "usable: LBA {}-{}",
            h.header.first_usable_lba, h.header.last_usable_lba
        ));
        l(format!(
            "partitions (from the {} table): {}",
            if r.partitions_from == Some(Role::Primary) {
                "primary"
            } else {
                "backup"
            },
            r.partitions.len()
        ));
    }
    if !r.partitions.is_empty() {
        let mut t = Table::new(&[
            ("#", Align::Right),
            ("START", Align::Right),
            ("END", Align::Right),
            ("SECTORS", Align::Right),
            ("SIZE", Align::Right),
            ("TYPE", Align::Left),
            ("NAME", Align::Left),
        ]);
        let ss = u64::from(r.sector_size.unwrap_or(512));
        for p in &r.partitions {
            t.row(vec![
                p.index.to_string(),
                p.first_lba.to_string(),
                p.last_lba.to_string(),
                p.sectors().to_string(),
                human_size(p.sectors().saturating_mul(ss)),
                p.type_name
                    .map(str::to_string)
                    .unwrap_or_else(|| p.type_guid.to_string()),
                p.name.clone(),
            ]);
        }
        for line in t.render().lines() {
            l(format!("  {line}"));
        }
    }
    for p in &r.problems {
        let sev = if p.is_error() { "error" } else { "warning" };
        l(format!("{sev}: {p}"));
    }
    l(match r.status {
        Status::Intact => format!("{name}: GPT intact"),
        Status::Damaged => format!(
            "{name}: GPT damaged: {} error(s), {} warning(s)",
            r.errors, r.warnings
        ),
        Status::Absent => format!("{name}: no GPT"),
    });
    s
}

// ------------------------------------------------------- resize --fix-gpt

/// `resize --fix-gpt`, before resizing: the writes that move the backup
/// GPT to the new end. Refused, with nothing changed, when the image has
/// no intact primary GPT, when the new size would cut a partition, or
/// while clients of the daemon write the image (the guest owns its
/// partition table while it runs).
pub fn plan_fix(
    ctx: &Ctx,
    spec: &ImageSpec,
    new_size: u64,
    allow_shrink: bool,
) -> Result<Relocation> {
    let writers = ctx.writers_of(spec)?;
    if !writers.is_empty() {
        return Err(CliError::refused(format!(
            "--fix-gpt rewrites {spec}'s partition table, which its {} may be using; nothing was resized",
            describe_clients(&writers)
        ))
        .with_hint(
            "disconnect them (shut the VM down) first, or resize without --fix-gpt and let the \
             guest move its backup GPT (`sgdisk -e`, parted)",
        ));
    }
    let img = ctx.store.open(spec)?;
    // The resize's own refusal comes first: it is the one to fix.
    if new_size < img.size() && !allow_shrink {
        return Err(vdisk_engine::Error::ShrinkRefused {
            spec: spec.to_string(),
            from: img.size(),
            to: new_size,
        }
        .into());
    }
    let failure = RefCell::new(None);
    let plan = vdisk_gpt::plan_relocation(img.size(), new_size, |off, buf| {
        engine_io(&failure, img.read_at(off, buf))
    });
    plan.map_err(|e| {
        let refused = |e: &GptError| format!("{spec}: --fix-gpt: {e}; nothing was resized");
        match e {
            GptError::Io { .. } => gpt_failure(&failure, spec, e),
            GptError::NoGpt => CliError::refused(refused(&e)).with_hint(format!(
                "resize without --fix-gpt; `vdisk gpt {spec}` shows what the image holds"
            )),
            GptError::PrimaryDamaged { .. } => CliError::damaged(refused(&e)).with_hint(format!(
                "`vdisk gpt {spec}` lists the damage; repair the primary first (gdisk's recovery \
                 menu rebuilds it from an intact backup)"
            )),
            GptError::WouldCutPartition { index, .. } => CliError::refused(refused(&e))
                .with_hint(format!(
                    "shrink or remove partition {index} inside the guest first, or choose a larger size"
                )),
            _ => CliError::refused(refused(&e)),
        }
    })
}

/// After resizing: applies the planned writes, flushing after the backup
/// and at the end (see `Relocation::apply`: the primary points to the
/// new backup only once that is durable).
pub fn apply_fix(ctx: &Ctx, spec: &ImageSpec, size_arg: &str, plan: &Relocation) -> Result<()> {
    let img = ctx.store.open(spec)?;
    let failure = RefCell::new(None);
    plan.apply(
        |off, data| engine_io(&failure, img.write_at(off, data)),
        || engine_io(&failure, img.flush()),
    )
    .map_err(|e| {
        let e = gpt_failure(&failure, spec, e);
        CliError::new(
            e.kind,
            format!(
                "{spec} was resized, but moving its backup GPT failed: {}",
                e.message
            ),
        )
        .with_hint(format!(
            "run it again: `vdisk resize {spec} --size {size_arg} --fix-gpt` (the primary GPT \
             changes only after the new backup is written)"
        ))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn files_start_with_a_slash_or_a_dot() {
        for f in ["/dev/sdb", "./disk.raw", "../vm.img", ".hidden", "/"] {
            assert!(super::is_file_source(f), "{f}");
        }
        for s in ["vm1", "rbd/vm1", "rbd/vm1@s", "disk.raw", "dir/disk.raw"] {
            assert!(!super::is_file_source(s), "{s}");
        }
    }
}
