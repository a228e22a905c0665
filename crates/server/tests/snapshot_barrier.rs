//! Incident 3 through NBD: a snapshot taken while clients write flat out
//! holds exactly the writes acknowledged before it, by construction (the
//! image gate is the snapshot barrier), never "whatever a copy job got to".
//!
//! # What is guaranteed, and what this test asserts
//!
//! A client observes two instants per WRITE: when it sent the request
//! (`sent`, taken *before* the bytes go out) and when it read the reply
//! (`acked`, taken *after*). The snapshot command is observed as `call` and
//! `ret`. All are `Instant`s of this one process, so they compare.
//!
//! The server runs a WRITE entirely inside the image gate (shared) between
//! receiving it and queueing its reply; `snap_create` holds the gate
//! exclusively from some instant `T` with `call <= T <= ret`. So the writes
//! in the snapshot are exactly a set `S` = "executed before `T`", and:
//!
//! 1. `acked < call`  ⇒ in `S` (it finished before the barrier was asked for);
//! 2. `sent > ret`    ⇒ not in `S` (it started after the barrier was gone);
//! 3. `S` is a *cut*: if `A.acked < B.sent` then `A` ran before `B`, so
//!    `B ∈ S ⇒ A ∈ S` (with several connections and queue depth > 1 this is
//!    a partial order, not a per-connection prefix);
//! 4. every 4 KiB block of the snapshot holds whole data of one write (no
//!    torn or foreign block), or zeros if no write of `S` covers it; and
//!    that write is a *last* one of `S` there: no write of `S` to the block
//!    provably ran after it (`other.sent > shown.acked`).
//!
//! Writes in flight across the call may land on either side; rules 3–4
//! constrain how. [`check`] decides whether *some* `S` satisfies 1–4 for
//! the observed history and snapshot bytes. That is exactly the guarantee
//! as far as a client can observe it: it accepts every outcome the barrier
//! allows (a write racing another to the same block may win either way)
//! and rejects every outcome it forbids: a lost acknowledged write (the
//! incident), a write sent after the snapshot returned, a non-atomic
//! ("copy job") snapshot whose blocks come from different moments, torn
//! blocks. How: `R` = the writes that must be in `S` (rule 1 plus the
//! closure under rule 3 of the writes the snapshot shows), `F` = those that
//! cannot be (rule 2, writes that provably overwrote a shown block or hit a
//! zero block, and their closure); a valid `S` exists iff `R ∩ F = ∅` (take
//! `S = R`).
//!
//! Rounds vary the store (real redb + files; redb + files or memory behind
//! `FaultyObjectStore`/`FaultyMetaStore` with delays re-drawn in 0..2 ms
//! every few hundred µs, so the write path and the snapshot's flush are
//! slow by random amounts), connections (1–4: multi-conn; TCP or the Unix
//! socket), queue depth 8–16, random client sleeps, object sizes, write
//! sizes (1–4 blocks), FUA and FLUSH in the mix, 1–3 snapshots per round.
//!
//! Besides [`check`], each round asserts that the blocks being written
//! when `snap_create` returned read the same then and at the end (the
//! snapshot is frozen once it exists), that the snapshots read the same
//! over NBD (holes from metadata) as from the engine, that `vdisk check`
//! finds the metadata clean (object maps of snapshots taken under load do
//! not under-report), and that the head holds a last write of every block.
//! `VDISK_TEST_LONG=1` runs 200 rounds instead of 20 (`VDISK_TEST_ROUNDS=N`
//! any number, `VDISK_TEST_ROUND=N` just round N); `VDISK_TEST_SEED` picks
//! other configurations (a failure names its seed and round).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read, Write};
#[path = "server/raw.rs"]
mod raw;
#[path = "server/served.rs"]
mod served;

use raw::handshake;
use served::Served;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vdisk_engine::{Config, CreateOptions, ImageSpec, SingleDataBackend, Store};
use vdisk_nbd::client::{decode_reply, Chunk, ClientConfig, Reply};
use vdisk_nbd::{Command, CommandFlags, RequestHeader, TransmissionFlags};
use vdisk_storage::{
    FaultConfig, FaultyMetaStore, FaultyObjectStore, LocalObjectStore, MemMetaStore,
    MemObjectStore, RedbMetaStore,
};

const BLOCK: usize = 4096;
const EXPORT: &str = "rbd/img";
/// Writes that must be acknowledged before each snapshot call, and sent
/// after each snapshot returned (so every snapshot has both sides).
const MIN_EACH_SIDE: u64 = 16;
const DEFAULT_SEED: u64 = 0x1de3_5eed;

// ---------------------------------------------------------------------------
// Deterministic randomness (SplitMix64) and block contents.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn micros(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(lo + self.below(hi - lo + 1))
    }
}

/// The bytes write `id` puts in image block `block`: every 16-byte slot
/// carries the write id and the block number (mixed with the slot index),
/// so a block holding parts of two writes, or a write's data at the wrong
/// place, never matches.
fn block_data(id: u64, block: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    for slot in 0..(BLOCK / 16) as u64 {
        let mix = slot.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        out.extend_from_slice(&(id ^ mix).to_le_bytes());
        out.extend_from_slice(&(block ^ mix.rotate_left(17)).to_le_bytes());
    }
    out
}

/// The write id and block number a block claims to hold (slot 0).
fn block_tag(data: &[u8]) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
    (word(0), word(8))
}

// ---------------------------------------------------------------------------
// The checker.

/// One acknowledged WRITE of `nblocks` blocks from image block `block`.
#[derive(Debug, Clone)]
struct WriteRec {
    /// Unique over the round, never 0.
    id: u64,
    conn: usize,
    block: u64,
    nblocks: u64,
    /// Taken before the request was sent.
    sent: Instant,
    /// Taken after its reply was read.
    acked: Instant,
}

