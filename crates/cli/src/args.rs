//! Command-line definitions (clap derive). The doc comments are the
//! `--help` text.
//!
//! The commands are also the documents of the management API: the CLI
//! sends the [`Command`] it parsed, as JSON, to a running daemon, which
//! runs the same code on it (`POST /v1/commands`, docs/CLI.md). Variants
//! are kebab-case (`{"object-map": {"check": {"spec": "rbd/a"}}}`), fields
//! snake_case; optional fields may be left out; unknown fields are refused.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// vdisk: a store for virtual-machine disks, with rbd's conventions.
///
/// Images are named `[POOL/]IMAGE[@SNAP]` as in rbd; the pool defaults to
/// `rbd`. Sizes take K/M/G/T suffixes (powers of 1024); a bare number means
/// MiB, as in rbd.
#[derive(Debug, Parser)]
#[command(
    name = "vdisk",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Data directory holding the pools [default: /var/lib/vdisk as root,
    /// else $XDG_DATA_HOME/vdisk or ~/.local/share/vdisk]
    #[arg(
        long,
        global = true,
        env = "VDISK_DIR",
        hide_env_values = true,
        value_name = "DIR"
    )]
    pub dir: Option<PathBuf>,

    /// Output format of listings and reports
    #[arg(long, global = true, value_enum, default_value_t = Format::Plain)]
    pub format: Format,

    /// Never show progress bars (they are shown only when stderr is a terminal)
    #[arg(long, global = true)]
    pub no_progress: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Text for people (tables like rbd's)
    Plain,
    /// JSON for programs (field names documented in docs/CLI.md)
    Json,
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Manage pools (named places for images)
    #[command(subcommand)]
    Pool(PoolCmd),

    /// Create an empty (thin) image
    Create(CreateArgs),

    /// List the images of a pool
    #[command(visible_alias = "list")]
    Ls(LsArgs),

    /// Show an image's or a snapshot's details
    Info(SpecArg),

    /// Remove an image (it must have no snapshots)
    #[command(visible_alias = "remove")]
    Rm(SpecArg),

    /// Rename an image within its pool
    #[command(visible_alias = "mv")]
    Rename(RenameArgs),

    /// Grow or shrink an image
    Resize(ResizeArgs),

    /// Show provisioned and used space, per image and snapshot
    #[command(visible_alias = "disk-usage")]
    Du(DuArgs),

    /// Copy an image or snapshot into a new independent image
    #[command(visible_alias = "copy")]
    Cp(CpArgs),

    /// Import a raw or qcow2 file, block device, NBD export or standard input into a new image
    Import(ImportArgs),

    /// Export an image or snapshot as raw or qcow2 to a file, device, NBD export or standard output
    /// (`--export-format 2`: the image with every snapshot, as `rbd export`)
    Export(ExportArgs),

    /// Write what changed between two snapshots as an RBD diff (`rbd export-diff`)
    ///
    /// The diff goes from --from-snap (or from nothing: every data extent)
    /// to SPEC's snapshot (or its head). A file gets a checksum sidecar
    /// FILE.vdisk-sum (image identity, snapshot sizes, crc32c per 4 MiB,
    /// sha256) that `import-diff` checks before applying anything.
    ExportDiff(ExportDiffArgs),

    /// Apply an RBD diff to an image's head, then create its to-snapshot (`rbd import-diff`)
    ///
    /// As rbd: the diff's from-snapshot must exist on the image and its
    /// to-snapshot must not; the image is resized to the diff's size. A
    /// file is checked completely (structure, FILE.vdisk-sum if present,
    /// that the head still equals the from-snapshot) before anything is
    /// written; a bad diff changes nothing.
    ImportDiff(ImportDiffArgs),

    /// Merge two consecutive RBD diffs (S1→S2, S2→S3) into one (S1→S3) (`rbd merge-diff`)
    MergeDiff(MergeDiffArgs),

    /// Copy a disk between raw or qcow2 files, block devices, NBD servers and pool images
    ///
    /// SRC and DST are each a file or block device (a path starting with `/`
    /// or `.`), an NBD URI (`nbd://HOST[:PORT]/EXPORT`,
    /// `nbd+unix:///EXPORT?socket=PATH`) or an image spec `[POOL/]IMAGE[@SNAP]`.
    /// A new file or image is created (an existing file needs --force); a
    /// block device, an NBD export or, with -n, anything existing is
    /// overwritten and never assumed to read zeros: its fast zeroing is used
    /// only after vdisk proved that it zeroes (incident 1), else zeros are
    /// written as data, with a warning. Block devices and NBD destinations are
    /// read back and compared afterwards unless --no-verify.
    Convert(ConvertArgs),

    /// Compare two disks' contents (exit 0: identical, 1: different, 2: error), like `qemu-img compare`
    ///
    /// A and B are files, block devices, NBD URIs or image specs (as in
    /// `convert`). Disks of different sizes are equal when the longer one
    /// reads zeros past the shorter one's end. The first differing offset is
    /// printed.
    Compare(CompareArgs),

    /// List a disk's data and zero extents, like `qemu-img map`
    ///
    /// SRC is a file, block device, NBD URI or image spec (as in `convert`);
    /// `--format json` prints qemu-img's `--output=json` fields.
    Map(MapArgs),

    /// Manage snapshots
    #[command(subcommand)]
    Snap(SnapCmd),

    /// Clone a protected snapshot into a new copy-on-write image
    Clone(CloneArgs),

    /// List the clones of a snapshot (of every snapshot when none is named)
    Children(SpecArg),

    /// Copy into a clone everything it reads from its parent, and detach it
    ///
    /// With a running daemon it runs as a background job (`vdisk status`
    /// shows its progress); the command waits for the job unless --no-wait.
    Flatten(FlattenArgs),

    /// List the extents that differ from a snapshot (or all data extents)
    Diff(DiffArgs),

    /// Check or rebuild an image's object map
    #[command(subcommand, name = "object-map")]
    ObjectMap(ObjectMapCmd),

    /// Enable or disable image features
    #[command(subcommand)]
    Feature(FeatureCmd),

    /// Back up or restore a pool's metadata (JSON)
    #[command(subcommand)]
    Meta(MetaCmd),

    /// Verify every pool's metadata against the data objects
    Check(CheckArgs),

    /// Check a GPT partition table: protective MBR, both headers, both entry arrays
    ///
    /// SRC is an image or snapshot, or a raw file or block device when it
    /// starts with `/` or `.` (`/dev/sdb`, `./disk.raw`). 512- and 4096-byte
    /// sectors are detected. Exit status 0: intact (warnings allowed);
    /// 9: damaged, or no GPT; the report names each problem.
    Gpt(GptArgs),

    /// Measure I/O performance on an image, like `rbd bench`
    Bench(BenchArgs),

    /// Show the running daemon: connected clients and jobs (of SPEC only, if given)
    Status(StatusArgs),

    /// Serve images and snapshots over NBD (runs in the foreground, logs to stderr)
    ///
    /// Export names are image specs: `rbd/IMAGE`, `rbd/IMAGE@SNAP` (read-only),
    /// and for the default pool also `IMAGE`, `IMAGE@SNAP`. Clients connect with
    /// e.g. `qemu -drive file=nbd://127.0.0.1:10809/rbd/IMAGE` or
    /// `nbd+unix:///rbd/IMAGE?socket=DIR/nbd.sock`.
    ///
    /// While it runs, other `vdisk` commands on the same data directory are
    /// sent to it through its management API (DIR/api.sock, mode 0600) and
    /// work as usual; `vdisk status` lists its clients and jobs. One client
    /// writes an image at a time unless --shared.
    ///
    /// SIGTERM or SIGINT stops it: in-flight requests finish, every image is
    /// flushed, exit status 0. Log verbosity: VDISK_LOG (e.g. `debug`,
    /// `warn`), default `info`. The data directory stays locked while serving.
    Serve(ServeArgs),
}

