//! `export-diff`, `import-diff`, `merge-diff` and `export`/`import
//! --export-format 2`: incremental and full backups in Ceph RBD's formats
//! (the codecs are in `vdisk-rbd-diff`), with the `FILE.vdisk-sum`
//! integrity sidecar.
//!
//! What `import-diff` guarantees: a diff *file* is read twice. The first
//! pass decodes all of it and checks everything (structure, the sidecar's
//! checksums and identity, the from-/to-snapshot rules, that the head
//! still is the from-snapshot) while writing nothing, so a bad diff leaves
//! the image exactly as it was, metadata included. The second pass
//! applies it. Standard input can be read only once: its header is
//! checked before any write, and if the stream then turns out damaged the
//! image is rolled back (to the from-snapshot, or to a guard snapshot
//! taken first when the diff has none).

use super::{any_spec, default_import_spec, describe_clients, image_spec, parse_features, Ctx};
use crate::args::{ExportArgs, ExportDiffArgs, ImportArgs, ImportDiffArgs, MergeDiffArgs};
use crate::error::{CliError, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use vdisk_engine::record::{ImageRecord, SnapRecord};
use vdisk_engine::report::DiffExtent;
use vdisk_engine::spec::{validate_image_size, validate_name};
use vdisk_engine::{is_zero, CreateOptions, ErrorKind, Features, Image, ImageSpec, Progress};
use vdisk_rbd_diff::sum::{
    Fingerprint, ImageIdentity, SnapIdentity, SumError, SumFile, Summer, Sums, SUM_SUFFIX,
};
use vdisk_rbd_diff::{
    encode_image_header, merge_diffs, DecodeError, DiffEncoder, DiffHeader, DiffReader,
    EncodeError, ErrorClass, Event, ImageHeader, MergeError, ReadError, StreamKind, Which,
};

/// Data is read, written and recorded in pieces of at most this many
/// bytes, aligned to it (as rbd's per-object extents).
const PIECE: u64 = 4 << 20;

const DIFF_STREAM: &str = "rbd diff v1";
const IMAGE_STREAM: &str = "rbd image v2";

// ------------------------------------------------------------- output

/// A stream being written: a file (with its sidecar) or standard output.
struct Output {
    shown: String,
    /// `None`: standard output.
    path: Option<PathBuf>,
    w: BufWriter<Box<dyn Write>>,
    /// The file again, to sync it.
    file: Option<File>,
    sum: Option<Summer>,
}

impl Output {
    /// Creates `file` (replacing it with `force`; its old sidecar goes
    /// too), or takes standard output for `-`.
    fn open(ctx: &Ctx, file: &str, force: bool, sidecar: bool, what: &str) -> Result<Output> {
        if file == "-" {
            ctx.not_in_daemon(
                &format!("writing {what} to standard output"),
                "write it to a file by its absolute path",
            )?;
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(
                    CliError::invalid(format!("refusing to write {what} to a terminal"))
                        .with_hint("redirect standard output to a file or a pipe"),
                );
            }
            return Ok(Output {
                shown: "standard output".into(),
                path: None,
                w: BufWriter::with_capacity(1 << 20, Box::new(stdout)),
                file: None,
                sum: None,
            });
        }
        let path = ctx.path(file)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => return Err(CliError::invalid(format!("{file} is a directory"))),
            Ok(_) if !force => {
                return Err(CliError::new(
                    ErrorKind::AlreadyExists,
                    format!("{file} already exists"),
                )
                .with_hint("pass --force to overwrite it"))
            }
            Ok(m) if !m.is_file() => {
                return Err(CliError::invalid(format!("{file} is not a regular file"))
                    .with_hint("write to a file, or to `-` and redirect standard output"))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CliError::io(format!("examining {file}"), e)),
        }
        // A sidecar left from an earlier file of that name would not match.
        remove_if_exists(&sidecar_path(&path))?;
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .create_new(!force)
            .open(&path)
            .map_err(|e| CliError::io(format!("creating {file}"), e))?;
        let handle = f
            .try_clone()
            .map_err(|e| CliError::io(format!("opening {file}"), e))?;
        Ok(Output {
            shown: file.to_string(),
            path: Some(path),
            w: BufWriter::with_capacity(1 << 20, Box::new(f)),
            file: Some(handle),
            sum: sidecar.then(Summer::new),
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        if let Some(s) = &mut self.sum {
            s.update(b);
        }
        self.w.write_all(b).map_err(|e| self.write_error(e))
    }

    fn write_error(&self, e: std::io::Error) -> CliError {
        let broken = e.kind() == std::io::ErrorKind::BrokenPipe;
        let mut err = CliError::io(format!("writing {}", self.shown), e);
        err.broken_pipe = broken && self.path.is_none();
        err
    }

    /// Flushes and syncs the stream, then writes the sidecar made by
    /// `sidecar` from the stream's checksums (files only).
    fn finish(self, sidecar: impl FnOnce(&Sums) -> SumFile) -> Result<()> {
        let Output {
            shown,
            path,
            mut w,
            file,
            sum,
        } = self;
        w.flush()
            .map_err(|e| CliError::io(format!("writing {shown}"), e))?;
        let (Some(path), Some(file)) = (path, file) else {
            return Ok(());
        };
        file.sync_all()
            .map_err(|e| CliError::io(format!("syncing {shown}"), e))?;
        if let Some(s) = sum {
            let doc = sidecar(&s.finish());
            let sc = sidecar_path(&path);
            let shown_sc = sc.display().to_string();
            let mut f =
                File::create(&sc).map_err(|e| CliError::io(format!("creating {shown_sc}"), e))?;
            f.write_all(doc.to_json().as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| CliError::io(format!("writing {shown_sc}"), e))?;
        }
        Ok(())
    }

    /// Removes what was written (a partial stream is worse than none).
    fn abort(self) {
        if let Some(p) = &self.path {
            drop(self.w);
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(sidecar_path(p));
        }
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::io(format!("removing {}", p.display()), e)),
    }
}

/// `FILE.vdisk-sum`.
fn sidecar_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(SUM_SUFFIX);
    PathBuf::from(s)
}

