//! Exports: which names the server offers, what each resolves to, and the
//! flags it is advertised with. Everything here calls the synchronous
//! engine; callers run it on the blocking pool.

use std::error::Error as _;
use vdisk_engine::spec::DEFAULT_POOL;
use vdisk_engine::{human_size, Error, ErrorKind, Image, ImageSpec, Store};
use vdisk_nbd::{Errno, OptionError, TransmissionFlags};

/// One entry of `NBD_OPT_LIST`: a name and a human description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub name: String,
    pub description: String,
}

/// Every export name: `pool/image` and `pool/image@snap` for every image
/// and snapshot, plus the bare `image` and `image@snap` for the default
/// pool (as `rbd` and qemu's `rbd:` accept), in pool then image order.
pub(crate) fn list(store: &Store) -> vdisk_engine::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for pool in store.pool_list()? {
        for rec in store.list(&pool.name)? {
            let mut names = vec![format!("{}/{}", pool.name, rec.name)];
            if pool.name == DEFAULT_POOL {
                names.push(rec.name.clone());
            }
            for name in &names {
                out.push(Listed {
                    name: name.clone(),
                    description: format!("image, {}", human_size(rec.size)),
                });
            }
            for snap in &rec.snaps {
                for name in &names {
                    out.push(Listed {
                        name: format!("{name}@{}", snap.name),
                        description: format!("snapshot (read-only), {}", human_size(snap.size)),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Why an export name cannot be served: the option error to answer with
/// and a message for the client (which shows it to its user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub kind: OptionError,
    pub message: String,
}

/// Opens the image or snapshot an export name designates
/// (`[POOL/]IMAGE[@SNAP]`, as everywhere in vdisk).
pub(crate) fn resolve(store: &Store, name: &str) -> Result<Image, Refusal> {
    if name.is_empty() {
        return Err(Refusal {
            kind: OptionError::UnknownExport,
            message: "there is no default export: name an image, e.g. nbd://HOST/rbd/IMAGE \
                      (list them with `nbdinfo --list nbd://HOST`)"
                .into(),
        });
    }
    // A snapshot is pinned for as long as the export is open, so that
    // `snap rm` cannot release data a client is still reading.
    let opened = ImageSpec::parse(name)
        .and_then(|spec| store.open(&spec))
        .and_then(Image::pinned);
    opened.map_err(|e| {
        let kind = match e.kind() {
            ErrorKind::NotFound | ErrorKind::InvalidInput => OptionError::UnknownExport,
            // Exists but cannot be served here (unsupported features,
            // damaged metadata, I/O failure): policy, not "unknown".
            _ => OptionError::Policy,
        };
        let mut message = e.to_string();
        if let Some(hint) = e.hint() {
            message.push_str("; ");
            message.push_str(&hint);
        }
        Refusal { kind, message }
    })
}

/// The canonical name of an open export: `pool/image[@snap]`.
pub(crate) fn canonical_name(image: &Image) -> String {
    image.spec().to_string()
}

/// Transmission flags of an export.
///
/// Heads are writable with every command the engine implements. The
/// engine's flush covers every write completed on any handle of the image
/// (one shared state per image per process), so several connections are
/// safe: `CAN_MULTI_CONN`. Its zeroing is metadata-only, hence fast:
/// `SEND_FAST_ZERO` is honest. Snapshots are read-only.
pub(crate) fn flags(image: &Image) -> TransmissionFlags {
    let common = TransmissionFlags::HAS_FLAGS
        | TransmissionFlags::CAN_MULTI_CONN
        | TransmissionFlags::SEND_CACHE
        | TransmissionFlags::SEND_DF;
    if image.is_snapshot() {
        common | TransmissionFlags::READ_ONLY
    } else {
        common
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES
            | TransmissionFlags::SEND_FAST_ZERO
    }
}

/// The NBD error for an engine error. `write` selects `ENOSPC` over
/// `EINVAL` for ranges beyond the end (the spec's advice for writes; the
/// image may have shrunk since the client connected).
pub(crate) fn errno_of(e: &Error, write: bool) -> Errno {
    match e {
        Error::OutOfRange { .. } if write => Errno::NoSpc,
        Error::OutOfRange { .. } => Errno::Inval,
        Error::ReadOnly { .. } => Errno::Perm,
        _ => {
            // An OS error anywhere in the chain says best what happened
            // (ENOSPC from the filesystem must reach the guest as ENOSPC).
            let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    return Errno::from_io_error(io);
                }
                source = s.source();
            }
            match e.kind() {
                ErrorKind::InvalidInput => Errno::Inval,
                ErrorKind::Refused => Errno::Perm,
                ErrorKind::Unsupported => Errno::NotSup,
                _ => Errno::Io,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos() {
        let oor = Error::OutOfRange {
            spec: "rbd/a".into(),
            offset: 1,
            len: 2,
            size: 2,
        };
        assert_eq!(errno_of(&oor, false), Errno::Inval);
        assert_eq!(errno_of(&oor, true), Errno::NoSpc);
        let ro = Error::ReadOnly {
            spec: "rbd/a@s".into(),
        };
        assert_eq!(errno_of(&ro, true), Errno::Perm);
        let full = Error::Io {
            what: "writing".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert_eq!(errno_of(&full, true), Errno::NoSpc);
        let broken = Error::Io {
            what: "reading".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(errno_of(&broken, false), Errno::Io);
        let corrupt = Error::Corrupt {
            what: "x".into(),
            detail: "y".into(),
        };
        assert_eq!(errno_of(&corrupt, false), Errno::Io);
    }
}
