//! Test harness: a temporary data directory and helpers to run `vdisk` in
//! it and assert on the outcome.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockWriteGuard};
use tempfile::TempDir;
use vdisk_engine::{ImageSpec, Store};

/// Exit codes (docs/CLI.md).
pub const USAGE: i32 = 2;
pub const NOT_FOUND: i32 = 3;
pub const EXISTS: i32 = 4;
pub const REFUSED: i32 = 5;
pub const UNSUPPORTED: i32 = 6;
pub const CORRUPT: i32 = 7;
pub const BUSY: i32 = 8;

/// Forks happen under a read guard, in-process use of a data directory
/// (which holds its lock file open) under the write guard. A child forked
/// while this process holds a lock inherits the lock's open file until it
/// execs (where CLOEXEC closes it): without this, a `vdisk` started right
/// after `Env::write` could find its directory still locked by a sibling
/// test's half-spawned child.
static FORK: RwLock<()> = RwLock::new(());

/// Waits for every spawn in progress, then keeps others from starting
/// until the guard drops.
pub fn no_forks() -> RwLockWriteGuard<'static, ()> {
    FORK.write().unwrap_or_else(|e| e.into_inner())
}

/// Runs `c` to completion, spawning under the fork guard.
pub fn output(c: &mut Command) -> Output {
    let guard = FORK.read().unwrap_or_else(|e| e.into_inner());
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vdisk");
    drop(guard);
    child.wait_with_output().expect("wait vdisk")
}

/// Starts `c` in the background (spawning under the fork guard).
pub fn spawn(c: &mut Command) -> std::process::Child {
    let _guard = FORK.read().unwrap_or_else(|e| e.into_inner());
    c.spawn().expect("spawn")
}

/// One test's world: a data directory and room for files next to it.
pub struct Env {
    tmp: TempDir,
    /// Environment variables set for the commands run.
    vars: std::sync::Mutex<Vec<(String, String)>>,
}

impl Env {
    pub fn new() -> Self {
        Env {
            tmp: TempDir::new().expect("temporary directory"),
            vars: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs the next commands as if the machine's boot id were `id`.
    pub fn set_boot_id(&self, id: &str) {
        self.set_var("VDISK_BOOT_ID", id);
    }

    /// Sets an environment variable for the next commands.
    pub fn set_var(&self, key: &str, value: &str) {
        let mut vars = self.vars.lock().unwrap();
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value.to_owned()));
    }

    /// The data directory passed as `--dir`.
    pub fn store_dir(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    /// A path for test files, outside the data directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
        c.arg("--dir")
            .arg(self.store_dir())
            .arg("--no-progress")
            .args(args)
            .env_remove("VDISK_DIR");
        c.env_remove("VDISK_BOOT_ID")
            .env_remove("VDISK_NBD_TIMEOUT");
        for (k, v) in &*self.vars.lock().unwrap() {
            c.env(k, v);
        }
        c
    }

    /// Runs `vdisk ARGS` with empty standard input.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, b"")
    }

    /// Runs `vdisk ARGS` feeding `input` on standard input.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let guard = FORK.read().unwrap_or_else(|e| e.into_inner());
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vdisk");
        drop(guard);
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        // A writer thread: the child may not read everything (errors).
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait vdisk");
        let _ = w.join();
        out
    }

    /// Starts `vdisk ARGS` in the background (stdin empty, stdout and
    /// stderr piped), for long-running commands such as `serve`.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let _guard = FORK.read().unwrap_or_else(|e| e.into_inner());
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vdisk")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(args, &out);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs with `--format json`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {s}"))
    }

    /// Runs, asserts exit code `code` and a `vdisk: error:` line; returns
    /// stderr.
    pub fn fail(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        check_failure(args, &out, code)
    }

    /// `meta backup rbd -`: the pool's metadata, deterministic.
    pub fn backup(&self) -> String {
        self.backup_of("rbd")
    }

    pub fn backup_of(&self, pool: &str) -> String {
        self.ok(&["meta", "backup", pool, "-"])
    }

    /// Asserts that `args` fails with `code`, says `needle` on stderr, and
    /// leaves pool `rbd` exactly as it was.
    pub fn refused(&self, args: &[&str], code: i32, needle: &str) -> String {
        let before = self.backup();
        let err = self.fail(args, code);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
        assert_eq!(before, self.backup(), "{args:?} changed the pool");
        err
    }

    /// Writes into an image through the engine (no CLI verb writes at an
    /// offset); the store is closed again before returning.
    pub fn write(&self, spec: &str, offset: u64, data: &[u8]) {
        let _g = no_forks();
        let store = Store::open_dir(&self.store_dir(), "test writer").expect("open store");
        let img = store
            .open(&ImageSpec::parse(spec).expect("spec"))
            .expect("open image");
        img.write_at(offset, data).expect("write");
        img.flush().expect("flush");
    }

    /// Zeroes a range through the engine.
    pub fn zero(&self, spec: &str, offset: u64, len: u64) {
        let _g = no_forks();
        let store = Store::open_dir(&self.store_dir(), "test writer").expect("open store");
        let img = store
            .open(&ImageSpec::parse(spec).expect("spec"))
            .expect("open image");
        img.write_zeroes(offset, len).expect("zero");
        img.flush().expect("flush");
    }

    /// Exports `spec` and returns its bytes.
    pub fn read_all(&self, spec: &str) -> Vec<u8> {
        let out = self.run(&["export", spec, "-"]);
        assert_success(&["export", spec, "-"], &out);
        out.stdout
    }

    /// Writes `data` to a test file and returns its path as a string.
    pub fn put_file(&self, name: &str, data: &[u8]) -> String {
        let p = self.file(name);
        std::fs::write(&p, data).expect("write test file");
        path_str(&p)
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

pub fn assert_success(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "vdisk {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn check_failure(args: &[&str], out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "vdisk {args:?}: expected exit {code}; stderr: {err}; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Ours are prefixed; clap's own usage errors start with "error:" (or
    // are the help of a command given without its subcommand).
    let ours = err.contains("vdisk: error: ");
    let clap = code == USAGE && (err.starts_with("error:") || err.contains("Usage: vdisk"));
    assert!(ours || clap, "vdisk {args:?}: no error line: {err}");
    assert!(!err.contains("panicked"), "vdisk {args:?} panicked: {err}");
    err
}

/// Deterministic non-zero pseudo-random bytes.
pub fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

pub const MIB: usize = 1 << 20;