/// When the snapshot command was called and when it returned.
#[derive(Debug, Clone, Copy)]
struct Window {
    call: Instant,
    ret: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A block that is neither zeros nor whole data of one write to it.
    Garbage,
    /// A write acknowledged before the call is missing (incident 3).
    LostAcked,
    /// A write sent after the snapshot returned is in it.
    Late,
    /// Blocks from different moments: no cut of the history explains them.
    NotACut,
}

#[derive(Debug, Clone)]
struct Violation {
    kind: Kind,
    what: String,
}

/// What a passing check saw (how much each rule had to bite on).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    writes: usize,
    /// Acknowledged before the call: must be in.
    acked_before: usize,
    /// Sent after the return: must not be in.
    sent_after: usize,
    /// In flight across the call (either side is allowed).
    across: usize,
    /// Of those, provably in (the snapshot shows them, or a write sent
    /// after they were acknowledged) / provably out (overwritten by a
    /// write that the snapshot does not show, or sent after one such).
    across_in: usize,
    across_out: usize,
    /// Blocks holding data.
    data_blocks: usize,
}

/// Checks snapshot bytes `data` (the whole image) against the
/// acknowledged `writes` and the snapshot's `window`. See the module docs.
fn check(writes: &[WriteRec], w: Window, data: &[u8]) -> Result<Stats, Vec<Violation>> {
    assert_eq!(data.len() % BLOCK, 0);
    let nblocks = data.len() / BLOCK;
    let at = |t: Instant| -> String {
        if t >= w.call {
            format!("call{:+}µs", t.duration_since(w.call).as_micros())
        } else {
            format!("call-{}µs", w.call.duration_since(t).as_micros())
        }
    };
    let desc = |i: usize| -> String {
        let x = &writes[i];
        format!(
            "write #{} (conn {}, blocks {}..{}, sent {}, acked {})",
            x.id,
            x.conn,
            x.block,
            x.block + x.nblocks,
            at(x.sent),
            at(x.acked)
        )
    };
    let by_id: HashMap<u64, usize> = writes.iter().enumerate().map(|(i, x)| (x.id, i)).collect();
    let mut by_block: Vec<Vec<usize>> = vec![Vec::new(); nblocks];
    for (i, x) in writes.iter().enumerate() {
        for b in x.block..x.block + x.nblocks {
            by_block[b as usize].push(i);
        }
    }
    let mut violations = Vec::new();

    // Rule 4, first half: identify each block.
    #[derive(Clone, Copy, PartialEq)]
    enum Shown {
        Zero,
        Write(usize),
        Garbage,
    }
    let mut shown = vec![Shown::Zero; nblocks];
    for (b, bytes) in data.chunks_exact(BLOCK).enumerate() {
        if bytes.iter().all(|&x| x == 0) {
            continue;
        }
        let (id, tag_block) = block_tag(bytes);
        let found = by_id.get(&id).copied().filter(|&i| {
            let x = &writes[i];
            tag_block == b as u64
                && (x.block..x.block + x.nblocks).contains(&(b as u64))
                && bytes == block_data(id, b as u64).as_slice()
        });
        shown[b] = match found {
            Some(i) => Shown::Write(i),
            None => {
                violations.push(Violation {
                    kind: Kind::Garbage,
                    what: format!(
                        "block {b} is neither zeros nor whole data of a write to it \
                         (claims write #{id} block {tag_block})"
                    ),
                });
                Shown::Garbage
            }
        };
    }

    // R: must be in. Rule 1, and the closure under rule 3 of what is shown.
    let mut in_shown: HashSet<usize> = HashSet::new();
    let mut t_r = w.call;
    let mut r_cause: Option<usize> = None;
    for s in &shown {
        if let Shown::Write(i) = *s {
            in_shown.insert(i);
            if writes[i].sent > t_r {
                t_r = writes[i].sent;
                r_cause = Some(i);
            }
        }
    }
    // F: cannot be in. Rule 2; writes that provably ran after the write a
    // block shows, or that hit a zero block (rule 4); their closure.
    let mut excluded: HashMap<usize, String> = HashMap::new();
    for (b, s) in shown.iter().enumerate() {
        for &i in &by_block[b] {
            let why = match *s {
                Shown::Garbage => continue,
                Shown::Zero => format!("block {b} reads as zeros"),
                Shown::Write(j) if j != i && writes[i].sent > writes[j].acked => {
                    format!("block {b} shows {}, which it overwrote", desc(j))
                }
                Shown::Write(_) => continue,
            };
            excluded.entry(i).or_insert(why);
        }
    }
    let mut t_f = w.ret;
    let mut f_cause: Option<usize> = None;
    for &i in excluded.keys() {
        if writes[i].acked < t_f {
            t_f = writes[i].acked;
            f_cause = Some(i);
        }
    }

    let mut stats = Stats {
        writes: writes.len(),
        data_blocks: shown
            .iter()
            .filter(|s| matches!(s, Shown::Write(_)))
            .count(),
        ..Stats::default()
    };
    for (i, x) in writes.iter().enumerate() {
        let must_in = x.acked < t_r || in_shown.contains(&i);
        let must_out = x.sent > t_f || excluded.contains_key(&i);
        if x.acked < w.call {
            stats.acked_before += 1;
        } else if x.sent > w.ret {
            stats.sent_after += 1;
        } else {
            stats.across += 1;
            stats.across_in += usize::from(must_in);
            stats.across_out += usize::from(must_out);
        }
        if !(must_in && must_out) {
            continue;
        }
        let why_in = if x.acked < w.call {
            "it was acknowledged before the snapshot was called".to_owned()
        } else if in_shown.contains(&i) {
            "the snapshot shows it".to_owned()
        } else {
            let c = r_cause.expect("t_r moved past the call");
            format!(
                "it was acknowledged before {} was sent, which the snapshot shows",
                desc(c)
            )
        };
        let why_out = if let Some(why) = excluded.get(&i) {
            why.clone()
        } else if x.sent > w.ret {
            "it was sent after the snapshot returned".to_owned()
        } else {
            let c = f_cause.expect("t_f moved before the return");
            format!(
                "it was sent after {} was acknowledged, which is not in the snapshot because {}",
                desc(c),
                excluded[&c]
            )
        };
        let kind = if in_shown.contains(&i) && x.sent > w.ret {
            Kind::Late
        } else if x.acked < w.call && excluded.contains_key(&i) {
            Kind::LostAcked
        } else {
            Kind::NotACut
        };
        violations.push(Violation {
            kind,
            what: format!("{}: must be in ({why_in}) and out ({why_out})", desc(i)),
        });
    }
    if violations.is_empty() {
        Ok(stats)
    } else {
        Err(violations)
    }
}

