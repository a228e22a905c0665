//! The management API: HTTP/1.1 + JSON on a Unix socket (`DIR/api.sock`,
//! mode 0600: only the daemon's user, and root, may use it).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1/status[?spec=SPEC]` | the daemon, connected clients, jobs ([`types::StatusReport`]) |
//! | `POST /v1/commands` | runs one CLI command in the daemon ([`types::CommandRequest`] → [`types::CommandReply`], or `202` + [`types::JobInfo`]) |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | jobs; one job with its command's output once finished |
//! | `GET /metrics` | Prometheus text: per-export requests, bytes, latency histograms |
//! | `GET /v1/images/{pool}/{image}/changed?from=&to=&offset=&limit=` | changed extents, paged ([`extents`]) |
//! | `GET /v1/images/{pool}/{image}/allocated?snap=&offset=&limit=` | allocated extents, paged |
//!
//! Commands are executed by a [`CommandHandler`] the embedding program
//! provides (the `vdisk` binary hands in its own command layer, so a
//! command prints the same and exits the same through the API as without
//! a daemon; this crate does not depend on the CLI). Without a handler,
//! `POST /v1/commands` answers `501`.

mod client;
mod extents;
mod metrics;
pub mod types;

pub use client::{Client, ClientError, Submitted};

use crate::error::{Error, Result};
use crate::registry::Registry;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;
use tracing::{error, info, warn};
use types::{ApiError, CommandReply, CommandRequest, StatusReport};
use vdisk_engine::{ErrorKind, ImageSpec, NoProgress, Progress, Store};

/// Largest request body: a `meta restore` backup (1 GiB) sent as standard
/// input, plus room for the JSON around it.
const MAX_BODY: usize = (1 << 30) + (16 << 20);

/// Runs the commands of `POST /v1/commands`.
pub trait CommandHandler: Send + Sync + fmt::Debug + 'static {
    /// Reads a request: what to run and whether it is long work to run as
    /// a job. A request that cannot run (malformed command, a command the
    /// daemon does not run) gets its reply at once.
    fn prepare(&self, request: CommandRequest) -> std::result::Result<Prepared, Box<CommandReply>>;
}

/// A command ready to run.
pub struct Prepared {
    /// `Some`: run as a background job (visible in `status`, with
    /// progress).
    pub job: Option<JobSpec>,
    /// Runs the command (on a blocking thread) and returns its reply.
    pub run: Box<dyn FnOnce(CommandEnv) -> CommandReply + Send>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("job", &self.job).finish()
    }
}

/// What a job is: its kind (the command) and what it works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The command, e.g. `flatten`.
    pub kind: String,
    /// Its image, `pool/image`.
    pub spec: String,
}

/// What a command runs against in the daemon.
pub struct CommandEnv {
    /// The daemon's store: the same in-process state the NBD connections
    /// use (so `snap create` is a barrier in their I/O path).
    pub store: Store,
    /// Connections and jobs.
    pub registry: Registry,
    /// Where long work reports progress (the job's, or nothing).
    pub progress: Arc<dyn Progress + Send + Sync>,
    /// The job running the command, if any.
    pub job: Option<u64>,
}

impl fmt::Debug for CommandEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandEnv")
            .field("store", &self.store)
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

/// Shared by the API's handlers.
#[derive(Debug)]
pub(crate) struct ApiState {
    pub store: Store,
    pub registry: Registry,
    pub commands: Option<Arc<dyn CommandHandler>>,
    /// Woken after every command: it may have changed the schedules.
    pub scheduler: Option<Arc<tokio::sync::Notify>>,
}

impl ApiState {
    fn commands_ran(&self) {
        if let Some(s) = &self.scheduler {
            s.notify_one();
        }
    }
}

/// The API's routes.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/commands", post(commands))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/metrics", get(metrics))
        .route("/v1/images/{pool}/{image}/changed", get(extents::changed))
        .route(
            "/v1/images/{pool}/{image}/allocated",
            get(extents::allocated),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API until `shutdown` completes, then lets requests in
/// progress finish.
pub(crate) async fn serve(
    listener: UnixListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        error!(error = %e, "the management API stopped");
    }
}

