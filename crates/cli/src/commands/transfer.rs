//! `import`, `export`, `cp`: raw bytes in and out of images.

use super::{any_spec, image_spec, parse_features, Ctx};
use crate::args::{CpArgs, ExportArgs, ImportArgs};
use crate::error::{CliError, Result};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use vdisk_engine::{transfer, CreateOptions, Image, ImageSpec};

pub fn cp(ctx: &Ctx, a: CpArgs) -> Result<()> {
    let src = any_spec(&a.src)?;
    let dst = image_spec(&a.dst)?;
    let img = ctx.store.copy(&src, &dst, &ctx.progress())?;
    img.flush()?;
    Ok(())
}

/// What `import` reads.
enum Source {
    /// A regular file or block device of known length.
    Sized(File, u64),
    /// Bytes of unknown length (stdin, a pipe, a character device).
    Stream(Box<dyn Read>),
}

/// How to move bulk data while the daemon runs, for the refusals.
fn nbd_hint(spec: &str, import: bool) -> String {
    let uri = format!("nbd+unix:///{spec}?socket=DIR/nbd.sock");
    if import {
        format!(
            "create the image (`vdisk create {spec} --size N`), then write to it over NBD: \
             `qemu-img convert -n -O raw FILE '{uri}'` or `nbdcopy - '{uri}'`; or import a \
             file by its absolute path"
        )
    } else {
        format!(
            "read it over NBD: `nbdcopy '{uri}' -` or `qemu-img convert -O raw '{uri}' FILE`; \
             or export to a file by its absolute path"
        )
    }
}

pub fn import(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let spec = match &a.spec {
        Some(s) => image_spec(s)?,
        None => default_import_spec(&a.file)?,
    };
    let features = parse_features(&a.features)?;
    // Fail on what the engine would refuse before reading any input.
    if let Some(f) = features {
        f.check_creatable()?;
    }
    ctx.store.pool(&spec.pool)?;
    if ctx.store.open(&spec).is_ok() {
        return Err(vdisk_engine::Error::ImageExists(spec.to_string()).into());
    }
    if a.file == "-" {
        ctx.not_in_daemon(
            "importing standard input",
            &nbd_hint(&spec.to_string(), true),
        )?;
    } else {
        ctx.path(&a.file)?;
    }
    let source = open_source(&a.file)?;
    // Refuse what cannot become an image before creating anything.
    let (size, source) = match source {
        Source::Sized(_, 0) => {
            return Err(CliError::invalid(format!(
                "{} is empty; an image needs at least 512 bytes",
                a.file
            )))
        }
        Source::Sized(f, len) => (len.div_ceil(512) * 512, Source::Sized(f, len)),
        Source::Stream(mut r) => {
            let mut first = vec![0u8; 64 << 10];
            let n = read_some(&mut r, &mut first).map_err(|e| CliError::io(&a.file, e))?;
            if n == 0 {
                let what = if a.file == "-" {
                    "standard input".to_string()
                } else {
                    a.file.clone()
                };
                return Err(CliError::invalid(format!("{what} was empty")));
            }
            first.truncate(n);
            (
                512,
                Source::Stream(Box::new(std::io::Cursor::new(first).chain(r))),
            )
        }
    };
    let opts = CreateOptions {
        size,
        order: a.order,
        features,
    };
    let img = ctx.store.create(&spec, &opts)?;
    let no_sync = a.copy.no_sync;
    let progress = ctx.progress();
    let result = if no_sync {
        ctx.store.mark_unsynced(&spec)
    } else {
        Ok(())
    }
    .and_then(|()| match source {
        Source::Sized(f, len) => transfer::import_file(&f, len, &img, &progress),
        Source::Stream(r) => transfer::import_stream(r, &img, &progress).map(|_| ()),
    })
    .and_then(|_| {
        if no_sync {
            img.flush_unsynced()
        } else {
            img.flush()
        }
    });
    drop(progress);
    if let Err(e) = result {
        // Leave the pool as it was: remove the half-imported image.
        drop(img);
        if let Err(e2) = ctx.store.remove(&spec) {
            ctx.warn(format!("could not remove the partial image {spec}: {e2}"));
        }
        return Err(e.into());
    }
    if no_sync {
        super::convert::settle_later(ctx);
    }
    Ok(())
}

