//! [`LocalObjectStore`]: one file per object under a root directory.
//!
//! This is the hot data path (an NBD server doing small random I/O from many
//! threads), so:
//! - open files are cached (bounded, sharded by name hash) and I/O is
//!   positioned (`pread`/`pwrite`), so no lock is held while the kernel works;
//! - `sync` only fsyncs what changed since the last sync: the files written or
//!   punched, then the directories in which entries were created or removed.

use crate::{validate_name, ObjectStore, Result, StorageError};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default bound on cached open files (well under a typical `ulimit -n`).
const DEFAULT_MAX_OPEN_FILES: usize = 4096;
/// Shards of the handle cache: enough that threads working on different
/// objects rarely meet on the same (briefly held) mutex.
const SHARDS: usize = 64;
/// At most this many fsyncs run at once in `sync` (they mostly wait on the
/// device, and the journal can batch concurrent ones).
const SYNC_THREADS: usize = 8;

/// An [`ObjectStore`] keeping each object in the file `root/<name>` (names with
/// `/` live in subdirectories, created on demand).
///
/// Filesystem limits apply: a name cannot be both an object and a directory
/// of other objects (`a` and `a/b`); that write fails with an I/O error.
/// Directories are never removed (an empty one costs nothing and removing it
/// would race with a concurrent creation inside it). [`ObjectStore::list`]
/// returns every regular file under the root whose relative path is a valid
/// object name.
pub struct LocalObjectStore {
    root: PathBuf,
    max_per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Directories (relative to root, `""` = root) with entries created or
    /// removed since the last sync.
    dirty_dirs: Mutex<HashSet<String>>,
    /// Held by a `sync` from taking the dirty sets until their fsyncs are
    /// done: a concurrent `sync` that found the sets empty must not return
    /// while the files another one took are still being synced (two NBD
    /// connections flushing at once: the second would acknowledge writes
    /// not yet durable).
    sync_lock: Mutex<()>,
}

#[derive(Default)]
struct Shard {
    /// Cached open handles (read + write).
    files: HashMap<String, Arc<File>>,
    /// Objects written or punched since the last sync.
    dirty: HashSet<String>,
    /// Bumped after every unlink in this shard. A handle opened across an
    /// unlink may point at the removed inode, so it is used once and not
    /// cached (see [`LocalObjectStore::handle`]).
    removals: u64,
}