/// Binds the API socket at `path` so that it is never reachable with
/// looser permissions than 0600: bound inside a fresh 0700 directory,
/// chmod 0600, then renamed into place. A stale socket file is replaced
/// (see `server::clear_stale_socket`).
pub(crate) async fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    crate::server::clear_stale_socket(path).await?;
    let io = |what: String| move |e| Error::Io { what, source: e };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = parent.join(format!(".api.{}", std::process::id()));
    if tmp.exists() {
        // Left by a process with our pid that died while binding.
        std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    let inner = tmp.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&inner).map_err(|e| Error::Bind {
            addr: path.display().to_string(),
            source: e,
        })?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("making {} private", inner.display())))?;
        std::fs::rename(&inner, path).map_err(io(format!("placing {}", path.display())))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&tmp);
    bound
}

// ------------------------------------------------------------- handlers

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: clip(message.into()),
        }),
    )
        .into_response()
}

/// Longest error message the API returns. A message quotes what it
/// refuses (JSON's "unknown variant `...`" quotes the whole string), and a
/// request body may be up to [`MAX_BODY`]: the reply would repeat it.
const MAX_MESSAGE: usize = 2048;

/// `message`, cut to [`MAX_MESSAGE`] bytes (at a character boundary) with
/// a note of how much was left out.
fn clip(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut cut = MAX_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let left_out = message.len() - cut;
    message.truncate(cut);
    message.push_str(&format!("… ({left_out} more bytes)"));
    message
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /v1/status, POST /v1/commands, GET /v1/jobs[/ID], GET /metrics, \
         GET /v1/images/POOL/IMAGE/changed, GET /v1/images/POOL/IMAGE/allocated",
    )
}

#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    spec: Option<String>,
}

/// Whether `export` (`pool/image[@snap]`) is `filter` or, when `filter`
/// names an image, one of that image's exports.
fn spec_matches(filter: &ImageSpec, export: &str) -> bool {
    match ImageSpec::parse(export) {
        Ok(e) => {
            e.pool == filter.pool
                && e.image == filter.image
                && (filter.snap.is_none() || filter.snap == e.snap)
        }
        Err(_) => false,
    }
}

async fn status(
    State(st): State<Arc<ApiState>>,
    query: std::result::Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    st.registry.api_request();
    let filter = match query {
        Ok(Query(StatusQuery { spec: Some(s) })) => match ImageSpec::parse(&s) {
            Ok(spec) => Some(spec),
            Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        Ok(_) => None,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    Json(status_report(&st.registry, filter.as_ref())).into_response()
}

/// The daemon, its connections and jobs; of `filter` only if given (an
/// image's connections and jobs include its snapshots').
pub fn status_report(registry: &Registry, filter: Option<&ImageSpec>) -> StatusReport {
    let mut report = StatusReport {
        daemon: registry.daemon_info(),
        connections: registry.connections(),
        jobs: registry.jobs(),
    };
    if let Some(f) = filter {
        report.connections.retain(|c| spec_matches(f, &c.export));
        report.jobs.retain(|j| spec_matches(f, &j.spec));
    }
    report
}

async fn jobs(State(st): State<Arc<ApiState>>) -> Response {
    st.registry.api_request();
    Json(st.registry.jobs()).into_response()
}

async fn job(State(st): State<Arc<ApiState>>, UrlPath(id): UrlPath<String>) -> Response {
    st.registry.api_request();
    let Ok(id) = id.parse::<u64>() else {
        return api_error(StatusCode::BAD_REQUEST, format!("invalid job id {id:?}"));
    };
    match st.registry.job(id) {
        Some(j) => Json(j.info()).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            format!("no job {id} (finished jobs are kept for a while, not forever)"),
        ),
    }
}

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    st.registry.api_request();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&st.registry),
    )
        .into_response()
}

