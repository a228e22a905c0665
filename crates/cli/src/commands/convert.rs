//! `convert`, `compare`, `map`, and `import`/`export` of qcow2 files and
//! NBD exports: vdisk-convert's copier between files, block devices, NBD
//! servers and pool images.

use super::{any_spec, image_spec, is_file_source, Ctx};
use crate::args::{
    Command, CompareArgs, Compression, ConvertArgs, CopyArgs, ExportArgs, ImageFormat, ImportArgs,
    MapArgs,
};
use crate::error::{CliError, Result};
use crate::output::{Align, Table};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use vdisk_convert::nbd::{NbdDest, NbdSource};
use vdisk_convert::{
    Compared, CopyOptions, CopyReport, Dest, FileDest, FileSource, Kind, NbdClient, NbdUri,
    PoolDest, PoolSource, Qcow2Dest, Source, ZeroProof,
};
use vdisk_engine::{CreateOptions, ErrorKind, ImageSpec, Store};

/// qemu-img compare's exit codes (docs/CLI.md).
const DIFFERENT_EXIT: u8 = 1;
const COMPARE_ERROR_EXIT: u8 = 2;

impl From<vdisk_convert::Error> for CliError {
    fn from(e: vdisk_convert::Error) -> Self {
        let hint = match &e {
            vdisk_convert::Error::Verify { .. } => Some(
                "the destination does not hold what was written: check the device or server \
                 (a cache that lies, a failing disk), then copy again",
            ),
            vdisk_convert::Error::Image(i) | vdisk_convert::Error::File { source: i, .. }
                if i.is_corrupt() =>
            {
                Some("the source file is damaged or truncated; `qemu-img check` may say more")
            }
            _ => None,
        };
        let c = CliError::new(e.kind(), e.to_string());
        match hint {
            Some(h) => c.with_hint(h),
            None => c,
        }
    }
}

/// Where a disk is.
enum End {
    Nbd(NbdUri),
    File(String),
    Pool(String),
}

fn classify(s: &str) -> Result<End> {
    if NbdUri::looks_like(s) {
        return Ok(End::Nbd(NbdUri::parse(s)?));
    }
    if is_file_source(s) {
        return Ok(End::File(s.to_owned()));
    }
    Ok(End::Pool(s.to_owned()))
}

/// Whether `c` works on files and NBD only (no pool image): it then runs
/// without opening the data directory (no lock, no daemon needed).
pub fn files_only(c: &Command) -> bool {
    let no_pool = |s: &str| !matches!(classify(s), Ok(End::Pool(_)));
    match c {
        Command::Convert(a) => no_pool(&a.src) && no_pool(&a.dst),
        Command::Compare(a) => no_pool(&a.a) && no_pool(&a.b),
        Command::Map(a) => no_pool(&a.src),
        _ => false,
    }
}

/// A store in memory for [`files_only`] commands (it holds nothing).
pub fn scratch_store() -> Result<Store> {
    Ok(Store::open_with(
        Arc::new(vdisk_storage::MemMetaStore::new()),
        Box::new(vdisk_engine::SingleDataBackend(Arc::new(
            vdisk_storage::MemObjectStore::new(),
        ))),
        vdisk_engine::Config::default(),
    )?)
}

fn qformat(f: Option<ImageFormat>) -> Option<vdisk_qcow2::Format> {
    f.map(|f| match f {
        ImageFormat::Raw => vdisk_qcow2::Format::Raw,
        ImageFormat::Qcow2 => vdisk_qcow2::Format::Qcow2,
    })
}

fn open_nbd(u: &NbdUri) -> Result<Arc<NbdClient>> {
    NbdClient::connect(u).map(Arc::new).map_err(|e| {
        CliError::from(e)
            .with_hint("check that the server runs and serves that export (`nbdinfo --list URI`)")
    })
}

