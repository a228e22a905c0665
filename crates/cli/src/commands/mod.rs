//! One module per command group. [`run`] finds the data directory; when a
//! daemon serves it, the command goes to the daemon (see
//! [`crate::remote`]), which runs [`dispatch`] on its own store; otherwise
//! the command opens the directory itself, runs, and flushes every open
//! image before reporting success.

mod bench;
mod clone;
mod convert;
mod diff_io;
mod gpt;
mod image;
mod meta;
mod pool;
mod report;
mod schedule;
mod serve;
mod snap;
pub mod status;
mod transfer;

pub use gpt::is_file_source;
pub use meta::read_stdin_text;
pub use transfer::default_import_spec;

use crate::args::{Cli, Command, Format};
use crate::error::{CliError, Result};
use crate::output::{Out, Sink};
use crate::progress::{Bar, Prog};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_engine::spec::validate_image_size;
use vdisk_engine::{parse_size, Features, ImageSpec, Progress, Store};
use vdisk_server::api::types::ConnectionInfo;
use vdisk_server::registry::ImageRef;
use vdisk_server::Registry;

/// What every command gets.
#[derive(Debug)]
pub struct Ctx {
    pub store: Store,
    pub out: Out,
    /// Standard error (warnings).
    pub err: Sink,
    progress: ProgressMode,
    /// Set when the daemon runs the command for a client.
    pub daemon: Option<Daemon>,
}

/// How long work shows progress.
enum ProgressMode {
    /// A bar on this terminal, unless `--no-progress`.
    Bar { no_progress: bool },
    /// The job's progress, in the daemon.
    Shared(Arc<dyn Progress + Send + Sync>),
}

impl std::fmt::Debug for ProgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProgressMode::Bar { no_progress } => write!(f, "Bar(no_progress: {no_progress})"),
            ProgressMode::Shared(_) => f.write_str("Shared"),
        }
    }
}

/// What a command run by the daemon knows besides the store.
#[derive(Debug)]
pub struct Daemon {
    /// Connected clients and jobs.
    pub registry: Registry,
    /// The client's standard input, when it sent one (`meta restore -`).
    pub stdin: Option<String>,
}

impl Ctx {
    /// A context writing to this process's standard output and error.
    pub fn local(store: Store, format: Format, no_progress: bool) -> Self {
        Ctx {
            store,
            out: Out::new(format, Sink::Stdout),
            err: Sink::Stderr,
            progress: ProgressMode::Bar { no_progress },
            daemon: None,
        }
    }

    /// A context for the daemon: output captured, progress to `progress`.
    pub fn in_daemon(
        store: Store,
        format: Format,
        progress: Arc<dyn Progress + Send + Sync>,
        daemon: Daemon,
    ) -> Self {
        Ctx {
            store,
            out: Out::new(format, Sink::buffer()),
            err: Sink::buffer(),
            progress: ProgressMode::Shared(progress),
            daemon: Some(daemon),
        }
    }

    /// Progress of long work: a bar (hidden unless stderr is a terminal),
    /// or the daemon's job.
    pub fn progress(&self) -> Prog {
        match &self.progress {
            ProgressMode::Bar { no_progress } => Prog::Bar(Bar::new(*no_progress)),
            ProgressMode::Shared(p) => Prog::Shared(p.clone()),
        }
    }

    /// Prints a warning on standard error (never fails: it may be closed).
    pub fn warn(&self, msg: impl std::fmt::Display) {
        let _ = self
            .err
            .write(format!("vdisk: warning: {msg}\n").as_bytes());
    }

    /// A path the command reads or writes. The daemon runs elsewhere than
    /// the client: it takes absolute paths only (the CLI makes relative
    /// ones absolute before sending them).
    pub fn path(&self, p: &str) -> Result<PathBuf> {
        let path = PathBuf::from(p);
        if self.daemon.is_some() && !path.is_absolute() {
            return Err(CliError::invalid(format!(
                "{p:?} is a relative path; the daemon needs absolute paths"
            ))
            .with_hint(
                "the daemon opens files itself, with its own permissions: give the full path",
            ));
        }
        Ok(path)
    }

    /// Refuses what cannot run inside the daemon (bulk data through the
    /// client's standard input or output, in-process benchmarks).
    pub fn not_in_daemon(&self, what: &str, hint: &str) -> Result<()> {
        if self.daemon.is_some() {
            return Err(CliError::refused(format!(
                "{what} is not supported while the daemon (`vdisk serve`) runs"
            ))
            .with_hint(hint.to_owned()));
        }
        Ok(())
    }

    /// The clients of the daemon connected to `spec`'s image (none
    /// without a daemon).
    pub fn clients_of(&self, spec: &ImageSpec) -> Result<Vec<ConnectionInfo>> {
        match &self.daemon {
            Some(d) => Ok(d.registry.connections_to(&image_ref(&self.store, spec)?)),
            None => Ok(Vec::new()),
        }
    }