fn encode_error(e: EncodeError) -> CliError {
    // The encoder refuses only what the engine never produces (names
    // longer than 4 KiB, extents beyond the size).
    CliError::new(ErrorKind::Io, format!("cannot encode the diff: {e}"))
}

// -------------------------------------------------------------- input

/// A stream being read, through a checksum tee.
struct Input {
    shown: String,
    /// `None`: standard input.
    path: Option<PathBuf>,
    len: Option<u64>,
}

/// Counts and checksums what passes through.
struct SumRead<R> {
    r: R,
    sum: Option<Summer>,
}

impl<R: Read> Read for SumRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        if let Some(s) = &mut self.sum {
            s.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl Input {
    fn new(ctx: &Ctx, file: &str, what: &str) -> Result<Input> {
        if file == "-" {
            ctx.not_in_daemon(
                &format!("reading {what} from standard input"),
                "give the file by its absolute path",
            )?;
            return Ok(Input {
                shown: "standard input".into(),
                path: None,
                len: None,
            });
        }
        let path = ctx.path(file)?;
        let m = std::fs::metadata(&path).map_err(|e| CliError::io(format!("opening {file}"), e))?;
        if m.is_dir() {
            return Err(CliError::invalid(format!("{file} is a directory")));
        }
        Ok(Input {
            shown: file.to_string(),
            len: m.is_file().then_some(m.len()),
            path: Some(path),
        })
    }

    /// A reader from the start, checksummed in chunks of `chunk` if given.
    fn open(&self, sum: Option<Summer>) -> Result<SumRead<Box<dyn Read>>> {
        let r: Box<dyn Read> = match &self.path {
            None => Box::new(std::io::stdin().lock()),
            Some(p) => Box::new(
                File::open(p).map_err(|e| CliError::io(format!("opening {}", self.shown), e))?,
            ),
        };
        Ok(SumRead { r, sum })
    }

    /// The sidecar beside the file, parsed (none for stdin, with
    /// `no_sum`, or when there is none).
    fn sidecar(&self, no_sum: bool) -> Result<Option<(String, SumFile)>> {
        let Some(p) = self.path.as_ref().filter(|_| !no_sum) else {
            return Ok(None);
        };
        let sc = sidecar_path(p);
        let shown = sc.display().to_string();
        let text = match std::fs::read_to_string(&sc) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CliError::io(format!("reading {shown}"), e)),
        };
        let hint = format!(
            "{shown} is the checksum file of {}; if the diff is right and only the checksum \
             file is wrong, delete it or pass --no-sum",
            self.shown
        );
        match SumFile::parse(&text) {
            Ok(s) => Ok(Some((shown, s))),
            Err(e @ SumError::Version(_)) => Err(CliError::new(
                ErrorKind::Unsupported,
                format!("checksum file {shown}: {e}"),
            )
            .with_hint(hint)),
            Err(e) => Err(
                CliError::new(ErrorKind::Corrupt, format!("checksum file {shown}: {e}"))
                    .with_hint(hint),
            ),
        }
    }
}

/// The error for a stream that could not be read or decoded.
fn read_error(shown: &str, e: ReadError) -> CliError {
    let d = match e {
        ReadError::Io(e) => return CliError::io(format!("reading {shown}"), e),
        ReadError::Decode(d) => d,
    };
    match d.class() {
        ErrorClass::WrongFormat => {
            let hint = match &d {
                DecodeError::BadBanner {
                    found_kind: Some(StreamKind::Image),
                    ..
                } => {
                    "this is a whole-image export: create an image from it with \
                      `vdisk import --export-format 2 FILE SPEC`"
                }
                DecodeError::BadBanner {
                    found_kind: Some(StreamKind::DiffV1),
                    ..
                } => "this is a diff: apply it to an image with `vdisk import-diff FILE SPEC`",
                _ => {
                    "give a file written by `rbd export-diff` or `vdisk export-diff` \
                      (`rbd export --export-format 2` for whole images)"
                }
            };
            CliError::invalid(format!("{shown}: {d}")).with_hint(hint)
        }
        ErrorClass::Damaged => {
            CliError::new(ErrorKind::Corrupt, format!("{shown} is damaged: {d}"))
                .with_hint("copy the file again from its source")
        }
    }
}

/// Compares what was read with the sidecar.
fn check_sums(input: &Input, sc: &(String, SumFile), sums: &Sums) -> Result<()> {
    sc.1.check(sums).map_err(|e| {
        CliError::new(
            ErrorKind::Corrupt,
            format!("{} is damaged: {e} (checked against {})", input.shown, sc.0),
        )
        .with_hint(
            "nothing was changed; copy the file again from its source (if the file is \
             right and its checksum file is not, delete the checksum file)",
        )
    })
}

/// Bytes consumed so far, for progress.
struct Ticker(u64);

impl Ticker {
    fn tick<R: Read>(&mut self, r: &DiffReader<R>, progress: &dyn Progress) {
        let pos = r.decoder().position();
        progress.inc(pos - self.0);
        self.0 = pos;
    }
}

// --------------------------------------------------------- export-diff

/// Extents widened to whole objects (within the size), merged; every one
/// read (a partly discarded object is not all zeros).
fn whole_objects(extents: &[DiffExtent], obj: u64, size: u64) -> Vec<DiffExtent> {
    let mut out: Vec<DiffExtent> = Vec::new();
    for e in extents {
        let start = e.offset / obj * obj;
        let end = (e.offset + e.length)
            .div_ceil(obj)
            .saturating_mul(obj)
            .min(size);
        match out.last_mut() {
            Some(l) if l.offset + l.length >= start => {
                l.length = l.length.max(end - l.offset);
            }
            _ => out.push(DiffExtent {
                offset: start,
                length: end - start,
                exists: true,
            }),
        }
    }
    out
}