/// Opens a source. `plain_file` makes any non-URI a path (import).
fn open_source(
    ctx: &Ctx,
    s: &str,
    format: Option<ImageFormat>,
    plain_file: bool,
) -> Result<Box<dyn Source>> {
    let end = match classify(s)? {
        End::Pool(p) if plain_file => End::File(p),
        e => e,
    };
    Ok(match end {
        End::Nbd(u) => Box::new(NbdSource(open_nbd(&u)?)),
        End::File(p) => {
            let path = ctx.path(&p)?;
            Box::new(FileSource::open(&path, qformat(format))?)
        }
        End::Pool(p) => {
            if format.is_some() {
                return Err(CliError::invalid(format!(
                    "-f is for files; {p} is a pool image"
                )));
            }
            let spec = any_spec(&p).map_err(|e| path_hint(&p, e))?;
            Box::new(PoolSource::new(
                ctx.store.open(&spec).map_err(|e| path_hint(&p, e.into()))?,
            ))
        }
    })
}

/// A spec that fails but names an existing file: say how to name a path
/// (the likelier mistake than the generic hint, which it replaces: a
/// `qemu-img` user writes `vdisk convert disk.qcow2 ...`).
fn path_hint(s: &str, e: CliError) -> CliError {
    if std::path::Path::new(s).exists() {
        e.with_hint(format!(
            "{s} is also a file; to use the file write it as ./{s} (paths start with / or .)"
        ))
    } else {
        e
    }
}

/// A bare destination name (no pool) ending like a disk file (`out.raw`,
/// `disk.qcow2`): legal as an image name, but likelier meant as a file.
fn looks_like_a_file_name(s: &str) -> bool {
    const DISK_FILE_ENDINGS: [&str; 9] = [
        "raw", "img", "qcow2", "qcow", "vmdk", "vdi", "vhd", "vhdx", "iso",
    ];
    !s.contains(['@', '/'])
        && s.rsplit_once('.').is_some_and(|(stem, ext)| {
            !stem.is_empty() && DISK_FILE_ENDINGS.contains(&ext.to_ascii_lowercase().as_str())
        })
}

/// What to clean up if the copy fails: what this run created.
#[derive(Default)]
struct Created {
    file: Option<PathBuf>,
    image: Option<ImageSpec>,
}

impl Created {
    fn undo(&self, ctx: &Ctx) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
        if let Some(spec) = &self.image {
            if let Err(e) = ctx.store.remove(spec) {
                ctx.warn(format!("could not remove the partial image {spec}: {e}"));
            }
        }
    }
}

/// The destination side of a copy.
struct DstArgs<'a> {
    dst: &'a str,
    format: Option<ImageFormat>,
    compress: Option<Compression>,
    force: bool,
    copy: &'a CopyArgs,
    /// `export`: a non-URI is a path even without `/` or `.`.
    plain_file: bool,
    /// `-o` qcow2 creation options.
    options: &'a [String],
}

