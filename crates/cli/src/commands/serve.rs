//! `vdisk serve`: the NBD server in the foreground, on the store this
//! process opened (so the data directory stays locked while serving), with
//! the management API on `DIR/api.sock` running this binary's commands
//! ([`crate::handler::Handler`]).

use super::Ctx;
use crate::args::ServeArgs;
use crate::error::{CliError, Result};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;
use vdisk_server::{parse_listen, Limits, ServeConfig, Server};

/// Async worker threads: the protocol work is light; the engine runs on
/// the blocking pool.
const WORKER_THREADS: usize = 2;
/// Engine calls running at once across all connections (each connection
/// also has its own in-flight limit).
const MAX_BLOCKING_THREADS: usize = 128;
/// How long to wait, after the server stopped, for engine calls of
/// connections closed at the drain timeout.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the server until SIGTERM or SIGINT.
pub fn run(ctx: &Ctx, args: ServeArgs, dir: &Path) -> Result<()> {
    let cfg = config(ctx, args, dir)?;
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("vdisk-serve")
        .enable_all()
        .build()
        .map_err(|e| CliError::io("starting the async runtime", e))?;
    // Handlers installed before binding: a signal that arrives while
    // starting up still stops the server cleanly.
    let signals = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    let (mut term, mut int) = match signals {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return Err(CliError::io("installing signal handlers", e)),
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    };
    let store = ctx.store.clone();
    let result = rt.block_on(async move {
        let mut server = Server::bind(store, cfg).await?;
        server.set_command_handler(Arc::new(crate::handler::Handler));
        server.serve(shutdown).await
    });
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    Ok(result?)
}

/// `--listen`, `--socket` and `--shared` into a [`ServeConfig`]; the API
/// socket is always `DIR/api.sock` (where the CLI looks for it).
fn config(ctx: &Ctx, args: ServeArgs, dir: &Path) -> Result<ServeConfig> {
    let wants_none = args.listen.iter().any(|l| l.eq_ignore_ascii_case("none"));
    if wants_none && args.listen.len() > 1 {
        return Err(CliError::invalid(
            "--listen none cannot be combined with addresses",
        ));
    }
    let mut listen = Vec::new();
    for value in &args.listen {
        listen.extend(parse_listen(value)?);
    }
    let socket = match args.socket {
        Some(p) if p.as_os_str().eq_ignore_ascii_case("none") => None,
        Some(p) if p.as_os_str().is_empty() => {
            return Err(CliError::invalid("--socket is empty").with_hint("give a path, or none"))
        }
        Some(p) => Some(p),
        None => ctx.store.dir().map(|d| d.join("nbd.sock")),
    };
    Ok(ServeConfig {
        listen,
        socket,
        limits: Limits::default(),
        shared: args.shared,
        api_socket: Some(dir.join("api.sock")),
    })
}

/// Logs to stderr (journald adds its own timestamps under systemd, but
/// interactive runs want them). `VDISK_LOG` takes tracing's filter syntax.
fn init_logging() {
    let filter = match std::env::var("VDISK_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("vdisk: warning: ignoring VDISK_LOG={v:?}: {e}\n").as_bytes(),
            );
            EnvFilter::new("info")
        }),
        _ => EnvFilter::new("info"),
    };
    // try_init: a second initialization (never in the binary) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
