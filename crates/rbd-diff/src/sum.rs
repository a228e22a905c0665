//! The integrity sidecar `FILE.vdisk-sum`: a small JSON document beside a
//! diff (or image export) naming the image and snapshots it was made
//! from, with a crc32c per 4 MiB of the file and the sha256 of all of it.
//!
//! Why beside the file and not inside it: the diff stays byte for byte
//! what `rbd export-diff` writes, so every Ceph release reads it (v1
//! records carry no length, so a reader cannot skip an unknown record, and
//! `rbd merge-diff` stops at the first tag it does not know). A sidecar
//! can also be checked completely *before* a single byte is applied, and
//! lost without losing the diff. See ARCHITECTURE.md, `vdisk-rbd-diff`.
//!
//! ```json
//! {
//!   "format": "vdisk-diff-sum", "version": 1, "stream": "rbd diff v1",
//!   "image": {"pool": "rbd", "name": "vm1", "id": "2a"},
//!   "from_snap": {"name": "s1", "size": 8388608},
//!   "to_snap": {"name": "s2", "size": 12582912},
//!   "size": 12582912,
//!   "before_sha256": "…",
//!   "length": 4166, "chunk_size": 4194304,
//!   "crc32c": ["5f0e3c1a"], "sha256": "…"
//! }
//! ```
//!
//! `before_sha256` (diffs with a from-snapshot only) is the sha256 of what
//! the from-snapshot held in the ranges the diff's records cover, in
//! record order (ranges clipped to the from-snapshot's size): the target
//! must read the same there before the diff is applied, which catches a
//! diff applied to the wrong image or to a head that moved on.
//! Unknown fields are ignored; a newer `version` is refused.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `format` of a sidecar.
pub const SUM_FORMAT: &str = "vdisk-diff-sum";
/// The sidecar version this build writes and reads.
pub const SUM_VERSION: u32 = 1;
/// Bytes per crc32c.
pub const SUM_CHUNK: u64 = 4 << 20;
/// Appended to the diff's file name.
pub const SUM_SUFFIX: &str = ".vdisk-sum";

/// The image a stream was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIdentity {
    pub pool: String,
    pub name: String,
    /// The image's id in its store (hex); survives renames.
    pub id: String,
}

/// A snapshot at one end of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapIdentity {
    pub name: String,
    /// The image size in that snapshot (unknown for a merged diff whose
    /// inputs had no sidecar).
    #[serde(default)]
    pub size: Option<u64>,
}

/// The sidecar document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumFile {
    pub format: String,
    pub version: u32,
    /// `rbd diff v1` or `rbd image v2`.
    pub stream: String,
    /// Unknown for a merged diff whose inputs had no sidecar.
    #[serde(default)]
    pub image: Option<ImageIdentity>,
    #[serde(default)]
    pub from_snap: Option<SnapIdentity>,
    /// None: the diff ends at the image head (or it is a whole-image export).
    #[serde(default)]
    pub to_snap: Option<SnapIdentity>,
    /// The image size at the end.
    pub size: u64,
    #[serde(default)]
    pub before_sha256: Option<String>,
    /// Length of the file in bytes.
    pub length: u64,
    pub chunk_size: u64,
    /// crc32c of each `chunk_size` bytes (the last chunk may be shorter),
    /// 8 hex digits each.
    pub crc32c: Vec<String>,
    /// sha256 of the whole file, 64 hex digits.
    pub sha256: String,
}

/// A sidecar that cannot be used, or a file that does not match it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SumError {
    #[error("it is not a vdisk checksum file: {0}")]
    Parse(String),
    #[error("its format is {0:?}, not {SUM_FORMAT:?}")]
    Format(String),
    #[error("it has version {0}; this build reads up to version {SUM_VERSION}")]
    Version(u32),
    #[error("it is inconsistent: {0}")]
    Inconsistent(String),
    #[error("the file is {actual} bytes long, but its checksum file says {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("bytes {start}..{end} of the file are damaged (crc32c {actual}, expected {expected})")]
    Chunk {
        start: u64,
        end: u64,
        expected: String,
        actual: String,
    },
    #[error("the file's sha256 is {actual}, but its checksum file says {expected}")]
    Sha256 { expected: String, actual: String },
}

/// Checksums of a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub length: u64,
    pub crc32c: Vec<u32>,
    pub sha256: [u8; 32],
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Computes [`Sums`] over bytes fed in any pieces.
#[derive(Clone)]
pub struct Summer {
    chunk: u64,
    sha: Sha256,
    crc: u32,
    in_chunk: u64,
    crcs: Vec<u32>,
    length: u64,
}

impl std::fmt::Debug for Summer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Summer({} bytes)", self.length)
    }
}

impl Default for Summer {
    fn default() -> Self {
        Self::new()
    }
}

impl Summer {
    /// Chunks of [`SUM_CHUNK`] bytes.
    pub fn new() -> Self {
        Self::with_chunk(SUM_CHUNK)
    }

    /// Chunks of `chunk` bytes (> 0).
    pub fn with_chunk(chunk: u64) -> Self {
        Summer {
            chunk: chunk.max(1),
            sha: Sha256::new(),
            crc: 0,
            in_chunk: 0,
            crcs: Vec::new(),
            length: 0,
        }
    }