fn open_dest(ctx: &Ctx, d: &DstArgs<'_>, size: u64) -> Result<(Box<dyn Dest>, Created, bool)> {
    let qcow2 = d.format == Some(ImageFormat::Qcow2) || d.compress.is_some();
    if d.compress.is_some() && d.format == Some(ImageFormat::Raw) {
        return Err(CliError::invalid(
            "-c compresses qcow2; it cannot go with -O raw",
        ));
    }
    let end = match classify(d.dst)? {
        End::Pool(p) if d.plain_file => End::File(p),
        e => e,
    };
    let c = d.copy;
    match end {
        End::Nbd(u) => {
            if qcow2 {
                return Err(CliError::invalid(
                    "an NBD destination takes the disk's bytes: drop -O qcow2 / -c",
                ));
            }
            let client = open_nbd(&u)?;
            let dest = NbdDest::new(client, c.target_is_zero)?;
            Ok((Box::new(dest), Created::default(), true))
        }
        End::Pool(p) => {
            if qcow2 {
                return Err(CliError::invalid(format!(
                    "{p} names a pool image, and a pool image is not a file: -O qcow2 / -c do \
                     not apply"
                ))
                .with_hint(format!(
                    "to write a file, give a path: ./{p} (paths start with / or .)"
                )));
            }
            let spec = image_spec(&p).map_err(|e| path_hint(&p, e))?;
            if !c.no_create && looks_like_a_file_name(&p) {
                // What a `qemu-img convert ... out.raw` habit types: say
                // where the copy goes, the copy itself is what was asked.
                ctx.warn(format!(
                    "{p} is taken as the pool image {spec}; to write a file instead, give a \
                     path: ./{p}"
                ));
            }
            if c.no_create && c.no_sync {
                return Err(CliError::invalid(
                    "--no-sync applies to pool images this command creates, not to existing ones (-n)",
                )
                .with_hint("drop --no-sync (the copy is then synced), or copy into a new image"));
            }
            if c.no_create {
                let img = ctx.store.open(&spec)?;
                return Ok((
                    Box::new(PoolDest::new(img, c.target_is_zero)),
                    Created::default(),
                    false,
                ));
            }
            ctx.store.pool(&spec.pool)?;
            if ctx.store.open(&spec).is_ok() {
                return Err(CliError::new(
                    ErrorKind::AlreadyExists,
                    format!("image {spec} already exists"),
                )
                .with_hint("pass -n to write into it, or remove it first"));
            }
            let opts = CreateOptions {
                size: size.div_ceil(512).max(1) * 512,
                order: None,
                features: None,
            };
            let img = ctx.store.create(&spec, &opts)?;
            let dest = if c.no_sync {
                if let Err(e) = ctx.store.mark_unsynced(&spec) {
                    drop(img);
                    let _ = ctx.store.remove(&spec);
                    return Err(e.into());
                }
                PoolDest::new(img, true).unsynced()
            } else {
                PoolDest::new(img, true)
            };
            Ok((
                Box::new(dest),
                Created {
                    image: Some(spec),
                    ..Created::default()
                },
                false,
            ))
        }
        End::File(p) => {
            let path = ctx.path(&p)?;
            let meta = std::fs::symlink_metadata(&path).ok();
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(CliError::invalid(format!("{p} is a directory")));
            }
            let exists = meta.is_some();
            if c.no_create {
                if qcow2 {
                    return Err(CliError::invalid(
                        "-n writes raw bytes into an existing destination; vdisk writes new \
                         qcow2 files only",
                    ));
                }
                if !exists {
                    return Err(
                        CliError::new(ErrorKind::NotFound, format!("{p} does not exist"))
                            .with_hint("drop -n to create it"),
                    );
                }
            } else if exists && !d.force {
                return Err(
                    CliError::new(ErrorKind::AlreadyExists, format!("{p} already exists"))
                        .with_hint(
                        "pass --force to replace a file, or -n to write into it (a block device \
                     needs one of them; it is never assumed to read zeros)",
                    ),
                );
            }
            let is_regular = meta.as_ref().is_some_and(|m| m.is_file());
            if !qcow2 && !d.options.is_empty() {
                return Err(CliError::invalid(
                    "-o sets qcow2 creation options; the destination is raw (add -O qcow2)",
                ));
            }
            if qcow2 {
                let mut opts = vdisk_qcow2::WriterOptions {
                    compression: d.compress.map(|t| match t {
                        Compression::Zlib => vdisk_qcow2::CompressionType::Zlib,
                        Compression::Zstd => vdisk_qcow2::CompressionType::Zstd,
                    }),
                    durable: !c.no_sync,
                    ..Default::default()
                };
                apply_create_options(&mut opts, d.options)?;
                if exists && !is_regular {
                    return Err(CliError::invalid(format!(
                        "{p} is not a regular file; qcow2 is written to files"
                    )));
                }
                let dest = Qcow2Dest::create(&path, size, &opts, d.force)?;
                let created = Created {
                    file: Some(path),
                    ..Created::default()
                };
                return Ok((Box::new(dest), created, false));
            }
            if exists && (c.no_create || !is_regular) {
                let mut dest = FileDest::existing(&path, c.target_is_zero)?;
                dest.set_durable(!c.no_sync);
                let block = dest.is_block_device();
                return Ok((Box::new(dest), Created::default(), block));
            }
            let mut dest = FileDest::create(&path, size, d.force)?;
            dest.set_durable(!c.no_sync);
            Ok((
                Box::new(dest),
                Created {
                    file: Some(path),
                    ..Created::default()
                },
                false,
            ))
        }
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    source: String,
    destination: String,
    size: u64,
    written: u64,
    zeroed_fast: u64,
    skipped: u64,
    zeroing: &'a str,
    zeroing_detail: Option<String>,
    verified: bool,
}

