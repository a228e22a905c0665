//! `meta backup|restore`: a pool's metadata as a JSON document.

use super::{describe_clients, Ctx};
use crate::args::MetaCmd;
use crate::error::{CliError, Result};
use crate::output::to_json;
use std::io::{Read, Write};
use vdisk_engine::backup::MetaBackup;
use vdisk_engine::spec::validate_name;
use vdisk_engine::ErrorKind;

pub fn run(ctx: &Ctx, cmd: MetaCmd) -> Result<()> {
    match cmd {
        MetaCmd::Backup { pool, file, force } => {
            validate_name(&pool)?;
            let b = ctx.store.meta_backup(&pool)?;
            let mut text = to_json(&b)?;
            text.push('\n');
            if file == "-" {
                return ctx.out.text(&text);
            }
            write_file(ctx, &file, text.as_bytes(), force)
        }
        MetaCmd::Restore { pool, file } => {
            validate_name(&pool)?;
            let text = read_input(ctx, &file)?;
            // The restore replaces what the served images' states were
            // loaded from.
            if let Some(d) = &ctx.daemon {
                let clients = d.registry.connections_in_pool(&pool);
                if !clients.is_empty() {
                    return Err(CliError::refused(format!(
                        "pool {pool} is in use by {}",
                        describe_clients(&clients)
                    ))
                    .with_hint(
                        "disconnect them first: a restore replaces the metadata they read",
                    ));
                }
            }
            let b: MetaBackup = serde_json::from_str(&text).map_err(|e| {
                CliError::invalid(format!(
                    "{} is not a vdisk metadata backup: {e}",
                    shown(&file)
                ))
                .with_hint("make one with `vdisk meta backup POOL FILE`")
            })?;
            Ok(ctx.store.meta_restore(&pool, &b)?)
        }
    }
}

fn shown(file: &str) -> String {
    if file == "-" {
        "standard input".into()
    } else {
        file.into()
    }
}

/// Largest backup accepted (guards memory on a wrong file).
const MAX_BACKUP: u64 = 1 << 30;

/// Reads this process's standard input as a backup's text (the CLI sends
/// it to the daemon for `meta restore POOL -`).
pub fn read_stdin_text() -> Result<String> {
    read_text("-", |bytes| {
        std::io::stdin()
            .lock()
            .take(MAX_BACKUP + 1)
            .read_to_end(bytes)
    })
}

fn read_input(ctx: &Ctx, file: &str) -> Result<String> {
    if file != "-" {
        let path = ctx.path(file)?;
        return read_text(file, |bytes| {
            std::fs::File::open(&path).and_then(|f| f.take(MAX_BACKUP + 1).read_to_end(bytes))
        });
    }
    match &ctx.daemon {
        None => read_stdin_text(),
        Some(d) => d.stdin.clone().ok_or_else(|| {
            CliError::refused("the request to the daemon carries no standard input")
                .with_hint("send the backup's text in the request's `stdin` field")
        }),
    }
}

fn read_text(
    file: &str,
    read: impl FnOnce(&mut Vec<u8>) -> std::io::Result<usize>,
) -> Result<String> {
    let mut bytes = Vec::new();
    read(&mut bytes).map_err(|e| CliError::io(format!("reading {}", shown(file)), e))?;
    if bytes.len() as u64 > MAX_BACKUP {
        return Err(CliError::invalid(format!(
            "{} is larger than 1 GiB; not a metadata backup",
            shown(file)
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::invalid(format!("{} is not UTF-8 text", shown(file))))
}

/// Writes `data` to a new file (or over an existing one with `force`) and
/// syncs it: a backup that is not durable is not a backup.
fn write_file(ctx: &Ctx, file: &str, data: &[u8], force: bool) -> Result<()> {
    let path = ctx.path(file)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(&path).map_err(|e| {
        let err = CliError::io(format!("creating {file}"), e);
        if err.kind == ErrorKind::AlreadyExists {
            err.with_hint("pass --force to overwrite it")
        } else {
            err
        }
    })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| CliError::io(format!("writing {file}"), e))
}