// ------------------------------------------------------------------ pools

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PoolCmd {
    /// Create a pool
    Create {
        /// Pool name
        name: String,
        /// Keep the pool's data objects in this directory instead of DIR/pools/NAME
        #[arg(long, value_name = "DIR")]
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// List pools
    #[command(visible_alias = "list")]
    Ls {
        /// Long listing: id, image count and data location
        #[arg(short = 'l', long)]
        #[serde(default)]
        long: bool,
    },
    /// Remove an empty pool
    #[command(visible_alias = "remove")]
    Rm {
        /// Pool name
        name: String,
    },
}

// ----------------------------------------------------------------- images

/// One image or snapshot spec.
#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecArg {
    /// [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SPEC")]
    pub spec: String,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// [POOL/]IMAGE
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// Size: 10G, 512M, 4096B... (a bare number is MiB, as in rbd)
    #[arg(short = 's', long, value_name = "SIZE", allow_hyphen_values = true)]
    pub size: String,

    /// Object size as a power of two, 12 (4 KiB) to 25 (32 MiB) [default: from vdisk.toml, else 22]
    #[arg(long, value_name = "ORDER", value_parser = clap::value_parser!(u8).range(12..=25))]
    #[serde(default)]
    pub order: Option<u8>,

    /// Features: comma-separated names (layering,exclusive-lock,object-map,fast-diff,deep-flatten)
    /// or a number such as 61; may be repeated [default: from vdisk.toml, else 61]
    #[arg(long, visible_alias = "image-feature", value_name = "LIST|NUM")]
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LsArgs {
    /// Pool [default: rbd]
    #[arg(value_name = "POOL")]
    #[serde(default)]
    pub pool: Option<String>,

    /// Long listing (NAME SIZE PARENT FMT PROT LOCK), snapshots included
    #[arg(short = 'l', long)]
    #[serde(default)]
    pub long: bool,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameArgs {
    /// [POOL/]IMAGE to rename
    #[arg(value_name = "SRC")]
    pub src: String,
    /// New name: [POOL/]IMAGE, in the same pool (the pool defaults to SRC's)
    #[arg(value_name = "DST")]
    pub dst: String,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeArgs {
    /// [POOL/]IMAGE
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// New size: 10G, 512M, 4096B... (a bare number is MiB)
    #[arg(short = 's', long, value_name = "SIZE", allow_hyphen_values = true)]
    pub size: String,

    /// Allow making the image smaller (discards the data beyond the new size)
    #[arg(long)]
    #[serde(default)]
    pub allow_shrink: bool,

    /// Move the backup GPT (header and entries) to the new end of the image
    /// and update the primary, like `sgdisk -e`; refused, without resizing,
    /// unless the image has an intact primary GPT
    #[arg(long)]
    #[serde(default)]
    pub fix_gpt: bool,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuArgs {
    /// [POOL/]IMAGE[@SNAP] [default: every image of the pool]
    #[arg(value_name = "SPEC")]
    #[serde(default)]
    pub spec: Option<String>,

    /// Pool to report on when no SPEC is given [default: rbd]
    #[arg(short = 'p', long, value_name = "POOL", conflicts_with = "spec")]
    #[serde(default)]
    pub pool: Option<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpArgs {
    /// Source: [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Destination (created): [POOL/]IMAGE
    #[arg(value_name = "DST")]
    pub dst: String,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportArgs {
    /// Raw or qcow2 file, block device, NBD URI (nbd://HOST[:PORT]/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH), or `-` for standard input (raw)
    #[arg(value_name = "FILE|URI|-", allow_hyphen_values = true)]
    pub file: String,

    /// Image to create: [POOL/]IMAGE [default: the file's base name]
    #[arg(value_name = "SPEC")]
    #[serde(default)]
    pub spec: Option<String>,

    /// Object size as a power of two, 12 (4 KiB) to 25 (32 MiB) [default: from vdisk.toml, else 22]
    #[arg(long, value_name = "ORDER", value_parser = clap::value_parser!(u8).range(12..=25))]
    #[serde(default)]
    pub order: Option<u8>,

    /// Features: comma-separated names (layering,exclusive-lock,object-map,fast-diff,deep-flatten)
    /// or a number such as 61; may be repeated [default: from vdisk.toml, else 61]
    #[arg(long, visible_alias = "image-feature", value_name = "LIST|NUM")]
    #[serde(default)]
    pub features: Vec<String>,

    /// 1: raw bytes (default); 2: rbd's export-format 2, the image with
    /// its properties and every snapshot
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    #[serde(default)]
    pub export_format: Option<u8>,

    /// With --export-format 2: do not check FILE.vdisk-sum
    #[arg(long, requires = "export_format")]
    #[serde(default)]
    pub no_sum: bool,

    #[command(flatten)]
    #[serde(default)]
    pub copy: CopyArgs,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    /// [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// File or block device to write, an NBD URI, or `-` for standard output
    #[arg(value_name = "FILE|URI|-", allow_hyphen_values = true)]
    pub file: String,

    /// Overwrite FILE if it exists (needed for block devices too)
    #[arg(long)]
    #[serde(default)]
    pub force: bool,

    /// 1: raw bytes (default); 2: rbd's export-format 2, the image with
    /// its properties and every snapshot
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    #[serde(default)]
    pub export_format: Option<u8>,

    /// With --export-format 2: do not write FILE.vdisk-sum
    #[arg(long, requires = "export_format")]
    #[serde(default)]
    pub no_sum: bool,

    /// Format of FILE: raw (default) or qcow2
    #[arg(short = 'O', long = "dst-format", value_enum, value_name = "FMT")]
    #[serde(default)]
    pub dst_format: Option<ImageFormat>,

    /// Write a compressed qcow2 (implies -O qcow2)
    #[arg(short = 'c', long)]
    #[serde(default)]
    pub compress: bool,

    #[command(flatten)]
    #[serde(default)]
    pub copy: CopyArgs,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDiffArgs {
    /// [POOL/]IMAGE[@SNAP]: the diff ends at this snapshot (or the head)
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// File to create, or `-` for standard output
    #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
    pub file: String,

    /// Snapshot the diff starts from [default: none: every data extent]
    #[arg(long, value_name = "SNAP")]
    #[serde(default)]
    pub from_snap: Option<String>,

    /// Write whole objects that changed, not only the changed blocks
    #[arg(long)]
    #[serde(default)]
    pub whole_object: bool,

    /// Overwrite FILE if it exists
    #[arg(long)]
    #[serde(default)]
    pub force: bool,

    /// Do not write the checksum sidecar FILE.vdisk-sum
    #[arg(long)]
    #[serde(default)]
    pub no_sum: bool,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportDiffArgs {
    /// RBD diff (from `rbd export-diff` or `vdisk export-diff`), or `-` for standard input
    #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
    pub file: String,

    /// [POOL/]IMAGE to apply it to
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// Apply even though the head changed since the from-snapshot (the
    /// result then is not the source's to-snapshot), and skip the
    /// sidecar's check of what the head holds
    #[arg(long)]
    #[serde(default)]
    pub force: bool,

    /// Do not check FILE.vdisk-sum even if it exists
    #[arg(long)]
    #[serde(default)]
    pub no_sum: bool,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeDiffArgs {
    /// First diff (S1→S2), or `-` for standard input
    #[arg(value_name = "FIRST|-", allow_hyphen_values = true)]
    pub first: String,

    /// Second diff (S2→S3)
    #[arg(value_name = "SECOND")]
    pub second: String,

    /// Merged diff to create (S1→S3), or `-` for standard output
    #[arg(value_name = "OUT|-", allow_hyphen_values = true)]
    pub out: String,

    /// Overwrite OUT if it exists
    #[arg(long)]
    #[serde(default)]
    pub force: bool,

    /// Neither check the inputs' .vdisk-sum sidecars nor write OUT.vdisk-sum
    #[arg(long)]
    #[serde(default)]
    pub no_sum: bool,
}

// -------------------------------------------------------------- snapshots

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SnapCmd {
    /// Take a snapshot (instant; contains every write completed before it)
    #[command(visible_alias = "add")]
    Create(SpecArg),
    /// List an image's snapshots
    #[command(visible_alias = "list")]
    Ls(SpecArg),
    /// Remove a snapshot (it must be unprotected and have no clones)
    #[command(visible_alias = "remove")]
    Rm(SpecArg),
    /// Rename a snapshot: `snap rename IMG@OLD IMG@NEW` (or just NEW)
    Rename {
        /// [POOL/]IMAGE@SNAP
        #[arg(value_name = "SRC")]
        src: String,
        /// [POOL/]IMAGE@NEWSNAP, or the new snapshot name alone
        #[arg(value_name = "DST")]
        dst: String,
    },
    /// Make the image equal to a snapshot again (discards later writes)
    ///
    /// Refused while clients have the image open read-write through the
    /// daemon (their disk would change under them), unless --force.
    #[command(visible_alias = "revert")]
    Rollback(RollbackArgs),
    /// Protect a snapshot from removal (needed before cloning it)
    Protect(SpecArg),
    /// Unprotect a snapshot (refused while it has clones)
    Unprotect(SpecArg),
    /// Remove every unprotected snapshot of an image
    Purge(SpecArg),
    /// Limit the number of snapshots of an image
    #[command(subcommand)]
    Limit(LimitCmd),
    /// Take snapshots on a schedule, keeping the newest N (run by `vdisk serve`)
    #[command(subcommand)]
    Schedule(ScheduleCmd),
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleCmd {
    /// Snapshot an image every DURATION, named sched-YYYYMMDDTHHMMSSZ (UTC)
    ///
    /// Runs happen at multiples of the interval (1h on the hour, 1d at
    /// 00:00 UTC, 1w on Mondays), while `vdisk serve` runs; after downtime
    /// the missed runs are caught up by one. With --keep N, each run then
    /// removes the oldest snapshots this schedule took beyond N (never
    /// manual ones; protected or cloned ones are skipped and reported).
    Add(ScheduleAddArgs),
    /// List schedules (of one image, or all)
    #[command(visible_alias = "list")]
    Ls(ScheduleSpecArg),
    /// Remove an image's schedules (only the one of --every if given);
    /// the snapshots they took stay
    #[command(visible_alias = "remove")]
    Rm(ScheduleRmArgs),
    /// Show last run, its result and next run of each schedule, and
    /// whether a daemon runs them
    Status(ScheduleSpecArg),
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleAddArgs {
    /// [POOL/]IMAGE
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Interval: 15m, 1h, 1h30m, 1d, 1w (at least 1m)
    #[arg(long, value_name = "DURATION")]
    pub every: String,
    /// Keep the newest N snapshots of this schedule [default: all]
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub keep: Option<u64>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpecArg {
    /// [POOL/]IMAGE [default: every image]
    #[arg(value_name = "SPEC")]
    #[serde(default)]
    pub spec: Option<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRmArgs {
    /// [POOL/]IMAGE
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Only the schedule with this interval
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub every: Option<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    /// [POOL/]IMAGE@SNAP
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// Roll back even while clients of the daemon write the image
    #[arg(long)]
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum LimitCmd {
    /// Set the limit
    Set {
        /// [POOL/]IMAGE
        #[arg(value_name = "SPEC")]
        spec: String,
        /// Largest number of snapshots allowed
        #[arg(long, value_name = "N")]
        limit: u64,
    },
    /// Remove the limit
    Clear {
        /// [POOL/]IMAGE
        #[arg(value_name = "SPEC")]
        spec: String,
    },
}

// ----------------------------------------------------------------- clones

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneArgs {
    /// Parent snapshot (protected): [POOL/]IMAGE@SNAP
    #[arg(value_name = "PARENT")]
    pub parent: String,
    /// Clone to create: [POOL/]IMAGE
    #[arg(value_name = "CHILD")]
    pub child: String,

    /// Object size as a power of two, 12 to 25 [default: the parent's]
    #[arg(long, value_name = "ORDER", value_parser = clap::value_parser!(u8).range(12..=25))]
    #[serde(default)]
    pub order: Option<u8>,

    /// Features of the clone: names or a number (layering is required)
    /// [default: from vdisk.toml, else 61]
    #[arg(long, visible_alias = "image-feature", value_name = "LIST|NUM")]
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenArgs {
    /// [POOL/]IMAGE (a clone)
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// With a running daemon: print the job id and return at once (follow
    /// it with `vdisk status`)
    #[arg(long)]
    #[serde(default)]
    pub no_wait: bool,
}

// ---------------------------------------------------------------- reports

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Older snapshot to compare against [default: none: every data extent]
    #[arg(long, value_name = "SNAP")]
    #[serde(default)]
    pub from_snap: Option<String>,
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ObjectMapCmd {
    /// Check an image's object maps against its objects (exit 7 on errors)
    Check(SpecArg),
    /// Recompute an image's object maps from its objects
    Rebuild(SpecArg),
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum FeatureCmd {
    /// Enable features (exclusive-lock, object-map, fast-diff)
    Enable(FeatureArgs),
    /// Disable features (exclusive-lock, object-map, fast-diff, deep-flatten)
    Disable(FeatureArgs),
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureArgs {
    /// [POOL/]IMAGE
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Feature names (or numbers); several at once are applied together
    #[arg(value_name = "FEATURE", required = true)]
    pub features: Vec<String>,
}

#[derive(Debug, Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum MetaCmd {
    /// Write a pool's metadata as JSON to FILE or standard output
    Backup {
        /// Pool
        #[arg(value_name = "POOL")]
        pool: String,
        /// File to write, or `-` for standard output
        #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
        file: String,
        /// Overwrite FILE if it exists
        #[arg(long)]
        #[serde(default)]
        force: bool,
    },
    /// Replace a pool's metadata with a backup (validated first; data untouched)
    Restore {
        /// Pool
        #[arg(value_name = "POOL")]
        pool: String,
        /// Backup to read, or `-` for standard input
        #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
        file: String,
    },
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptArgs {
    /// [POOL/]IMAGE[@SNAP], or a file or block device: /PATH, ./PATH
    #[arg(value_name = "SRC")]
    pub src: String,

    /// SRC as the user typed it, when the CLI made a file path absolute
    /// for the daemon (the output names it as typed)
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_as: Option<String>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckArgs {
    /// Remove orphan data objects and rebuild wrong object maps, then check again
    #[arg(long)]
    #[serde(default)]
    pub repair: bool,
}

// ------------------------------------------------------------------ bench

/// Kind of I/O for `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoType {
    Read,
    Write,
    Readwrite,
}

/// Offset pattern for `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPattern {
    Seq,
    Rand,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchArgs {
    /// [POOL/]IMAGE (a snapshot for read-only runs)
    #[arg(value_name = "SPEC")]
    pub spec: String,

    /// read, write or readwrite
    #[arg(long, value_enum)]
    pub io_type: IoType,

    /// Bytes per I/O (a bare number is bytes)
    #[arg(long, default_value = "4K", value_name = "SIZE")]
    #[serde(default = "default_io_size")]
    pub io_size: String,

    /// Concurrent I/O threads
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    #[serde(default = "default_io_threads")]
    pub io_threads: u32,

    /// Total bytes to transfer (a bare number is bytes)
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    #[serde(default = "default_io_total")]
    pub io_total: String,

    /// seq or rand
    #[arg(long, value_enum, default_value_t = IoPattern::Seq)]
    #[serde(default = "default_io_pattern")]
    pub io_pattern: IoPattern,

    /// Percentage of reads for readwrite
    #[arg(long, default_value_t = 50, value_name = "PCT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(default = "default_rw_mix_read")]
    pub rw_mix_read: u8,
}

fn default_io_size() -> String {
    "4K".into()
}
fn default_io_threads() -> u32 {
    16
}
fn default_io_total() -> String {
    "1G".into()
}
fn default_io_pattern() -> IoPattern {
    IoPattern::Seq
}
fn default_rw_mix_read() -> u8 {
    50
}

// ------------------------------------------------------------------ serve

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TCP address to listen on, ADDR:PORT (repeatable); `none` for no TCP
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    pub listen: Vec<String>,

    /// Unix socket to listen on; `none` for no socket [default: DIR/nbd.sock]
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub socket: Option<PathBuf>,

    /// Let several clients write one image at once (only for guests that
    /// coordinate, e.g. a cluster filesystem). Without it a second client
    /// opening an image read-write is refused; one client's several
    /// connections (multi-conn) are always allowed
    #[arg(long)]
    #[serde(default)]
    pub shared: bool,
}

// ----------------------------------------------------------------- status

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    /// [POOL/]IMAGE[@SNAP]: only its connections and jobs (an image's
    /// covers its snapshots too)
    #[arg(value_name = "SPEC")]
    #[serde(default)]
    pub spec: Option<String>,
}

/// Formats of image files (`-f`, `-O`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Raw bytes
    Raw,
    /// qcow2 (read: v2/v3, backing chains, compression; written: v3)
    Qcow2,
}

/// qcow2 compression (`-c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zlib (deflate), what qemu-img uses by default
    Zlib,
    /// zstd
    Zstd,
}

/// How `convert`, `import` and `export` copy (shared by the three).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyArgs {
    /// Format of the source file [default: detected]
    #[arg(short = 'f', long = "src-format", value_enum, value_name = "FMT")]
    #[serde(default)]
    pub src_format: Option<ImageFormat>,

    /// Write into the existing destination instead of creating it (qemu-img's -n);
    /// it is not assumed to read zeros
    #[arg(short = 'n', long = "no-create")]
    #[serde(default)]
    pub no_create: bool,

    /// The existing destination already reads zeros everywhere: zero ranges are skipped.
    /// Only say so if you know it (a freshly created thin LV, a new NBD export)
    #[arg(long)]
    #[serde(default)]
    pub target_is_zero: bool,

    /// Read the destination back and compare it with the source [default: on for
    /// block devices and NBD destinations]
    #[arg(long, overrides_with = "no_verify")]
    #[serde(default)]
    pub verify: bool,

    /// Do not read the destination back
    #[arg(long, overrides_with = "verify")]
    #[serde(default)]
    pub no_verify: bool,

    /// Zero detection granularity, as qemu-img's -S: all-zero blocks of this size are left
    /// sparse [default: 4K, or the qcow2 cluster]; 0 writes every byte as data (the output
    /// fully allocated; pool images stay thin)
    #[arg(short = 'S', value_name = "SIZE", value_parser = parse_sparse)]
    #[serde(default)]
    pub sparse: Option<u64>,

    /// Accepted for qemu-img compatibility (-W): vdisk always writes out of order
    #[arg(short = 'W', hide = true)]
    #[serde(default)]
    pub out_of_order: bool,

    /// Parallel requests (qemu-img's -m) [default: 4]
    #[arg(short = 'm', long = "parallel", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    #[serde(default)]
    pub parallel: Option<u16>,

    /// Do not sync at the end: leave the data to the page cache, as `qemu-img
    /// convert` does (faster). A file may lose data if the machine crashes; a
    /// new pool image is marked until the next vdisk command (or the daemon, at
    /// once) syncs it, and refused if the machine restarted before that
    #[arg(long)]
    #[serde(default)]
    pub no_sync: bool,

    /// Show progress (it is shown anyway when stderr is a terminal, never when
    /// piped or with --no-progress)
    #[arg(short = 'p')]
    #[serde(default)]
    pub progress: bool,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertArgs {
    /// File, block device, nbd:// or nbd+unix:// URI, or [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SRC")]
    pub src: String,

    /// File, block device, nbd:// or nbd+unix:// URI, or [POOL/]IMAGE (created unless -n)
    #[arg(value_name = "DST")]
    pub dst: String,

    /// Format of a destination file [default: raw]
    #[arg(short = 'O', long = "dst-format", value_enum, value_name = "FMT")]
    #[serde(default)]
    pub dst_format: Option<ImageFormat>,

    /// Compress a qcow2 destination (implies -O qcow2)
    #[arg(short = 'c', long)]
    #[serde(default)]
    pub compress: bool,

    /// Compression of -c
    #[arg(long, value_enum, value_name = "TYPE", default_value_t = Compression::Zlib)]
    #[serde(default = "zlib")]
    pub compression_type: Compression,

    /// qcow2 creation options, as qemu-img's -o: cluster_size=SIZE, refcount_bits=N,
    /// compression_type=zlib|zstd (comma-separated; may be repeated)
    #[arg(short = 'o', value_name = "OPTIONS")]
    #[serde(default)]
    pub options: Vec<String>,

    /// Replace an existing destination file
    #[arg(long)]
    #[serde(default)]
    pub force: bool,

    #[command(flatten)]
    #[serde(default)]
    pub copy: CopyArgs,
}

fn zlib() -> Compression {
    Compression::Zlib
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareArgs {
    /// File, block device, NBD URI or [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "A")]
    pub a: String,

    /// File, block device, NBD URI or [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "B")]
    pub b: String,

    /// Format of A if a file [default: detected]
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    #[serde(default)]
    pub a_format: Option<ImageFormat>,

    /// Format of B if a file [default: detected]
    #[arg(short = 'F', value_enum, value_name = "FMT")]
    #[serde(default)]
    pub b_format: Option<ImageFormat>,
}

#[derive(Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapArgs {
    /// File, block device, NBD URI or [POOL/]IMAGE[@SNAP]
    #[arg(value_name = "SRC")]
    pub src: String,

    /// Format of SRC if a file [default: detected]
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    #[serde(default)]
    pub src_format: Option<ImageFormat>,
}

/// `-S SIZE`: bytes (suffixes K, M... as elsewhere; a bare number is bytes).
fn parse_sparse(v: &str) -> Result<u64, String> {
    vdisk_engine::spec::parse_bytes(v).map_err(|e| e.to_string())
}