fn run_copy(ctx: &Ctx, src: &dyn Source, d: &DstArgs<'_>) -> Result<()> {
    let c = d.copy;
    let (dest, created, verify_default) = open_dest(ctx, d, src.size())?;
    let opts = CopyOptions {
        workers: c.parallel.map_or(4, usize::from),
        verify: !c.no_verify && (c.verify || verify_default),
        sparse: c.sparse,
        ..CopyOptions::default()
    };
    let progress = ctx.progress();
    let warn = |w: String| ctx.warn(w);
    let result = vdisk_convert::copy(src, &*dest, &opts, &progress, &warn);
    drop(progress);
    let report: CopyReport = match result {
        Ok(r) => r,
        Err(e) => {
            drop(dest);
            created.undo(ctx);
            return Err(e.into());
        }
    };
    if c.no_sync && created.image.is_some() {
        settle_later(ctx);
    }
    if ctx.out.is_json() {
        let (zeroing, detail) = match &report.zeroing {
            ZeroProof::CreatedZero => ("created-zero", None),
            ZeroProof::Trusted => ("trusted", None),
            ZeroProof::NotNeeded => ("not-needed", None),
            ZeroProof::Proven(op) => ("proven", Some(op.to_string())),
            ZeroProof::Failed(op, why) => ("failed", Some(format!("{op} {why}"))),
            ZeroProof::Unavailable => ("written-as-data", None),
            ZeroProof::Disabled => ("disabled", None),
        };
        ctx.out.json(&ReportJson {
            source: src.describe(),
            destination: dest.describe(),
            size: report.size,
            written: report.written,
            zeroed_fast: report.zeroed_fast,
            skipped: report.skipped,
            zeroing,
            zeroing_detail: detail,
            verified: report.verified,
        })?;
    }
    Ok(())
}

pub fn convert(ctx: &Ctx, a: ConvertArgs) -> Result<()> {
    let src = open_source(ctx, &a.src, a.copy.src_format, false)?;
    let d = DstArgs {
        dst: &a.dst,
        format: a.dst_format,
        compress: a.compress.then_some(a.compression_type),
        force: a.force,
        copy: &a.copy,
        plain_file: false,
        options: &a.options,
    };
    run_copy(ctx, &*src, &d)
}

/// Whether `import` needs the copier: an NBD URI, a qcow2 file, or `-f`.
pub fn import_wants_convert(a: &ImportArgs) -> bool {
    if a.file == "-" {
        return false;
    }
    if NbdUri::looks_like(&a.file) || a.copy.src_format == Some(ImageFormat::Qcow2) {
        return true;
    }
    if a.copy.src_format == Some(ImageFormat::Raw) {
        return false;
    }
    matches!(
        vdisk_qcow2::detect_file(std::path::Path::new(&a.file)),
        Ok(vdisk_qcow2::Detected::Format(vdisk_qcow2::Format::Qcow2))
            | Ok(vdisk_qcow2::Detected::Other(_))
    )
}