fn summarize(violations: &[Violation]) -> String {
    let mut out = format!("{} violation(s):\n", violations.len());
    for v in violations.iter().take(12) {
        out.push_str(&format!("  {:?}: {}\n", v.kind, v.what));
    }
    out
}

// ---------------------------------------------------------------------------
// Stores and the server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// `Store::open_dir`: what `vdisk serve` runs on.
    Dir,
    /// redb + files, behind the fault injectors (delays).
    DiskDelayed,
    /// Memory behind the fault injectors (delays).
    MemDelayed,
}

/// A store for one round; the fault injectors if it has them.
struct TestStore {
    store: Store,
    data_faults: Option<Arc<FaultyObjectStore>>,
    meta_faults: Option<Arc<FaultyMetaStore>>,
}

fn make_store(kind: StoreKind, dir: &Path, meta_delays: bool) -> TestStore {
    let delayed = |data: Arc<dyn vdisk_storage::ObjectStore>,
                   meta: Arc<dyn vdisk_storage::MetaStore>| {
        let data = Arc::new(FaultyObjectStore::new(data, FaultConfig::default()));
        let meta = Arc::new(FaultyMetaStore::new(meta, FaultConfig::default()));
        let store = Store::open_with(
            meta.clone(),
            Box::new(SingleDataBackend(data.clone())),
            Config::default(),
        )
        .expect("store");
        TestStore {
            store,
            data_faults: Some(data),
            meta_faults: meta_delays.then_some(meta),
        }
    };
    match kind {
        StoreKind::Dir => TestStore {
            store: Store::open_dir(&dir.join("data"), "snapshot barrier test").expect("store"),
            data_faults: None,
            meta_faults: None,
        },
        StoreKind::DiskDelayed => {
            std::fs::create_dir_all(dir.join("objects")).expect("mkdir");
            delayed(
                Arc::new(LocalObjectStore::open(&dir.join("objects")).expect("objects")),
                Arc::new(RedbMetaStore::open(&dir.join("meta.redb")).expect("redb")),
            )
        }
        StoreKind::MemDelayed => delayed(
            Arc::new(MemObjectStore::new()),
            Arc::new(MemMetaStore::new()),
        ),
    }
}

/// Re-draws the injected delays (0..2 ms) every 100..800 µs until dropped,
/// then turns them off.
struct Jitter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    data: Option<Arc<FaultyObjectStore>>,
    meta: Option<Arc<FaultyMetaStore>>,
}

impl Jitter {
    fn start(ts: &TestStore, seed: u64) -> Jitter {
        let stop = Arc::new(AtomicBool::new(false));
        let (data, meta) = (ts.data_faults.clone(), ts.meta_faults.clone());
        let thread = (data.is_some() || meta.is_some()).then(|| {
            let (stop, data, meta) = (stop.clone(), data.clone(), meta.clone());
            thread::spawn(move || {
                let mut rng = Rng(seed);
                while !stop.load(Ordering::Relaxed) {
                    let mut cfg = || FaultConfig {
                        delay: Some(rng.micros(0, 2000)),
                        ..FaultConfig::default()
                    };
                    if let Some(d) = &data {
                        d.set(cfg());
                    }
                    if let Some(m) = &meta {
                        m.set(cfg());
                    }
                    thread::sleep(rng.micros(100, 800));
                }
            })
        });
        Jitter {
            stop,
            thread,
            data,
            meta,
        }
    }
}

impl Drop for Jitter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(d) = &self.data {
            d.set(FaultConfig::default());
        }
        if let Some(m) = &self.meta {
            m.set(FaultConfig::default());
        }
    }
}

// ---------------------------------------------------------------------------
// Writers: one NBD connection each, pipelined, flat out.

/// How a round's clients behave.
#[derive(Debug, Clone, Copy)]
struct ClientCfg {
    qd: usize,
    /// Random sleeps (0..400 µs) between requests.
    sleeps: bool,
    /// Writes of 1..=4 blocks instead of 1.
    multi_block: bool,
    /// Some writes with FUA, some FLUSH requests.
    flushes: bool,
    /// Writes land in blocks `0..region`.
    region: u64,
}

/// Shared by the writers and the test thread.
struct Shared {
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Writes acknowledged so far (all connections).
    acked: AtomicU64,
    /// Writes acknowledged so far that were sent after `mark`.
    acked_after_mark: AtomicU64,
    mark: Mutex<Option<Instant>>,
}

