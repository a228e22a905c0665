//! `merge-diff`: two consecutive v1 diffs (A: S1→S2, B: S2→S3) into one
//! (S1→S3) that does to an image what applying A then B does, streaming
//! (nothing is held in memory but the current extent of each input).
//!
//! As `rbd merge-diff`, the inputs' extents must ascend (as `export-diff`
//! writes them). Where B has an extent, B wins and A's bytes there are
//! skipped; A's extents elsewhere are kept. The size is B's. When B grew
//! the image beyond A's size, `[A size, B size)` is zeroed where B has no
//! extent: applying A then B shrinks the image to A's size first, so that
//! range reads as zeros whatever the base held there. When B shrank it,
//! A's extents beyond B's size are dropped.

use crate::decode::{Event, StreamKind};
use crate::encode::{DiffEncoder, DiffHeader};
use crate::read::{DiffReader, ReadError};
use std::fmt;
use std::io::{Read, Write};

/// Which input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    First,
    Second,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::First => "the first diff",
            Which::Second => "the second diff",
        })
    }
}

/// Why two diffs could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{which}: {source}")]
    Read {
        which: Which,
        #[source]
        source: ReadError,
    },
    #[error("writing the merged diff: {0}")]
    Write(#[source] std::io::Error),
    #[error("the first diff ends at {first_to} but the second starts from {second_from}; only consecutive diffs merge")]
    NotAChain {
        first_to: String,
        second_from: String,
    },
    #[error("{0} has no size record ('s'); merging needs both sizes")]
    MissingSize(Which),
    #[error("{which} is not in ascending order: an extent at {offset} follows one ending at {previous_end}")]
    Unordered {
        which: Which,
        offset: u64,
        previous_end: u64,
    },
}

/// What the merged diff is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    pub from_snap: Option<String>,
    pub to_snap: Option<String>,
    pub size: u64,
    /// Bytes written.
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Zero,
    /// Beyond the final size: the first diff's extents here vanish.
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Ext {
    kind: Kind,
    off: u64,
    len: u64,
}

impl Ext {
    fn end(&self) -> u64 {
        self.off + self.len
    }
}

struct Header {
    from: Option<String>,
    to: Option<String>,
    size: u64,
}

struct Input<R> {
    r: DiffReader<R>,
    which: Which,
    first_ext: Option<Ext>,
    ended: bool,
    tail: Option<Ext>,
    last_end: u64,
}

impl<R: Read> Input<R> {
    fn err(&self, e: ReadError) -> MergeError {
        MergeError::Read {
            which: self.which,
            source: e,
        }
    }

    /// Reads the metadata records, up to the first extent.
    fn header(&mut self) -> Result<Header, MergeError> {
        let (mut from, mut to, mut size) = (None, None, None);
        loop {
            let ev = self.r.next_event().map_err(|e| self.err(e))?;
            match ev {
                Some(Event::FromSnap(s)) => from = Some(s),
                Some(Event::ToSnap(s)) => to = Some(s),
                Some(Event::Size(s)) => size = Some(s),
                Some(Event::Write { offset, len }) => {
                    self.first_ext = Some(self.ext(Kind::Write, offset, len)?);
                    break;
                }
                Some(Event::Zero { offset, len }) => {
                    self.first_ext = Some(self.ext(Kind::Zero, offset, len)?);
                    break;
                }
                Some(Event::DiffEnd) => {
                    self.finish_stream()?;
                    break;
                }
                // DiffStart, Protected (v1 never has it), Skipped.
                Some(_) => {}
                None => break,
            }
        }
        let size = size.ok_or(MergeError::MissingSize(self.which))?;
        Ok(Header { from, to, size })
    }

    fn ext(&mut self, kind: Kind, off: u64, len: u64) -> Result<Ext, MergeError> {
        if off < self.last_end {
            return Err(MergeError::Unordered {
                which: self.which,
                offset: off,
                previous_end: self.last_end,
            });
        }
        self.last_end = off + len;
        Ok(Ext { kind, off, len })
    }

