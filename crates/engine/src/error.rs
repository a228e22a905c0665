//! The engine's error type: one enum, a variant per thing that can go wrong,
//! each carrying what it concerned. [`Error::kind`] groups them for callers
//! (the CLI maps kinds to exit codes); [`Error::hint`] says what to do.

use vdisk_storage::StorageError;

/// A coarse grouping of errors that callers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is malformed (names, sizes, specs, arguments).
    InvalidInput,
    /// A pool, image or snapshot does not exist.
    NotFound,
    /// The thing to create already exists.
    AlreadyExists,
    /// The request is valid but refused in the current state (protected
    /// snapshot, image with children, shrink without the flag, limits...).
    Refused,
    /// This build does not support something the data or request needs.
    Unsupported,
    /// Another process holds the data directory, or the image is busy.
    Busy,
    /// Stored data or metadata is damaged.
    Corrupt,
    /// The storage backend failed.
    Io,
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid size {input:?}: {reason}")]
    InvalidSize { input: String, reason: String },
    #[error("invalid image spec {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("pool {0:?} does not exist")]
    PoolNotFound(String),
    #[error("image {0} does not exist")]
    ImageNotFound(String),
    #[error("snapshot {0} does not exist")]
    SnapNotFound(String),
    #[error("{0}")]
    ScheduleNotFound(String),
    #[error("{0}")]
    ScheduleExists(String),
    #[error("pool {0:?} already exists")]
    PoolExists(String),
    #[error("image {0} already exists")]
    ImageExists(String),
    #[error("snapshot {0} already exists")]
    SnapExists(String),
    #[error("snapshot {0} is protected")]
    SnapProtected(String),
    #[error("snapshot {0} is not protected")]
    SnapNotProtected(String),
    #[error("snapshot {spec} is being read by {readers} client(s)")]
    SnapInUse { spec: String, readers: usize },
    #[error("snapshot {spec} has {} clone(s): {}", children.len(), children.join(", "))]
    HasChildren { spec: String, children: Vec<String> },
    #[error("image {spec} has {count} snapshot(s)")]
    HasSnapshots { spec: String, count: usize },
    #[error("pool {pool:?} is not empty ({count} image(s))")]
    PoolNotEmpty { pool: String, count: usize },
    #[error("shrinking {spec} from {from} to {to} bytes would discard data")]
    ShrinkRefused { spec: String, from: u64, to: u64 },
    #[error("image {spec} already has {limit} snapshot(s), its limit")]
    SnapLimit { spec: String, limit: u64 },
    #[error("image {spec} has {count} snapshot(s), more than the requested limit {limit}")]
    LimitBelowCount {
        spec: String,
        count: usize,
        limit: u64,
    },
    #[error("{spec} is a snapshot and read-only")]
    ReadOnly { spec: String },
    #[error("feature {feature} needs {needs}")]
    FeatureDependency { feature: String, needs: String },
    #[error("feature {feature} is not supported by this build of vdisk")]
    FeatureUnsupported { feature: String },
    #[error("feature {feature} cannot be {action} on an existing image")]
    FeatureNotDynamic {
        feature: String,
        action: &'static str,
    },
    #[error(
        "image {image} requires feature(s) {features} that this build of vdisk does not support"
    )]
    ImageNeedsFeatures { image: String, features: String },
    #[error("{what} uses format version {version}; this build reads up to version {supported}")]
    UnsupportedVersion {
        what: String,
        version: u16,
        supported: u16,
    },
    #[error("data directory {dir} is in use by {holder}")]
    Locked { dir: String, holder: String },
    #[error("timed out after {secs} s waiting for in-flight I/O on {spec} to drain")]
    DrainTimeout { spec: String, secs: u64 },
    #[error("range {offset}+{len} is outside {spec} (size {size})")]
    OutOfRange {
        spec: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error(
        "image {0} was copied without a sync (--no-sync) and the machine restarted before \
         its data was synced: part of it may be lost"
    )]
    UnsyncedLost(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// The group this error belongs to.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            InvalidName { .. } | InvalidSize { .. } | InvalidSpec { .. } | InvalidArgument(_) => {
                ErrorKind::InvalidInput
            }
            OutOfRange { .. } => ErrorKind::InvalidInput,
            PoolNotFound(_) | ImageNotFound(_) | SnapNotFound(_) | ScheduleNotFound(_) => {
                ErrorKind::NotFound
            }
            PoolExists(_) | ImageExists(_) | SnapExists(_) | ScheduleExists(_) => {
                ErrorKind::AlreadyExists
            }
            SnapProtected(_)
            | SnapInUse { .. }
            | SnapNotProtected(_)
            | HasChildren { .. }
            | HasSnapshots { .. }
            | PoolNotEmpty { .. }
            | ShrinkRefused { .. }
            | SnapLimit { .. }
            | LimitBelowCount { .. }
            | ReadOnly { .. }
            | FeatureDependency { .. }
            | FeatureNotDynamic { .. } => ErrorKind::Refused,
            FeatureUnsupported { .. } | ImageNeedsFeatures { .. } | UnsupportedVersion { .. } => {
                ErrorKind::Unsupported
            }
            Locked { .. } | DrainTimeout { .. } => ErrorKind::Busy,
            Corrupt { .. } | UnsyncedLost(_) => ErrorKind::Corrupt,
            Io { .. } | Storage(_) => ErrorKind::Io,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        use Error::*;
        Some(match self {
            InvalidName { .. } => "names are 1-255 characters, without '/', '@', '..', control characters, and do not start with '.' or '-'".into(),
            InvalidSize { .. } => "give a positive size such as 10G, 512M, 4096B (a bare number means MiB, as in rbd)".into(),
            InvalidSpec { .. } => "write specs as [POOL/]IMAGE[@SNAP]".into(),
            PoolNotFound(_) => "list pools with `vdisk pool ls`, create one with `vdisk pool create NAME`".into(),
            ImageNotFound(_) => "list images with `vdisk ls [POOL]`".into(),
            ScheduleNotFound(_) => "list schedules with `vdisk snap schedule ls`".into(),
            SnapNotFound(spec) => format!("list snapshots with `vdisk snap ls {}`", spec.split('@').next().unwrap_or(spec)),
            SnapProtected(spec) => format!("unprotect it first: `vdisk snap unprotect {spec}`"),
            SnapInUse { .. } => {
                "disconnect its readers first (e.g. let the backup finish), then remove it".into()
            }
            SnapNotProtected(spec) => format!("protect it first: `vdisk snap protect {spec}`"),
            HasChildren { children, .. } => format!(
                "flatten or remove the clones first, e.g. `vdisk flatten {}`",
                children.first().map(String::as_str).unwrap_or("CLONE")
            ),
            HasSnapshots { spec, .. } => format!("remove them first: `vdisk snap purge {spec}` (protected ones need `vdisk snap unprotect` before)"),
            PoolNotEmpty { .. } => "remove its images first (`vdisk ls POOL`, `vdisk rm POOL/IMAGE`)".into(),
            ShrinkRefused { spec, to, .. } => format!("if that is what you want: `vdisk resize {spec} --size {to}B --allow-shrink`"),
            SnapLimit { spec, .. } => format!("remove a snapshot or raise the limit: `vdisk snap limit set {spec} --limit N`"),
            LimitBelowCount { spec, .. } => format!("remove snapshots first (`vdisk snap ls {spec}`, `vdisk snap rm`), or choose a larger limit"),
            ReadOnly { spec } => format!("write to the image, not the snapshot ({})", spec.split('@').next().unwrap_or(spec)),
            FeatureDependency { .. } => "enable or disable the features together, in dependency order (exclusive-lock < object-map < fast-diff)".into(),
            FeatureUnsupported { .. } => "supported features: layering, exclusive-lock, object-map, fast-diff, deep-flatten".into(),
            FeatureNotDynamic { .. } => "only exclusive-lock, object-map and fast-diff can be enabled or disabled later (deep-flatten only disabled)".into(),
            ImageNeedsFeatures { image, features } => format!("open it with a vdisk that supports them, or drop them if they are optional: `vdisk feature disable {image} {}`", features.replace(',', " ")),
            UnsupportedVersion { .. } => "use a newer vdisk, or restore an older metadata backup with `vdisk meta restore`".into(),
            Locked { .. } => "stop that process, use another --dir, or send the command through the running daemon".into(),
            DrainTimeout { .. } => "writers kept the image busy; retry, or pause the writers".into(),
            OutOfRange { .. } => "check the offset and length against `vdisk info`".into(),
            UnsyncedLost(spec) => format!("remove it and copy it again: `vdisk rm {spec}`, then the import or convert, without --no-sync if the machine may restart"),
            Corrupt { .. } => "run `vdisk check` to see the extent of the damage; `vdisk meta restore` restores metadata from a backup".into(),
            _ => return None,
        })
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
