//! Crash and fault tests of the image engine.
//!
//! In-process (on the in-memory backends): random operation sequences, then
//! power loss at a random point (`MemObjectStore::crash`: everything not
//! synced is lost; `MemMetaStore` commits are durable, so the metadata is
//! the state of the last commit), or an object or metadata store that fails
//! every operation after a random number of them, or an object store whose
//! punch does not zero. After reopening: every flushed write reads back,
//! every 4 KiB block holds its last flushed value or a value written after
//! that flush, snapshots hold what they were created with, and `check`
//! finds no errors.
//!
//! Real process kill: a child process (this test binary, re-executed) writes
//! to a real data directory (redb + files) and is killed with SIGKILL at a
//! random moment; the parent reopens, checks, and verifies against a replay
//! of the same deterministic operations.
//!
//! `VDISK_TEST_LONG=1`: more cases and 500 kill trials (default 50).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{
    CreateOptions, Error, ErrorKind, Features, Image, ImageSpec, NoProgress, Store,
};
use vdisk_storage::{
    FaultConfig, FaultyMetaStore, FaultyObjectStore, MemMetaStore, MemObjectStore, MetaStore,
    ObjectStore,
};

const BLOCK: usize = 4096;

// ------------------------------------------------------------------ model

/// Possible contents of every block: what a read may return now (`live`)
/// and after a crash (`durable`: the last flushed value, or any value
/// written since). Sets, because an operation that failed may or may not
/// have taken effect.
#[derive(Debug, Clone)]
struct Blocks {
    size: usize,
    live: Vec<Vec<Vec<u8>>>,
    durable: Vec<Vec<Vec<u8>>>,
}

fn add(set: &mut Vec<Vec<u8>>, v: Vec<u8>) {
    if !set.contains(&v) {
        set.push(v);
    }
}

impl Blocks {
    fn new(size: usize) -> Self {
        let n = size.div_ceil(BLOCK);
        let live: Vec<Vec<Vec<u8>>> = (0..n)
            .map(|b| vec![vec![0u8; BLOCK.min(size - b * BLOCK)]])
            .collect();
        Blocks {
            size,
            durable: live.clone(),
            live,
        }
    }

    /// A write of `data` at `off`: `certain` when it returned Ok.
    fn write(&mut self, off: usize, data: &[u8], certain: bool) {
        let end = off + data.len();
        let mut pos = off;
        while pos < end {
            let b = pos / BLOCK;
            let bstart = b * BLOCK;
            let bend = ((b + 1) * BLOCK).min(end);
            let mut new = Vec::new();
            for old in &self.live[b] {
                let mut v = old.clone();
                v[pos - bstart..bend - bstart].copy_from_slice(&data[pos - off..bend - off]);
                add(&mut new, v);
            }
            for v in &new {
                add(&mut self.durable[b], v.clone());
            }
            if certain {
                self.live[b] = new;
            } else {
                for v in new {
                    add(&mut self.live[b], v);
                }
            }
            pos = bend;
        }
    }

    fn flushed(&mut self) {
        self.durable = self.live.clone();
    }

    /// The head became `snap` (rollback); `certain` when it returned Ok.
    fn roll_back_to(&mut self, snap: &Blocks, certain: bool) {
        if certain {
            *self = snap.clone();
            self.flushed();
            return;
        }
        // Sizes are fixed in these tests.
        for b in 0..self.live.len() {
            for v in &snap.live[b] {
                add(&mut self.live[b], v.clone());
                add(&mut self.durable[b], v.clone());
            }
            for v in self.live[b].clone() {
                add(&mut self.durable[b], v);
            }
        }
    }