impl std::fmt::Debug for LocalObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalObjectStore")
            .field("root", &self.root)
            .field("max_open_files", &(self.max_per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl LocalObjectStore {
    /// Opens (creating it and its parents if needed) a store rooted at `root`,
    /// caching up to 4096 open files.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with_cache(root, DEFAULT_MAX_OPEN_FILES)
    }

    /// Like [`LocalObjectStore::open`], caching at most about
    /// `max_open_files` open files (rounded up to a multiple of the shard
    /// count, at least one per shard).
    pub fn open_with_cache(root: &Path, max_open_files: usize) -> Result<Self> {
        if !root.is_dir() {
            fs::create_dir_all(root)
                .map_err(|e| StorageError::io(root.display().to_string(), e))?;
            // Make the new root itself survive a crash.
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| StorageError::io(parent.display().to_string(), e))?;
            }
        }
        Ok(LocalObjectStore {
            root: root.to_path_buf(),
            max_per_shard: max_open_files.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            dirty_dirs: Mutex::default(),
            sync_lock: Mutex::default(),
        })
    }

    /// The directory this store keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard(&self, name: &str) -> &Mutex<Shard> {
        // The modulo keeps the index below SHARDS, so the cast cannot truncate.
        &self.shards[(self.hasher.hash_one(name) % SHARDS as u64) as usize]
    }

    /// An open read-write handle to `name`, from the cache or freshly opened.
    /// A missing object gives `None`, or is created when `create` is set.
    fn handle(&self, name: &str, create: bool) -> Result<Option<Arc<File>>> {
        let shard = self.shard(name);
        let removals = {
            let s = shard.lock();
            if let Some(file) = s.files.get(name) {
                return Ok(Some(Arc::clone(file)));
            }
            s.removals
        };
        // Opened without the shard lock held: open() can take a while.
        let path = self.root.join(name);
        let file = match open_rw(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => self.create(name, &path)?,
            Err(e) => return Err(StorageError::io(name, e)),
        };
        let file = Arc::new(file);
        let mut s = shard.lock();
        // If an unlink happened in this shard since we looked, our open may
        // have raced with it and hold a removed inode: use it for this one
        // operation (ordering against a concurrent remove is undefined anyway)
        // but do not let it serve later operations.
        if s.removals == removals {
            if let Some(existing) = s.files.get(name) {
                return Ok(Some(Arc::clone(existing)));
            }
            if s.files.len() >= self.max_per_shard {
                // Evict an arbitrary entry; in-flight users keep their Arc.
                if let Some(victim) = s.files.keys().next().cloned() {
                    s.files.remove(&victim);
                }
            }
            s.files.insert(name.to_owned(), Arc::clone(&file));
        }
        Ok(Some(file))
    }

    /// Creates the file of `name` and any missing parent directories,
    /// recording each directory that gains an entry for the next sync.
    fn create(&self, name: &str, path: &Path) -> Result<File> {
        // Create parents top-down so we know which ones are new.
        let mut dir = String::new();
        if let Some((parents, _)) = name.rsplit_once('/') {
            for component in parents.split('/') {
                let parent = dir.clone();
                if !dir.is_empty() {
                    dir.push('/');
                }
                dir.push_str(component);
                match fs::create_dir(self.root.join(&dir)) {
                    Ok(()) => {
                        self.dirty_dirs.lock().insert(parent);
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(StorageError::io(&dir, e)),
                }
            }
        }
        let file = open_rw(path, true).map_err(|e| StorageError::io(name, e))?;
        self.dirty_dirs.lock().insert(dir);
        Ok(file)
    }

    fn mark_dirty(&self, name: &str) {
        let mut s = self.shard(name).lock();
        if !s.dirty.contains(name) {
            s.dirty.insert(name.to_owned());
        }
    }

    /// fsyncs the data of the named objects (already removed ones are skipped).
    fn sync_files(&self, names: &[String]) -> Result<()> {
        for name in names {
            if let Some(file) = self.handle(name, false)? {
                file.sync_data().map_err(|e| StorageError::io(name, e))?;
            }
        }
        Ok(())
    }

    /// Walks `dir` (relative to root, `""` = root) collecting the objects
    /// whose name starts with `prefix`; skips subtrees that cannot match.
    fn walk(&self, dir: &str, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            // Vanished or never created: nothing below it.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io(path.display().to_string(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(path.display().to_string(), e))?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8, so not an object name
            };
            let name = if dir.is_empty() {
                file_name
            } else {
                format!("{dir}/{file_name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue; // removed while we looked
            };
            if kind.is_dir() {
                let subtree = format!("{name}/");
                if subtree.starts_with(prefix) || prefix.starts_with(&subtree) {
                    self.walk(&name, prefix, out)?;
                }
            } else if kind.is_file() && name.starts_with(prefix) && validate_name(&name).is_ok() {
                out.push(name);
            }
        }
        Ok(())
    }
}