/// `import FILE` without SPEC: the file's base name in the default pool,
/// as in rbd.
pub fn default_import_spec(file: &str) -> Result<ImageSpec> {
    if file == "-" {
        return Err(CliError::invalid(
            "name the image to create when importing standard input: `vdisk import - [POOL/]IMAGE`",
        ));
    }
    let name = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::invalid(format!("cannot derive an image name from {file:?}")))?;
    image_spec(name)
}

fn open_source(file: &str) -> Result<Source> {
    if file == "-" {
        return Ok(Source::Stream(Box::new(std::io::stdin())));
    }
    let mut f = File::open(file).map_err(|e| CliError::io(format!("opening {file}"), e))?;
    let meta = f
        .metadata()
        .map_err(|e| CliError::io(format!("reading {file}"), e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(CliError::invalid(format!("{file} is a directory")));
    }
    if ft.is_file() {
        return Ok(Source::Sized(f, meta.len()));
    }
    if ft.is_block_device() {
        // A block device's metadata length is 0: ask the device.
        let len = f
            .seek(SeekFrom::End(0))
            .map_err(|e| CliError::io(format!("sizing {file}"), e))?;
        return Ok(Source::Sized(f, len));
    }
    Ok(Source::Stream(Box::new(f)))
}

/// Reads until `buf` is full or end of input; returns the bytes read.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn export(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let spec = any_spec(&a.spec)?;
    // Open the image first: a missing image must not leave an empty file.
    let img = ctx.store.open(&spec)?;
    if a.file == "-" {
        ctx.not_in_daemon(
            "exporting to standard output",
            &nbd_hint(&spec.to_string(), false),
        )?;
    } else {
        ctx.path(&a.file)?;
    }
    let progress = ctx.progress();
    if a.file == "-" {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            return Err(
                CliError::invalid("refusing to write raw image bytes to a terminal")
                    .with_hint("redirect standard output to a file or a pipe"),
            );
        }
        return Ok(transfer::export_stream(&img, stdout.lock(), &progress)?);
    }
    let path = Path::new(&a.file);
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(CliError::invalid(format!("{} is a directory", a.file))),
        Ok(_) if !a.force => Err(CliError::new(
            vdisk_engine::ErrorKind::AlreadyExists,
            format!("{} already exists", a.file),
        )
        .with_hint("pass --force to overwrite it")),
        Ok(m) if m.is_file() => {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| CliError::io(format!("opening {}", a.file), e))?;
            Ok(transfer::export_file(&img, &f, &progress)?)
        }
        Ok(m) => export_to_device(&img, path, m.file_type().is_block_device(), &progress),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| CliError::io(format!("creating {}", a.file), e))?;
            let r = transfer::export_file(&img, &f, &progress);
            if r.is_err() {
                drop(f);
                let _ = std::fs::remove_file(path);
            }
            Ok(r?)
        }
        Err(e) => Err(CliError::io(format!("examining {}", a.file), e)),
    }
}

/// Export onto a block or character device: every byte is written (zeros
/// too: a device's old contents are not zero, incident 1), nothing is
/// truncated.
fn export_to_device(
    img: &Image,
    path: &Path,
    block: bool,
    progress: &dyn vdisk_engine::Progress,
) -> Result<()> {
    let shown = path.display();
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CliError::io(format!("opening {shown}"), e))?;
    if block {
        let dev = f
            .seek(SeekFrom::End(0))
            .map_err(|e| CliError::io(format!("sizing {shown}"), e))?;
        if dev < img.size() {
            return Err(CliError::invalid(format!(
                "{shown} holds {dev} bytes, less than the {} bytes of {}",
                img.size(),
                img.spec()
            )));
        }
        f.seek(SeekFrom::Start(0))
            .map_err(|e| CliError::io(format!("seeking {shown}"), e))?;
    }
    transfer::export_stream(img, &f, progress)?;
    if block {
        f.sync_all()
            .map_err(|e| CliError::io(format!("syncing {shown}"), e))?;
    }
    Ok(())
}
