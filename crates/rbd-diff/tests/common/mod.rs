//! Helpers shared by the tests: decode a whole stream into owned records,
//! and a byte-vector model of an image that diffs are applied to.
#![allow(dead_code)]

use vdisk_rbd_diff::{DecodeError, Decoder, Event, StreamKind};

/// A decoded record, data records with their payload gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Ev(Event<'static>),
    Write { offset: u64, data: Vec<u8> },
}

/// Decodes `bytes` fed in pieces of `chunk` bytes (the last may be
/// shorter), then checks the end. Data pieces must be contiguous.
pub fn decode(kind: StreamKind, bytes: &[u8], chunk: usize) -> Result<Vec<Rec>, DecodeError> {
    let mut d = Decoder::new(kind);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        let mut input = piece;
        while !input.is_empty() {
            let (used, ev) = d.feed(input)?;
            assert!(used <= input.len());
            assert!(used > 0 || ev.is_some(), "no progress and no event");
            input = &input[used..];
            match ev {
                None => {}
                Some(Event::Write { offset, len }) => {
                    assert!(len < 1 << 30, "test streams have small writes");
                    out.push(Rec::Write {
                        offset,
                        data: Vec::new(),
                    })
                }
                Some(Event::Data { offset, bytes }) => match out.last_mut() {
                    Some(Rec::Write { offset: o, data }) => {
                        assert_eq!(*o + data.len() as u64, offset, "data out of place");
                        data.extend_from_slice(bytes)
                    }
                    other => panic!("data outside a write: {other:?}"),
                },
                Some(ev) => out.push(Rec::Ev(ev.into_static().expect("not data"))),
            }
        }
    }
    d.finish()?;
    Ok(out)
}

/// Decodes in every way that matters (whole, one byte at a time, odd
/// pieces) and checks all agree.
pub fn decode_all_ways(kind: StreamKind, bytes: &[u8]) -> Result<Vec<Rec>, DecodeError> {
    let whole = decode(kind, bytes, bytes.len().max(1));
    for chunk in [1, 2, 3, 7, 13, 64] {
        assert_eq!(decode(kind, bytes, chunk), whole, "chunk {chunk}");
    }
    whole
}

pub fn ev(e: Event<'static>) -> Rec {
    Rec::Ev(e)
}

pub fn w(offset: u64, data: &[u8]) -> Rec {
    Rec::Write {
        offset,
        data: data.to_vec(),
    }
}

/// An image as bytes: what applying diffs does to it, as `rbd
/// import-diff` does (resize at the size record, then the extents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model(pub Vec<u8>);

impl Model {
    pub fn apply(&mut self, recs: &[Rec]) {
        for r in recs {
            match r {
                Rec::Ev(Event::Size(s)) => self.0.resize(*s as usize, 0),
                Rec::Ev(Event::Zero { offset, len }) => {
                    let (o, l) = (*offset as usize, *len as usize);
                    self.0[o..o + l].fill(0);
                }
                Rec::Write { offset, data } => {
                    let o = *offset as usize;
                    self.0[o..o + data.len()].copy_from_slice(data);
                }
                _ => {}
            }
        }
    }
}

pub fn golden(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
