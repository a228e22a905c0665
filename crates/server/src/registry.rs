//! What the daemon knows about itself, shared by the NBD side and the
//! management API: the connected clients (who, which export, read-write or
//! read-only, since when, bytes), per-export counters and latency
//! histograms for `/metrics`, and the background jobs.
//!
//! The NBD side registers a connection when its export is decided
//! ([`Registry::conn_opened`], which also enforces one writer per image) and
//! holds the returned [`ConnGuard`] for the connection's lifetime; dropping
//! it unregisters the connection. Requests are recorded through a
//! [`ConnHandle`] (lock-free atomics) or [`Registry::record`].
//!
//! ## One writer per image
//!
//! A head export is read-write, so every connection to it counts as a
//! writer (NBD has no way for a client to promise it will only read). A
//! second writer of the same image is refused unless it comes from the
//! **same client** as the writers already connected, or the daemon runs with
//! `--shared`. Same client means:
//! - TCP: the same remote IP address (any port): qemu's and nbdcopy's
//!   multi-conn connections come from one host;
//! - Unix socket: the same peer process id (`SO_PEERCRED` at connect time):
//!   the connections of one qemu or nbdcopy process. Two processes are two
//!   clients even under the same user. A peer whose credentials cannot be
//!   read is a client of its own.
//!
//! Snapshot exports are read-only and never conflict.

use crate::api::types::{ConnectionInfo, DaemonInfo, ErrorBody, JobInfo, JobState};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use vdisk_engine::report::fmt_time;
use vdisk_engine::{now, Progress};