/// The data and zero records of one diff, pieces of at most 4 MiB
/// (all-zero data becomes a zero record, as rbd does). With `before`,
/// what the from-snapshot held in each record's range (clipped to its
/// size) is hashed into the fingerprint.
fn write_extents(
    img: &Image,
    extents: &[DiffExtent],
    enc: &mut DiffEncoder,
    out: &mut Output,
    mut before: Option<(&Image, &mut Fingerprint)>,
    progress: &dyn Progress,
) -> Result<()> {
    let mut buf = vec![0u8; PIECE as usize];
    let mut rec = Vec::with_capacity(64);
    for e in extents {
        let end = e.offset + e.length;
        let mut off = e.offset;
        while off < end {
            let n = (PIECE - off % PIECE).min(end - off);
            let data = &mut buf[..n as usize];
            rec.clear();
            let mut payload = false;
            if e.exists {
                img.read_at(off, data)?;
                payload = !is_zero(data);
            }
            if payload {
                enc.write_header(off, n, &mut rec).map_err(encode_error)?;
                out.write(&rec)?;
                out.write(data)?;
            } else {
                enc.zero(off, n, &mut rec).map_err(encode_error)?;
                out.write(&rec)?;
            }
            if let Some((from, fp)) = before.as_mut() {
                let fsize = from.size();
                if off < fsize {
                    let m = n.min(fsize - off) as usize;
                    from.read_at(off, &mut buf[..m])?;
                    fp.update(&buf[..m]);
                }
            }
            progress.inc(n);
            off += n;
        }
    }
    Ok(())
}

fn identity(spec: &ImageSpec, rec: &ImageRecord) -> ImageIdentity {
    ImageIdentity {
        pool: spec.pool.clone(),
        name: spec.image.clone(),
        id: format!("{:x}", rec.id),
    }
}

fn find_snap<'a>(rec: &'a ImageRecord, spec: &ImageSpec, name: &str) -> Result<&'a SnapRecord> {
    rec.snaps.iter().find(|s| s.name == name).ok_or_else(|| {
        vdisk_engine::Error::SnapNotFound(spec.image_only().with_snap(name).to_string()).into()
    })
}

pub fn export_diff(ctx: &Ctx, a: ExportDiffArgs) -> Result<()> {
    let spec = any_spec(&a.spec)?;
    if let Some(f) = &a.from_snap {
        validate_name(f)?;
    }
    // Everything that can be refused is, before the file is created.
    let img = ctx.store.open(&spec)?;
    let rec = ctx.store.record(&spec)?;
    let from = match &a.from_snap {
        Some(f) => Some(find_snap(&rec, &spec, f)?.clone()),
        None => None,
    };
    let mut extents = ctx.store.diff(&spec, a.from_snap.as_deref())?;
    if a.whole_object {
        extents = whole_objects(&extents, img.object_size(), img.size());
    }
    let from_img = match &from {
        Some(f) if !a.no_sum && a.file != "-" => {
            Some(ctx.store.open(&spec.image_only().with_snap(&f.name))?)
        }
        _ => None,
    };
    let mut out = Output::open(ctx, &a.file, a.force, !a.no_sum, "a diff")?;
    let header = DiffHeader {
        from_snap: a.from_snap.clone(),
        to_snap: spec.snap.clone(),
        protected: None,
        size: img.size(),
    };
    let progress = ctx.progress();
    let mut fp = from_img.as_ref().map(|_| Fingerprint::new());
    let r = (|| {
        let mut enc = DiffEncoder::v1();
        let mut b = Vec::new();
        enc.header(&header, &mut b).map_err(encode_error)?;
        out.write(&b)?;
        progress.start(
            "Exporting diff",
            extents.iter().map(|e| e.length).sum::<u64>(),
        );
        let before = from_img.as_ref().zip(fp.as_mut());
        write_extents(&img, &extents, &mut enc, &mut out, before, &progress)?;
        b.clear();
        enc.end(&mut b).map_err(encode_error)?;
        out.write(&b)
    })();
    progress.finish();
    if let Err(e) = r {
        out.abort();
        return Err(e);
    }
    let size = img.size();
    out.finish(|sums| {
        SumFile::new(
            DIFF_STREAM,
            Some(identity(&spec, &rec)),
            from.as_ref().map(|f| SnapIdentity {
                name: f.name.clone(),
                size: Some(f.size),
            }),
            spec.snap.as_ref().map(|n| SnapIdentity {
                name: n.clone(),
                size: Some(size),
            }),
            size,
            fp.map(Fingerprint::finish_hex),
            sums,
        )
    })
}

// --------------------------------------------------------- import-diff

/// A diff's metadata records.
#[derive(Debug, Default, Clone)]
struct DiffHead {
    from: Option<String>,
    to: Option<String>,
    size: Option<u64>,
    protected: Option<bool>,
}

/// Refuses when clients of the daemon write the image.
fn refuse_writers(ctx: &Ctx, spec: &ImageSpec) -> Result<()> {
    let writers = ctx.writers_of(spec)?;
    if !writers.is_empty() {
        return Err(CliError::refused(format!(
            "image {spec} is open read-write by {}",
            describe_clients(&writers)
        ))
        .with_hint(
            "disconnect them (shut the VM down) first: the diff rewrites the disk under them",
        ));
    }
    Ok(())
}