struct Pending {
    /// None for FLUSH.
    write: Option<(u64, u64, u64)>,
    sent: Instant,
}

#[derive(Default)]
struct ConnLog {
    pending: HashMap<u64, Pending>,
    done: Vec<WriteRec>,
    errors: Vec<String>,
}

trait Socket: Read + Write + Send + 'static {
    fn try_clone_socket(&self) -> io::Result<Self>
    where
        Self: Sized;
    fn shutdown_write(&self);
}

impl Socket for TcpStream {
    fn try_clone_socket(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Socket for UnixStream {
    fn try_clone_socket(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// A connected writer: handshake done, not yet writing.
struct Writer {
    conn: usize,
    /// What it has in flight, for the test thread to look at.
    log: Arc<Mutex<ConnLog>>,
    send: Box<dyn FnOnce() -> Vec<WriteRec> + Send>,
}

fn connect<S: Socket>(
    mut stream: S,
    conn: usize,
    multi_conn: bool,
    cfg: ClientCfg,
    shared: Arc<Shared>,
    seed: u64,
) -> Writer {
    let (neg, leftover) = handshake(&mut stream, ClientConfig::new(EXPORT)).expect("handshake");
    assert!(!neg.flags.contains(TransmissionFlags::READ_ONLY));
    assert!(neg.flags.contains(TransmissionFlags::SEND_FUA));
    assert!(neg.flags.contains(TransmissionFlags::SEND_FLUSH));
    if multi_conn {
        // Several connections to one export are only sound with it.
        assert!(neg.flags.contains(TransmissionFlags::CAN_MULTI_CONN));
    }
    if let Some(bs) = neg.block_size {
        assert!(bs.minimum as usize <= BLOCK && bs.maximum as usize >= 4 * BLOCK);
    }
    let log = Arc::new(Mutex::new(ConnLog::default()));
    let log2 = log.clone();
    let send = move || run_writer(stream, leftover, log2, conn, cfg, shared, seed);
    Writer {
        conn,
        log,
        send: Box::new(send),
    }
}

/// Sends requests (at most `qd` in flight) until `stop`, then waits for the
/// last replies and disconnects. A second thread reads the replies, so
/// `acked` is taken as soon as a reply arrives.
fn run_writer<S: Socket>(
    mut stream: S,
    leftover: Vec<u8>,
    log: Arc<Mutex<ConnLog>>,
    conn: usize,
    cfg: ClientCfg,
    shared: Arc<Shared>,
    seed: u64,
) -> Vec<WriteRec> {
    let (tokens_tx, tokens) = mpsc::sync_channel::<()>(cfg.qd);
    for _ in 0..cfg.qd {
        tokens_tx.send(()).expect("token");
    }
    let reader = {
        let mut rd = stream.try_clone_socket().expect("clone socket");
        let (log, shared) = (log.clone(), shared.clone());
        thread::spawn(move || {
            let mut buf = leftover;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let decoded = decode_reply(&buf, 1 << 20, |_| 0);
                let (cookie, error, used) = match decoded {
                    Ok(Some((Reply::Simple { cookie, error, .. }, used))) => (cookie, error, used),
                    Ok(Some((other, _))) => {
                        let mut l = log.lock().expect("log");
                        l.errors.push(format!("unexpected reply {other:?}"));
                        return;
                    }
                    Ok(None) => {
                        match rd.read(&mut chunk) {
                            Ok(0) => {
                                let mut l = log.lock().expect("log");
                                if !l.pending.is_empty() {
                                    let n = l.pending.len();
                                    l.errors.push(format!("server closed with {n} replies due"));
                                }
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) => {
                                let mut l = log.lock().expect("log");
                                l.errors.push(format!("read: {e}"));
                                return;
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        log.lock()
                            .expect("log")
                            .errors
                            .push(format!("bad reply: {e}"));
                        return;
                    }
                };
                let acked = Instant::now();
                buf.drain(..used);
                let mut l = log.lock().expect("log");
                let Some(p) = l.pending.remove(&cookie) else {
                    l.errors.push(format!("reply for unknown cookie {cookie}"));
                    return;
                };
                if error != 0 {
                    l.errors
                        .push(format!("request {cookie} failed: error {error}"));
                } else if let Some((id, block, nblocks)) = p.write {
                    l.done.push(WriteRec {
                        id,
                        conn,
                        block,
                        nblocks,
                        sent: p.sent,
                        acked,
                    });
                    shared.acked.fetch_add(1, Ordering::SeqCst);
                    if shared
                        .mark
                        .lock()
                        .expect("mark")
                        .is_some_and(|m| p.sent > m)
                    {
                        shared.acked_after_mark.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(l);
                let _ = tokens_tx.send(());
            }
        })
    };

    let mut rng = Rng(seed);
    let timeout = Duration::from_secs(30);
    let mut cookie = 0u64;
    let mut held = 0usize;
    loop {
        tokens.recv_timeout(timeout).expect("a reply within 30 s");
        held += 1;
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        cookie += 1;
        let flush = cfg.flushes && rng.one_in(64);
        let mut msg;
        let write = if flush {
            msg = RequestHeader {
                flags: CommandFlags::empty(),
                command: Command::Flush,
                cookie,
                offset: 0,
                length: 0,
            }
            .encode()
            .to_vec();
            None
        } else {
            let n = if cfg.multi_block { 1 + rng.below(4) } else { 1 };
            let block = rng.below(cfg.region - n + 1);
            let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
            let flags = if cfg.flushes && rng.one_in(16) {
                CommandFlags::FUA
            } else {
                CommandFlags::empty()
            };
            msg = RequestHeader {
                flags,
                command: Command::Write,
                cookie,
                offset: block * BLOCK as u64,
                length: (n as usize * BLOCK) as u32,
            }
            .encode()
            .to_vec();
            for b in block..block + n {
                msg.extend_from_slice(&block_data(id, b));
            }
            Some((id, block, n))
        };
        let sent = Instant::now();
        log.lock()
            .expect("log")
            .pending
            .insert(cookie, Pending { write, sent });
        stream.write_all(&msg).expect("send request");
        held -= 1;
        if cfg.sleeps && rng.one_in(3) {
            thread::sleep(rng.micros(0, 400));
        }
    }
    // Every token back: every reply is in.
    for _ in held..cfg.qd {
        tokens
            .recv_timeout(timeout)
            .expect("the last replies within 30 s");
    }
    let disc = RequestHeader {
        flags: CommandFlags::empty(),
        command: Command::Disconnect,
        cookie: 0,
        offset: 0,
        length: 0,
    };
    stream.write_all(&disc.encode()).expect("send DISC");
    stream.shutdown_write();
    reader.join().expect("reader panicked");
    let log = std::mem::take(&mut *log.lock().expect("log"));
    assert!(
        log.errors.is_empty(),
        "connection {conn}: {}",
        log.errors.join("; ")
    );
    log.done
}

// ---------------------------------------------------------------------------
// A round.

#[derive(Debug, Clone, Copy)]
struct RoundCfg {
    seed: u64,
    round: u64,
    store: StoreKind,
    meta_delays: bool,
    conns: usize,
    /// Clients connect over the Unix socket instead of TCP.
    unix: bool,
    client: ClientCfg,
    order: u8,
    snaps: usize,
}

impl RoundCfg {
    /// Round `round` of seed `seed`. The first rounds of every seed cover
    /// each store, multi-conn and client sleeps; the rest is drawn.
    fn new(seed: u64, round: u64) -> RoundCfg {
        let mut rng = Rng(seed ^ round.wrapping_mul(0xA076_1D64_78BD_642F));
        let store = match round % 4 {
            0 => StoreKind::Dir,
            2 => StoreKind::DiskDelayed,
            _ => StoreKind::MemDelayed,
        };
        let conns = if round % 3 == 1 {
            2 + rng.below(3) as usize
        } else {
            1
        };
        RoundCfg {
            seed,
            round,
            store,
            meta_delays: rng.one_in(2),
            conns,
            unix: round % 6 == 4 || rng.one_in(4),
            client: ClientCfg {
                qd: 8 + rng.below(9) as usize,
                sleeps: round % 5 == 2 || rng.one_in(8),
                multi_block: rng.one_in(2),
                flushes: rng.one_in(2),
                region: rng.pick(&[64, 512, 2048]),
            },
            order: rng.pick(&[12, 16, 22]),
            snaps: 1 + rng.below(3) as usize,
        }
    }

    fn describe(&self) -> String {
        let store = match self.store {
            StoreKind::Dir => "dir (redb+files)",
            StoreKind::DiskDelayed if self.meta_delays => "redb+files, data+meta delays",
            StoreKind::DiskDelayed => "redb+files, data delays",
            StoreKind::MemDelayed if self.meta_delays => "mem, data+meta delays",
            StoreKind::MemDelayed => "mem, data delays",
        };
        let c = &self.client;
        format!(
            "round {} (VDISK_TEST_SEED={:#x}): {store}, {} {} conn(s), qd {}, {}{}{}order {}, \
             {} blocks, {} snapshot(s)",
            self.round,
            self.seed,
            self.conns,
            if self.unix { "unix" } else { "tcp" },
            c.qd,
            if c.sleeps { "client sleeps, " } else { "" },
            if c.multi_block {
                "1-4 block writes, "
            } else {
                ""
            },
            if c.flushes { "FUA+FLUSH, " } else { "" },
            self.order,
            c.region,
            self.snaps
        )
    }
}

/// A snapshot taken during a round.
struct Snap {
    name: String,
    window: Window,
    /// All of it, read once the writers stopped.
    bytes: Vec<u8>,
    /// The blocks that writes in flight when `snap_create` returned were
    /// writing (and those between them in the same object), read right
    /// then.
    early: Vec<(u64, Vec<u8>)>,
}

impl Snap {
    /// Blocks that changed after `snap_create` returned.
    fn changed(&self) -> Vec<u64> {
        self.early
            .iter()
            .filter(|(b, data)| {
                let at = *b as usize * BLOCK;
                self.bytes[at..at + BLOCK] != data[..]
            })
            .map(|(b, _)| *b)
            .collect()
    }
}

/// What a round produced, for the checks.
struct Outcome {
    writes: Vec<WriteRec>,
    snaps: Vec<Snap>,
    /// A snapshot taken before any write (the base image).
    base: Vec<u8>,
    /// The head after every write was acknowledged, and that instant.
    head: Vec<u8>,
    end: Instant,
    elapsed: Duration,
}

/// Reads a whole export over NBD with structured replies (holes and data
/// chunks), 256 KiB at a time.
fn nbd_read_all(port: u16, export: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (neg, mut buf) = handshake(&mut s, ClientConfig::new(export)).expect("handshake");
    assert!(neg.structured_replies);
    let mut out = vec![0u8; neg.size as usize];
    let mut chunk = vec![0u8; 64 * 1024];
    for (i, piece) in out.chunks_mut(256 * 1024).enumerate() {
        let offset = (i * 256 * 1024) as u64;
        let req = RequestHeader {
            flags: CommandFlags::empty(),
            command: Command::Read,
            cookie: i as u64,
            offset,
            length: piece.len() as u32,
        };
        s.write_all(&req.encode()).expect("send READ");
        // Holes must be filled by OFFSET_HOLE chunks: start from garbage.
        piece.fill(0xEE);
        loop {
            let Some((reply, used)) = decode_reply(&buf, 1 << 20, |_| 0).expect("reply") else {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "server closed during READ");
                buf.extend_from_slice(&chunk[..n]);
                continue;
            };
            let done = match reply {
                Reply::Chunk { header, chunk } => {
                    assert_eq!(header.cookie, i as u64);
                    match chunk {
                        Chunk::OffsetData { offset: at, data } => {
                            let at = (at - offset) as usize;
                            piece[at..at + data.len()].copy_from_slice(data);
                        }
                        Chunk::OffsetHole { offset: at, length } => {
                            let at = (at - offset) as usize;
                            piece[at..at + length as usize].fill(0);
                        }
                        Chunk::None => {}
                        other => panic!("READ {export} at {offset}: {other:?}"),
                    }
                    header.done()
                }
                other => panic!("READ {export} at {offset}: {other:?}"),
            };
            buf.drain(..used);
            if done {
                break;
            }
        }
    }
    out
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_micros(200));
    }
}

fn read_all(store: &Store, spec: &str) -> Vec<u8> {
    let img = store
        .open(&ImageSpec::parse(spec).expect("spec"))
        .expect("open");
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).expect("read");
    buf
}

fn run_round(cfg: &RoundCfg) -> Outcome {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = make_store(cfg.store, dir.path(), cfg.meta_delays);
    let store = ts.store.clone();
    let spec = |s: &str| ImageSpec::parse(s).expect("spec");
    store
        .create(
            &spec(EXPORT),
            &CreateOptions {
                size: cfg.client.region * BLOCK as u64,
                order: Some(cfg.order),
                features: None,
            },
        )
        .expect("create");
    store.snap_create(&spec("rbd/img@base")).expect("base");
    let mut server = Served::start(store.clone(), dir.path().join("nbd.sock"));
    let jitter = Jitter::start(&ts, cfg.seed ^ cfg.round ^ 0x717);

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        acked: AtomicU64::new(0),
        acked_after_mark: AtomicU64::new(0),
        mark: Mutex::new(None),
    });
    let mut rng = Rng(cfg.seed.rotate_left(7) ^ cfg.round);
    let writers: Vec<Writer> = (0..cfg.conns)
        .map(|c| {
            let seed = rng.next();
            let sh = shared.clone();
            let multi = cfg.conns > 1;
            if cfg.unix {
                let s = UnixStream::connect(&server.socket).expect("connect unix");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                connect(s, c, multi, cfg.client, sh, seed)
            } else {
                let s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                connect(s, c, multi, cfg.client, sh, seed)
            }
        })
        .collect();
    let logs: Vec<Arc<Mutex<ConnLog>>> = writers.iter().map(|w| w.log.clone()).collect();
    let threads: Vec<(usize, JoinHandle<Vec<WriteRec>>)> = writers
        .into_iter()
        .map(|w| (w.conn, thread::spawn(w.send)))
        .collect();

    let acked = || shared.acked.load(Ordering::SeqCst);
    let mut windows = Vec::new();
    for k in 0..cfg.snaps {
        let before = acked();
        wait_for("writes before the snapshot", || {
            acked() >= before + MIN_EACH_SIDE
        });
        // Rounds stay under a second whatever the number of snapshots.
        thread::sleep(rng.micros(5_000, 150_000 / cfg.snaps as u64));
        let name = format!("rbd/img@s{k}");
        let call = Instant::now();
        store.snap_create(&spec(&name)).expect("snap create");
        let ret = Instant::now();
        // At once, while writes that raced the snapshot may still be
        // running: the blocks they write, as the snapshot has them now.
        let mut racing = BTreeSet::new();
        for log in &logs {
            for p in log.lock().expect("log").pending.values() {
                if let Some((_, block, n)) = p.write {
                    racing.extend(block..block + n);
                }
            }
        }
        // One read per object, from its first to its last such block: a
        // read waits for the object's lock behind the queued writers, so
        // once per object, not once per block.
        let img = store.open(&spec(&name)).expect("open snapshot");
        let per_object = 1u64 << (cfg.order - 12);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for b in racing {
            match spans.last_mut() {
                Some((lo, hi)) if *lo / per_object == b / per_object => *hi = b,
                _ => spans.push((b, b)),
            }
        }
        let mut early = Vec::new();
        for (lo, hi) in spans {
            let mut buf = vec![0u8; (hi - lo + 1) as usize * BLOCK];
            img.read_at(lo * BLOCK as u64, &mut buf).expect("read");
            for (i, data) in buf.chunks_exact(BLOCK).enumerate() {
                early.push((lo + i as u64, data.to_vec()));
            }
        }
        windows.push(Snap {
            name,
            window: Window { call, ret },
            bytes: Vec::new(),
            early,
        });
        *shared.mark.lock().expect("mark") = Some(ret);
        shared.acked_after_mark.store(0, Ordering::SeqCst);
        wait_for("writes after the snapshot", || {
            shared.acked_after_mark.load(Ordering::SeqCst) >= MIN_EACH_SIDE
        });
    }
    thread::sleep(rng.micros(0, 20_000));
    shared.stop.store(true, Ordering::SeqCst);
    let mut writes = Vec::new();
    for (conn, t) in threads {
        match t.join() {
            Ok(w) => writes.extend(w),
            Err(_) => panic!("writer {conn} failed ({})", cfg.describe()),
        }
    }
    let end = Instant::now();
    let elapsed = started.elapsed();
    drop(jitter);
    // What a backup tool would read over NBD (holes from metadata, data
    // from the engine) must be what the engine reads.
    let over_nbd: Vec<Vec<u8>> = windows
        .iter()
        .map(|snap| nbd_read_all(server.port, &snap.name))
        .collect();
    server.stop();
    let snaps: Vec<Snap> = windows
        .into_iter()
        .map(|snap| Snap {
            bytes: read_all(&store, &snap.name),
            ..snap
        })
        .collect();
    for (snap, nbd) in snaps.iter().zip(&over_nbd) {
        assert!(
            snap.bytes == *nbd,
            "{} of {}: reads over NBD differ from the engine's",
            snap.name,
            cfg.describe()
        );
    }
    // Metadata agrees with the data (object maps of the snapshots taken
    // under load never under-report, records are consistent).
    let report = store.check(false).expect("check");
    assert!(
        report.is_clean(),
        "vdisk check after {}: {:?}",
        cfg.describe(),
        report.errors
    );
    Outcome {
        writes,
        snaps,
        base: read_all(&store, "rbd/img@base"),
        head: read_all(&store, EXPORT),
        end,
        elapsed,
    }
}

fn seed() -> u64 {
    match std::env::var("VDISK_TEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.expect("VDISK_TEST_SEED: a number (decimal or 0x hex)")
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// The rounds to run: `VDISK_TEST_ROUND=N` (just that one, to reproduce a
/// failure), `VDISK_TEST_ROUNDS=N`, 200 with `VDISK_TEST_LONG=1`, else 20.
fn rounds() -> std::ops::Range<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}: a number"))
        })
    };
    if let Some(n) = var("VDISK_TEST_ROUND") {
        return n..n + 1;
    }
    if let Some(n) = var("VDISK_TEST_ROUNDS") {
        return 0..n;
    }
    if std::env::var("VDISK_TEST_LONG").is_ok_and(|v| v == "1") {
        0..200
    } else {
        0..20
    }
}

