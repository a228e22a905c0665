//! The JSON documents of the management API (documented in docs/CLI.md).
//! Shared by the daemon and its clients (the CLI).

use serde::{Deserialize, Serialize};

/// `POST /v1/commands`: one CLI command, as the CLI parsed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The command and its arguments, e.g. `{"snap": {"create": {"spec":
    /// "rbd/vm1@s1"}}}` (the CLI's argument structures; see docs/CLI.md).
    pub command: serde_json::Value,
    /// Output format: `plain` (default) or `json`, as `--format`.
    #[serde(default = "plain")]
    pub format: String,
    /// Standard input of the command (only `meta restore POOL -` reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// For commands that run as jobs: answer when the job is finished
    /// (default), or at once with the job (`202 Accepted`).
    #[serde(default = "yes")]
    pub wait: bool,
}

fn plain() -> String {
    "plain".into()
}

fn yes() -> bool {
    true
}

/// The outcome of a command: what the CLI would have printed and its exit
/// code (`error` repeats the failure for programs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    /// Process exit code (docs/CLI.md); 0 is success.
    pub exit_code: u8,
    /// Standard output.
    pub stdout: String,
    /// Standard error (`vdisk: error: ...`, `vdisk: hint: ...`,
    /// warnings).
    pub stderr: String,
    /// The failure, when the command failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// The job that ran the command, if it ran as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
}

/// A failure: its kind (`invalid_input`, `not_found`, `already_exists`,
/// `refused`, `unsupported`, `corrupt`, `busy`, `io`), what went wrong and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Group of the error (decides the CLI's exit code).
    pub kind: String,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The name of an engine error kind in [`ErrorBody::kind`].
pub fn kind_name(kind: vdisk_engine::ErrorKind) -> &'static str {
    use vdisk_engine::ErrorKind as K;
    match kind {
        K::InvalidInput => "invalid_input",
        K::NotFound => "not_found",
        K::AlreadyExists => "already_exists",
        K::Refused => "refused",
        K::Unsupported => "unsupported",
        K::Corrupt => "corrupt",
        K::Busy => "busy",
        _ => "io",
    }
}

/// The engine error kind of a [`ErrorBody::kind`] name (`io` for unknown
/// names).
pub fn kind_of(name: &str) -> vdisk_engine::ErrorKind {
    use vdisk_engine::ErrorKind as K;
    match name {
        "invalid_input" => K::InvalidInput,
        "not_found" => K::NotFound,
        "already_exists" => K::AlreadyExists,
        "refused" => K::Refused,
        "unsupported" => K::Unsupported,
        "corrupt" => K::Corrupt,
        "busy" => K::Busy,
        _ => K::Io,
    }
}

/// The exit code of each kind of error, for the CLI and for
/// [`CommandReply::exit_code`] (the table is in docs/CLI.md).
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
pub fn exit_code(kind: vdisk_engine::ErrorKind) -> u8 {
    use vdisk_engine::ErrorKind as K;
    match kind {
        K::Io => 1,
        K::InvalidInput => 2,
        K::NotFound => 3,
        K::AlreadyExists => 4,
        K::Refused => 5,
        K::Unsupported => 6,
        K::Corrupt => 7,
        K::Busy => 8,
        _ => 1,
    }
}

/// The body of an HTTP error (4xx/5xx) of the API itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong with the request.
    pub error: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon (`null` when none runs: what `vdisk status` prints then).
    pub daemon: Option<DaemonInfo>,
    /// Connected NBD clients.
    pub connections: Vec<ConnectionInfo>,
    /// Jobs: queued, running, and recently finished.
    pub jobs: Vec<JobInfo>,
}

/// The daemon itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Process id.
    pub pid: u32,
    /// When it started (ISO 8601 UTC).
    pub since: String,
    /// vdisk version.
    pub version: String,
    /// Data directory.
    pub dir: Option<String>,
    /// NBD TCP addresses.
    pub listen: Vec<String>,
    /// NBD Unix socket.
    pub socket: Option<String>,
    /// The API's Unix socket.
    pub api_socket: Option<String>,
    /// Whether several clients may write one image (`--shared`).
    pub shared: bool,
}

/// One NBD connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Connection id (in the daemon's log too).
    pub id: u64,
    /// `ADDR:PORT` for TCP, `unix pid=N uid=N` for the Unix socket.
    pub client: String,
    /// Canonical export: `pool/image` or `pool/image@snap`.
    pub export: String,
    /// `rw` (an image head) or `ro` (a snapshot).
    pub mode: String,
    /// Connected since (ISO 8601 UTC).
    pub since: String,
    /// Bytes received from the client in transmission (requests and
    /// write payloads).
    pub bytes_received: u64,
    /// Bytes sent to the client in transmission (replies and read data).
    pub bytes_sent: u64,
    /// Requests served.
    pub requests: u64,
    /// Payload bytes read by the client.
    pub read_bytes: u64,
    /// Payload bytes written by the client.
    pub written_bytes: u64,
}

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Running.
    Running,
    /// Finished and its command reported success.
    Done,
    /// Finished with an error (see `error`).
    Failed,
}

/// A job: long work run in the background (`flatten`, copies, imports,
/// exports, rollbacks, snapshot removal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: u64,
    /// The command (`flatten`, `cp`, `import`, ...).
    pub kind: String,
    /// What it works on (`pool/image`).
    pub spec: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: JobState,
    /// The phase the progress counts (the engine's name for it, e.g.
    /// `flatten`, `copy`, `reclaim`).
    pub phase: String,
    /// Units done in the phase (bytes or objects).
    pub done: u64,
    /// Units in the phase (0: unknown).
    pub total: u64,
    /// When it was accepted, started and finished (ISO 8601 UTC).
    pub created: String,
    /// Start time.
    pub started: Option<String>,
    /// End time.
    pub finished: Option<String>,
    /// Why it failed.
    pub error: Option<ErrorBody>,
    /// The command's output once finished (`GET /v1/jobs/ID` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandReply>,
}