impl ObjectStore for LocalObjectStore {
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        validate_name(name)?;
        let Some(file) = self.handle(name, false)? else {
            buf.fill(0);
            return Ok(());
        };
        if buf.len() >= STREAM_READ {
            fill_cold_windows(&file, offset, buf.len() as u64);
        }
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset.saturating_add(done as u64)) {
                Ok(0) => break, // end of file: the rest reads as zero
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io(name, e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        validate_name(name)?;
        let Some(file) = self.handle(name, true)? else {
            return Err(StorageError::io(name, io::Error::from(ErrorKind::NotFound)));
        };
        let result = file.write_all_at(data, offset);
        // Marked even on failure (part may have been written), and only after
        // the write, so a sync that starts in between cannot clear the mark
        // before the data is there.
        self.mark_dirty(name);
        result.map_err(|e| StorageError::io(name, e))
    }

    fn punch(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        validate_name(name)?;
        let Some(file) = self.handle(name, false)? else {
            return Ok(());
        };
        // Only the part inside the file matters (KEEP_SIZE semantics), and the
        // clamp keeps offsets within off_t.
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(name, e))?
            .len();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        let result = punch_hole(&file, offset, end - offset);
        self.mark_dirty(name);
        result.map_err(|e| StorageError::io(name, e))
    }

    fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let result = fs::remove_file(self.root.join(name));
        {
            // After the unlink: drop the cached handle and invalidate any open
            // that raced with the unlink (see `handle`).
            let mut s = self.shard(name).lock();
            s.removals += 1;
            s.files.remove(name);
        }
        match result {
            Ok(()) => {
                let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                self.dirty_dirs.lock().insert(dir.to_owned());
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(name, e)),
        }
    }

    fn sync(&self) -> Result<()> {
        let _one = self.sync_lock.lock();
        // Take the sets first: changes made while we sync are marked again
        // and go to the next sync.
        let mut files: Vec<String> = Vec::new();
        for shard in self.shards.iter() {
            files.extend(shard.lock().dirty.drain());
        }
        let dirs: Vec<String> = self.dirty_dirs.lock().drain().collect();

        let result = (|| {
            // Files first, then the directories naming them.
            if files.len() <= 1 {
                self.sync_files(&files)?;
            } else {
                let chunk = files.len().div_ceil(SYNC_THREADS);
                std::thread::scope(|scope| {
                    let workers: Vec<_> = files
                        .chunks(chunk)
                        .map(|names| scope.spawn(move || self.sync_files(names)))
                        .collect();
                    workers.into_iter().try_for_each(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(StorageError::io(
                                "sync",
                                io::Error::other("fsync thread panicked"),
                            ))
                        })
                    })
                })?;
            }
            for dir in &dirs {
                let path = self.root.join(dir);
                match sync_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(path.display().to_string(), e)),
                }
            }
            Ok(())
        })();
        if result.is_err() {
            // Nothing is known durable: put everything back so a retry
            // syncs it again.
            for name in files {
                self.mark_dirty(&name);
            }
            self.dirty_dirs.lock().extend(dirs);
        }
        result
    }

    fn sync_objects(&self, names: &[String]) -> Result<()> {
        // The files (a removed one is simply gone), then their
        // directories (for removals and creations). They stay in the dirty
        // sets: a later `sync` fsyncs them again, harmlessly.
        self.sync_files(names)?;
        let dirs: HashSet<&str> = names
            .iter()
            .map(|n| n.rsplit_once('/').map_or("", |(d, _)| d))
            .collect();
        for dir in dirs {
            let path = self.root.join(dir);
            match sync_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(path.display().to_string(), e)),
            }
        }
        Ok(())
    }

    fn start_writeback(&self, name: &str, offset: u64, len: u64) {
        if validate_name(name).is_err() || len == 0 {
            return;
        }
        // Only an already open handle: a hint is no reason to open a file.
        let file = self.shard(name).lock().files.get(name).cloned();
        if let Some(file) = file {
            start_file_writeback(&file, offset, len);
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.walk("", prefix, &mut out)?;
        out.sort_unstable();
        Ok(out)
    }

    fn allocated(&self, name: &str) -> Result<u64> {
        validate_name(name)?;
        match fs::metadata(self.root.join(name)) {
            Ok(meta) if meta.is_file() => Ok(meta.blocks() * 512),
            Ok(_) => Ok(0),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StorageError::io(name, e)),
        }
    }
}

/// Starts writeback of a range of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): for writers of data that
/// will be synced soon and not rewritten before (bulk copies), so the disk
/// works while they go on. Errors are ignored: this makes nothing durable,
/// and the later fsync reports any real failure.
#[allow(unsafe_code)]
pub fn start_file_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only schedules I/O of the file's own dirty
    // pages; it reads its integer arguments and touches no memory of ours.
    // `file` keeps the descriptor open for the whole call. No safe wrapper
    // exists in std.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Reads at least this long are parts of a stream (a sequential NBD read,