/// Incident 3's scenario: snapshots while clients write flat out over NBD,
/// with random delays in the write path, several connections, client
/// sleeps; each snapshot holds exactly what the barrier guarantees.
#[test]
fn snapshot_under_write_load_holds_exactly_the_acknowledged_writes() {
    let seed = seed();
    let mut total = Stats::default();
    for round in rounds() {
        let cfg = RoundCfg::new(seed, round);
        let out = run_round(&cfg);
        let mut line = format!(
            "{}: {} writes, {} ms",
            cfg.describe(),
            out.writes.len(),
            out.elapsed.as_millis()
        );
        for snap in &out.snaps {
            let (name, window) = (&snap.name, &snap.window);
            let changed = snap.changed();
            assert!(
                changed.is_empty(),
                "{name} of {}: blocks {changed:?} changed after snap_create returned",
                cfg.describe()
            );
            let stats = check(&out.writes, *window, &snap.bytes).unwrap_or_else(|v| {
                panic!(
                    "{name} of {} (snap_create returned at call+{} µs) breaks the \
                     snapshot barrier: {}",
                    cfg.describe(),
                    window.ret.duration_since(window.call).as_micros(),
                    summarize(&v)
                )
            });
            assert!(
                stats.acked_before as u64 >= MIN_EACH_SIDE
                    && stats.sent_after as u64 >= MIN_EACH_SIDE,
                "{name}: the round did not exercise both sides: {stats:?}"
            );
            line.push_str(&format!(
                "\n    {name}: snap_create {} µs; {} acked before, {} sent after, \
                 {} in flight across ({} provably in, {} provably out), {} data blocks",
                window.ret.duration_since(window.call).as_micros(),
                stats.acked_before,
                stats.sent_after,
                stats.across,
                stats.across_in,
                stats.across_out,
                stats.data_blocks
            ));
            total.acked_before += stats.acked_before;
            total.sent_after += stats.sent_after;
            total.across += stats.across;
            total.across_in += stats.across_in;
            total.across_out += stats.across_out;
        }
        // The base snapshot saw none of it; the head sees all of it.
        assert!(out.base.iter().all(|&b| b == 0), "base snapshot changed");
        let all = Window {
            call: out.end,
            ret: out.end,
        };
        if let Err(v) = check(&out.writes, all, &out.head) {
            panic!("head after {}: {}", cfg.describe(), summarize(&v));
        }
        total.writes += out.writes.len();
        eprintln!("{line}");
    }
    eprintln!(
        "snapshot barrier: {} rounds, {} writes; over all snapshots {} acked before, \
         {} sent after, {} in flight across ({} provably in, {} provably out)",
        rounds().count(),
        total.writes,
        total.acked_before,
        total.sent_after,
        total.across,
        total.across_in,
        total.across_out
    );
}

