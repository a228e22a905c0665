//! [`RedbMetaStore`]: metadata in the embedded transactional database redb.

use crate::{MetaOp, MetaStore, Result, StorageError};
use redb::{Database, ReadableDatabase, TableDefinition, TableError};
use std::fmt::Display;
use std::path::{Path, PathBuf};

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;
type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// A [`MetaStore`] in one redb database file. Each commit is one redb write
/// transaction with immediate durability (fsync before it returns). A table
/// is created by its first commit; until then it reads as empty.
pub struct RedbMetaStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbMetaStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbMetaStore {
    /// Opens the database file at `path`, creating it if it does not exist
    /// (its directory must exist). Fails if another process or another
    /// `RedbMetaStore` already has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .map_err(|e| meta_err(format_args!("open database {}", path.display()), e))?;
        Ok(RedbMetaStore {
            db,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn meta_err(what: impl Display, e: impl Display) -> StorageError {
    StorageError::Meta(format!("{what}: {e}"))
}

/// The redb definition of `table`; redb panics on an empty name, so that is
/// an error here.
fn table_def(table: &'static str) -> Result<Def<'static>> {
    if table.is_empty() {
        return Err(StorageError::Meta("empty table name".into()));
    }
    Ok(TableDefinition::new(table))
}

impl RedbMetaStore {
    /// Opens `table` in a read transaction; `None` if it was never created.
    fn read_table(
        &self,
        table: &'static str,
    ) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        let def = table_def(table)?;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| meta_err(format_args!("begin read of table {table}"), e))?;
        match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(meta_err(format_args!("open table {table} for reading"), e)),
        }
    }
}

impl MetaStore for RedbMetaStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(t) = self.read_table(table)? else {
            return Ok(None);
        };
        let value = t
            .get(key)
            .map_err(|e| meta_err(format_args!("get from table {table}"), e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(t) = self.read_table(table)? else {
            return Ok(Vec::new());
        };
        let scan_err = |e: redb::StorageError| meta_err(format_args!("scan table {table}"), e);
        let mut out = Vec::new();
        for entry in t.range::<&[u8]>(prefix..).map_err(scan_err)? {
            let (key, value) = entry.map_err(scan_err)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break; // sorted: no later key has the prefix either
            }
            out.push((key.to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, ops: Vec<MetaOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(()); // nothing to make durable; skip the fsync
        }
        // Dropping `txn` without commit (on any error below) aborts it, so
        // nothing of a failed batch is applied.
        let txn = self
            .db
            .begin_write()
            .map_err(|e| meta_err("begin metadata commit", e))?;
        {
            // Keep the current table open across consecutive ops on it; redb
            // allows one open handle per table, so the previous one is
            // dropped before opening another.
            let mut open: Option<(&'static str, WriteTable<'_>)> = None;
            for op in &ops {
                let (MetaOp::Put { table, .. } | MetaOp::Delete { table, .. }) = op;
                let t = match &mut open {
                    Some((name, t)) if name == table => t,
                    _ => {
                        open = None;
                        let t = txn.open_table(table_def(table)?).map_err(|e| {
                            meta_err(format_args!("open table {table} for commit"), e)
                        })?;
                        &mut open.insert((table, t)).1
                    }
                };
                match op {
                    MetaOp::Put { key, value, .. } => {
                        t.insert(key.as_slice(), value.as_slice())
                            .map_err(|e| meta_err(format_args!("put into table {table}"), e))?;
                    }
                    MetaOp::Delete { key, .. } => {
                        t.remove(key.as_slice())
                            .map_err(|e| meta_err(format_args!("delete from table {table}"), e))?;
                    }
                }
            }
        }
        txn.commit()
            .map_err(|e| meta_err(format_args!("commit {} metadata ops", ops.len()), e))
    }
}