/// Checks a diff's header against the target image, as rbd does (the
/// from-snapshot exists, the to-snapshot does not) and more (names and
/// size vdisk can hold; the head still is the from-snapshot, unless
/// `force`). Returns whether the head equals the from-snapshot.
fn check_head(ctx: &Ctx, spec: &ImageSpec, h: &DiffHead, shown: &str, force: bool) -> Result<bool> {
    let rec = ctx.store.record(spec)?;
    if let Some(to) = &h.to {
        validate_name(to).map_err(|e| {
            CliError::new(
                ErrorKind::Unsupported,
                format!("{shown} ends at snapshot {to:?}, a name vdisk cannot use: {e}"),
            )
        })?;
        if let Some(limit) = rec.snap_limit.filter(|l| rec.snaps.len() as u64 >= *l) {
            return Err(CliError::refused(format!(
                "image {spec} has {limit} snapshot(s), its limit; the diff would create @{to}"
            ))
            .with_hint(format!(
                "remove a snapshot or raise the limit (`vdisk snap limit set {spec} --limit N`)"
            )));
        }
        if rec.snaps.iter().any(|s| &s.name == to) {
            return Err(CliError::new(
                ErrorKind::AlreadyExists,
                format!("snapshot {}@{to} already exists: the diff ends there", spec),
            )
            .with_hint(format!(
                "it was probably applied already; to apply it again, remove the snapshot \
                 first (`vdisk snap rm {spec}@{to}`)"
            )));
        }
    }
    if let Some(size) = h.size {
        validate_image_size(&size.to_string(), size).map_err(|_| {
            CliError::new(
                ErrorKind::Unsupported,
                format!(
                    "{shown} makes the image {size} bytes; vdisk images are positive \
                     multiples of 512 bytes"
                ),
            )
        })?;
    }
    let Some(from) = &h.from else {
        return Ok(false);
    };
    let Some(fs) = rec.snaps.iter().find(|s| &s.name == from) else {
        return Err(CliError::new(
            ErrorKind::NotFound,
            format!("{shown} starts from snapshot {from:?}, which {spec} does not have"),
        )
        .with_hint(format!(
            "apply the diffs in order, the one ending at @{from} first \
             (`vdisk snap ls {spec}` lists the snapshots)"
        )));
    };
    let changed = rec.size != fs.size || !ctx.store.diff(spec, Some(from))?.is_empty();
    if changed && !force {
        return Err(CliError::refused(format!(
            "the head of {spec} changed since its snapshot @{from}, where the diff starts; \
             applying it would not give the diff's snapshot"
        ))
        .with_hint(format!(
            "roll back first (`vdisk snap rollback {spec}@{from}`), or pass --force to apply \
             it over the changes"
        )));
    }
    Ok(!changed)
}

/// Applies one diff whose `DiffStart` was read: its metadata records go
/// to `on_header` (which checks them, resizes or creates the image, and
/// returns it) before the first data record; then the data. Returns the
/// header and the image, flushed.
fn apply_one<R: Read>(
    ctx: &Ctx,
    r: &mut DiffReader<R>,
    shown: &str,
    on_header: &mut dyn FnMut(&DiffHead) -> Result<Image>,
    progress: &dyn Progress,
    ticker: &mut Ticker,
) -> Result<(DiffHead, Image)> {
    let mut head = DiffHead::default();
    let mut img: Option<Image> = None;
    let mut buf = vec![0u8; PIECE as usize];
    loop {
        let ev = r
            .next_event()
            .map_err(|e| read_error(shown, e))?
            .ok_or_else(|| {
                CliError::new(ErrorKind::Corrupt, format!("{shown} ended inside a diff"))
            })?;
        match ev {
            Event::FromSnap(s) => head.from = Some(s),
            Event::ToSnap(s) => head.to = Some(s),
            Event::Size(s) => head.size = Some(s),
            Event::Protected(p) => head.protected = Some(p),
            Event::Skipped { tag, len } => ctx.warn(format!(
                "{shown}: skipped a record with unknown tag {} ({len} bytes), as rbd does",
                tag.escape_ascii()
            )),
            Event::Write { .. } | Event::Zero { .. } | Event::DiffEnd => {
                if img.is_none() {
                    img = Some(on_header(&head)?);
                }
                let Some(im) = img.as_ref() else { continue };
                match ev {
                    Event::Write { offset, len } => {
                        check_extent(im, offset, len, shown)?;
                        let mut at = offset;
                        let end = offset + len;
                        while at < end {
                            let n = (PIECE - at % PIECE).min(end - at) as usize;
                            r.read_data_exact(&mut buf[..n])
                                .map_err(|e| read_error(shown, e))?;
                            im.write_at(at, &buf[..n])?;
                            at += n as u64;
                            ticker.tick(r, progress);
                        }
                    }
                    Event::Zero { offset, len } => {
                        check_extent(im, offset, len, shown)?;
                        if len > 0 {
                            im.write_zeroes(offset, len)?;
                        }
                    }
                    _ => {
                        im.flush()?;
                        ticker.tick(r, progress);
                        return Ok((head, im.clone()));
                    }
                }
                ticker.tick(r, progress);
            }
            // DiffStart, DiffCount and image properties do not occur
            // inside a diff.
            _ => {}
        }
    }
}

/// Diffs without a size record are checked against the image's size.
fn check_extent(img: &Image, offset: u64, len: u64, shown: &str) -> Result<()> {
    if offset + len > img.size() {
        return Err(CliError::new(
            ErrorKind::Corrupt,
            format!(
                "{shown} changes {offset}+{len}, beyond the image's {} bytes (and has no size record)",
                img.size()
            ),
        ));
    }
    Ok(())
}

/// Resizes `spec` to the diff's size when it differs.
fn resize_for(ctx: &Ctx, spec: &ImageSpec, img: &Image, h: &DiffHead) -> Result<()> {
    if let Some(s) = h.size {
        if s != img.size() {
            ctx.store.resize(spec, s, true)?;
        }
    }
    Ok(())
}

/// What the first pass over a diff file found.
struct Checked {
    head: DiffHead,
    head_unchanged: bool,
    sums: Option<Sums>,
}

