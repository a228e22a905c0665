//! [`DirLock`]: one process at a time per data directory.
//!
//! An exclusive `flock` on `dir/vdisk.lock`, plus a small text record of who
//! holds it so a refused process can say by whom. The kernel drops the lock
//! when its holder dies, so a stale file never blocks; the file is never
//! removed (removing it would let two processes lock two different inodes).

use crate::{Result, StorageError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the lock file inside the locked directory.
const LOCK_FILE: &str = "vdisk.lock";

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// Kept open: closing it would release the lock.
    _file: File,
    path: PathBuf,
}

/// Who holds a [`DirLock`], as recorded in the lock file. Fields are `None`
/// (or the description empty) when the record is missing or unreadable, e.g.
/// the holder has locked but not yet written it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Process id of the holder.
    pub pid: Option<u32>,
    /// What the holder said it is (e.g. its command line).
    pub description: String,
    /// When it took the lock, in seconds since the Unix epoch.
    pub since_unix: Option<u64>,
}

impl DirLock {
    /// Takes the exclusive lock on `dir` (which must exist), recording
    /// `holder_desc` (e.g. the command line) with our pid and the time.
    /// `Ok(Err(holder))` if someone holds it already, including another
    /// `DirLock` of this process; `Err` for I/O errors.
    pub fn acquire(
        dir: &Path,
        holder_desc: &str,
    ) -> Result<std::result::Result<DirLock, LockHolder>> {
        let path = dir.join(LOCK_FILE);
        let io_err = |e| StorageError::io(path.display().to_string(), e);
        // No truncate here: until we hold the lock the record is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut record = String::new();
                // A record we cannot read just leaves the holder unknown.
                let _ = file.read_to_string(&mut record);
                return Ok(Err(LockHolder::parse(&record)));
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // One line per field; a newline in the description would end it early.
        let record = format!(
            "pid={}\nsince={since}\ndescription={}\n",
            std::process::id(),
            holder_desc.replace(['\n', '\r'], " ")
        );
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(record.as_bytes()).map_err(io_err)?;
        file.sync_data().map_err(io_err)?;
        Ok(Ok(DirLock { _file: file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LockHolder {
    fn parse(record: &str) -> LockHolder {
        let mut holder = LockHolder {
            pid: None,
            description: String::new(),
            since_unix: None,
        };
        for line in record.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => holder.pid = v.trim().parse().ok(),
                Some(("since", v)) => holder.since_unix = v.trim().parse().ok(),
                Some(("description", v)) => holder.description = v.to_owned(),
                _ => {}
            }
        }
        holder
    }
}

/// Says e.g. `pid 123 (vdisk serve) since 2026-05-01 12:00:00 UTC`, to follow
/// "data directory /x is in use by ".
impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "an unknown process")?,
        }
        if !self.description.is_empty() {
            write!(f, " ({})", self.description)?;
        }
        if let Some(since) = self.since_unix {
            let (days, secs) = (since / 86_400, since % 86_400);
            let (y, m, d) = civil_from_days(days);
            write!(
                f,
                " since {y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )?;
        }
        Ok(())
    }
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_574), (2026, 5, 1));
    }

    #[test]
    fn display() {
        let holder = LockHolder {
            pid: Some(123),
            description: "vdisk serve".into(),
            since_unix: Some(20_574 * 86_400 + 12 * 3600 + 34 * 60 + 56),
        };
        assert_eq!(
            holder.to_string(),
            "pid 123 (vdisk serve) since 2026-05-01 12:34:56 UTC"
        );
        assert_eq!(
            LockHolder::parse(""),
            LockHolder {
                pid: None,
                description: String::new(),
                since_unix: None
            }
        );
        assert_eq!(
            LockHolder::parse("pid=123\nsince=5\ndescription=a=b\n").description,
            "a=b"
        );
    }
}