    fn check(&self, got: &[u8], durable: bool, what: &str) {
        assert_eq!(got.len(), self.size, "{what}: size");
        let sets = if durable { &self.durable } else { &self.live };
        for (b, set) in sets.iter().enumerate() {
            let blk = &got[b * BLOCK..(b * BLOCK + BLOCK).min(self.size)];
            if !set.iter().any(|v| v == blk) {
                let zero = blk.iter().all(|x| *x == 0);
                panic!(
                    "{what}: block {b} (offset {}) holds {}{:02x?}, none of the {} allowed value(s) (first bytes {:02x?})",
                    b * BLOCK,
                    if zero { "zeros " } else { "" },
                    &blk[..8.min(blk.len())],
                    set.len(),
                    set.iter().map(|v| v[..8.min(v.len())].to_vec()).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SnapModel {
    blocks: Blocks,
    /// Created for certain (else: the create failed and it may exist).
    certain: bool,
}

// ------------------------------------------------------------ the runner

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Power loss after a random number of operations.
    Crash,
    /// The object store fails every operation after a random count.
    DataFaults,
    /// The metadata store fails every operation after a random count.
    MetaFaults,
    /// Punch does not zero; no failures; power loss at the end.
    LyingPunch,
}

struct Case {
    mode: Mode,
    seed: u64,
    meta: MemMetaStore,
    data: MemObjectStore,
    faulty_data: Option<Arc<FaultyObjectStore>>,
    faulty_meta: Option<Arc<FaultyMetaStore>>,
    order: u8,
    store: Option<Store>,
    head: Option<Image>,
    spec: ImageSpec,
    model: Blocks,
    snaps: BTreeMap<String, SnapModel>,
    /// Snapshots whose removal failed: they may or may not exist.
    maybe_removed: BTreeMap<String, SnapModel>,
    counter: u32,
    failed: bool,
    log: Vec<String>,
}

impl Case {
    fn open(&self) -> Result<Store, Error> {
        let data: Arc<dyn ObjectStore> = match &self.faulty_data {
            Some(f) => f.clone(),
            None => Arc::new(self.data.clone()),
        };
        let meta: Arc<dyn MetaStore> = match &self.faulty_meta {
            Some(f) => f.clone(),
            None => Arc::new(self.meta.clone()),
        };
        Store::open_with(
            meta,
            Box::new(vdisk_engine::SingleDataBackend(data)),
            config(self.order),
        )
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Records the outcome of an operation; after faults begin, errors are
    /// expected and must be I/O errors.
    fn outcome<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, Error>) -> bool {
        match r {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    self.mode == Mode::DataFaults || self.mode == Mode::MetaFaults,
                    "{what} failed without injected faults: {e}"
                );
                assert_eq!(
                    e.kind(),
                    ErrorKind::Io,
                    "{what}: unexpected error kind: {e}"
                );
                self.log.push(format!("  -> failed: {e}"));
                self.failed = true;
                false
            }
        }
    }

    fn head(&mut self) -> Option<Image> {
        if self.head.is_none() {
            let r = self.store().open(&self.spec);
            match r {
                Ok(h) => self.head = Some(h),
                Err(e) => {
                    self.outcome("open", Err::<(), _>(e));
                }
            }
        }
        self.head.clone()
    }

    fn step(&mut self, rng: &mut Mix) {
        let size = self.model.size as u64;
        let r = rng.below(100);
        let pick = |rng: &mut Mix| -> (u64, u64) {
            if rng.below(3) == 0 {
                let blocks = size / BLOCK as u64;
                let o = rng.below(blocks) * BLOCK as u64;
                let l = (1 + rng.below(8)) * BLOCK as u64;
                (o, l.min(size - o))
            } else {
                let o = rng.below(size);
                let l = 1 + rng.below(20_000);
                (o, l.min(size - o))
            }
        };
        if self.store.is_none() {
            return;
        }
        let Some(head) = self.head() else { return };
        if r < 50 {
            let (off, len) = pick(rng);
            let mut data = bytes(rng.next(), len as usize);
            if rng.below(5) == 0 {
                data[..(len as usize / 2)].fill(0);
            }
            self.log.push(format!("write {off}+{len}"));
            let ok = self.outcome("write", head.write_at(off, &data));
            self.model.write(off as usize, &data, ok);
        } else if r < 62 {
            let (off, len) = pick(rng);
            let zeroes = r >= 57;
            self.log.push(format!(
                "{} {off}+{len}",
                if zeroes { "write_zeroes" } else { "discard" }
            ));
            let res = if zeroes {
                head.write_zeroes(off, len)
            } else {
                head.discard(off, len)
            };
            let ok = self.outcome("discard", res);
            self.model.write(off as usize, &vec![0; len as usize], ok);
        } else if r < 75 {
            self.log.push("flush".into());
            if self.outcome("flush", head.flush()) {
                self.model.flushed();
            }
        } else if r < 83 {
            self.counter += 1;
            let name = format!("s{}", self.counter);
            self.log.push(format!("snap create {name}"));
            let ok = self.outcome(
                "snap create",
                self.store().snap_create(&self.spec.with_snap(&name)),
            );
            if ok {
                self.model.flushed();
            }
            self.snaps.insert(
                name,
                SnapModel {
                    blocks: self.model.clone(),
                    certain: ok,
                },
            );
        } else if r < 89 {
            if self.snaps.is_empty() {
                return;
            }
            let k = rng.below(self.snaps.len() as u64) as usize;
            let name = self.snaps.keys().nth(k).unwrap().clone();
            self.log.push(format!("snap rm {name}"));
            let res = self
                .store()
                .snap_remove(&self.spec.with_snap(&name), &NoProgress);
            let snap = self.snaps.remove(&name).unwrap();
            match res {
                Err(Error::SnapNotFound(_)) if !snap.certain => {}
                r => {
                    if !self.outcome("snap rm", r) {
                        self.maybe_removed.insert(name, snap);
                    }
                }
            }
        } else if r < 94 {
            let certain: Vec<String> = self
                .snaps
                .iter()
                .filter(|(_, s)| s.certain)
                .map(|(n, _)| n.clone())
                .collect();
            if certain.is_empty() {
                return;
            }
            let name = certain[rng.below(certain.len() as u64) as usize].clone();
            self.log.push(format!("rollback {name}"));
            let res = self
                .store()
                .snap_rollback(&self.spec.with_snap(&name), &NoProgress);
            let ok = self.outcome("rollback", res);
            let snap = self.snaps[&name].blocks.clone();
            self.model.roll_back_to(&snap, ok);
        } else if r < 97 {
            let (f, enable) = match rng.below(3) {
                0 => (
                    Features(Features::OBJECT_MAP.0 | Features::FAST_DIFF.0),
                    false,
                ),
                1 => (Features::OBJECT_MAP, true),
                _ => (Features::FAST_DIFF, true),
            };
            self.log.push(format!(
                "feature {} {f}",
                if enable { "enable" } else { "disable" }
            ));
            let res = self.store().feature_set(&self.spec, f, enable);
            match res {
                Err(Error::FeatureDependency { .. }) => {}
                r => {
                    self.outcome("feature", r);
                }
            }
        } else {
            // A clean restart: flush, drop everything, reopen.
            self.log.push("flush + reopen".into());
            let ok = self.outcome("flush all", self.store().flush_all());
            if ok {
                self.model.flushed();
            }
            self.head = None;
            self.store = None;
            match self.open() {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    self.outcome("reopen", Err::<(), _>(e));
                }
            }
        }
    }

    /// Power loss, then a restart on plain (non-faulty) stores.
    fn crash_and_reopen(&mut self) {
        self.head = None;
        self.store = None;
        self.faulty_data = None;
        self.faulty_meta = None;
        self.data.crash();
        self.store = Some(self.open().expect("reopen after the crash"));
    }

    fn verify_after_crash(&mut self) {
        let store = self.store().clone();
        let img = store.open(&self.spec).unwrap();
        let mut got = vec![0xEE; self.model.size];
        img.read_at(0, &mut got).unwrap();
        self.model.check(&got, true, "head after the crash");
        let existing: Vec<String> = store
            .snap_list(&self.spec)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        for (name, s) in &self.snaps {
            if !existing.contains(name) {
                assert!(!s.certain, "snapshot {name} was created but is gone");
                continue;
            }
            let snap = store.open(&self.spec.with_snap(name)).unwrap();
            let mut got = vec![0xEE; s.blocks.size];
            snap.read_at(0, &mut got).unwrap();
            s.blocks.check(&got, false, &format!("snapshot {name}"));
        }
        for name in &existing {
            if let Some(s) = self.maybe_removed.get(name) {
                let snap = store.open(&self.spec.with_snap(name)).unwrap();
                let mut got = vec![0xEE; s.blocks.size];
                snap.read_at(0, &mut got).unwrap();
                s.blocks
                    .check(&got, false, &format!("snapshot {name} (removal failed)"));
            } else {
                assert!(
                    self.snaps.contains_key(name),
                    "unknown snapshot {name} exists"
                );
            }
        }
        let rep = store.check(false).unwrap();
        assert!(
            rep.errors.is_empty(),
            "check after the crash: {:?}",
            rep.errors
        );
        // The store keeps working: write, flush, read back, check.
        let data = bytes(self.seed ^ 0xABCD, self.model.size);
        img.write_at(0, &data).unwrap();
        img.flush().unwrap();
        let mut back = vec![0; self.model.size];
        img.read_at(0, &mut back).unwrap();
        assert_bytes_eq(&back, &data, "rewrite after the crash");
        let rep = store.check(false).unwrap();
        assert!(
            rep.errors.is_empty(),
            "check after rewriting: {:?}",
            rep.errors
        );
    }
}

fn run_case(mode: Mode, seed: u64, max_ops: u64) {
    let mut rng = Mix(seed);
    let order = 12 + rng.below(3) as u8;
    let size = (16 + rng.below(48)) as usize * BLOCK;
    let meta = MemMetaStore::new();
    let data = MemObjectStore::new();
    let spec = ImageSpec::parse_image("rbd/disk").unwrap();
    {
        let s = open_store(&meta, Arc::new(data.clone()), order);
        s.create(
            &spec,
            &CreateOptions {
                size: size as u64,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let ops = 5 + rng.below(max_ops);
    let faulty_data = match mode {
        Mode::DataFaults | Mode::LyingPunch => Some(Arc::new(FaultyObjectStore::new(
            Arc::new(data.clone()),
            FaultConfig {
                lie_about_zeroing: mode == Mode::LyingPunch,
                ..FaultConfig::default()
            },
        ))),
        _ => None,
    };
    let faulty_meta = (mode == Mode::MetaFaults).then(|| {
        Arc::new(FaultyMetaStore::new(
            Arc::new(meta.clone()),
            FaultConfig::default(),
        ))
    });
    let mut c = Case {
        mode,
        seed,
        meta,
        data,
        faulty_data,
        faulty_meta,
        order,
        store: None,
        head: None,
        spec,
        model: Blocks::new(size),
        snaps: BTreeMap::new(),
        maybe_removed: BTreeMap::new(),
        counter: 0,
        failed: false,
        log: vec![format!(
            "{mode:?} seed {seed}: size {size} order {order}, {ops} ops"
        )],
    };
    c.store = Some(c.open().unwrap());
    // Arm the faults after setup: fail after a random number of operations.
    let budget = rng.below(ops * 6 + 10);
    if let Some(f) = &c.faulty_data {
        if mode == Mode::DataFaults {
            f.set(FaultConfig {
                fail_after_ops: Some(budget),
                ..FaultConfig::default()
            });
        }
    }
    if let Some(f) = &c.faulty_meta {
        f.set(FaultConfig {
            fail_after_ops: Some(budget),
            ..FaultConfig::default()
        });
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut after_failure = 0;
        for _ in 0..ops {
            c.step(&mut rng);
            if mode == Mode::LyingPunch {
                // Exact: nothing failed, and discards read zero although
                // the store never zeroed anything.
                let h = c.head().unwrap();
                let mut got = vec![0xEE; c.model.size];
                h.read_at(0, &mut got).unwrap();
                c.model.check(&got, false, "head (punch does not zero)");
            }
            if c.failed {
                after_failure += 1;
                if after_failure > 3 {
                    break;
                }
            }
        }
        c.log.push("-- power loss --".into());
        c.crash_and_reopen();
        c.verify_after_crash();
    }));
    if let Err(e) = result {
        eprintln!("{}", c.log.join("\n"));
        std::panic::resume_unwind(e);
    }
}

fn run_mode(mode: Mode, cases: usize, max_ops: u64) {
    let base = match std::env::var("VDISK_TEST_SEED") {
        Ok(s) => s.parse().unwrap(),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{mode:?}: base seed {base} (set VDISK_TEST_SEED to replay)");
    for i in 0..cases as u64 {
        run_case(mode, base.wrapping_add(i), max_ops);
    }
}

#[test]
fn power_loss_at_random_points_keeps_flushed_data() {
    run_mode(Mode::Crash, scaled(150, 3000), 40);
}

#[test]
fn data_store_failing_after_n_ops_errors_cleanly_and_loses_nothing_flushed() {
    run_mode(Mode::DataFaults, scaled(150, 3000), 40);
}

#[test]
fn meta_store_failing_after_n_ops_errors_cleanly_and_loses_nothing_flushed() {
    run_mode(Mode::MetaFaults, scaled(150, 3000), 40);
}

#[test]
fn discards_read_zero_when_punch_does_not_zero() {
    run_mode(Mode::LyingPunch, scaled(60, 1000), 40);
}

// ------------------------------------------------- real process kill test

/// The image the kill test's child writes to: 8 MiB of 64 KiB objects.
const KILL_SIZE: u64 = 8 << 20;
const KILL_ORDER: u8 = 16;
/// Operations the child would run if never killed.
const KILL_OPS: usize = 800;
/// Prefix of the child's protocol lines (the test harness prints too).
const TAG: &str = "@@VDISK ";

#[derive(Debug, Clone)]
enum KillOp {
    Write { off: u64, len: u64, seed: u64 },
    Discard { off: u64, len: u64 },
    Flush,
    Snap(String),
    SnapRm(String),
}

/// The child's operations: a pure function of the seed, so the parent can
/// replay them.
fn kill_plan(seed: u64) -> Vec<KillOp> {
    let mut rng = Mix(seed);
    let mut ops = Vec::with_capacity(KILL_OPS);
    let mut snaps: Vec<String> = Vec::new();
    while ops.len() < KILL_OPS {
        let i = ops.len();
        let r = rng.below(100);
        let (off, len) = if rng.below(2) == 0 {
            let o = rng.below(KILL_SIZE / 4096) * 4096;
            (o, ((1 + rng.below(64)) * 4096).min(KILL_SIZE - o))
        } else {
            let o = rng.below(KILL_SIZE);
            (o, (1 + rng.below(150_000)).min(KILL_SIZE - o))
        };
        if r < 66 {
            ops.push(KillOp::Write {
                off,
                len,
                seed: rng.next(),
            });
        } else if r < 76 {
            ops.push(KillOp::Discard { off, len });
        } else if r < 95 {
            ops.push(KillOp::Flush);
        } else {
            let name = format!("s{i}");
            snaps.push(name.clone());
            ops.push(KillOp::Snap(name));
            // Rotation, as a scheduler keeping 3 would do (incident 5).
            if snaps.len() > 3 {
                ops.push(KillOp::SnapRm(snaps.remove(0)));
            }
        }
    }
    ops
}

/// Random bytes that writes take windows of (generating fresh random data
/// for every write was the slowest part of the replay in debug builds).
fn pool() -> &'static [u8] {
    static POOL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| bytes(0x706f6f6c, 2 << 20))
}

fn kill_data(seed: u64, len: u64) -> Vec<u8> {
    let p = pool();
    let start = (seed % (p.len() as u64 - len)) as usize;
    let mut v = p[start..start + len as usize].to_vec();
    // Some zero runs, so zero detection and discards are exercised too.
    if seed.is_multiple_of(4) {
        let n = v.len() / 3;
        v[..n].fill(0);
    }
    v
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{TAG}{line}").unwrap();
    out.flush().unwrap();
}

/// The child: runs the plan against a real data directory until killed.
#[test]
#[ignore = "the child process of kill_writer_process_at_random_points"]
fn crash_child_writer() {
    let Ok(arg) = std::env::var("VDISK_CRASH_CHILD") else {
        return;
    };
    let (dir, seed) = arg.rsplit_once(',').unwrap();
    let seed: u64 = seed.parse().unwrap();
    let store = Store::open_dir(std::path::Path::new(dir), "crash test child").unwrap();
    let spec = ImageSpec::parse_image("rbd/disk").unwrap();
    let img = store.open(&spec).unwrap();
    say("READY");
    for (i, op) in kill_plan(seed).iter().enumerate() {
        match op {
            KillOp::Write { off, len, seed } => {
                img.write_at(*off, &kill_data(*seed, *len)).unwrap()
            }
            KillOp::Discard { off, len } => img.discard(*off, *len).unwrap(),
            KillOp::Flush => {
                img.flush().unwrap();
                say(&format!("FLUSHED {i}"));
            }
            KillOp::Snap(name) => {
                store.snap_create(&spec.with_snap(name)).unwrap();
                say(&format!("SNAP {i} {name}"));
            }
            KillOp::SnapRm(name) => {
                say(&format!("RMSTART {i} {name}"));
                store
                    .snap_remove(&spec.with_snap(name), &NoProgress)
                    .unwrap();
            }
        }
    }
    say("DONE");
}

/// What the parent learnt from the child's output.
#[derive(Debug, Default)]
struct ChildReport {
    ready: bool,
    last_flushed: Option<usize>,
    /// Index of the last op the child reported on.
    last_said: Option<usize>,
    snaps: Vec<String>,
    rm_started: Vec<String>,
    done: bool,
}

fn parse_report(lines: &[String]) -> ChildReport {
    let mut r = ChildReport::default();
    for l in lines {
        let Some(p) = l.find(TAG) else { continue };
        let mut w = l[p + TAG.len()..].split_whitespace();
        let what = w.next();
        let index: Option<usize> = w.next().map(|i| i.parse().unwrap());
        if index.is_some() {
            r.last_said = index;
        }
        match what {
            Some("READY") => r.ready = true,
            Some("FLUSHED") => r.last_flushed = index,
            Some("SNAP") => r.snaps.push(w.next().unwrap().to_string()),
            Some("RMSTART") => r.rm_started.push(w.next().unwrap().to_string()),
            Some("DONE") => r.done = true,
            _ => {}
        }
    }
    r
}

/// What the head and the snapshots may hold after the kill, from a replay.
struct Expected {
    /// The image as of the last flush.
    flushed: Vec<u8>,
    /// Per block, values written after the last flush (by ops the child
    /// may have run).
    later: Vec<Vec<Vec<u8>>>,
    /// Content of the snapshots asked for, by name.
    snaps: BTreeMap<String, Vec<u8>>,
}

impl Expected {
    fn allows(&self, b: usize, blk: &[u8]) -> bool {
        &self.flushed[b * BLOCK..(b + 1) * BLOCK] == blk || self.later[b].iter().any(|v| v == blk)
    }
}

/// Replays the plan up to where the child may have got: it cannot have got
/// past the first op after `last_said` that reports. `want_snaps`: the
/// snapshots whose content to keep.
fn kill_expectations(plan: &[KillOp], report: &ChildReport, want_snaps: &[String]) -> Expected {
    let next = report.last_said.map_or(0, |i| i + 1);
    let bound = (next..plan.len())
        .find(|&i| !matches!(plan[i], KillOp::Write { .. } | KillOp::Discard { .. }))
        .unwrap_or(plan.len() - 1);
    let first = report.last_flushed.map_or(0, |f| f + 1);
    let mut cur = vec![0u8; KILL_SIZE as usize];
    let mut e = Expected {
        flushed: Vec::new(),
        later: vec![Vec::new(); cur.len() / BLOCK],
        snaps: BTreeMap::new(),
    };
    if first == 0 {
        e.flushed = cur.clone();
    }
    for (i, op) in plan[..=bound].iter().enumerate() {
        let touched = match op {
            KillOp::Write { off, len, seed } => {
                let d = kill_data(*seed, *len);
                cur[*off as usize..(*off + *len) as usize].copy_from_slice(&d);
                Some((*off as usize, *len as usize))
            }
            KillOp::Discard { off, len } => {
                cur[*off as usize..(*off + *len) as usize].fill(0);
                Some((*off as usize, *len as usize))
            }
            KillOp::Snap(name) if want_snaps.contains(name) => {
                e.snaps.insert(name.clone(), cur.clone());
                None
            }
            _ => None,
        };
        if i + 1 == first {
            e.flushed = cur.clone();
        } else if i + 1 > first {
            if let Some((off, len)) = touched {
                for b in off / BLOCK..(off + len).div_ceil(BLOCK) {
                    let v = cur[b * BLOCK..(b + 1) * BLOCK].to_vec();
                    if !e.later[b].contains(&v) {
                        e.later[b].push(v);
                    }
                }
            }
        }
    }
    e
}

fn kill_trial(seed: u64, exe: &std::path::Path) {
    use std::os::unix::process::ExitStatusExt;
    let mut rng = Mix(seed ^ 0x6b696c6c);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let spec = ImageSpec::parse_image("rbd/disk").unwrap();
    {
        let store = Store::open_dir(&dir, "crash test setup").unwrap();
        store
            .create(
                &spec,
                &CreateOptions {
                    size: KILL_SIZE,
                    order: Some(KILL_ORDER),
                    features: None,
                },
            )
            .unwrap();
    }
    let stderr_path = tmp.path().join("child.stderr");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("VDISK_CRASH_CHILD", format!("{},{seed}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Most trials kill while writing; some while the child is still starting
    // (opening the database, maybe recovering it).
    let early = rng.below(10) == 0;
    if !early {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let ready = l.contains(&format!("{TAG}READY"));
                    lines.push(l);
                    if ready {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "the child did not start");
                    if let Some(st) = child.try_wait().unwrap() {
                        panic!(
                            "the child exited before starting ({st}): {}",
                            std::fs::read_to_string(&stderr_path).unwrap_or_default()
                        );
                    }
                }
                Err(_) => break,
            }
        }
    }
    let delay = if early {
        rng.below(40)
    } else {
        3 + rng.below(300)
    };
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let report = parse_report(&lines);
    if status.signal().is_none() && !status.success() {
        panic!(
            "the child failed ({status}) before it was killed:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    // Reopen (the child's directory lock died with it), check, verify.
    let store = Store::open_dir(&dir, "crash test verify").unwrap();
    let rep = store.check(false).unwrap();
    assert!(
        rep.errors.is_empty(),
        "seed {seed}: check after the kill: {:?} ({report:?})",
        rep.errors
    );
    let existing: Vec<String> = store
        .snap_list(&spec)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let plan = kill_plan(seed);
    let exp = kill_expectations(&plan, &report, &existing);
    let img = store.open(&spec).unwrap();
    let mut got = vec![0u8; KILL_SIZE as usize];
    img.read_at(0, &mut got).unwrap();
    for (b, blk) in got.chunks(BLOCK).enumerate() {
        assert!(
            exp.allows(b, blk),
            "seed {seed}: block {b} (offset {}) holds neither its value as of the last flush (op {:?}) nor a later one ({} later); killed after {delay} ms; {report:?}",
            b * BLOCK,
            report.last_flushed,
            exp.later[b].len()
        );
    }
    for name in &report.snaps {
        if !report.rm_started.contains(name) {
            assert!(
                existing.contains(name),
                "seed {seed}: snapshot {name} was created (and not removed) but is gone"
            );
        }
    }
    for name in &existing {
        let want = exp
            .snaps
            .get(name)
            .unwrap_or_else(|| panic!("seed {seed}: unexpected snapshot {name}"));
        let snap = store.open(&spec.with_snap(name)).unwrap();
        snap.read_at(0, &mut got).unwrap();
        if let Some(i) = first_diff(&got, want) {
            panic!("seed {seed}: snapshot {name} differs at offset {i}");
        }
    }
    // And the directory is usable: write, flush, check again.
    img.write_at(0, &[7u8; 4096]).unwrap();
    img.flush().unwrap();
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty(), "seed {seed}: {:?}", rep.errors);
}

#[test]
fn kill_writer_process_at_random_points() {
    let exe = std::env::current_exe().unwrap();
    let trials = scaled(50, 500);
    let base = match std::env::var("VDISK_TEST_SEED") {
        Ok(s) => s.parse().unwrap(),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("kill test: base seed {base} (set VDISK_TEST_SEED to replay), {trials} trials");
    for i in 0..trials as u64 {
        kill_trial(base.wrapping_add(i), &exe);
    }
}