    pub fn update(&mut self, mut b: &[u8]) {
        self.sha.update(b);
        self.length += b.len() as u64;
        while !b.is_empty() {
            let n = ((self.chunk - self.in_chunk).min(b.len() as u64)) as usize;
            self.crc = crc32c::crc32c_append(self.crc, &b[..n]);
            self.in_chunk += n as u64;
            b = &b[n..];
            if self.in_chunk == self.chunk {
                self.crcs.push(self.crc);
                self.crc = 0;
                self.in_chunk = 0;
            }
        }
    }

    /// Bytes seen so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn finish(mut self) -> Sums {
        if self.in_chunk > 0 {
            self.crcs.push(self.crc);
        }
        Sums {
            length: self.length,
            crc32c: self.crcs,
            sha256: self.sha.finalize().into(),
        }
    }
}

/// A sha256 fed in pieces (for `before_sha256`).
#[derive(Clone, Default)]
pub struct Fingerprint(Sha256);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint")
    }
}

impl Fingerprint {
    pub fn new() -> Self {
        Fingerprint(Sha256::new())
    }

    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// 64 hex digits.
    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize())
    }
}

impl SumFile {
    /// A sidecar for a file with checksums `sums`.
    pub fn new(
        stream: &str,
        image: Option<ImageIdentity>,
        from_snap: Option<SnapIdentity>,
        to_snap: Option<SnapIdentity>,
        size: u64,
        before_sha256: Option<String>,
        sums: &Sums,
    ) -> Self {
        SumFile {
            format: SUM_FORMAT.into(),
            version: SUM_VERSION,
            stream: stream.into(),
            image,
            from_snap,
            to_snap,
            size,
            before_sha256,
            length: sums.length,
            chunk_size: SUM_CHUNK,
            crc32c: sums.crc32c.iter().map(|c| format!("{c:08x}")).collect(),
            sha256: hex(&sums.sha256),
        }
    }

    /// Pretty JSON and a newline.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses and validates a sidecar (not yet against a file).
    pub fn parse(text: &str) -> Result<SumFile, SumError> {
        // The format and version first: a newer version may have changed
        // the rest.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u32>,
        }
        let head: Head = serde_json::from_str(text).map_err(|e| SumError::Parse(e.to_string()))?;
        match head.format {
            Some(f) if f == SUM_FORMAT => {}
            Some(f) => return Err(SumError::Format(f)),
            None => return Err(SumError::Parse("no \"format\" field".into())),
        }
        match head.version {
            Some(v) if v > SUM_VERSION => return Err(SumError::Version(v)),
            Some(_) => {}
            None => return Err(SumError::Parse("no \"version\" field".into())),
        }
        let s: SumFile = serde_json::from_str(text).map_err(|e| SumError::Parse(e.to_string()))?;
        if !(4096..=1 << 30).contains(&s.chunk_size) {
            return Err(SumError::Inconsistent(format!(
                "chunk_size {} is outside 4096..=2^30",
                s.chunk_size
            )));
        }
        if s.crc32c.len() as u64 != s.length.div_ceil(s.chunk_size) {
            return Err(SumError::Inconsistent(format!(
                "{} crc32c values for {} bytes in chunks of {}",
                s.crc32c.len(),
                s.length,
                s.chunk_size
            )));
        }
        let is_hex = |h: &str, n: usize| h.len() == n && h.bytes().all(|c| c.is_ascii_hexdigit());
        if !s.crc32c.iter().all(|c| is_hex(c, 8)) {
            return Err(SumError::Inconsistent(
                "a crc32c value is not 8 hex digits".into(),
            ));
        }
        if !is_hex(&s.sha256, 64) || s.before_sha256.as_deref().is_some_and(|b| !is_hex(b, 64)) {
            return Err(SumError::Inconsistent(
                "a sha256 value is not 64 hex digits".into(),
            ));
        }
        Ok(s)
    }

    /// A [`Summer`] with this sidecar's chunk size.
    pub fn summer(&self) -> Summer {
        Summer::with_chunk(self.chunk_size)
    }

    /// Checks `sums` (of the file, computed with chunks of
    /// `self.chunk_size`: see [`SumFile::summer`]) against the sidecar.
    pub fn check(&self, sums: &Sums) -> Result<(), SumError> {
        if sums.length != self.length {
            return Err(SumError::Length {
                expected: self.length,
                actual: sums.length,
            });
        }
        for (i, (want, got)) in self.crc32c.iter().zip(&sums.crc32c).enumerate() {
            let got = format!("{got:08x}");
            if !want.eq_ignore_ascii_case(&got) {
                let start = i as u64 * self.chunk_size;
                return Err(SumError::Chunk {
                    start,
                    end: (start + self.chunk_size).min(self.length),
                    expected: want.clone(),
                    actual: got,
                });
            }
        }
        let sha = hex(&sums.sha256);
        if !self.sha256.eq_ignore_ascii_case(&sha) {
            return Err(SumError::Sha256 {
                expected: self.sha256.clone(),
                actual: sha,
            });
        }
        Ok(())
    }
}
