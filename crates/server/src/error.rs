//! Errors that stop the server (at start or at shutdown). Errors of one
//! connection never get here: they close that connection and are logged.

use std::io;
use vdisk_engine::ErrorKind;

/// Why the server could not start, or could not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--listen` value that is not `ADDR:PORT` or does not resolve.
    #[error("invalid listen address {value:?}: {reason}")]
    InvalidListen {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Limits that contradict each other.
    #[error("invalid server configuration: {0}")]
    InvalidConfig(String),
    /// Neither a TCP address nor a Unix socket to listen on.
    #[error("nothing to listen on: no TCP address and no Unix socket")]
    NoListener,
    /// Binding a TCP address or a Unix socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The Unix socket path is answered by a running server.
    #[error("socket {0} is in use by a running server")]
    SocketInUse(String),
    /// The Unix socket path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(String),
    /// The engine failed (flushing the images at shutdown).
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    /// Another I/O failure (inspecting or removing the socket file...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The group of the error, with the engine's meaning (the CLI turns it
    /// into an exit code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidListen { .. } | Error::InvalidConfig(_) | Error::NoListener => {
                ErrorKind::InvalidInput
            }
            Error::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse => {
                ErrorKind::Busy
            }
            Error::SocketInUse(_) => ErrorKind::Busy,
            Error::NotASocket(_) => ErrorKind::AlreadyExists,
            Error::Engine(e) => e.kind(),
            Error::Bind { .. } | Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::InvalidListen { .. } => {
                "write --listen ADDR:PORT (repeatable), or --listen none for no TCP".into()
            }
            Error::NoListener => "give --listen ADDR:PORT or --socket PATH".into(),
            Error::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse => {
                "another server (qemu-nbd, nbdkit, another vdisk serve?) uses it; stop it or pick another --listen".into()
            }
            Error::Bind { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                "ports below 1024 need root (or CAP_NET_BIND_SERVICE); socket directories must be writable".into()
            }
            Error::SocketInUse(_) => {
                "stop the server using it, or pick another --socket PATH".into()
            }
            Error::NotASocket(_) => "remove it or pick another --socket PATH".into(),
            Error::Engine(e) => return e.hint(),
            _ => return None,
        })
    }
}

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