/// Finished jobs kept for `status` and for clients polling them.
const FINISHED_JOBS_KEPT: usize = 100;

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` follows.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
const BUCKET_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A client of the Unix socket, with its credentials when the kernel
    /// gave them.
    Unix {
        /// Process id (`SO_PEERCRED`).
        pid: Option<i32>,
        /// User id.
        uid: Option<u32>,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix { pid, uid } => {
                f.write_str("unix")?;
                if let Some(p) = pid {
                    write!(f, " pid={p}")?;
                }
                if let Some(u) = uid {
                    write!(f, " uid={u}")?;
                }
                Ok(())
            }
        }
    }
}

/// What "the same client" compares (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientKey {
    Ip(IpAddr),
    Pid(i32),
    /// Unknown credentials: only this connection.
    Conn(u64),
}

/// The image behind an export, independent of its name (a rename keeps
/// it): pool name and image id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Pool name.
    pub pool: String,
    /// Image id within the pool.
    pub id: u64,
}

/// An NBD command, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// Anything else (refused commands).
    Other,
}

impl Op {
    /// Every op, in the order of the metrics.
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::WriteZeroes,
        Op::Trim,
        Op::Flush,
        Op::BlockStatus,
        Op::Cache,
        Op::Other,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::WriteZeroes => "write_zeroes",
            Op::Trim => "trim",
            Op::Flush => "flush",
            Op::BlockStatus => "block_status",
            Op::Cache => "cache",
            Op::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<vdisk_nbd::Command> for Op {
    fn from(c: vdisk_nbd::Command) -> Self {
        use vdisk_nbd::Command as C;
        match c {
            C::Read => Op::Read,
            C::Write => Op::Write,
            C::WriteZeroes => Op::WriteZeroes,
            C::Trim => Op::Trim,
            C::Flush => Op::Flush,
            C::BlockStatus => Op::BlockStatus,
            C::Cache => Op::Cache,
            _ => Op::Other,
        }
    }
}

/// Counters of one op of one export.
#[derive(Debug, Default)]
pub(crate) struct OpStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Payload bytes (READ: sent, WRITE: received; zeroing and trimming
    /// count their length).
    pub bytes: AtomicU64,
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub latency_nanos: AtomicU64,
}

impl OpStats {
    fn record(&self, bytes: u64, latency: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Counters of one export (`pool/image` or `pool/image@snap`), kept for
/// the daemon's lifetime so counters only grow.
#[derive(Debug, Default)]
pub(crate) struct ExportStats {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections ever opened.
    pub connections_total: AtomicU64,
    /// Bytes received from / sent to clients (wire: headers included).
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub ops: [OpStats; Op::ALL.len()],
    /// Large WRITEs whose payload was received straight into the page
    /// cache (see `transmission`, `write_in_place`).
    pub writes_in_place: AtomicU64,
}

/// One connection, as registered.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: u64,
    pub peer: Peer,
    client: ClientKey,
    pub image: ImageRef,
    pub export: String,
    pub writable: bool,
    pub since: u64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub stats: Arc<ExportStats>,
}

impl Conn {
    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            client: self.peer.to_string(),
            export: self.export.clone(),
            mode: if self.writable { "rw" } else { "ro" }.into(),
            since: fmt_time(self.since),
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The shared registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: bool,
    next_conn: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    exports: Mutex<BTreeMap<String, Arc<ExportStats>>>,
    next_job: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    api_requests: AtomicU64,
    daemon: Mutex<Option<DaemonInfo>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(false)
    }
}

impl Registry {
    /// An empty registry; `shared` lifts the one-writer-per-image rule.
    pub fn new(shared: bool) -> Self {
        Registry {
            inner: Arc::new(Inner {
                shared,
                next_conn: AtomicU64::new(0),
                conns: Mutex::new(BTreeMap::new()),
                exports: Mutex::new(BTreeMap::new()),
                next_job: AtomicU64::new(0),
                jobs: Mutex::new(BTreeMap::new()),
                api_requests: AtomicU64::new(0),
                daemon: Mutex::new(None),
            }),
        }
    }

    /// What `status` says about the daemon (set when it starts serving).
    pub fn daemon_info(&self) -> Option<DaemonInfo> {
        lock(&self.inner.daemon).clone()
    }

    pub(crate) fn set_daemon_info(&self, info: DaemonInfo) {
        *lock(&self.inner.daemon) = Some(info);
    }

    /// Whether several clients may write one image (`--shared`).
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    fn export_stats(&self, export: &str) -> Arc<ExportStats> {
        lock(&self.inner.exports)
            .entry(export.to_owned())
            .or_default()
            .clone()
    }

    /// A new connection id (unique for the daemon's lifetime).
    pub fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection that enters transmission on `export` (the
    /// canonical `pool/image[@snap]`) of `image`. Refuses, with a message
    /// for the client, a writer of an image another client writes (unless
    /// shared). The check and the registration are one step, so two
    /// clients racing for one image cannot both win.
    ///
    /// `id` comes from [`Registry::next_conn_id`] (the id the connection's
    /// log lines carry too).
    pub fn conn_opened(
        &self,
        id: u64,
        peer: Peer,
        image: ImageRef,
        export: &str,
        writable: bool,
    ) -> Result<ConnGuard, String> {
        let client = match &peer {
            Peer::Tcp(a) => ClientKey::Ip(a.ip().to_canonical()),
            Peer::Unix { pid: Some(p), .. } => ClientKey::Pid(*p),
            Peer::Unix { pid: None, .. } => ClientKey::Conn(id),
        };
        let stats = self.export_stats(export);
        let mut conns = lock(&self.inner.conns);
        if writable && !self.inner.shared {
            if let Some(other) = conns
                .values()
                .find(|c| c.writable && c.image == image && c.client != client)
            {
                return Err(format!(
                    "{export} is already open read-write by another client ({}, connected since \
                     {}): one writer per image. Disconnect that client, read a snapshot \
                     ({export}@SNAP) instead, or start the server with `vdisk serve --shared` \
                     if the writers coordinate (a cluster filesystem)",
                    other.peer,
                    fmt_time(other.since)
                ));
            }
        }
        let conn = Arc::new(Conn {
            id,
            peer,
            client,
            image,
            export: export.to_owned(),
            writable,
            since: now(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            stats,
        });
        conn.stats.connections.fetch_add(1, Ordering::Relaxed);
        conn.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, conn.clone());
        Ok(ConnGuard {
            registry: self.clone(),
            conn,
        })
    }

    /// Records one request on `export` (see [`ConnHandle::record`], which
    /// also counts it for its connection and takes no lock).
    pub fn record(&self, export: &str, op: Op, bytes: u64, latency: Duration, ok: bool) {
        self.export_stats(export).ops[op.index()].record(bytes, latency, ok);
    }

    /// The connections open now, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.inner.conns).values().map(|c| c.info()).collect()
    }

    /// The connections open now to `image` (its head or its snapshots).
    pub fn connections_to(&self, image: &ImageRef) -> Vec<ConnectionInfo> {
        lock(&self.inner.conns)
            .values()
            .filter(|c| &c.image == image)
            .map(|c| c.info())
            .collect()
    }

    /// The connections open now to images of `pool`.
    pub fn connections_in_pool(&self, pool: &str) -> Vec<ConnectionInfo> {
        lock(&self.inner.conns)
            .values()
            .filter(|c| c.image.pool == pool)
            .map(|c| c.info())
            .collect()
    }

    /// The read-write connections open now to `image`.
    pub fn writers_of(&self, image: &ImageRef) -> Vec<ConnectionInfo> {
        lock(&self.inner.conns)
            .values()
            .filter(|c| c.writable && &c.image == image)
            .map(|c| c.info())
            .collect()
    }

    pub(crate) fn export_snapshot(&self) -> Vec<(String, Arc<ExportStats>)> {
        lock(&self.inner.exports)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn api_request(&self) {
        self.inner.api_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn api_requests(&self) -> u64 {
        self.inner.api_requests.load(Ordering::Relaxed)
    }

    // ----------------------------------------------------------------- jobs

    /// Creates a job (state `queued`). Refused while a job of the same
    /// kind on the same spec is queued or running.
    pub fn job_create(&self, kind: &str, spec: &str) -> Result<JobHandle, String> {
        let mut jobs = lock(&self.inner.jobs);
        if let Some(j) = jobs
            .values()
            .find(|j| j.kind == kind && j.spec == spec && !j.state().is_finished())
        {
            return Err(format!(
                "job {} ({kind} {spec}) is already {}",
                j.id,
                j.state().name()
            ));
        }
        let id = self.inner.next_job.fetch_add(1, Ordering::Relaxed) + 1;
        let (finished, _) = watch::channel(false);
        let job = Arc::new(Job {
            id,
            kind: kind.to_owned(),
            spec: spec.to_owned(),
            created: now(),
            inner: Mutex::new(JobInner {
                state: JobState::Queued,
                started: None,
                finished: None,
                error: None,
                result: None,
            }),
            phase: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            finished,
        });
        jobs.insert(id, job.clone());
        // Forget the oldest finished jobs beyond the limit.
        let finished: Vec<u64> = jobs
            .values()
            .filter(|j| j.state().is_finished())
            .map(|j| j.id)
            .collect();
        if finished.len() > FINISHED_JOBS_KEPT {
            for id in &finished[..finished.len() - FINISHED_JOBS_KEPT] {
                jobs.remove(id);
            }
        }
        Ok(JobHandle(job))
    }

    /// A job by id (finished ones are kept for a while).
    pub fn job(&self, id: u64) -> Option<JobHandle> {
        lock(&self.inner.jobs).get(&id).cloned().map(JobHandle)
    }

    /// Every job known, oldest first (without their command output).
    pub fn jobs(&self) -> Vec<JobInfo> {
        lock(&self.inner.jobs)
            .values()
            .map(|j| j.info(false))
            .collect()
    }

    /// Jobs queued or running.
    pub fn jobs_active(&self) -> usize {
        lock(&self.inner.jobs)
            .values()
            .filter(|j| !j.state().is_finished())
            .count()
    }
}

/// Held by a connection while it is open; dropping it unregisters it.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Registry,
    conn: Arc<Conn>,
}

impl ConnGuard {
    /// A handle for recording the connection's requests.
    pub fn handle(&self) -> ConnHandle {
        ConnHandle(self.conn.clone())
    }

    /// The connection's id (as `status` shows it).
    pub fn id(&self) -> u64 {
        self.conn.id
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.registry.inner.conns).remove(&self.conn.id);
        self.conn.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records what one connection does; cheap to clone, lock-free.
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<Conn>);

impl ConnHandle {
    /// Records one request: its op, payload bytes (READ: bytes read,
    /// WRITE: bytes written, WRITE_ZEROES/TRIM: their length, others 0),
    /// how long it took from being read off the socket to its reply being
    /// queued, and whether it succeeded.
    pub fn record(&self, op: Op, bytes: u64, latency: Duration, ok: bool) {
        let c = &self.0;
        c.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            match op {
                Op::Read => c.read_bytes.fetch_add(bytes, Ordering::Relaxed),
                Op::Write => c.written_bytes.fetch_add(bytes, Ordering::Relaxed),
                _ => 0,
            };
        }
        c.stats.ops[op.index()].record(bytes, latency, ok);
    }

    /// Counts `n` bytes received from the client (transmission's
    /// receiving side does, for every receive).
    pub fn received(&self, n: usize) {
        self.0.received.fetch_add(n as u64, Ordering::Relaxed);
        self.0.stats.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a WRITE received in place.
    pub fn wrote_in_place(&self) {
        self.0.stats.writes_in_place.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` bytes sent to the client.
    pub fn sent(&self, n: usize) {
        self.0.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.0.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A socket writer that counts the bytes sent on a connection.
#[derive(Debug)]
pub(crate) struct CountingWriter<W> {
    inner: W,
    conn: ConnHandle,
}

impl<W> CountingWriter<W> {
    pub(crate) fn new(inner: W, conn: ConnHandle) -> Self {
        CountingWriter { inner, conn }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.conn.sent(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.conn.sent(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------- jobs

impl JobState {
    /// `done` or `failed`.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }

    /// The state's name in JSON and tables.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

#[derive(Debug)]
struct JobInner {
    state: JobState,
    started: Option<u64>,
    finished: Option<u64>,
    error: Option<ErrorBody>,
    result: Option<crate::api::types::CommandReply>,
}

/// One job.
#[derive(Debug)]
struct Job {
    id: u64,
    kind: String,
    spec: String,
    created: u64,
    inner: Mutex<JobInner>,
    phase: Mutex<String>,
    done: AtomicU64,
    total: AtomicU64,
    finished: watch::Sender<bool>,
}

impl Job {
    fn state(&self) -> JobState {
        lock(&self.inner).state
    }

    fn info(&self, with_result: bool) -> JobInfo {
        let inner = lock(&self.inner);
        JobInfo {
            id: self.id,
            kind: self.kind.clone(),
            spec: self.spec.clone(),
            state: inner.state,
            phase: lock(&self.phase).clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            created: fmt_time(self.created),
            started: inner.started.map(fmt_time),
            finished: inner.finished.map(fmt_time),
            error: inner.error.clone(),
            result: if with_result {
                inner.result.clone()
            } else {
                None
            },
        }
    }
}

/// A job, for whoever runs it or waits for it.
#[derive(Debug, Clone)]
pub struct JobHandle(Arc<Job>);

impl JobHandle {
    /// The job's id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Its state now.
    pub fn state(&self) -> JobState {
        self.0.state()
    }

    /// Everything about it, with the command's output once finished.
    pub fn info(&self) -> JobInfo {
        self.0.info(true)
    }

    /// `queued` → `running`.
    pub fn set_running(&self) {
        let mut inner = lock(&self.0.inner);
        inner.state = JobState::Running;
        inner.started = Some(now());
    }

    /// Ends the job with the command's reply: `done` only when the command
    /// reported success (exit code 0 and no error), `failed` otherwise.
    pub fn finish(&self, reply: crate::api::types::CommandReply) {
        {
            let mut inner = lock(&self.0.inner);
            let ok = reply.exit_code == 0 && reply.error.is_none();
            inner.state = if ok { JobState::Done } else { JobState::Failed };
            inner.finished = Some(now());
            inner.error = reply.error.clone();
            inner.result = Some(reply);
        }
        self.0.finished.send_replace(true);
    }

    /// Completes once the job is finished.
    pub async fn wait(&self) {
        let mut rx = self.0.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }
}

impl Progress for JobHandle {
    fn start(&self, what: &str, total: u64) {
        *lock(&self.0.phase) = what.to_owned();
        self.0.done.store(0, Ordering::Relaxed);
        self.0.total.store(total, Ordering::Relaxed);
    }

    fn inc(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }

    fn finish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: u64) -> ImageRef {
        ImageRef {
            pool: "rbd".into(),
            id,
        }
    }

    fn open(
        r: &Registry,
        peer: Peer,
        image: ImageRef,
        export: &str,
        writable: bool,
    ) -> Result<ConnGuard, String> {
        r.conn_opened(r.next_conn_id(), peer, image, export, writable)
    }

    fn tcp(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    #[test]
    fn one_writer_per_image() {
        let r = Registry::new(false);
        let a = open(&r, tcp("10.0.0.1:1000"), img(1), "rbd/a", true).unwrap();
        // Multi-conn from the same host.
        let a2 = open(&r, tcp("10.0.0.1:1001"), img(1), "rbd/a", true).unwrap();
        // Another host: refused for the head, fine for a snapshot and
        // for another image.
        let err = open(&r, tcp("10.0.0.2:1000"), img(1), "rbd/a", true).unwrap_err();
        assert!(err.contains("one writer per image") && err.contains("10.0.0.1:1000"));
        let _ro = open(&r, tcp("10.0.0.2:1000"), img(1), "rbd/a@s", false).unwrap();
        let _b = open(&r, tcp("10.0.0.2:1000"), img(2), "rbd/b", true).unwrap();
        // Unix peers: by pid.
        let unix = |pid| Peer::Unix {
            pid: Some(pid),
            uid: Some(0),
        };
        let c = open(&r, unix(7), img(3), "rbd/c", true).unwrap();
        open(&r, unix(7), img(3), "rbd/c", true).unwrap();
        assert!(open(&r, unix(8), img(3), "rbd/c", true).is_err());
        let anon = Peer::Unix {
            pid: None,
            uid: None,
        };
        assert!(open(&r, anon, img(3), "rbd/c", true).is_err());
        drop(c);
        assert_eq!(r.writers_of(&img(1)).len(), 2);
        drop((a, a2));
        assert_eq!(r.writers_of(&img(1)).len(), 0);
        open(&r, tcp("10.0.0.2:1000"), img(1), "rbd/a", true).unwrap();
        assert_eq!(r.connections_to(&img(1)).len(), 1, "closed ones are gone");

        let shared = Registry::new(true);
        let _x = open(&shared, tcp("10.0.0.1:1"), img(1), "rbd/a", true).unwrap();
        open(&shared, tcp("10.0.0.2:1"), img(1), "rbd/a", true).unwrap();
    }

    #[test]
    fn requests_are_counted() {
        let r = Registry::new(false);
        let g = open(&r, tcp("127.0.0.1:5"), img(1), "rbd/a", true).unwrap();
        let h = g.handle();
        h.record(Op::Write, 4096, Duration::from_micros(70), true);
        h.record(Op::Read, 512, Duration::from_secs(60), true);
        h.record(Op::Read, 512, Duration::from_micros(1), false);
        r.record("rbd/a", Op::Flush, 0, Duration::from_millis(3), true);
        let c = &r.connections()[0];
        assert_eq!((c.requests, c.read_bytes, c.written_bytes), (3, 512, 4096));
        let stats = r.export_snapshot();
        let ops = &stats[0].1.ops;
        let read = &ops[Op::Read.index()];
        assert_eq!(read.requests.load(Ordering::Relaxed), 2);
        assert_eq!(read.errors.load(Ordering::Relaxed), 1);
        assert_eq!(read.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(
            read.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(ops[Op::Write.index()].buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(ops[Op::Flush.index()].requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn jobs_finish_verified() {
        let r = Registry::new(false);
        let j = r.job_create("flatten", "rbd/c").unwrap();
        assert_eq!(j.state(), JobState::Queued);
        assert!(r.job_create("flatten", "rbd/c").is_err(), "one at a time");
        j.set_running();
        j.start("flatten", 10);
        j.inc(4);
        let i = j.info();
        assert_eq!((i.state, i.done, i.total), (JobState::Running, 4, 10));
        j.finish(crate::api::types::CommandReply {
            exit_code: 3,
            stdout: String::new(),
            stderr: "vdisk: error: gone\n".into(),
            error: None,
            job: None,
        });
        assert_eq!(j.state(), JobState::Failed, "a non-zero exit is a failure");
        let j2 = r.job_create("flatten", "rbd/c").unwrap();
        j2.finish(crate::api::types::CommandReply::default());
        assert_eq!(j2.state(), JobState::Done);
        assert_eq!(r.jobs_active(), 0);
        assert_eq!(r.jobs().len(), 2);
    }
}