/// Pass 1: the whole file decoded and checked, nothing written.
fn check_file(
    ctx: &Ctx,
    spec: &ImageSpec,
    img: &Image,
    input: &Input,
    sidecar: Option<&(String, SumFile)>,
    force: bool,
) -> Result<Checked> {
    let shown = input.shown.as_str();
    let progress = ctx.progress();
    progress.start("Checking diff", input.len.unwrap_or(0));
    let mut r = DiffReader::new(
        input.open(Some(sidecar.map_or_else(Summer::new, |s| s.1.summer())))?,
        StreamKind::DiffV1,
    );
    let mut ticker = Ticker(0);
    let mut head = DiffHead::default();
    let mut checked: Option<bool> = None;
    let mut before: Option<(Fingerprint, u64)> = None;
    let mut buf = vec![0u8; PIECE as usize];
    while let Some(ev) = r.next_event().map_err(|e| read_error(shown, e))? {
        ticker.tick(&r, &progress);
        let (offset, len) = match ev {
            Event::FromSnap(s) => {
                head.from = Some(s);
                continue;
            }
            Event::ToSnap(s) => {
                head.to = Some(s);
                continue;
            }
            Event::Size(s) => {
                head.size = Some(s);
                continue;
            }
            Event::Write { offset, len } | Event::Zero { offset, len } => (offset, len),
            Event::DiffEnd => (0, 0),
            // DiffStart; Protected and Skipped do not occur in v1.
            _ => continue,
        };
        if checked.is_none() {
            let unchanged = check_head(ctx, spec, &head, shown, force)?;
            if let Some(sc) = sidecar {
                check_identity(ctx, spec, &head, sc, shown)?;
                if let (Some(_), Some(from), false) = (&sc.1.before_sha256, &head.from, force) {
                    let rec = ctx.store.record(spec)?;
                    let fsize = find_snap(&rec, spec, from)?.size;
                    before = Some((Fingerprint::new(), fsize));
                }
            }
            checked = Some(unchanged);
        }
        if !matches!(ev, Event::Write { .. } | Event::Zero { .. }) {
            continue;
        }
        if head.size.is_none() {
            check_extent(img, offset, len, shown)?;
        }
        // What the head holds there now (it is the from-snapshot: checked).
        if let Some((fp, fsize)) = before.as_mut() {
            let end = (offset + len).min(*fsize);
            let mut at = offset;
            while at < end {
                let n = (PIECE - at % PIECE).min(end - at) as usize;
                img.read_at(at, &mut buf[..n])?;
                fp.update(&buf[..n]);
                at += n as u64;
            }
        }
    }
    progress.finish();
    let Some(head_unchanged) = checked else {
        // Unreachable for a complete stream (it has an end record).
        return Err(CliError::new(
            ErrorKind::Corrupt,
            format!("{shown} holds no diff"),
        ));
    };
    let sums = r.get_ref().sum.clone().map(Summer::finish);
    if let (Some(sc), Some(s)) = (sidecar, &sums) {
        check_sums(input, sc, s)?;
        if let (Some((fp, _)), Some(want)) = (before, &sc.1.before_sha256) {
            if !fp.finish_hex().eq_ignore_ascii_case(want) {
                let src = sc.1.image.as_ref().map_or_else(
                    || "another image".to_string(),
                    |i| format!("{}/{} (id {})", i.pool, i.name, i.id),
                );
                return Err(CliError::refused(format!(
                    "{spec} does not hold what the diff's from-snapshot held in the ranges the \
                     diff changes: the diff was made from {src}, and {spec} is not a copy of it \
                     at @{}",
                    head.from.as_deref().unwrap_or("?")
                ))
                .with_hint(
                    "apply it to the image that holds the copy of its source (or pass --force \
                     to apply it anyway)",
                ));
            }
        }
    }
    Ok(Checked {
        head,
        head_unchanged,
        sums,
    })
}

/// The sidecar must describe this diff, and its from-snapshot must be the
/// target's (same size).
fn check_identity(
    ctx: &Ctx,
    spec: &ImageSpec,
    h: &DiffHead,
    sc: &(String, SumFile),
    shown: &str,
) -> Result<()> {
    let (sc_shown, s) = (&sc.0, &sc.1);
    let names = |x: &Option<SnapIdentity>| x.as_ref().map(|i| i.name.clone());
    if s.stream != DIFF_STREAM
        || names(&s.from_snap) != h.from
        || names(&s.to_snap) != h.to
        || h.size.is_some_and(|z| z != s.size)
    {
        return Err(CliError::new(
            ErrorKind::Corrupt,
            format!("checksum file {sc_shown} does not describe {shown}: it is for another diff"),
        )
        .with_hint("delete the checksum file if the diff is the one you want, or pass --no-sum"));
    }
    if let (Some(from), Some(Some(want))) = (&h.from, s.from_snap.as_ref().map(|f| f.size)) {
        let rec = ctx.store.record(spec)?;
        let have = find_snap(&rec, spec, from)?.size;
        if have != want {
            let src = s
                .image
                .as_ref()
                .map_or_else(String::new, |i| format!(" {}/{}", i.pool, i.name));
            return Err(CliError::refused(format!(
                "{spec}@{from} is {have} bytes but the diff's source{src}@{from} was {want}: \
                 the diff is for another image"
            ))
            .with_hint("apply it to the image that holds the copy of its source"));
        }
    }
    Ok(())
}

/// Where to return the image to if applying fails half-way.
enum Restore {
    /// Roll back to this snapshot (the from-snapshot, equal to the head).
    Snap(ImageSpec),
    /// Roll back to this guard snapshot, then remove it.
    Guard(ImageSpec),
    None,
}

impl Restore {
    /// Undoes a failed application; says what happened, for the hint.
    fn undo(&self, ctx: &Ctx) -> String {
        let np = vdisk_engine::NoProgress;
        match self {
            Restore::Snap(s) => match ctx.store.snap_rollback(s, &np) {
                Ok(()) => format!("the image was rolled back to {s}"),
                Err(e) => format!("rolling back to {s} failed too ({e}): roll back by hand"),
            },
            Restore::Guard(g) => match ctx
                .store
                .snap_rollback(g, &np)
                .and_then(|_| ctx.store.snap_remove(g, &np))
            {
                Ok(()) => "the image was rolled back to what it was".to_string(),
                Err(e) => format!(
                    "restoring the image from the guard snapshot {g} failed ({e}): roll back to \
                     it by hand, then remove it"
                ),
            },
            Restore::None => {
                "the image may be partly written: apply the diff again once it reads cleanly"
                    .to_string()
            }
        }
    }

    /// Removes the guard after success.
    fn done(&self, ctx: &Ctx) -> Result<()> {
        if let Restore::Guard(g) = self {
            ctx.store.snap_remove(g, &vdisk_engine::NoProgress)?;
        }
        Ok(())
    }
}