/// `import` of a qcow2 file or an NBD export into a new image.
pub fn import(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    if a.copy.no_create {
        return Err(CliError::invalid(
            "import creates the image; -n does not apply",
        ));
    }
    let spec =
        match &a.spec {
            Some(s) => image_spec(s)?,
            None if NbdUri::looks_like(&a.file) => return Err(CliError::invalid(
                "name the image to create when importing from NBD: `vdisk import URI [POOL/]IMAGE`",
            )),
            None => super::default_import_spec(&a.file)?,
        };
    if a.order.is_some() || !a.features.is_empty() {
        return Err(CliError::invalid(
            "--order and --features apply to raw imports; create the image first \
             (`vdisk create`), then `vdisk convert SRC IMAGE -n`",
        ));
    }
    ctx.store.pool(&spec.pool)?;
    if ctx.store.open(&spec).is_ok() {
        return Err(vdisk_engine::Error::ImageExists(spec.to_string()).into());
    }
    let src = open_source(ctx, &a.file, a.copy.src_format, true)?;
    let dst = spec.to_string();
    let d = DstArgs {
        dst: &dst,
        format: None,
        compress: None,
        force: false,
        copy: &a.copy,
        plain_file: false,
        options: &[],
    };
    run_copy(ctx, &*src, &d)
}

/// Whether `export` needs the copier: qcow2 output or an NBD URI.
pub fn export_wants_convert(a: &ExportArgs) -> bool {
    a.file != "-"
        && (NbdUri::looks_like(&a.file)
            || a.dst_format == Some(ImageFormat::Qcow2)
            || a.compress
            || a.copy.no_create
            || a.copy.verify
            || a.copy.target_is_zero)
}

/// `export` to qcow2 or an NBD export.
pub fn export(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    if a.copy.src_format.is_some() {
        return Err(CliError::invalid(
            "-f is for files; export reads a pool image",
        ));
    }
    let spec = any_spec(&a.spec)?;
    let img = ctx.store.open(&spec)?;
    let src = PoolSource::new(img);
    let d = DstArgs {
        dst: &a.file,
        format: a.dst_format,
        compress: a.compress.then_some(Compression::Zlib),
        force: a.force,
        copy: &a.copy,
        plain_file: true,
        options: &[],
    };
    run_copy(ctx, &src, &d)
}

#[derive(Serialize)]
struct CompareJson {
    identical: bool,
    first_difference: Option<u64>,
}

pub fn compare(ctx: &Ctx, a: CompareArgs) -> Result<()> {
    let as_error = |e: CliError| CliError {
        exit: Some(COMPARE_ERROR_EXIT),
        ..e
    };
    let run = || -> Result<Compared> {
        let x = open_source(ctx, &a.a, a.a_format, false)?;
        let y = open_source(ctx, &a.b, a.b_format, false)?;
        let progress = ctx.progress();
        Ok(vdisk_convert::compare(&*x, &*y, 8, 2 << 20, &progress)?)
    };
    let outcome = run().map_err(as_error)?;
    let diff = match outcome {
        Compared::Equal => None,
        Compared::Differ(o) => Some(o),
    };
    if ctx.out.is_json() {
        ctx.out.json(&CompareJson {
            identical: diff.is_none(),
            first_difference: diff,
        })?;
    } else {
        ctx.out.line(match diff {
            None => "Images are identical.".to_string(),
            Some(o) => format!("Content mismatch at offset {o}!"),
        })?;
    }
    match diff {
        None => Ok(()),
        Some(o) => Err(CliError {
            exit: Some(DIFFERENT_EXIT),
            ..CliError::new(
                ErrorKind::Refused,
                format!("{} and {} differ at offset {o}", a.a, a.b),
            )
        }),
    }
}

/// One `map --format json` entry, with qemu-img's field names.
#[derive(Serialize)]
struct MapEntry {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
}