/// an export): their cold windows are read in whole first.
const STREAM_READ: usize = 256 * 1024;

/// The page-cache window [`fill_cold_windows`] reads in at once: the size
/// of a PMD folio on x86-64 and arm64 with 4 KiB pages.
const WINDOW: u64 = 2 << 20;

/// `cachestat(2)` (Linux 6.5), the same number on every architecture; not
/// in the `libc` crate for all of them.
const SYS_CACHESTAT: libc::c_long = 451;

/// Set once `cachestat` or `MADV_POPULATE_READ` turned out unsupported.
static COLD_FILL_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads the 2 MiB windows of `file` that `[offset, offset + len)` touches
/// into the page cache, as 2 MiB folios, unless they are all cached.
///
/// Why: a file read cold through `read(2)` starts its readahead at 4 KiB
/// folios and grows them a few orders per round. One big file (a qcow2, a
/// raw image, nbdkit's disk) reaches 2 MiB folios after its first few MiB;
/// an object file is 4 MiB in all, so objects read back from disk stayed
/// in 4 KiB folios (kpageflags: 1.3–1.6 pages per folio), and every later
/// read of that cached data copied 25 % slower (1 MiB `pread`s of the same
/// 4 MiB: 12.2 GiB/s from 4 KiB folios, 16.3 GiB/s from 2 MiB ones). This
/// machine's kernel pages cache out within seconds (DAMON), so objects come
/// back cold all the time. A file mapping with `MADV_HUGEPAGE`, populated
/// with `MADV_POPULATE_READ`, is read ahead in 2 MiB folios.
///
/// Only for reads of [`STREAM_READ`] or more (random small reads would
/// read 2 MiB for 4 KiB); the kernel also reads the next window ahead, as
/// it would for a stream. A read whose windows are all cached costs one
/// `cachestat` call more. Everything here is a hint: any failure just
/// leaves the read to `pread`.
fn fill_cold_windows(file: &File, offset: u64, len: u64) {
    use std::sync::atomic::Ordering;
    if COLD_FILL_OFF.load(Ordering::Relaxed) || !small_pages() {
        return;
    }
    let first = offset / WINDOW * WINDOW;
    let end = offset.saturating_add(len);
    let Some(cached) = cached_pages(file, first, end - first) else {
        COLD_FILL_OFF.store(true, Ordering::Relaxed);
        return;
    };
    if cached == (end - first).div_ceil(WINDOW) * (WINDOW / 4096) {
        return;
    }
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let mut w = first;
    while w < end.min(size) {
        let n = WINDOW.min(size - w);
        if cached_pages(file, w, n).is_some_and(|c| c < n.div_ceil(4096)) && !populate(file, w, n) {
            COLD_FILL_OFF.store(true, Ordering::Relaxed);
            return;
        }
        w += WINDOW;
    }
}

/// The system's pages are 4 KiB, which the window and page counts above
/// assume (a 2 MiB folio is the PMD size only then).
#[allow(unsafe_code)]
fn small_pages() -> bool {
    static SMALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant and returns a number; no memory of
    // ours is involved. std does not expose the page size.
    *SMALL.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } == 4096)
}

/// Pages of `[offset, offset + len)` of `file` in the page cache, or `None`
/// if the kernel cannot tell (before Linux 6.5).
#[allow(unsafe_code)]
fn cached_pages(file: &File, offset: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live, properly
    // laid out (`repr(C)`, the kernel's `struct cachestat_range` and
    // `struct cachestat`) locals; `file` keeps the descriptor open for the
    // call. No safe wrapper exists in std or libc.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0u32,
        )
    };
    (rc == 0).then_some(stat.nr_cache)
}

