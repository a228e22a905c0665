//! Listeners, the accept loop, connection tasks, the management API task
//! and shutdown.

use crate::api::{self, types::DaemonInfo, ApiState, CommandHandler};
use crate::error::{Error, Result};
use crate::negotiate::{negotiate, Client, Outcome};
use crate::registry::{Peer, Registry};
use crate::scheduler::{Clock, Scheduler, SystemClock};
use crate::transmission::{self, Socket};
use crate::{Limits, ServeConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, info_span, warn, Instrument};
use vdisk_engine::Store;

/// A bound server, not yet serving. Binding first lets callers learn the
/// addresses (port 0) before clients connect.
#[derive(Debug)]
pub struct Server {
    store: Store,
    limits: Limits,
    tcp: Vec<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    api: Option<(UnixListener, PathBuf)>,
    registry: Registry,
    commands: Option<Arc<dyn CommandHandler>>,
    clock: Arc<dyn Clock>,
}

/// A connection accepted by one of the listeners.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Server {
    /// Binds every TCP address and the Unix socket of `cfg`.
    pub async fn bind(store: Store, cfg: ServeConfig) -> Result<Server> {
        cfg.limits.validate()?;
        if cfg.listen.is_empty() && cfg.socket.is_none() {
            return Err(Error::NoListener);
        }
        let mut tcp = Vec::new();
        for addr in &cfg.listen {
            let listener = TcpListener::bind(addr).await.map_err(|e| Error::Bind {
                addr: addr.to_string(),
                source: e,
            })?;
            tcp.push(listener);
        }
        let unix = match &cfg.socket {
            Some(path) => Some((bind_unix(path).await?, path.clone())),
            None => None,
        };
        let api = match &cfg.api_socket {
            Some(path) => Some((api::bind(path).await?, path.clone())),
            None => None,
        };
        Ok(Server {
            store,
            limits: cfg.limits,
            tcp,
            unix,
            api,
            registry: Registry::new(cfg.shared),
            commands: None,
            clock: Arc::new(SystemClock),
        })
    }

    /// The clock of the snapshot scheduler (tests: a [`ManualClock`](crate::ManualClock)).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// Lets `POST /v1/commands` run commands through `handler` (the CLI's
    /// command layer); without one that endpoint answers 501.
    pub fn set_command_handler(&mut self, handler: Arc<dyn CommandHandler>) {
        self.commands = Some(handler);
    }

    /// Connections, per-export counters and jobs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The management API's socket, if any.
    pub fn api_socket_path(&self) -> Option<&Path> {
        self.api.as_ref().map(|(_, p)| p.as_path())
    }

    /// The TCP addresses actually bound (with the ports chosen for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The Unix socket, if any.
    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// Serves until `shutdown` completes; then stops the management API
    /// (requests in progress finish) and removes its socket, stops
    /// accepting NBD connections, lets in-flight requests finish (up to
    /// [`Limits::drain_timeout`]), closes every connection, waits for
    /// running jobs (up to the drain timeout again), flushes every open
    /// image and removes the Unix socket. Fails only if that final flush
    /// fails.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let listen: Vec<String> = self.local_addrs().iter().map(ToString::to_string).collect();
        let Server {
            store,
            limits,
            tcp,
            unix,
            api,
            registry,
            commands,
            clock,
        } = self;
        let limits = Arc::new(limits);
        for l in &tcp {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "listening on TCP");
            }
        }
        if let Some((_, path)) = &unix {
            info!(path = %path.display(), "listening on Unix socket");
        }

        // Scheduled snapshots (`snap schedule`); commands through the API
        // wake it, since they may change the schedules.
        let scheduler = Scheduler::start(store.clone(), registry.clone(), clock);
        let (api_stop, api_task) = match api {
            Some((listener, path)) => {
                info!(path = %path.display(), "management API ready");
                registry.set_daemon_info(DaemonInfo {
                    pid: std::process::id(),
                    since: vdisk_engine::report::fmt_time(vdisk_engine::now()),
                    version: env!("CARGO_PKG_VERSION").into(),
                    dir: store.dir().map(|d| d.display().to_string()),
                    listen,
                    socket: unix.as_ref().map(|(_, p)| p.display().to_string()),
                    api_socket: Some(path.display().to_string()),
                    shared: registry.is_shared(),
                });
                let state = Arc::new(ApiState {
                    store: store.clone(),
                    registry: registry.clone(),
                    commands,
                    scheduler: Some(scheduler.waker()),
                });
                let (tx, rx) = oneshot::channel::<()>();
                let task = tokio::spawn(api::serve(listener, state, async {
                    let _ = rx.await;
                }));
                (Some((tx, path)), Some(task))
            }
            None => (None, None),
        };

        // Space released by snapshot removal and rollback is trimmed in the
        // background from now on (and what an earlier run left, first).
        let trimmer = crate::trimmer::Trimmer::start(store.clone(), registry.clone());

        // Each listener accepts in its own task and hands connections to
        // this loop, which alone owns the set of connection tasks.
        let (accepted_tx, mut accepted_rx) = mpsc::channel::<Accepted>(64);
        let mut acceptors: Vec<JoinHandle<()>> = Vec::new();
        for listener in tcp {
            let tx = accepted_tx.clone();
            acceptors.push(tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            if tx.send(Accepted::Tcp(stream, peer)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            }));
        }
        let socket_path = unix.as_ref().map(|(_, p)| p.clone());
        if let Some((listener, _)) = unix {
            let tx = accepted_tx.clone();
            acceptors.push(tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            if tx.send(Accepted::Unix(stream)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            }));
        }
        drop(accepted_tx);

        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut conns: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = accepted_rx.recv() => {
                    let Some(accepted) = accepted else { break };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Accepted and closed: the client fails fast rather
                        // than hanging in the listen backlog.
                        warn!(limit = limits.max_connections, "too many connections; refusing one");
                        continue;
                    };
                    let id = registry.next_conn_id();
                    let mut ctx = ConnCtx {
                        store: store.clone(),
                        limits: limits.clone(),
                        stop: stop_rx.clone(),
                        registry: registry.clone(),
                        id,
                        peer: Peer::Unix { pid: None, uid: None },
                        _permit: permit,
                    };
                    match accepted {
                        Accepted::Tcp(stream, peer) => {
                            // Replies are sent whole; Nagle would only delay
                            // the small ones.
                            let _ = stream.set_nodelay(true);
                            ctx.peer = Peer::Tcp(peer);
                            let span = info_span!("conn", id, peer = %ctx.peer);
                            let (rd, wr) = stream.into_split();
                            conns.spawn(connection(rd, wr, ctx).instrument(span));
                        }
                        Accepted::Unix(stream) => {
                            ctx.peer = match stream.peer_cred() {
                                Ok(c) => Peer::Unix { pid: c.pid(), uid: Some(c.uid()) },
                                Err(_) => Peer::Unix { pid: None, uid: None },
                            };
                            let span = info_span!("conn", id, peer = %ctx.peer);
                            let (rd, wr) = stream.into_split();
                            conns.spawn(connection(rd, wr, ctx).instrument(span));
                        }
                    }
                }
                Some(joined) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = joined {
                        if e.is_panic() {
                            error!("a connection task panicked; other connections are unaffected");
                        }
                    }
                }
            }
        }

        // The API first: a CLI that finds no API socket opens the data
        // directory itself, and is told the daemon still holds it.
        if let (Some((tx, path)), Some(task)) = (api_stop, api_task) {
            let _ = tx.send(());
            let mut task = task;
            if tokio::time::timeout(limits.drain_timeout, &mut task)
                .await
                .is_err()
            {
                warn!(
                    "management API requests still running after the drain timeout; closing them"
                );
                task.abort();
            }
            if let Err(e) = std::fs::remove_file(&path) {
                debug!(path = %path.display(), error = %e, "cannot remove the API socket");
            }
        }
        scheduler.stop().await;
        info!(
            connections = conns.len(),
            "shutting down: no new connections, finishing in-flight requests"
        );
        for a in &acceptors {
            a.abort();
        }
        drop(accepted_rx);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(limits.drain_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = conns.len(),
                secs = limits.drain_timeout.as_secs(),
                "connections still busy after the drain timeout; closing them"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        // The trimmer stops between two data operations; what is left
        // stays queued for the next start.
        let _ = tokio::task::spawn_blocking(move || trimmer.stop()).await;
        api::wait_for_jobs(&registry, limits.drain_timeout).await;
        let flushed = tokio::task::spawn_blocking(move || store.flush_all()).await;
        if let Some(path) = socket_path {
            if let Err(e) = std::fs::remove_file(&path) {
                debug!(path = %path.display(), error = %e, "cannot remove the socket");
            }
        }
        match flushed {
            Ok(Ok(())) => {
                info!("every image flushed; stopped");
                Ok(())
            }
            Ok(Err(e)) => {
                error!(error = %e, "flushing the images at shutdown failed");
                Err(e.into())
            }
            Err(e) => Err(Error::Io {
                what: "flushing the images at shutdown".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// Accept errors are mostly transient (a connection reset before it was
/// accepted, out of file descriptors): log, pause so a persistent one does
/// not spin, carry on.
async fn accept_failed(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Binds the Unix socket, replacing a stale socket file left by a server
/// that is gone (nothing answers on it), never a live server's socket or
/// a file that is not a socket.
async fn bind_unix(path: &Path) -> Result<UnixListener> {
    clear_stale_socket(path).await?;
    UnixListener::bind(path).map_err(|e| Error::Bind {
        addr: path.display().to_string(),
        source: e,
    })
}

/// Removes a stale socket file at `path` (nothing answers on it); refuses
/// a live server's socket and a file that is not a socket.
pub(crate) async fn clear_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::SocketInUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(|e| Error::Io {
                what: format!("removing the stale socket {}", path.display()),
                source: e,
            })?;
            info!(path = %path.display(), "removed a stale socket");
        }
        Ok(_) => return Err(Error::NotASocket(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                what: format!("inspecting {}", path.display()),
                source: e,
            })
        }
    }
    Ok(())
}

/// What a connection task gets.
struct ConnCtx {
    store: Store,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
    registry: Registry,
    /// Connection id ([`Registry::next_conn_id`]).
    id: u64,
    peer: Peer,
    /// Held for the connection's lifetime: one of `max_connections`.
    _permit: OwnedSemaphorePermit,
}

/// The read half of an accepted stream, which the handshake reads from,
/// put back together with its write half for transmission, whose threads
/// receive with blocking calls (see `transmission`).
trait Reunite<W>: Sized {
    fn reunite_socket(self, wr: W) -> std::io::Result<Socket>;
}

impl Reunite<tokio::net::tcp::OwnedWriteHalf> for tokio::net::tcp::OwnedReadHalf {
    fn reunite_socket(self, wr: tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<Socket> {
        let stream = self.reunite(wr).map_err(std::io::Error::other)?;
        Socket::from_tcp(stream)
    }
}

impl Reunite<tokio::net::unix::OwnedWriteHalf> for tokio::net::unix::OwnedReadHalf {
    fn reunite_socket(self, wr: tokio::net::unix::OwnedWriteHalf) -> std::io::Result<Socket> {
        let stream = self.reunite(wr).map_err(std::io::Error::other)?;
        Socket::from_unix(stream)
    }
}

/// One connection: handshake (bounded in time, abandoned at shutdown),
/// then transmission.
async fn connection<R, W>(mut rd: R, mut wr: W, ctx: ConnCtx)
where
    R: AsyncRead + Unpin + Send + 'static + Reunite<W>,
    W: AsyncWrite + Unpin + Send + 'static,
{
    debug!("connection opened");
    let mut stop = ctx.stop.clone();
    let outcome = tokio::select! {
        _ = stop.wait_for(|s| *s) => {
            debug!("closed during the handshake: server shutting down");
            return;
        }
        r = tokio::time::timeout(
            ctx.limits.handshake_timeout,
            negotiate(
                &mut rd,
                &mut wr,
                &ctx.store,
                &ctx.limits,
                Client {
                    registry: &ctx.registry,
                    id: ctx.id,
                    peer: &ctx.peer,
                },
            ),
        ) => r,
    };
    let (negotiated, image, leftover, conn) = match outcome {
        Err(_) => {
            info!(
                secs = ctx.limits.handshake_timeout.as_secs(),
                "handshake timed out; closing"
            );
            return;
        }
        Ok(Err(e)) => {
            info!(error = %e, "handshake failed; closing");
            return;
        }
        Ok(Ok(Outcome::Closed(why))) => {
            debug!(why, "closed during the handshake");
            return;
        }
        Ok(Ok(Outcome::Transmission {
            negotiated,
            image,
            leftover,
            conn,
        })) => (negotiated, image, leftover, conn),
    };
    info!(
        export = %negotiated.export,
        image = %image.spec(),
        size = negotiated.size,
        read_only = image.is_snapshot(),
        structured = negotiated.structured_replies,
        "export opened"
    );
    let socket = match rd.reunite_socket(wr) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(error = %e, "could not set the connection up for transmission; closing");
            return;
        }
    };
    // Bytes on the wire, for `vdisk status` and /metrics, and requests per
    // op are recorded by transmission through `conn.handle()`.
    let summary = transmission::serve(
        socket,
        leftover,
        &negotiated,
        image,
        &ctx.limits,
        conn.handle(),
        ctx.stop.clone(),
    )
    .await;
    info!(
        export = %negotiated.export,
        requests = summary.requests,
        failed = summary.failed,
        reason = %summary.end,
        "connection closed"
    );
    drop(conn);
}
