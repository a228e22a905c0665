//! Errors, grouped by the engine's [`ErrorKind`] so the CLI maps them onto
//! its exit codes.

use vdisk_engine::ErrorKind;

/// Everything that can go wrong while copying, comparing or mapping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A qcow2/raw file error.
    #[error(transparent)]
    Image(#[from] vdisk_qcow2::Error),
    /// A qcow2/raw file error, naming the file.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        source: vdisk_qcow2::Error,
    },
    /// An engine (pool image) error.
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    /// The NBD server failed, refused or broke the protocol.
    #[error("NBD {uri}: {message}")]
    Nbd {
        /// The server.
        uri: String,
        /// What happened.
        message: String,
    },
    /// A malformed argument (URI, size mismatch...).
    #[error("{0}")]
    Invalid(String),
    /// Something this build does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A read or write outside the disk.
    #[error("offset {0} is outside the disk")]
    Range(u64),
    /// `--verify` found the destination different from the source.
    #[error("verification failed: {dest} differs from {source_name} at offset {offset}")]
    Verify {
        /// The destination.
        dest: String,
        /// The source.
        source_name: String,
        /// First differing byte.
        offset: u64,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn range(offset: u64) -> Error {
        Error::Range(offset)
    }

    pub(crate) fn nbd(uri: &str, message: impl Into<String>) -> Error {
        Error::Nbd {
            uri: uri.to_owned(),
            message: message.into(),
        }
    }

    /// The kind, for exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                std::io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
                _ => ErrorKind::Io,
            },
            Error::Image(e) | Error::File { source: e, .. } => match e {
                vdisk_qcow2::Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    ErrorKind::NotFound
                }
                vdisk_qcow2::Error::Io { .. } => ErrorKind::Io,
                vdisk_qcow2::Error::Unsupported(_) => ErrorKind::Unsupported,
                vdisk_qcow2::Error::InvalidRequest(_) => ErrorKind::InvalidInput,
                _ => ErrorKind::Corrupt,
            },
            Error::Engine(e) => e.kind(),
            Error::Nbd { .. } => ErrorKind::Io,
            Error::Invalid(_) | Error::Range(_) => ErrorKind::InvalidInput,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Verify { .. } => ErrorKind::Corrupt,
        }
    }
}