    /// The clients of the daemon writing `spec`'s image.
    pub fn writers_of(&self, spec: &ImageSpec) -> Result<Vec<ConnectionInfo>> {
        match &self.daemon {
            Some(d) => Ok(d.registry.writers_of(&image_ref(&self.store, spec)?)),
            None => Ok(Vec::new()),
        }
    }
}

/// The identity of `spec`'s image (pool and id), as the registry keys it.
pub fn image_ref(store: &Store, spec: &ImageSpec) -> Result<ImageRef> {
    let rec = store.record(&spec.image_only())?;
    Ok(ImageRef {
        pool: spec.pool.clone(),
        id: rec.id,
    })
}

/// `N client(s): A (rw since T), B (...)`.
pub fn describe_clients(clients: &[ConnectionInfo]) -> String {
    let list: Vec<String> = clients
        .iter()
        .map(|c| format!("{} ({} {}, since {})", c.client, c.export, c.mode, c.since))
        .collect();
    format!("{} client(s): {}", clients.len(), list.join(", "))
}

/// Runs one command line; returns the exit code when the output was
/// already printed (by the daemon's reply), `Ok(0)` after a local run.
pub fn run(cli: Cli) -> Result<u8> {
    let dir = data_dir(cli.dir)?;
    let command = match cli.command {
        // Always here: it takes the directory (refused, naming the
        // holder, while a daemon runs).
        Command::Serve(a) => {
            let ctx = Ctx::local(
                Store::open_dir(&dir, &holder_description())?,
                cli.format,
                cli.no_progress,
            );
            serve::run(&ctx, a, &dir)?;
            return Ok(0);
        }
        Command::Status(a) => return status::run(&dir, cli.format, a).map(|()| 0),
        // Files and NBD only: no data directory, no daemon.
        c if convert::files_only(&c) => {
            let ctx = Ctx::local(convert::scratch_store()?, cli.format, cli.no_progress);
            dispatch(&ctx, c)?;
            return Ok(0);
        }
        other => other,
    };
    if let Some(client) = crate::remote::find_daemon(&dir)? {
        return crate::remote::run(&client, cli.format, cli.no_progress, command);
    }
    let ctx = Ctx::local(
        Store::open_dir(&dir, &holder_description())?,
        cli.format,
        cli.no_progress,
    );
    dispatch(&ctx, command)?;
    // Engine operations commit as they go; this makes sure no write made
    // through an image handle is left unflushed.
    ctx.store.flush_all()?;
    Ok(0)
}

/// Runs one command against `ctx` (here, or in the daemon).
pub fn dispatch(ctx: &Ctx, cmd: Command) -> Result<()> {
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
        Command::Gpt(a) => gpt::gpt(ctx, a),
        Command::Cp(a) => transfer::cp(ctx, a),
        Command::Import(a) if a.export_format == Some(2) => diff_io::import_image(ctx, a),
        Command::Import(a) if convert::import_wants_convert(&a) => convert::import(ctx, a),
        Command::Import(a) => transfer::import(ctx, a),
        Command::Export(a) if a.export_format == Some(2) => diff_io::export_image(ctx, a),
        Command::Export(a) if convert::export_wants_convert(&a) => convert::export(ctx, a),
        Command::Export(a) => transfer::export(ctx, a),
        Command::Convert(a) => convert::convert(ctx, a),
        Command::Compare(a) => convert::compare(ctx, a),
        Command::Map(a) => convert::map(ctx, a),
        Command::ExportDiff(a) => diff_io::export_diff(ctx, a),
        Command::ImportDiff(a) => diff_io::import_diff(ctx, a),
        Command::MergeDiff(a) => diff_io::merge_diff(ctx, a),
        Command::Snap(c) => snap::run(ctx, c),
        Command::Clone(a) => clone::clone(ctx, a),
        Command::Children(a) => clone::children(ctx, &a.spec),
        Command::Flatten(a) => {
            if a.no_wait && ctx.daemon.is_none() {
                return Err(CliError::refused(
                    "--no-wait needs a running daemon: without one, flatten runs in this process",
                )
                .with_hint("start `vdisk serve`, or flatten without --no-wait"));
            }
            clone::flatten(ctx, &a.spec)
        }
        Command::Meta(c) => meta::run(ctx, c),
        Command::Bench(a) => bench::run(ctx, a),
        Command::Status(a) => status::in_daemon(ctx, a),
        Command::Serve(_) => Err(CliError::refused(
            "the daemon is already serving this data directory",
        )
        .with_hint("stop it first (SIGTERM) to restart it with other options")),
    }
}

/// `--dir`, `$VDISK_DIR`, else `/var/lib/vdisk` for root, else
/// `$XDG_DATA_HOME/vdisk`, else `$HOME/.local/share/vdisk`.
pub fn data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
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
