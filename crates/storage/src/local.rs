//! [`LocalObjectStore`]: one file per object under a root directory.
//!
//! This is the hot data path (an NBD server doing small random I/O from many
//! threads), so:
//! - open files are cached (bounded, sharded by name hash) and I/O is
//!   positioned (`pread`/`pwrite`), so no lock is held while the kernel works;
//! - lent reads come from cached mappings of [`LEND_WINDOW`]-sized windows
//!   of object files (bounded too), so a large read maps nothing and, above
//!   all, unmaps nothing: each `munmap` of a mapping the kernel has copied
//!   from flushes the TLB of every CPU the process runs on;
//! - `sync` only fsyncs what changed since the last sync: the files written or
//!   punched, then the directories in which entries were created or removed.

use crate::{validate_name, Filled, Lent, ObjectStore, Result, StorageError};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Most bytes of one `pwrite`: larger writes are split at multiples of
/// this (see `write_in_pieces`).
const WRITE_PIECE: usize = 64 << 10;
/// Default bound on cached open files (well under a typical `ulimit -n`).
const DEFAULT_MAX_OPEN_FILES: usize = 4096;
/// Lent reads ([`ObjectStore::lend`]) are served from mappings of windows
/// of object files this large, at offsets that are multiples of it; a read
/// that crosses a window's end gets a mapping of its own, not cached.
pub const LEND_WINDOW: u64 = 4 << 20;
/// Default bound on cached windows: 8 GiB of address space, and the page
/// tables of what was read through them (2 MiB per GiB).
const DEFAULT_MAX_WINDOWS: usize = 2048;
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
    windows_per_shard: usize,
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
    /// Cached mappings for lent reads: each object's windows, by index
    /// (offset / [`LEND_WINDOW`]). Dropped with the object's handle at its
    /// removal, so a mapping never keeps a removed file's space.
    windows: HashMap<String, Vec<(u64, Arc<memmap2::MmapRaw>)>>,
    /// Windows in `windows`, all objects together.
    mapped: usize,
    /// Bumped after every unlink in this shard. A handle opened across an
    /// unlink may point at the removed inode, so it is used once and not
    /// cached (see [`LocalObjectStore::handle`]); the same goes for a
    /// mapping made across an unlink.
    removals: u64,
}

impl Shard {
    /// The cached mapping of window `index` of `name`.
    fn window(&self, name: &str, index: u64) -> Option<Arc<memmap2::MmapRaw>> {
        let ws = self.windows.get(name)?;
        ws.iter()
            .find(|(i, _)| *i == index)
            .map(|(_, map)| Arc::clone(map))
    }
}