pub fn import_diff(ctx: &Ctx, a: ImportDiffArgs) -> Result<()> {
    let spec = image_spec(&a.spec)?;
    let img = ctx.store.open(&spec)?;
    refuse_writers(ctx, &spec)?;
    let input = Input::new(ctx, &a.file, "a diff")?;
    let shown = input.shown.clone();
    let sidecar = input.sidecar(a.no_sum)?;
    // Pass 1 (regular files; pipes and stdin can be read only once).
    let pass1 = match input.len {
        Some(_) => Some(
            check_file(ctx, &spec, &img, &input, sidecar.as_ref(), a.force).map_err(|mut e| {
                if e.kind == ErrorKind::Corrupt {
                    e.hint = Some(format!(
                        "nothing was changed; {}",
                        e.hint
                            .take()
                            .unwrap_or_else(|| "check the diff's source".into())
                    ));
                }
                e
            })?,
        ),
        None => None,
    };
    let progress = ctx.progress();
    progress.start("Applying diff", input.len.unwrap_or(0));
    // Checksummed again: a file must not change between the passes, and a
    // stream is checked against its sidecar (if any) at its end.
    let mut r = DiffReader::new(
        input.open(
            (pass1.is_some() || sidecar.is_some())
                .then(|| sidecar.as_ref().map_or_else(Summer::new, |s| s.1.summer())),
        )?,
        StreamKind::DiffV1,
    );
    let mut ticker = Ticker(0);
    let mut restore = Restore::None;
    // Set once the image may have been changed.
    let mut started = false;
    let result = (|| {
        match r.next_event().map_err(|e| read_error(&shown, e))? {
            Some(Event::DiffStart { .. }) => {}
            _ => {
                return Err(CliError::new(
                    ErrorKind::Corrupt,
                    format!("{shown} holds no diff"),
                ))
            }
        }
        let mut on_header = |h: &DiffHead| -> Result<Image> {
            let unchanged = match &pass1 {
                Some(p) => {
                    // The file must be what pass 1 read.
                    if p.head.from != h.from || p.head.to != h.to || p.head.size != h.size {
                        return Err(CliError::new(
                            ErrorKind::Io,
                            format!("{shown} changed while it was being applied"),
                        ));
                    }
                    p.head_unchanged
                }
                None => {
                    let unchanged = check_head(ctx, &spec, h, &shown, a.force)?;
                    if let Some(sc) = &sidecar {
                        check_identity(ctx, &spec, h, sc, &shown)?;
                    }
                    unchanged
                }
            };
            restore = match (&h.from, unchanged) {
                (Some(f), true) => Restore::Snap(spec.with_snap(f)),
                _ if input.len.is_none() => {
                    let g = spec.with_snap(&format!("vdisk-import-diff-{}", std::process::id()));
                    ctx.store.snap_create(&g).map_err(|e| {
                        CliError::from(e).with_hint(
                            "a guard snapshot lets a damaged stream be undone; free a snapshot \
                             slot, or import the diff from a file (checked before any write)",
                        )
                    })?;
                    Restore::Guard(g)
                }
                _ => Restore::None,
            };
            started = true;
            resize_for(ctx, &spec, &img, h)?;
            Ok(img.clone())
        };
        let (head, im) = apply_one(ctx, &mut r, &shown, &mut on_header, &progress, &mut ticker)?;
        // The end: nothing may follow.
        if r.next_event().map_err(|e| read_error(&shown, e))?.is_some() {
            return Err(CliError::new(
                ErrorKind::Corrupt,
                format!("{shown} continues after its end record"),
            ));
        }
        let now = r.get_ref().sum.clone().map(Summer::finish);
        match (&pass1, &sidecar, &now) {
            (Some(p), _, _) if p.sums.is_some() && now != p.sums => {
                return Err(CliError::new(
                    ErrorKind::Io,
                    format!("{shown} changed while it was being applied"),
                ));
            }
            (None, Some(sc), Some(sums)) => check_sums(&input, sc, sums)?,
            _ => {}
        }
        im.flush()?;
        Ok(head)
    })();
    progress.finish();
    let head = match result {
        Ok(h) => h,
        Err(mut e) => {
            if started {
                let what = restore.undo(ctx);
                e.hint = Some(match e.hint.take() {
                    Some(h) => format!("{what}; {h}"),
                    None => what,
                });
            }
            return Err(e);
        }
    };
    if let Some(to) = &head.to {
        ctx.store.snap_create(&spec.with_snap(to))?;
        if head.protected == Some(true) {
            ctx.store.snap_protect(&spec.with_snap(to))?;
        }
    }
    restore.done(ctx)
}

// ---------------------------------------------------------- merge-diff

pub fn merge_diff(ctx: &Ctx, a: MergeDiffArgs) -> Result<()> {
    if a.second == "-" {
        return Err(CliError::invalid(
            "only the first diff can be standard input (as rbd merge-diff)",
        )
        .with_hint("give the second diff as a file"));
    }
    let first = Input::new(ctx, &a.first, "a diff")?;
    let second = Input::new(ctx, &a.second, "a diff")?;
    let sc1 = first.sidecar(a.no_sum)?;
    let sc2 = second.sidecar(a.no_sum)?;
    if let (Some((_, s1)), Some((_, s2))) = (&sc1, &sc2) {
        if let (Some(i1), Some(i2)) = (&s1.image, &s2.image) {
            if i1.id != i2.id || i1.pool != i2.pool {
                return Err(CliError::refused(format!(
                    "the diffs are of different images: {}/{} (id {}) and {}/{} (id {})",
                    i1.pool, i1.name, i1.id, i2.pool, i2.name, i2.id
                ))
                .with_hint("merge consecutive diffs of one image"));
            }
        }
        // The same snapshot name at two sizes: two histories. (Different
        // names are the merge's own refusal.)
        if let (Some(t), Some(f)) = (&s1.to_snap, &s2.from_snap) {
            if let (true, Some(ts), Some(fs)) = (t.name == f.name, t.size, f.size) {
                if ts != fs {
                    return Err(CliError::refused(format!(
                        "the first diff ends at @{} of {ts} bytes, the second starts from \
                         @{} of {fs} bytes: they are not consecutive",
                        t.name, f.name
                    ))
                    .with_hint("merge consecutive diffs of one image"));
                }
            }
        }
    }
    let mut r1 = first.open(sc1.as_ref().map(|s| s.1.summer()))?;
    let mut r2 = second.open(sc2.as_ref().map(|s| s.1.summer()))?;
    let mut out = Output::open(ctx, &a.out, a.force, !a.no_sum, "a diff")?;
    let merged = {
        let mut w = OutWrite(&mut out);
        merge_diffs(&mut r1, &mut r2, &mut w)
    };
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            out.abort();
            return Err(merge_error(e, &first, &second));
        }
    };
    for (inp, sc, r) in [(&first, &sc1, &r1), (&second, &sc2, &r2)] {
        if let (Some(sc), Some(s)) = (sc, &r.sum) {
            if let Err(e) = check_sums(inp, sc, &s.clone().finish()) {
                out.abort();
                return Err(e.with_hint(
                    "the merged diff was not written; copy the damaged \
                                        diff again from its source",
                ));
            }
        }
    }
    let image = sc1
        .as_ref()
        .and_then(|s| s.1.image.clone())
        .or_else(|| sc2.as_ref().and_then(|s| s.1.image.clone()));
    let from_size = sc1
        .as_ref()
        .and_then(|s| s.1.from_snap.as_ref().and_then(|f| f.size));
    out.finish(|sums| {
        SumFile::new(
            DIFF_STREAM,
            image,
            merged.from_snap.as_ref().map(|n| SnapIdentity {
                name: n.clone(),
                size: from_size,
            }),
            merged.to_snap.as_ref().map(|n| SnapIdentity {
                name: n.clone(),
                size: Some(merged.size),
            }),
            merged.size,
            None,
            sums,
        )
    })
}

