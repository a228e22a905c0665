//! Opening an image file with its backing chain: format detection, backing
//! file name resolution (relative to the image's directory, as qemu does),
//! loop and depth checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{detect, Detected, Format, ImageRead, DETECT_LEN};
use crate::raw::RawReader;
use crate::reader::{Qcow2Reader, DEFAULT_L2_CACHE_BYTES};
use crate::storage::{read_fill, FileStorage, Storage};

/// How to open an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// The format; `None` detects it (refusing formats this crate does not
    /// read rather than treating them as raw).
    pub format: Option<Format>,
    /// Open backing files (default). Without them, unallocated clusters
    /// read as zeros.
    pub follow_backing: bool,
    /// Longest backing chain accepted, the image itself included.
    pub max_chain: u32,
    /// L2 cache budget per qcow2 layer.
    pub l2_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            follow_backing: true,
            max_chain: 64,
            l2_cache_bytes: DEFAULT_L2_CACHE_BYTES,
        }
    }
}

/// Opens `path` (and its backing chain) for reading.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Arc<dyn ImageRead>> {
    let mut chain = Vec::new();
    open_layer(path, opts.format, opts, &mut chain)
}

/// The format of the file at `path`, from its first bytes.
pub fn detect_file(path: &Path) -> Result<Detected> {
    let s = FileStorage::open(path)?;
    detect_storage(&s)
}

fn detect_storage(s: &dyn Storage) -> Result<Detected> {
    let mut first = vec![0u8; (DETECT_LEN as u64).min(s.len()) as usize];
    read_fill(s, &mut first, 0)?;
    Ok(detect(&first))
}

/// Where the backing file `name` of the image at `image` lives.
pub fn resolve_backing(image: &Path, name: &str) -> Result<PathBuf> {
    if name.starts_with("json:") || name.contains("://") {
        return Err(Error::Unsupported(format!(
            "backing file {name:?} is not a plain file name (protocols and json: are not supported)"
        )));
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(image.parent().unwrap_or(Path::new("")).join(p))
}

fn open_layer(
    path: &Path,
    format: Option<Format>,
    opts: &OpenOptions,
    chain: &mut Vec<PathBuf>,
) -> Result<Arc<dyn ImageRead>> {
    let canon = path
        .canonicalize()
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    if chain.contains(&canon) {
        let mut names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        names.push(canon.display().to_string());
        return Err(Error::BackingLoop { chain: names });
    }
    if chain.len() as u32 >= opts.max_chain {
        return Err(Error::ChainTooDeep {
            limit: opts.max_chain,
        });
    }
    chain.push(canon);
    let storage = FileStorage::open(path)?;
    let format = match format {
        Some(f) => f,
        None => match detect_storage(&storage)? {
            Detected::Format(f) => f,
            Detected::Other(name) => {
                return Err(Error::Unsupported(format!(
                    "{} is a {name} image; this build reads raw and qcow2",
                    path.display()
                )))
            }
        },
    };
    match format {
        Format::Raw => Ok(Arc::new(RawReader::new(Box::new(storage)))),
        Format::Qcow2 => {
            let mut r = Qcow2Reader::open(Box::new(storage), opts.l2_cache_bytes)?;
            if let (true, Some(name)) = (opts.follow_backing, r.backing_file().map(str::to_string))
            {
                let wrap = |source: Error| match source {
                    // Loops and depth name the whole chain already.
                    e @ (Error::BackingLoop { .. }
                    | Error::ChainTooDeep { .. }
                    | Error::Backing { .. }) => e,
                    e => Error::Backing {
                        image: path.display().to_string(),
                        name: name.clone(),
                        source: Box::new(e),
                    },
                };
                let bpath = resolve_backing(path, &name).map_err(wrap)?;
                let bformat = match r.header().backing_format.as_deref() {
                    None => None,
                    Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                        wrap(Error::Unsupported(format!("backing format {f:?}")))
                    })?),
                };
                let backing = open_layer(&bpath, bformat, opts, chain).map_err(wrap)?;
                r.set_backing(backing);
            }
            Ok(Arc::new(r))
        }
    }
}
