//! One module per command group. [`run`] opens the data directory, runs the
//! command and flushes every open image before reporting success.

mod bench;
mod clone;
mod image;
mod meta;
mod pool;
mod report;
mod serve;
mod snap;
mod transfer;

use crate::args::{Cli, Command};
use crate::error::{CliError, Result};
use crate::output::Out;
use crate::progress::Bar;
use std::io::Write;
use std::path::{Path, PathBuf};
use vdisk_engine::spec::validate_image_size;
use vdisk_engine::{parse_size, Features, ImageSpec, Store};

/// What every command gets.
#[derive(Debug)]
pub struct Ctx {
    pub store: Store,
    pub out: Out,
    no_progress: bool,
}

impl Ctx {
    /// A progress bar for long work (hidden unless stderr is a terminal).
    pub fn progress(&self) -> Bar {
        Bar::new(self.no_progress)
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    let dir = data_dir(cli.dir)?;
    let store = Store::open_dir(&dir, &holder_description())?;
    let ctx = Ctx {
        store,
        out: Out::new(cli.format),
        no_progress: cli.no_progress,
    };
    dispatch(&ctx, cli.command)?;
    // Engine operations commit as they go; this makes sure no write made
    // through an image handle is left unflushed.
    ctx.store.flush_all()?;
    Ok(())
}

fn dispatch(ctx: &Ctx, cmd: Command) -> Result<()> {
    match cmd {
        Command::Pool(c) => pool::run(ctx, c),
        Command::Create(a) => image::create(ctx, a),
        Command::Ls(a) => image::ls(ctx, a),
        Command::Info(a) => image::info(ctx, &a.spec),
        Command::Rm(a) => image::rm(ctx, &a.spec),
        Command::Rename(a) => image::rename(ctx, a),
        Command::Resize(a) => image::resize(ctx, a),
        Command::Feature(c) => image::feature(ctx, c),
        Command::Du(a) => report::du(ctx, a),
        Command::Diff(a) => report::diff(ctx, a),
        Command::ObjectMap(c) => report::object_map(ctx, c),
        Command::Check(a) => report::check(ctx, a),
        Command::Cp(a) => transfer::cp(ctx, a),
        Command::Import(a) => transfer::import(ctx, a),
        Command::Export(a) => transfer::export(ctx, a),
        Command::Snap(c) => snap::run(ctx, c),
        Command::Clone(a) => clone::clone(ctx, a),
        Command::Children(a) => clone::children(ctx, &a.spec),
        Command::Flatten(a) => clone::flatten(ctx, &a.spec),
        Command::Meta(c) => meta::run(ctx, c),
        Command::Bench(a) => bench::run(ctx, a),
        Command::Serve(a) => serve::run(ctx, a),
    }
}

/// `--dir`, `$VDISK_DIR`, else `/var/lib/vdisk` for root, else
/// `$XDG_DATA_HOME/vdisk`, else `$HOME/.local/share/vdisk`.
fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        if d.as_os_str().is_empty() {
            return Err(CliError::invalid("--dir (or VDISK_DIR) is empty"));
        }
        return Ok(d);
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/vdisk"));
    }
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(x) = nonempty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(x).join("vdisk"));
    }
    if let Some(h) = nonempty("HOME") {
        return Ok(Path::new(&h).join(".local/share/vdisk"));
    }
    Err(
        CliError::invalid("cannot choose a data directory: neither HOME nor XDG_DATA_HOME is set")
            .with_hint("pass --dir DIR or set VDISK_DIR"),
    )
}

/// Whether we run as root, without `unsafe` (`geteuid`): `/proc/self` is
/// owned by the process's effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Who holds the data directory, for a refused second process: the
/// command line (the lock records the pid itself).
fn holder_description() -> String {
    let mut args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let prog = args
        .next()
        .and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "vdisk".into());
    std::iter::once(prog)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------- helpers

/// Parses `[POOL/]IMAGE` (no snapshot).
pub fn image_spec(s: &str) -> Result<ImageSpec> {
    Ok(ImageSpec::parse_image(s)?)
}

/// Parses `[POOL/]IMAGE@SNAP`.
pub fn snap_spec(s: &str) -> Result<ImageSpec> {
    Ok(ImageSpec::parse_snap(s)?)
}

/// Parses `[POOL/]IMAGE[@SNAP]`.
pub fn any_spec(s: &str) -> Result<ImageSpec> {
    Ok(ImageSpec::parse(s)?)
}

/// Parses and validates an image size (`10G`; a bare number is MiB).
pub fn image_size(s: &str) -> Result<u64> {
    let bytes = parse_size(s)?;
    Ok(validate_image_size(s, bytes)?)
}

/// The union of every `--features` value; `None` when none was given.
pub fn parse_features(list: &[String]) -> Result<Option<Features>> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut f = Features(0);
    for item in list {
        f = f.union(Features::parse(item)?);
    }
    Ok(Some(f))
}

/// Prints a warning on stderr (never fails: stderr may be closed).
pub fn warn(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "vdisk: warning: {msg}");
}