/// Reads `[offset, offset + len)` (inside the file, `offset` a multiple of
/// [`WINDOW`]) into the page cache through a `MADV_HUGEPAGE` mapping.
/// False if the kernel does not know `MADV_POPULATE_READ` (before 5.14).
#[allow(unsafe_code)]
fn populate(file: &File, offset: u64, len: u64) -> bool {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), usize::try_from(len)) else {
        return true;
    };
    // SAFETY: a new read-only shared mapping of `len` bytes of an open file,
    // at an address the kernel chooses; nothing in this process ever
    // dereferences it (no Rust reference to it is made), so the file
    // changing or shrinking underneath cannot affect memory safety — it is
    // only advised and unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off,
        )
    };
    if addr == libc::MAP_FAILED {
        return true;
    }
    // SAFETY: `addr..addr + n` is the mapping made above, still mapped.
    // MADV_POPULATE_READ reports a range it cannot read (the file shrank)
    // as an error instead of raising SIGBUS.
    let supported = unsafe {
        libc::madvise(addr, n, libc::MADV_HUGEPAGE);
        libc::madvise(addr, n, libc::MADV_POPULATE_READ) == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    };
    // SAFETY: unmaps exactly the mapping made above, used by nothing else.
    unsafe {
        libc::munmap(addr, n);
    }
    supported
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// fsyncs a directory, making the creation and removal of its entries durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Releases `[offset, offset + len)` of `file` (inside its size), or, where the
/// filesystem cannot, overwrites it with zeros.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    match fallocate_punch(file, offset, len) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {}
        Err(e) => return Err(e),
    }
    write_zeros(file, offset, len)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn fallocate_punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let to_off =
        |v: u64| libc::off_t::try_from(v).map_err(|_| io::Error::from(ErrorKind::InvalidInput));
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    loop {
        // SAFETY: fallocate only reads its four integer arguments; the fd is
        // valid and open for writing for the whole call because `file` is
        // borrowed. No memory is shared with the kernel. `unsafe` is needed
        // because std has no safe API to deallocate a file range.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn write_zeros(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let zeros = [0u8; CHUNK];
    let end = offset + len;
    while offset < end {
        // Bounded by CHUNK, so the cast cannot truncate.
        let n = (end - offset).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops `file`'s clean pages from the page cache; false if some stay
    /// (a filesystem such as tmpfs keeps them).
    #[allow(unsafe_code)]
    fn evict(file: &File) -> bool {
        file.sync_all().expect("sync");
        // SAFETY: posix_fadvise reads its integer arguments only; `file`
        // keeps the descriptor open.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        cached_pages(file, 0, u64::MAX / 2) == Some(0)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8)
            .collect()
    }

    #[test]
    fn large_reads_of_cold_data_return_it_whole_and_cache_its_windows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalObjectStore::open(dir.path()).expect("open");
        // Three windows and a bit: the last one is short.
        let len = 3 * WINDOW as usize + 12_345;
        let data = pattern(len);
        store.write_at("obj", 0, &data).expect("write");
        let file = File::open(dir.path().join("obj")).expect("file");
        let mut cold = evict(&file);
        for (off, n) in [
            (5 * 4096, STREAM_READ),
            (WINDOW as usize - 4096, 1 << 20),
            (len - 4096, STREAM_READ),
            (0, len + 8192),
        ] {
            let mut buf = vec![0xAA; n];
            store.read_at("obj", off as u64, &mut buf).expect("read");
            let end = len.min(off + n);
            assert_eq!(&buf[..end - off], &data[off..end], "read {off}+{n}");
            assert!(buf[end - off..].iter().all(|&b| b == 0), "past the end");
            if cold {
                // The whole window of the first read came in, not only the
                // 256 KiB asked for (a lone read at an offset is not read
                // ahead without the fill).
                assert_eq!(cached_pages(&file, 0, WINDOW), Some(WINDOW / 4096));
                cold = false;
            }
        }
        // A short read is not a stream: it reads what it asks for.
        if evict(&file) {
            let mut buf = vec![0; 4096];
            store
                .read_at("obj", 2 * WINDOW + 40_960, &mut buf)
                .expect("read");
            assert!(cached_pages(&file, 2 * WINDOW, WINDOW).is_some_and(|c| c < 512));
        }
    }
}
