//! The fixture: a store in a temporary directory with a few images, served
//! in-process on `127.0.0.1:0` and a Unix socket, plus helpers to run the
//! real clients and to read what the engine holds.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use vdisk_engine::{CreateOptions, Image, ImageSpec, Store};
use vdisk_server::{Limits, ServeConfig, Server};

pub const K: u64 = 1024;
pub const M: u64 = 1024 * K;
/// Size of the fixture images.
pub const SIZE: u64 = 64 * M;

/// Logs of the server go to the test's output (shown for failing tests);
/// `VDISK_LOG=debug` for more.
fn init_logging() {
    let filter = std::env::var("VDISK_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A server running in its own runtime thread until dropped or stopped.
pub struct TestServer {
    pub store: Store,
    pub port: u16,
    pub socket: PathBuf,
    /// Scratch space for the test's files (raw copies...).
    pub scratch: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<vdisk_server::Result<()>>>,
    // Last: removed after the server stopped.
    dir: TempDir,
}

impl TestServer {
    /// Serves a fresh store holding the fixture images (see [`fixture`]).
    pub fn start() -> Self {
        Self::start_with(Limits::default())
    }

    /// Like [`TestServer::start`] with other limits.
    ///
    /// Several clients may write one image (`--shared`): the protocol
    /// tests connect one process over TCP and the Unix socket at once,
    /// which the one-writer rule counts as two clients. `tests/api.rs`
    /// tests the rule ([`TestServer::start_exclusive`]).
    pub fn start_with(limits: Limits) -> Self {
        Self::start_full(limits, true)
    }

    /// One writer per image, as `vdisk serve` without `--shared`.
    pub fn start_exclusive() -> Self {
        Self::start_full(Limits::default(), false)
    }

    fn start_full(limits: Limits, shared: bool) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_dir(&dir.path().join("data"), "server tests").expect("store");
        fixture(&store);
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).expect("scratch dir");
        let socket = dir.path().join("nbd.sock");
        let cfg = ServeConfig {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            socket: Some(socket.clone()),
            limits,
            shared,
            api_socket: Some(dir.path().join("data/api.sock")),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(Server::bind(store.clone(), cfg)).expect("bind");
        let port = server.local_addrs()[0].port();
        assert_eq!(server.socket_path(), Some(socket.as_path()));
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(server.serve(async {
                let _ = rx.await;
            }))
        });
        TestServer {
            store,
            port,
            socket,
            scratch,
            shutdown: Some(tx),
            thread: Some(thread),
            dir,
        }
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn tcp(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// `nbd+unix:///EXPORT?socket=PATH`.
    pub fn unix(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Both URIs of an export.
    pub fn uris(&self, export: &str) -> [String; 2] {
        [self.tcp(export), self.unix(export)]
    }

    /// A raw TCP connection with timeouts, so a misbehaving server fails
    /// the test instead of hanging it.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s
    }

    /// A path in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// The data directory of the served store.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The management API's socket (`DATA/api.sock`).
    pub fn api_socket(&self) -> PathBuf {
        self.data_dir().join("api.sock")
    }

    /// Stops the server (as SIGTERM would) and returns what `serve`
    /// returned; keeps the temporary directory for inspection.
    pub fn stop(&mut self) -> vdisk_server::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }

    /// Stops the server and hands over the directory, the store closed (so
    /// it can be reopened).
    pub fn stop_and_keep_dir(mut self) -> (vdisk_server::Result<()>, TempDir) {
        let result = self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        (result, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let result = self.stop();
        if !std::thread::panicking() {
            result.expect("server stopped with an error");
        }
    }
}

/// SplitMix64: deterministic test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

pub fn open(store: &Store, s: &str) -> Image {
    store.open(&spec(s)).expect("open")
}

/// The fixture:
/// - `rbd/img` (64 MiB): scattered data, partial blocks, zeros written
///   over nothing; snapshot `s1` (protected); then overwrites and zeros
///   over data `s1` still sees (zero markers);
/// - `rbd/child`: a clone of `img@s1` with a write of its own;
/// - `rbd/blank` (64 MiB): nothing written;
/// - pool `other` with `other/disk` (1 MiB of data).
pub fn fixture(store: &Store) {
    let create = |name: &str, size: u64| {
        store
            .create(
                &spec(name),
                &CreateOptions {
                    size,
                    order: None,
                    features: None,
                },
            )
            .expect("create")
    };
    let img = create("img", SIZE);
    img.write_at(0, &pattern(1, M as usize)).unwrap();
    img.write_at(4 * M, &vec![0x5a; 512 * K as usize]).unwrap();
    img.write_zeroes(8 * M, 4 * M).unwrap();
    img.write_at(16 * M + 100, &pattern(2, 10_000)).unwrap();
    img.write_at(63 * M, &pattern(3, M as usize)).unwrap();
    store.snap_create(&spec("img@s1")).unwrap();
    store.snap_protect(&spec("img@s1")).unwrap();
    img.write_at(0, &vec![0x11; 64 * K as usize]).unwrap();
    img.write_zeroes(4 * M, 256 * K).unwrap();
    let child = store
        .clone_image(&spec("img@s1"), &spec("child"), None, None)
        .unwrap();
    child
        .write_at(32 * M, &pattern(4, 512 * K as usize))
        .unwrap();
    create("blank", SIZE);
    store.pool_create("other", None).unwrap();
    create("other/disk", M)
        .write_at(0, &pattern(5, M as usize))
        .unwrap();
    store.flush_all().unwrap();
}

/// What the engine reads for `s`, whole.
pub fn content(store: &Store, s: &str) -> Vec<u8> {
    let img = open(store, s);
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).expect("read");
    buf
}

/// Writes what the engine reads for `s` to a raw file.
pub fn content_file(server: &TestServer, s: &str) -> PathBuf {
    let path = server.file(&format!("{}.engine.raw", s.replace(['/', '@'], "_")));
    std::fs::write(&path, content(&server.store, s)).expect("write raw");
    path
}

/// True if `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(bin))))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Skips the test (returns) unless every binary is installed.
#[macro_export]
macro_rules! require {
    ($($bin:expr),+) => {
        for bin in [$($bin),+] {
            if !$crate::common::have(bin) {
                eprintln!(
                    "SKIPPED: `{bin}` is not installed \
                     (apt-get install nbdkit libnbd-bin fio qemu-utils)"
                );
                return;
            }
        }
    };
}

/// Runs a command; panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns its status and output, success or not.
pub fn try_run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Engine allocation as `(offset, length, nbd type)` with type
/// `hole | zero << 1`, as `nbdinfo --map` prints it.
pub fn engine_map(store: &Store, s: &str) -> Vec<(u64, u64, u32)> {
    let img = open(store, s);
    let mut out = Vec::new();
    let mut pos = 0;
    for (len, hole, zero) in img.block_status(0, img.size()).expect("block status") {
        out.push((pos, len, u32::from(hole) | (u32::from(zero) << 1)));
        pos += len;
    }
    merge_map(out)
}

/// Merges adjacent extents of the same type (a server may split them
/// anywhere, e.g. at the end of one BLOCK_STATUS answer).
pub fn merge_map(extents: Vec<(u64, u64, u32)>) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for (off, len, ty) in extents {
        match out.last_mut() {
            Some(last) if last.2 == ty && last.0 + last.1 == off => last.1 += len,
            _ => out.push((off, len, ty)),
        }
    }
    out
}

/// The export name of an `nbd://HOST[:PORT]/NAME` or
/// `nbd+unix:///NAME?socket=PATH` URI.
pub fn export_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    path.split('?').next().unwrap_or("").to_owned()
}
