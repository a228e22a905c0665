//! [`DiffReader`]: the decoder over a `std::io::Read` (a file, a pipe),
//! pulled one record at a time, data payloads read in pieces into the
//! caller's buffer. The only module besides [`crate::merge`] that does I/O.

use crate::decode::{Decoder, Event, StreamKind};
use crate::error::DecodeError;
use std::io::Read;

/// A decoding or reading failure.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one stream record by record.
#[derive(Debug)]
pub struct DiffReader<R> {
    inner: R,
    dec: Decoder,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

const BUF: usize = 256 << 10;

impl<R: Read> DiffReader<R> {
    /// Reads a stream of `kind` from `inner`.
    pub fn new(inner: R, kind: StreamKind) -> Self {
        DiffReader {
            inner,
            dec: Decoder::new(kind),
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The decoder (position, state).
    pub fn decoder(&self) -> &Decoder {
        &self.dec
    }

    /// The reader underneath.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Refills the buffer when empty; false at the end of input.
    fn fill(&mut self) -> Result<bool, ReadError> {
        if self.start < self.end {
            return Ok(true);
        }
        self.start = 0;
        self.end = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => {
                    self.end = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The error for an input that ended too soon.
    fn eof(&self) -> ReadError {
        match self.dec.finish() {
            Err(e) => e.into(),
            Ok(()) => DecodeError::Truncated {
                offset: self.dec.position(),
                expected: "the stream".into(),
            }
            .into(),
        }
    }

    /// The next record; data of an earlier `Write` that was not read with
    /// [`read_data`](Self::read_data) is skipped. `None` once the stream
    /// is complete and the input ends there (bytes after the end are
    /// [`DecodeError::TrailingData`]). Never returns [`Event::Data`].
    pub fn next_event(&mut self) -> Result<Option<Event<'static>>, ReadError> {
        loop {
            if !self.fill()? {
                if self.dec.is_done() {
                    return Ok(None);
                }
                return Err(self.eof());
            }
            let (used, ev) = self.dec.feed(&self.buf[self.start..self.end])?;
            self.start += used;
            if let Some(ev) = ev.and_then(Event::into_static) {
                return Ok(Some(ev));
            }
        }
    }

    /// Reads data of the current `Write` into `out`; returns how many bytes,
    /// 0 when the record's data is all read (or outside a data record).
    pub fn read_data(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        while !out.is_empty() && self.dec.payload_remaining() > 0 {
            if !self.fill()? {
                return Err(self.eof());
            }
            let lim = (self.end - self.start).min(out.len());
            let (used, ev) = self.dec.feed(&self.buf[self.start..self.start + lim])?;
            self.start += used;
            if let Some(Event::Data { bytes, .. }) = ev {
                out[..bytes.len()].copy_from_slice(bytes);
                return Ok(bytes.len());
            }
        }
        Ok(0)
    }

    /// Fills `out` with data of the current `Write` (its length must not
    /// exceed what remains of the record).
    pub fn read_data_exact(&mut self, out: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0;
        while done < out.len() {
            let n = self.read_data(&mut out[done..])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "read past the end of a data record",
                )
                .into());
            }
            done += n;
        }
        Ok(())
    }
}