// ---------------------------------------------------------------------------
// The checker itself: it must reject what a broken barrier produces.

/// A live round, then the outcomes a broken barrier would give in place of
/// the snapshot: each must be rejected, for the right reason.
#[test]
fn checker_rejects_what_a_broken_barrier_produces() {
    let mut cfg = RoundCfg::new(DEFAULT_SEED, 1);
    cfg.store = StoreKind::MemDelayed;
    cfg.conns = 2;
    cfg.snaps = 1;
    cfg.client.multi_block = true;
    let out = run_round(&cfg);
    let Snap {
        name,
        window,
        bytes: snap,
        ..
    } = &out.snaps[0];
    check(&out.writes, *window, snap)
        .unwrap_or_else(|v| panic!("{name} itself: {}", summarize(&v)));
    let kinds = |r: Result<Stats, Vec<Violation>>| -> Vec<Kind> {
        let v = r.expect_err("a broken snapshot was accepted");
        v.iter().map(|v| v.kind).collect()
    };

    // A barrier that let later writes in: the head, after more writes.
    let late = kinds(check(&out.writes, *window, &out.head));
    assert!(late.contains(&Kind::Late), "{late:?}");

    // Incident 3 itself: the snapshot equals the base image.
    let missed = kinds(check(&out.writes, *window, &out.base));
    assert!(missed.contains(&Kind::LostAcked), "{missed:?}");

    // A torn block: half of one write, half of another.
    let mut torn = snap.clone();
    let b = torn
        .chunks_exact(BLOCK)
        .position(|c| c.iter().any(|&x| x != 0))
        .expect("a data block");
    let other = out
        .writes
        .iter()
        .find(|w| {
            (w.block..w.block + w.nblocks).contains(&(b as u64))
                && w.id != block_tag(&snap[b * BLOCK..]).0
        })
        .map(|w| block_data(w.id, b as u64));
    let half = other.unwrap_or_else(|| vec![0x5a; BLOCK]);
    torn[b * BLOCK + BLOCK / 2..(b + 1) * BLOCK].copy_from_slice(&half[BLOCK / 2..]);
    assert_eq!(
        kinds(check(&out.writes, *window, &torn)),
        vec![Kind::Garbage]
    );
}

