//! The CLI's error: an engine error, or one the CLI raises itself (files,
//! arguments), with the same kinds, so one table maps both to exit codes.

use std::fmt;
use vdisk_engine::ErrorKind;

/// What went wrong, grouped by kind (decides the exit code), with an
/// optional hint that says what to do.
#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    /// Standard output was closed by its reader: stop quietly.
    pub broken_pipe: bool,
    /// An exit code other than the kind's (see [`DAMAGED_EXIT`]).
    pub exit: Option<u8>,
}

/// Result with the CLI's error.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CliError {
            kind,
            message: message.into(),
            hint: None,
            broken_pipe: false,
            exit: None,
        }
    }

    /// What was checked is damaged (exit 9): `gpt` found a damaged or
    /// missing partition table. Kind `corrupt` in the API.
    pub fn damaged(message: impl Into<String>) -> Self {
        CliError {
            exit: Some(DAMAGED_EXIT),
            ..Self::new(ErrorKind::Corrupt, message)
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.exit.unwrap_or_else(|| exit_code(self.kind))
    }

    /// A malformed request (exit 2).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A request refused in the current state (exit 5).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    /// What the CLI prints on standard error for it.
    pub fn render(&self) -> String {
        let mut msg = format!("vdisk: error: {}\n", self.message);
        if let Some(h) = &self.hint {
            msg.push_str(&format!("vdisk: hint: {h}\n"));
        }
        msg
    }

    /// The error as the API reports it.
    pub fn body(&self) -> vdisk_server::api::types::ErrorBody {
        vdisk_server::api::types::ErrorBody {
            kind: vdisk_server::api::types::kind_name(self.kind).into(),
            message: self.message.clone(),
            hint: self.hint.clone(),
        }
    }

    /// An I/O error on a file the user named; its kind follows the OS error
    /// (a missing file is "not found", an existing one "already exists").
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{what}: {e}"))
    }
}

impl From<vdisk_engine::Error> for CliError {
    fn from(e: vdisk_engine::Error) -> Self {
        CliError {
            kind: e.kind(),
            message: e.to_string(),
            hint: e.hint(),
            broken_pipe: false,
            exit: None,
        }
    }
}

impl From<vdisk_server::Error> for CliError {
    fn from(e: vdisk_server::Error) -> Self {
        CliError {
            kind: e.kind(),
            message: e.to_string(),
            hint: e.hint(),
            broken_pipe: false,
            exit: None,
        }
    }
}

impl From<vdisk_server::api::ClientError> for CliError {
    fn from(e: vdisk_server::api::ClientError) -> Self {
        CliError::new(ErrorKind::Io, e.to_string()).with_hint(
            "the daemon (`vdisk serve`) may have stopped or restarted; \
             `vdisk status` and the daemon's log tell what it did",
        )
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The process exit code of each kind of error (documented in docs/CLI.md).
///
/// | code | meaning |
/// |---|---|
/// | 0 | success |
/// | 1 | I/O or other runtime failure |
/// | 2 | usage error, invalid input |
/// | 3 | not found |
/// | 4 | already exists |
/// | 5 | refused in the current state |
/// | 6 | unsupported by this build |
/// | 7 | corrupt data or metadata; `check` found errors |
/// | 8 | busy: data directory locked, drain timeout |
/// | 9 | damaged: `gpt` found a damaged or missing GPT ([`DAMAGED_EXIT`]) |
///
/// The daemon uses the same table (`vdisk_server::api::types::exit_code`)
/// for the commands it runs; code 9 is set by the command itself
/// ([`CliError::exit_code`]), its kind is `corrupt`.
pub fn exit_code(kind: ErrorKind) -> u8 {
    vdisk_server::api::types::exit_code(kind)
}

/// Exit code of a check that found the checked thing damaged (`gpt`), as
/// opposed to 7, vdisk's own data or metadata being corrupt.
pub const DAMAGED_EXIT: u8 = 9;

/// Exit code of clap's own usage errors.
pub const USAGE_EXIT: u8 = 2;