impl std::fmt::Debug for LocalObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalObjectStore")
            .field("root", &self.root)
            .field("max_open_files", &(self.max_per_shard * SHARDS))
            .field("max_lend_windows", &(self.windows_per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl LocalObjectStore {
    /// Opens (creating it and its parents if needed) a store rooted at `root`,
    /// caching up to 4096 open files and 2048 lent-read windows.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with_cache(root, DEFAULT_MAX_OPEN_FILES)
    }

    /// Like [`LocalObjectStore::open`], caching at most about
    /// `max_open_files` open files (rounded up to a multiple of the shard
    /// count, at least one per shard).
    pub fn open_with_cache(root: &Path, max_open_files: usize) -> Result<Self> {
        Self::open_with_limits(root, max_open_files, DEFAULT_MAX_WINDOWS)
    }

    /// Like [`LocalObjectStore::open_with_cache`], caching at most about
    /// `max_lend_windows` mappings for lent reads (rounded up like the
    /// files; 0 maps each lent read on its own and unmaps it once sent).
    pub fn open_with_limits(
        root: &Path,
        max_open_files: usize,
        max_lend_windows: usize,
    ) -> Result<Self> {
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
            windows_per_shard: max_lend_windows.div_ceil(SHARDS),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            dirty_dirs: Mutex::default(),
            sync_lock: Mutex::default(),
        })
    }

    /// Undoes what [`LocalObjectStore::open`] made of `root` once the
    /// store is done with: removes the directory if it is empty and makes
    /// the removal durable. A directory that still holds anything, or is
    /// gone, is left as it is (`Ok(false)`).
    pub fn remove_empty_root(root: &Path) -> Result<bool> {
        match fs::remove_dir(root) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty | ErrorKind::NotADirectory
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(StorageError::io(root.display().to_string(), e)),
        }
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| StorageError::io(parent.display().to_string(), e))?;
        }
        Ok(true)
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

    /// Window `index` of `name` (open as `file`), from the cache or
    /// mapped and cached now; `None` if it cannot be mapped. The whole
    /// window, also past the file's end: the file may grow into it, and
    /// only bytes inside the file are ever lent or filled. `removals` as
    /// read before `file` was opened (see [`LocalObjectStore::cache_window`]).
    fn window(
        &self,
        name: &str,
        index: u64,
        file: &File,
        removals: u64,
    ) -> Option<Arc<memmap2::MmapRaw>> {
        if let Some(map) = self.shard(name).lock().window(name, index) {
            return Some(map);
        }
        let map = map_file(file, index * LEND_WINDOW, LEND_WINDOW as usize)?;
        Some(self.cache_window(name, index, Arc::new(map), removals))
    }

    /// Caches `map`, window `index` of `name`, unless the object was removed
    /// since `removals` was read or the window is cached already (then that
    /// mapping is returned); evicts another object's windows if the shard
    /// is full.
    fn cache_window(
        &self,
        name: &str,
        index: u64,
        map: Arc<memmap2::MmapRaw>,
        removals: u64,
    ) -> Arc<memmap2::MmapRaw> {
        let mut evicted = Vec::new();
        let mut s = self.shard(name).lock();
        if s.removals != removals {
            return map;
        }
        if let Some(cached) = s.window(name, index) {
            return cached;
        }
        while s.mapped >= self.windows_per_shard {
            // Evict an arbitrary other object's windows, or else this one's
            // oldest; lent reads keep their mappings until they are sent.
            if let Some(victim) = s.windows.keys().find(|k| *k != name).cloned() {
                let gone = s.windows.remove(&victim).unwrap_or_default();
                s.mapped -= gone.len();
                evicted.extend(gone);
            } else if let Some(ws) = s.windows.get_mut(name).filter(|ws| !ws.is_empty()) {
                evicted.push(ws.remove(0));
                s.mapped -= 1;
            } else {
                break;
            }
        }
        s.windows
            .entry(name.to_owned())
            .or_default()
            .push((index, Arc::clone(&map)));
        s.mapped += 1;
        drop(s);
        // Unmapped here, outside the lock.
        drop(evicted);
        map
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

    fn lend(&self, name: &str, offset: u64, len: usize) -> Result<Option<Lent>> {
        validate_name(name)?;
        // Before the handle: a mapping made across an unlink is not cached.
        let removals = self.shard(name).lock().removals;
        let Some(file) = self.handle(name, false)? else {
            return Ok(None);
        };
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(name, e))?
            .len();
        if offset >= size || len == 0 {
            return Ok(None);
        }
        // At most `len`, so the cast cannot truncate.
        let n = (size - offset).min(len as u64) as usize;
        let index = offset / LEND_WINDOW;
        if (offset + n as u64 - 1) / LEND_WINDOW != index || self.windows_per_shard == 0 {
            // Across windows: a mapping of its own.
            return Ok(map_file(&file, offset, n).map(|map| Lent::new(Arc::new(map), 0, n)));
        }
        let Some(map) = self.window(name, index, &file, removals) else {
            return Ok(None);
        };
        // The range is a window's part, so the casts cannot truncate.
        let start = (offset - index * LEND_WINDOW) as usize;
        // Map the cached pages (and read the others) now, on the caller's
        // thread, rather than fault them in one by one during the copy.
        // Only a hint: pages not populated fault in when copied.
        let _ = map.advise_range(memmap2::Advice::PopulateRead, start, n);
        Ok(Some(Lent::new(map, start, n)))
    }

    /// In place when the range is inside one [`LEND_WINDOW`] and all of
    /// it is in the page cache: `fill` gets the range in the window's
    /// (cached, shared, writable) mapping, so the kernel copies the data
    /// straight into the page cache. A page whose write-back has since
    /// cleaned it faults in the kernel's copy; where the fault fails (no
    /// space for a block a punch released), the copy stops with `EFAULT`,
    /// which `fill` reports as a short count. The zero check reads the
    /// filled bytes in user space (see `filled_bytes`).
    fn fill_in_place(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        granule: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<Option<Filled>> {
        validate_name(name)?;
        let aligned =
            crate::lent::granules_fit(offset, len, granule) && granule <= LEND_WINDOW as usize;
        let Some(end) = offset.checked_add(len as u64) else {
            return Ok(None);
        };
        let index = offset / LEND_WINDOW;
        if !aligned || self.windows_per_shard == 0 || (end - 1) / LEND_WINDOW != index {
            return Ok(None);
        }
        // Before the handle, as in `lend`.
        let removals = self.shard(name).lock().removals;
        let Some(file) = self.handle(name, false)? else {
            return Ok(None);
        };
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(name, e))?
            .len();
        if end > size {
            return Ok(None);
        }
        let Some(map) = self.window(name, index, &file, removals) else {
            return Ok(None);
        };
        // Inside the window, so the cast cannot truncate.
        let start = (offset - index * LEND_WINDOW) as usize;
        // Pages written back since they were last written are mapped
        // read-only: made writable here, in one call, rather than by a
        // fault per page in the middle of the fill. Declined if that
        // fails (no space for a block: `write_at` says so properly).
        if !resident(&map, start, len)
            || map
                .advise_range(memmap2::Advice::PopulateWrite, start, len)
                .is_err()
        {
            return Ok(None);
        }
        let n = fill(window_slice(&map, start, len)).min(len);
        // After the data, as in `write_at`.
        if n > 0 {
            self.mark_dirty(name);
        }
        let zero = crate::lent::zero_granules(filled_bytes(&map, start, n), granule);
        Ok(Some(Filled { len: n, zero }))
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        validate_name(name)?;
        let Some(file) = self.handle(name, true)? else {
            return Err(StorageError::io(name, io::Error::from(ErrorKind::NotFound)));
        };
        let result = write_in_pieces(&file, data, offset);
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
        let mut victims = Vec::new();
        {
            // After the unlink: drop the cached handle and invalidate any open
            // that raced with the unlink (see `handle`).
            let mut s = self.shard(name).lock();
            s.removals += 1;
            s.files.remove(name);
            if let Some(gone) = s.windows.remove(name) {
                s.mapped -= gone.len();
                // Unmapped outside the lock (lent reads may still hold them).
                victims = gone;
            }
        }
        drop(victims);
        match result {
            Ok(()) => {
                self.dirty_dirs.lock().insert(parent(name).to_owned());
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
        let dirs: HashSet<&str> = names.iter().map(|n| parent(n)).collect();
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

    fn prune(&self, prefix: &str) -> Result<()> {
        let Some(dir) = prefix.strip_suffix('/') else {
            return Err(StorageError::InvalidName(prefix.to_owned()));
        };
        validate_name(dir)?;
        let path = self.root.join(dir);
        match fs::remove_dir(&path) {
            Ok(()) => {
                self.dirty_dirs.lock().insert(parent(dir).to_owned());
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty | ErrorKind::NotADirectory
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(StorageError::io(path.display().to_string(), e)),
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

/// A shared mapping of `file`'s `[offset, offset + len)`, readable and
/// writable, or `None` if it cannot be made (address space, limits: the
/// caller reads or writes instead). Safe to make: [`memmap2::MmapRaw`]
/// hands out raw pointers only; see [`Lent`] and
/// `LocalObjectStore::fill_in_place` for how its bytes are used.
fn map_file(file: &File, offset: u64, len: usize) -> Option<memmap2::MmapRaw> {
    memmap2::MmapOptions::new()
        .offset(offset)
        .len(len)
        .map_raw(file)
        .ok()
}

/// `map[start..start + len]` as a slice for the kernel to fill; the caller
/// checked that it is inside the mapping.
#[allow(unsafe_code, clippy::mut_from_ref)]
fn window_slice(map: &memmap2::MmapRaw, start: usize, len: usize) -> &mut [u8] {
    debug_assert!(start <= map.len() && len <= map.len() - start);
    // SAFETY: the range is inside the mapping, which `map` keeps mapped
    // while the slice lives. The slice is only handed to system calls
    // (`ObjectStore::fill_in_place` requires it), which turn a page that
    // cannot be written into EFAULT instead of SIGBUS. The same bytes may
    // be in a `Lent` of a concurrent read of the range: neither is ever
    // dereferenced in user space, and which bytes such a read sees is
    // undefined anyway (NBD, like a disk, orders no overlapping requests).
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().add(start), len) }
}

/// The size of a memory page.
#[allow(unsafe_code)]
fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system; no memory of
        // ours is involved.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Whether every page of `map[start..start + len]` is in the page cache.
#[allow(unsafe_code)]
fn resident(map: &memmap2::MmapRaw, start: usize, len: usize) -> bool {
    let page = page_size();
    let from = start / page * page;
    let to = (start + len).div_ceil(page) * page;
    if to > map.len() {
        return false;
    }
    let mut pages = vec![0u8; (to - from) / page];
    // SAFETY: `from` is page aligned (the mapping starts on a page) and
    // `[from, to)` lies inside the mapping; mincore writes one byte per
    // page of that range into `pages`, which holds exactly that many. It
    // only reports on the pages; it faults nothing in.
    let rc = unsafe {
        libc::mincore(
            map.as_mut_ptr().add(from).cast(),
            to - from,
            pages.as_mut_ptr(),
        )
    };
    rc == 0 && pages.iter().all(|p| p & 1 != 0)
}

/// `map[start..start + len]`, just filled, for the zero check.
#[allow(unsafe_code)]
fn filled_bytes(map: &memmap2::MmapRaw, start: usize, len: usize) -> &[u8] {
    debug_assert!(start <= map.len() && len <= map.len() - start);
    // SAFETY: the range is inside the mapping, which `map` keeps mapped
    // while the slice lives; nothing writes it meanwhile but the kernel
    // for requests that overlap this write, which NBD leaves unordered.
    // This is the one read of a mapping in user space, where an
    // unreadable page is SIGBUS rather than an error: these pages were
    // written by the fill a moment ago, so they are dirty and in memory,
    // and the page cache drops a page only once it is clean (written
    // back) and then only for memory; a read here fails only if both
    // happened in between and reading the page back from the disk failed
    // too. A kernel-side read (`process_vm_readv`) took 18 % of the
    // server's time on 1 MiB writes, more than the copy it saves.
    unsafe { std::slice::from_raw_parts(map.as_ptr().add(start), len) }
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// The directory holding `name`, relative to the root (`""` = the root):
/// the one to fsync after `name` is created or removed.
fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(d, _)| d)
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

/// Writes `data` at `offset` in pieces of at most [`WRITE_PIECE`] bytes,
/// split at multiples of it.
///
/// Why: the page cache sizes the folio it creates for a write by the
/// write's length, and ext4 (large folios since Linux 6.16, data still
/// tracked in buffer heads) walks every block of a folio on each write
/// into it. After a 1 MiB write had made 1 MiB folios, each 4 KiB write
/// into them cost the server 29-30 µs, 70 % of it in
/// `ext4_block_write_begin`; into 4 KiB folios, 6.1-6.5 µs
/// (BENCHMARKS.md, "Random writes and the page cache's folios").
fn write_in_pieces(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let at = offset + done as u64;
        let n = piece_len(at, (data.len() - done) as u64);
        file.write_all_at(&data[done..done + n], at)?;
        done += n;
    }
    Ok(())
}

/// Bytes of the piece that starts at `at` with `left` bytes to write: up
/// to the next multiple of [`WRITE_PIECE`].
fn piece_len(at: u64, left: u64) -> usize {
    let room = WRITE_PIECE as u64 - at % WRITE_PIECE as u64;
    // At most WRITE_PIECE, so the cast cannot truncate.
    room.min(left) as usize
}

/// Writes zeros over `[offset, offset + len)`, in the same pieces as data.
fn write_zeros(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let zeros = [0u8; WRITE_PIECE];
    let end = offset + len;
    while offset < end {
        let n = piece_len(offset, end - offset);
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_root_is_removed_one_with_objects_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pool");
        let store = LocalObjectStore::open(&root).expect("open");
        store.write_at("img/obj", 0, b"data").expect("write");
        assert!(!LocalObjectStore::remove_empty_root(&root).expect("busy"));
        assert!(root.join("img/obj").is_file());
        store.remove("img/obj").expect("remove");
        store.prune("img/").expect("prune");
        assert!(LocalObjectStore::remove_empty_root(&root).expect("empty"));
        assert!(!root.exists());
        assert!(!LocalObjectStore::remove_empty_root(&root).expect("gone"));
    }
    use std::os::unix::fs::FileExt;

    #[test]
    fn writes_in_pieces_land_whole_at_any_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = open_rw(&dir.path().join("obj"), true).expect("open");
        let p = WRITE_PIECE as u64;
        let mut expect = vec![0u8; 4 * WRITE_PIECE + 64];
        let cases = [
            (0, 1),
            (1, 10),
            (p - 1, 2),
            (p + 3, 3 * p - 3),
            (0, 2 * p),
            (5, 0),
        ];
        for (k, (at, len)) in cases.into_iter().enumerate() {
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ k as u8)
                .collect();
            write_in_pieces(&file, &data, at).expect("write");
            expect[at as usize..(at + len) as usize].copy_from_slice(&data);
            let mut got = vec![0u8; expect.len()];
            let n = file.read_at(&mut got, 0).expect("read");
            got.truncate(n);
            assert_eq!(got, expect[..n], "after writing {len} bytes at {at}");
        }
        // The zero fill (punching's fallback) uses the same pieces.
        write_zeros(&file, p - 7, 2 * p + 9).expect("zeros");
        expect[(p - 7) as usize..(3 * p + 2) as usize].fill(0);
        let mut got = vec![0u8; expect.len()];
        let n = file.read_at(&mut got, 0).expect("read");
        assert_eq!(got[..n], expect[..n], "after the zero fill");
    }
}