fn ms(base: Instant, n: u64) -> Instant {
    base + Duration::from_millis(n)
}

fn rec(base: Instant, id: u64, block: u64, sent: u64, acked: u64) -> WriteRec {
    WriteRec {
        id,
        conn: 0,
        block,
        nblocks: 1,
        sent: ms(base, sent),
        acked: ms(base, acked),
    }
}

/// Image bytes showing, per block, write `id` (0: zeros).
fn image(shows: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for (b, &id) in shows.iter().enumerate() {
        if id == 0 {
            out.extend_from_slice(&[0u8; BLOCK]);
        } else {
            out.extend_from_slice(&block_data(id, b as u64));
        }
    }
    out
}

fn verdict(writes: &[WriteRec], w: Window, shows: &[u64]) -> Result<(), Vec<Kind>> {
    check(writes, w, &image(shows))
        .map(|_| ())
        .map_err(|v| v.iter().map(|v| v.kind).collect())
}

/// Writes racing each other or the snapshot may land either way; the
/// checker must accept each outcome the barrier allows, and only those.
#[test]
fn checker_accepts_every_allowed_outcome_and_nothing_else() {
    let t = Instant::now();
    // Block 0: #1 acked before the call. Block 0: #2 and #3 concurrent,
    // both acked before the call. Block 1: #4 in flight across the call.
    // Block 2: #5 sent after the return.
    let writes = [
        rec(t, 1, 0, 0, 1),
        rec(t, 2, 0, 2, 6),
        rec(t, 3, 0, 3, 5),
        rec(t, 4, 1, 8, 12),
        rec(t, 5, 2, 13, 14),
    ];
    let w = Window {
        call: ms(t, 10),
        ret: ms(t, 11),
    };
    assert_eq!(verdict(&writes, w, &[2, 0, 0]), Ok(()));
    assert_eq!(verdict(&writes, w, &[3, 0, 0]), Ok(()));
    assert_eq!(verdict(&writes, w, &[3, 4, 0]), Ok(()));
    // #1 was overwritten by #2 and #3 (both acked before the call); and
    // with #3 out, #4 (sent after #3 was acknowledged) cannot be in.
    assert_eq!(
        verdict(&writes, w, &[1, 4, 0]),
        Err(vec![Kind::LostAcked, Kind::LostAcked, Kind::NotACut])
    );
    assert_eq!(
        verdict(&writes, w, &[0, 0, 0]),
        Err(vec![Kind::LostAcked; 3])
    );
    assert_eq!(verdict(&writes, w, &[2, 4, 5]), Err(vec![Kind::Late]));
    // With #5 in, #4 (acknowledged before #5 was sent) must be too.
    assert_eq!(
        verdict(&writes, w, &[2, 0, 5]),
        Err(vec![Kind::NotACut, Kind::Late])
    );
    // Data nobody wrote there.
    let mut img = image(&[2, 0, 0]);
    img[BLOCK..2 * BLOCK].copy_from_slice(&block_data(4, 2));
    assert_eq!(
        check(&writes, w, &img).map(|_| ()).map_err(|v| v[0].kind),
        Err(Kind::Garbage)
    );
}