/// `Output` as `io::Write` for `merge_diffs`.
struct OutWrite<'a>(&'a mut Output);

impl Write for OutWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write(buf)
            .map(|_| buf.len())
            .map_err(|e| std::io::Error::other(e.message))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn merge_error(e: MergeError, first: &Input, second: &Input) -> CliError {
    match e {
        MergeError::Read { which, source } => {
            let inp = if which == Which::First { first } else { second };
            read_error(&inp.shown, source)
        }
        MergeError::Write(e) => CliError::new(ErrorKind::Io, e.to_string()),
        e @ MergeError::NotAChain { .. } => CliError::invalid(e.to_string())
            .with_hint("give the diffs in order: FIRST ends at the snapshot SECOND starts from"),
        e @ (MergeError::MissingSize(_) | MergeError::Unordered { .. }) => {
            CliError::new(ErrorKind::Unsupported, e.to_string()).with_hint(
                "merge-diff reads diffs as export-diff writes them (a size record, extents in \
                 ascending order); apply the diffs one after the other instead",
            )
        }
    }
}

// ------------------------------------------------- --export-format 2

pub fn export_image(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let spec = any_spec(&a.spec)?;
    if spec.snap.is_some() {
        return Err(CliError::invalid(format!(
            "{spec}: --export-format 2 writes the whole image with all its snapshots"
        ))
        .with_hint(
            "name the image without @SNAP, or export the snapshot's bytes without --export-format",
        ));
    }
    let img = ctx.store.open(&spec)?;
    let rec = ctx.store.record(&spec)?;
    // Every diff is computed (metadata only) before the file is created.
    let mut diffs: Vec<(DiffHeader, ImageSpec, Vec<DiffExtent>)> = Vec::new();
    let mut prev: Option<String> = None;
    for s in &rec.snaps {
        let at = spec.with_snap(&s.name);
        diffs.push((
            DiffHeader {
                from_snap: prev.clone(),
                to_snap: Some(s.name.clone()),
                protected: Some(s.protected),
                size: s.size,
            },
            at.clone(),
            ctx.store.diff(&at, prev.as_deref())?,
        ));
        prev = Some(s.name.clone());
    }
    diffs.push((
        DiffHeader {
            from_snap: prev.clone(),
            to_snap: None,
            protected: None,
            size: img.size(),
        },
        spec.clone(),
        ctx.store.diff(&spec, prev.as_deref())?,
    ));
    let mut out = Output::open(ctx, &a.file, a.force, !a.no_sum, "an image export")?;
    let progress = ctx.progress();
    let r = (|| {
        let mut b = Vec::new();
        encode_image_header(
            &ImageHeader {
                order: u64::from(rec.order),
                features: rec.features,
                stripe_unit: img.object_size(),
                stripe_count: 1,
                meta: Vec::new(),
            },
            diffs.len() as u64,
            &mut b,
        )
        .map_err(encode_error)?;
        out.write(&b)?;
        progress.start(
            "Exporting image",
            diffs
                .iter()
                .flat_map(|d| d.2.iter().map(|e| e.length))
                .sum::<u64>(),
        );
        for (h, at, extents) in &diffs {
            let src = ctx.store.open(at)?;
            let mut enc = DiffEncoder::v2();
            b.clear();
            enc.header(h, &mut b).map_err(encode_error)?;
            out.write(&b)?;
            write_extents(&src, extents, &mut enc, &mut out, None, &progress)?;
            b.clear();
            enc.end(&mut b).map_err(encode_error)?;
            out.write(&b)?;
        }
        Ok(())
    })();
    progress.finish();
    if let Err(e) = r {
        out.abort();
        return Err(e);
    }
    let size = img.size();
    out.finish(|sums| {
        SumFile::new(
            IMAGE_STREAM,
            Some(identity(&spec, &rec)),
            None,
            None,
            size,
            None,
            sums,
        )
    })
}

/// Removes a half-imported image and its snapshots.
fn remove_partial(ctx: &Ctx, spec: &ImageSpec) {
    let np = vdisk_engine::NoProgress;
    let r = (|| -> vdisk_engine::Result<()> {
        for s in ctx.store.snap_list(spec)? {
            let at = spec.with_snap(&s.name);
            if s.protected {
                ctx.store.snap_unprotect(&at)?;
            }
            ctx.store.snap_remove(&at, &np)?;
        }
        ctx.store.remove(spec)
    })();
    if let Err(e) = r {
        ctx.warn(format!("could not remove the partial image {spec}: {e}"));
    }
}