pub fn map(ctx: &Ctx, a: MapArgs) -> Result<()> {
    let src = open_source(ctx, &a.src, a.src_format, false)?;
    let extents = vdisk_convert::map(&*src)?;
    if ctx.out.is_json() {
        let v: Vec<MapEntry> = extents
            .iter()
            .map(|e| MapEntry {
                start: e.offset,
                length: e.length,
                depth: 0,
                present: e.kind != Kind::Hole,
                zero: e.kind.is_zero(),
                data: e.kind == Kind::Data,
            })
            .collect();
        return ctx.out.json(&v);
    }
    let mut t = Table::new(&[
        ("Offset", Align::Right),
        ("Length", Align::Right),
        ("Type", Align::Left),
    ]);
    for e in &extents {
        t.row(vec![
            format!("{:#x}", e.offset),
            format!("{:#x}", e.length),
            match e.kind {
                Kind::Data => "data",
                Kind::Zero => "zero",
                Kind::Hole => "hole",
            }
            .to_string(),
        ]);
    }
    ctx.out.text(&t.render())
}

/// After a `--no-sync` copy into a pool: the daemon syncs it in the
/// background at once (it may run for weeks); a command run without a
/// daemon leaves it to the next open of the store.
pub fn settle_later(ctx: &Ctx) {
    if ctx.daemon.is_some() {
        let store = ctx.store.clone();
        std::thread::spawn(move || {
            if let Err(e) = store.settle_unsynced() {
                tracing::warn!("syncing images copied with --no-sync: {e}");
            }
        });
    }
}

/// qemu-img's `-o key=value[,key=value...]` for a new qcow2 file (the
/// options vdisk's writer has; others are refused by name).
fn apply_create_options(opts: &mut vdisk_qcow2::WriterOptions, list: &[String]) -> Result<()> {
    for item in list.iter().flat_map(|l| l.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| CliError::invalid(format!("-o {item:?}: write options as key=value")))?;
        let bad = |why: &str| CliError::invalid(format!("-o {key}={value}: {why}"));
        match key {
            "cluster_size" => {
                let n = vdisk_engine::spec::parse_bytes(value).map_err(|e| bad(&e.to_string()))?;
                if !n.is_power_of_two() || !(512..=2 << 20).contains(&n) {
                    return Err(bad("a cluster size is a power of two from 512 to 2M"));
                }
                opts.cluster_size = n;
            }
            "refcount_bits" => {
                let n: u32 = value.parse().map_err(|_| bad("not a number"))?;
                if !n.is_power_of_two() || n > 64 {
                    return Err(bad("refcount widths are 1, 2, 4, 8, 16, 32 or 64 bits"));
                }
                opts.refcount_bits = n;
            }
            "compression_type" => {
                let t = match value {
                    "zlib" => vdisk_qcow2::CompressionType::Zlib,
                    "zstd" => vdisk_qcow2::CompressionType::Zstd,
                    _ => return Err(bad("the compression types are zlib and zstd")),
                };
                // As in qemu-img: the type of -c's compression.
                if opts.compression.is_some() {
                    opts.compression = Some(t);
                }
            }
            _ => {
                return Err(CliError::invalid(format!(
                    "-o {key}: not an option vdisk's qcow2 writer has"
                ))
                .with_hint("supported: cluster_size, refcount_bits, compression_type"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::looks_like_a_file_name;

    #[test]
    fn bare_disk_file_names_are_noticed_specs_with_a_pool_are_not() {
        for name in ["out.raw", "disk.QCOW2", "a.b.img", "vm.vhdx"] {
            assert!(looks_like_a_file_name(name), "{name}");
        }
        for name in [
            "out",
            "rbd/out.raw",
            "out.raw@s1",
            ".raw",
            "out.raw.bak",
            "web01",
        ] {
            assert!(!looks_like_a_file_name(name), "{name}");
        }
    }
}