async fn commands(State(st): State<Arc<ApiState>>, body: Bytes) -> Response {
    st.registry.api_request();
    let Some(handler) = st.commands.clone() else {
        return api_error(
            StatusCode::NOT_IMPLEMENTED,
            "this server was started without a command handler",
        );
    };
    let request: CommandRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("invalid command request: {e}"),
            )
        }
    };
    let wait = request.wait;
    let prepared = match handler.prepare(request) {
        Ok(p) => p,
        Err(reply) => return Json(*reply).into_response(),
    };
    let Some(spec) = prepared.job else {
        let env = CommandEnv {
            store: st.store.clone(),
            registry: st.registry.clone(),
            progress: Arc::new(NoProgress),
            job: None,
        };
        let run = prepared.run;
        let ran = tokio::task::spawn_blocking(move || run_command(run, env)).await;
        st.commands_ran();
        return match ran {
            Ok(reply) => Json(reply).into_response(),
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    };
    let job = match st.registry.job_create(&spec.kind, &spec.spec) {
        Ok(j) => j,
        Err(msg) => {
            return Json(CommandReply::failure(
                ErrorKind::Busy,
                &msg,
                Some("wait for it to finish (`vdisk status` shows it)"),
            ))
            .into_response()
        }
    };
    info!(job = job.id(), kind = %spec.kind, spec = %spec.spec, "job queued");
    let runner = job.clone();
    let env = CommandEnv {
        store: st.store.clone(),
        registry: st.registry.clone(),
        progress: Arc::new(job.clone()),
        job: Some(job.id()),
    };
    let run = prepared.run;
    let after = st.clone();
    // The job ends `done` or `failed` whatever happens in the command
    // (panics included): a job left `running` forever would keep its
    // waiters waiting.
    tokio::task::spawn_blocking(move || {
        runner.set_running();
        let mut reply = run_command(run, env);
        reply.job = Some(runner.id());
        if reply.exit_code == 0 {
            info!(job = runner.id(), "job done");
        } else {
            warn!(job = runner.id(), exit_code = reply.exit_code, stderr = %reply.stderr.trim_end(), "job failed");
        }
        runner.finish(reply);
        after.commands_ran();
    });
    if wait {
        job.wait().await;
        match job.info().result {
            Some(reply) => Json(reply).into_response(),
            None => api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "job finished without a result",
            ),
        }
    } else {
        (StatusCode::ACCEPTED, Json(job.info())).into_response()
    }
}

/// Runs a command, turning a panic into a failed reply.
fn run_command(
    run: Box<dyn FnOnce(CommandEnv) -> CommandReply + Send>,
    env: CommandEnv,
) -> CommandReply {
    match std::panic::catch_unwind(AssertUnwindSafe(|| run(env))) {
        Ok(reply) => reply,
        Err(_) => {
            error!("a command panicked");
            CommandReply::failure(
                ErrorKind::Io,
                "internal error: the command panicked in the daemon",
                Some("see the daemon's log"),
            )
        }
    }
}

/// Waits (up to `within`) for the jobs still running; says which did not
/// finish.
pub(crate) async fn wait_for_jobs(registry: &Registry, within: std::time::Duration) {
    let start = tokio::time::Instant::now();
    while registry.jobs_active() > 0 {
        if start.elapsed() >= within {
            for j in registry.jobs() {
                if !j.state.is_finished() {
                    warn!(job = j.id, kind = %j.kind, spec = %j.spec, "job still running at shutdown; it is interrupted");
                }
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl CommandReply {
    /// A failed command's reply, printed as the CLI prints errors.
    pub fn failure(kind: ErrorKind, message: &str, hint: Option<&str>) -> CommandReply {
        let message = clip(message.to_owned());
        let mut stderr = format!("vdisk: error: {message}\n");
        if let Some(h) = hint {
            stderr.push_str(&format!("vdisk: hint: {h}\n"));
        }
        CommandReply {
            exit_code: types::exit_code(kind),
            stdout: String::new(),
            stderr,
            error: Some(types::ErrorBody {
                kind: types::kind_name(kind).into(),
                message,
                hint: hint.map(Into::into),
            }),
            job: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{clip, MAX_MESSAGE};

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short".into()), "short");
        let exact = "a".repeat(MAX_MESSAGE);
        assert_eq!(clip(exact.clone()), exact);
        // A 3-byte character across the limit is left out whole.
        let long = format!("{}€{}", "a".repeat(MAX_MESSAGE - 1), "b".repeat(100));
        let clipped = clip(long.clone());
        assert!(clipped.starts_with(&"a".repeat(MAX_MESSAGE - 1)));
        assert!(
            clipped.ends_with(&format!(
                "… ({} more bytes)",
                long.len() - (MAX_MESSAGE - 1)
            )),
            "{clipped}"
        );
    }
}