    /// After `e`: the input must end there.
    fn finish_stream(&mut self) -> Result<(), MergeError> {
        self.ended = true;
        self.r.next_event().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The next non-empty extent (then the tail once), `None` at the end.
    fn next_ext(&mut self) -> Result<Option<Ext>, MergeError> {
        if let Some(e) = self.first_ext.take() {
            if e.len > 0 {
                return Ok(Some(e));
            }
        }
        while !self.ended {
            match self.r.next_event().map_err(|e| self.err(e))? {
                Some(Event::Write { offset, len }) if len > 0 => {
                    return self.ext(Kind::Write, offset, len).map(Some)
                }
                Some(Event::Zero { offset, len }) if len > 0 => {
                    return self.ext(Kind::Zero, offset, len).map(Some)
                }
                Some(Event::DiffEnd) => self.finish_stream()?,
                Some(_) => {}
                None => self.ended = true,
            }
        }
        Ok(self.tail.take().filter(|t| t.len > 0))
    }

    /// Writes the first `d` bytes of `e` to the output (data copied);
    /// returns what is left of it.
    fn emit<W: Write>(
        &mut self,
        e: Ext,
        d: u64,
        o: &mut Output<W>,
        enc: &mut DiffEncoder,
        scratch: &mut [u8],
    ) -> Result<Option<Ext>, MergeError> {
        match e.kind {
            Kind::Write => {
                o.record(|b| enc.write_header(e.off, d, b))?;
                let mut left = d;
                while left > 0 {
                    let n = (scratch.len() as u64).min(left) as usize;
                    self.r
                        .read_data_exact(&mut scratch[..n])
                        .map_err(|err| self.err(err))?;
                    o.data(&scratch[..n])?;
                    left -= n as u64;
                }
            }
            Kind::Zero => o.record(|b| enc.zero(e.off, d, b))?,
            Kind::Drop => {}
        }
        Ok(rest(e, d))
    }

    /// Drops the first `d` bytes of `e` (data read and discarded).
    fn skip(&mut self, e: Ext, d: u64, scratch: &mut [u8]) -> Result<Option<Ext>, MergeError> {
        if e.kind == Kind::Write {
            let mut left = d;
            while left > 0 {
                let n = (scratch.len() as u64).min(left) as usize;
                self.r
                    .read_data_exact(&mut scratch[..n])
                    .map_err(|err| self.err(err))?;
                left -= n as u64;
            }
        }
        Ok(rest(e, d))
    }
}

/// What is left of `e` after its first `d` bytes.
fn rest(e: Ext, d: u64) -> Option<Ext> {
    (d < e.len).then_some(Ext {
        kind: e.kind,
        off: e.off + d,
        len: e.len - d,
    })
}

/// Buffered output that counts bytes.
struct Output<W> {
    w: W,
    buf: Vec<u8>,
    bytes: u64,
}

impl<W: Write> Output<W> {
    fn record(
        &mut self,
        f: impl FnOnce(&mut Vec<u8>) -> Result<(), crate::EncodeError>,
    ) -> Result<(), MergeError> {
        // The inputs were checked against their sizes and the merged
        // extents stay within the second's: encoding cannot fail.
        f(&mut self.buf).map_err(|e| {
            MergeError::Write(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        self.maybe_flush()
    }

    fn data(&mut self, b: &[u8]) -> Result<(), MergeError> {
        self.buf.extend_from_slice(b);
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), MergeError> {
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MergeError> {
        self.w.write_all(&self.buf).map_err(MergeError::Write)?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

fn describe_end(to: &Option<String>) -> String {
    match to {
        Some(s) => format!("snapshot {s:?}"),
        None => "the image head".into(),
    }
}

fn describe_start(from: &Option<String>) -> String {
    match from {
        Some(s) => format!("snapshot {s:?}"),
        None => "an empty image".into(),
    }
}

/// Merges `first` (S1→S2) and `second` (S2→S3), both v1 diffs, into
/// `out` (S1→S3, v1). On error, `out` holds a partial diff the caller
/// should delete.
pub fn merge_diffs<A: Read, B: Read, W: Write>(
    first: A,
    second: B,
    out: W,
) -> Result<MergeSummary, MergeError> {
    let mut f = Input {
        r: DiffReader::new(first, StreamKind::DiffV1),
        which: Which::First,
        first_ext: None,
        ended: false,
        tail: None,
        last_end: 0,
    };
    let mut s = Input {
        r: DiffReader::new(second, StreamKind::DiffV1),
        which: Which::Second,
        first_ext: None,
        ended: false,
        tail: None,
        last_end: 0,
    };
    let fh = f.header()?;
    let sh = s.header()?;
    // rbd compares the names as strings ("" for none); so do we.
    if fh.to != sh.from {
        return Err(MergeError::NotAChain {
            first_to: describe_end(&fh.to),
            second_from: describe_start(&sh.from),
        });
    }
    if sh.size > fh.size {
        f.tail = Some(Ext {
            kind: Kind::Zero,
            off: fh.size,
            len: sh.size - fh.size,
        });
    } else if fh.size > sh.size {
        s.tail = Some(Ext {
            kind: Kind::Drop,
            off: sh.size,
            len: fh.size - sh.size,
        });
    }
    let header = DiffHeader {
        from_snap: fh.from.clone(),
        to_snap: sh.to.clone(),
        protected: None,
        size: sh.size,
    };
    let mut enc = DiffEncoder::v1();
    let mut o = Output {
        w: out,
        buf: Vec::new(),
        bytes: 0,
    };
    o.record(|b| enc.header(&header, b))?;
    let mut scratch = vec![0u8; 256 << 10];
    let (mut fe, mut se) = (None::<Ext>, None::<Ext>);
    loop {
        if fe.is_none() {
            fe = f.next_ext()?;
        }
        if se.is_none() {
            se = s.next_ext()?;
        }
        match (fe, se) {
            (None, None) => break,
            (Some(a), None) => fe = f.emit(a, a.len, &mut o, &mut enc, &mut scratch)?,
            (None, Some(b)) => se = s.emit(b, b.len, &mut o, &mut enc, &mut scratch)?,
            // B's extent comes first, whole.
            (Some(a), Some(b)) if a.off >= b.end() => {
                se = s.emit(b, b.len, &mut o, &mut enc, &mut scratch)?
            }
            // A's bytes before B's extent survive.
            (Some(a), Some(b)) if a.off < b.off => {
                let d = a.len.min(b.off - a.off);
                fe = f.emit(a, d, &mut o, &mut enc, &mut scratch)?;
            }
            // A's bytes under B's extent are overwritten by it.
            (Some(a), Some(b)) => {
                let d = a.len.min(b.end() - a.off);
                fe = f.skip(a, d, &mut scratch)?;
            }
        }
    }
    o.record(|b| enc.end(b))?;
    o.flush()?;
    o.w.flush().map_err(MergeError::Write)?;
    Ok(MergeSummary {
        from_snap: header.from_snap,
        to_snap: header.to_snap,
        size: header.size,
        bytes: o.bytes,
    })
}