/// Rules 1 and 2 alone miss a snapshot assembled from different moments
/// (what a copy job racing the writer produces); the cut rule catches it.
#[test]
fn checker_rejects_a_snapshot_that_is_not_a_cut() {
    let t = Instant::now();
    // A slow snapshot (call 5, return 100). #1 on block 1 acked before the
    // call; #2 overwrites it (sent after #1's ack), in flight across the
    // call; #3 on block 0 sent after #2 was acknowledged.
    let writes = [
        rec(t, 1, 1, 0, 1),
        rec(t, 2, 1, 3, 20),
        rec(t, 3, 0, 30, 40),
    ];
    let w = Window {
        call: ms(t, 5),
        ret: ms(t, 100),
    };
    // Cuts: nothing in flight, #2 only, #2 and #3.
    assert_eq!(verdict(&writes, w, &[0, 1]), Ok(()));
    assert_eq!(verdict(&writes, w, &[0, 2]), Ok(()));
    assert_eq!(verdict(&writes, w, &[3, 2]), Ok(()));
    // #3 without #2 (rules 1 and 2 hold: #1 is there, nothing was sent
    // after the return): #3 ran after #2, so #2 is in and must hide #1.
    assert_eq!(verdict(&writes, w, &[3, 1]), Err(vec![Kind::NotACut; 2]));
}