pub fn import_image(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let spec = match &a.spec {
        Some(s) => image_spec(s)?,
        None => default_import_spec(&a.file)?,
    };
    let features = parse_features(&a.features)?;
    if let Some(f) = features {
        f.check_creatable()?;
    }
    ctx.store.pool(&spec.pool)?;
    if ctx.store.open(&spec).is_ok() {
        return Err(vdisk_engine::Error::ImageExists(spec.to_string()).into());
    }
    let input = Input::new(ctx, &a.file, "an image export")?;
    let shown = input.shown.clone();
    let sidecar = input.sidecar(a.no_sum)?;
    if let Some((sc_shown, s)) = &sidecar {
        if s.stream != IMAGE_STREAM {
            return Err(CliError::new(
                ErrorKind::Corrupt,
                format!("checksum file {sc_shown} is for a diff, not an image export"),
            )
            .with_hint("delete the checksum file if the export is right, or pass --no-sum"));
        }
    }
    let mut r = DiffReader::new(
        input.open(sidecar.as_ref().map(|s| s.1.summer()))?,
        StreamKind::Image,
    );
    let progress = ctx.progress();
    progress.start("Importing image", input.len.unwrap_or(0));
    let mut ticker = Ticker(0);
    let mut created = false;
    let result = (|| {
        // Properties.
        let (mut order, mut file_features) = (None, None);
        let (mut unit, mut count) = (0u64, 1u64);
        let n = loop {
            match r.next_event().map_err(|e| read_error(&shown, e))? {
                Some(Event::Order(o)) => order = Some(o),
                Some(Event::Features(f)) => file_features = Some(f),
                Some(Event::StripeUnit(u)) => unit = u,
                Some(Event::StripeCount(c)) => count = c,
                Some(Event::Meta { key, .. }) => ctx.warn(format!(
                    "image-meta {key:?} is not kept: vdisk images have no image-meta"
                )),
                Some(Event::Skipped { tag, len }) => ctx.warn(format!(
                    "{shown}: skipped an image property with unknown tag {} ({len} bytes), as rbd does",
                    tag.escape_ascii()
                )),
                Some(Event::DiffCount(n)) => break n,
                _ => {
                    return Err(CliError::new(
                        ErrorKind::Corrupt,
                        format!("{shown} ends before its diffs"),
                    ))
                }
            }
        };
        let order = match (a.order, order) {
            (Some(o), _) => o,
            (None, Some(o)) if (12..=25).contains(&o) => o as u8,
            (None, Some(o)) => {
                return Err(CliError::new(
                    ErrorKind::Unsupported,
                    format!("{shown} has objects of order {o}; vdisk supports 12 to 25"),
                )
                .with_hint("choose the object size with --order 22 (4 MiB)"))
            }
            (None, None) => ctx.store.config().default_order,
        };
        let features = match (features, file_features) {
            (Some(f), _) => Some(f),
            (None, Some(bits)) => {
                let f = Features(bits);
                f.check_creatable().map_err(|e| {
                    CliError::from(e).with_hint(
                        "the export's image has features vdisk cannot create: choose them with \
                         --features (e.g. --features layering,exclusive-lock,object-map,fast-diff,deep-flatten)",
                    )
                })?;
                Some(f)
            }
            (None, None) => None,
        };
        if count > 1 || (unit != 0 && unit != 1u64 << order) {
            ctx.warn(format!(
                "striping (unit {unit}, count {count}) is not kept: vdisk does not stripe; the \
                 data is the same"
            ));
        }
        if n == 0 {
            return Err(CliError::new(
                ErrorKind::Corrupt,
                format!(
                    "{shown} holds no diffs (rbd writes one per snapshot and one for the head)"
                ),
            ));
        }
        let mut prev_to: Option<String> = None;
        for i in 0..n {
            match r.next_event().map_err(|e| read_error(&shown, e))? {
                Some(Event::DiffStart { .. }) => {}
                _ => {
                    return Err(CliError::new(
                        ErrorKind::Corrupt,
                        format!("{shown}: diff {} is missing", i + 1),
                    ))
                }
            }
            let mut on_header = |h: &DiffHead| -> Result<Image> {
                let bad = |what: String| {
                    CliError::new(
                        ErrorKind::Corrupt,
                        format!("{shown}: diff {} {what}", i + 1),
                    )
                };
                if h.from != prev_to {
                    return Err(bad(match (&h.from, &prev_to) {
                        (Some(f), Some(p)) => format!("starts from snapshot {f:?}, not from {p:?} where the previous one ended"),
                        (Some(f), None) => format!("starts from snapshot {f:?}, which does not exist yet"),
                        (None, _) => "starts from nothing, but it is not the first".to_string(),
                    }));
                }
                if let Some(to) = &h.to {
                    validate_name(to).map_err(|e| {
                        CliError::new(
                            ErrorKind::Unsupported,
                            format!("{shown} holds snapshot {to:?}, a name vdisk cannot use: {e}"),
                        )
                    })?;
                }
                if let Some(size) = h.size {
                    validate_image_size(&size.to_string(), size).map_err(|_| {
                        CliError::new(
                            ErrorKind::Unsupported,
                            format!("{shown} holds an image of {size} bytes; vdisk images are positive multiples of 512 bytes"),
                        )
                    })?;
                }
                if !created {
                    let size = h.size.ok_or_else(|| bad("has no size record".into()))?;
                    let img = ctx.store.create(
                        &spec,
                        &CreateOptions {
                            size,
                            order: Some(order),
                            features,
                        },
                    )?;
                    created = true;
                    return Ok(img);
                }
                let img = ctx.store.open(&spec)?;
                resize_for(ctx, &spec, &img, h)?;
                Ok(img)
            };
            let (head, _) = apply_one(ctx, &mut r, &shown, &mut on_header, &progress, &mut ticker)?;
            if let Some(to) = &head.to {
                let at = spec.with_snap(to);
                ctx.store.snap_create(&at)?;
                if head.protected == Some(true) {
                    ctx.store.snap_protect(&at)?;
                }
            }
            prev_to = head.to;
        }
        if r.next_event().map_err(|e| read_error(&shown, e))?.is_some() {
            return Err(CliError::new(
                ErrorKind::Corrupt,
                format!("{shown} continues after its last diff"),
            ));
        }
        if let (Some(sc), Some(s)) = (&sidecar, &r.get_ref().sum) {
            check_sums(&input, sc, &s.clone().finish())?;
        }
        Ok(())
    })();
    progress.finish();
    if let Err(mut e) = result {
        if created {
            remove_partial(ctx, &spec);
            if e.kind == ErrorKind::Corrupt {
                e.hint = Some(format!(
                    "the partial image {spec} was removed; copy the file again from its source"
                ));
            }
        }
        return Err(e);
    }
    Ok(())
}
