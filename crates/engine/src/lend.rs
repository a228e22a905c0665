//! Reads whose data is lent, not copied ([`crate::Image::read_lent`]), and
//! the book that keeps the engine from releasing lent data.
//!
//! An NBD server that reads a large range into a buffer and then writes the
//! buffer to a socket has the kernel copy every byte twice (page cache to
//! buffer, buffer to socket). With the data lent by the object store (a
//! mapping of the page cache, [`vdisk_storage::Lent`]) the kernel copies it
//! once, from the page cache straight to the socket.
//!
//! The catch: a lent range is read when the reply is *sent*, after the
//! engine's locks were released. Writes and discards of the range that
//! happen meanwhile are concurrent with the read, so their data may show
//! (as with any overlapping requests). But the engine must not release the
//! range for good while it is lent: a block a head write shadowed is
//! punched after the next flush (`ImageState::release_pending`), and rolled
//! back data is punched by the trimmer; a reply sent after that would carry
//! zeros the image never held. So every lent read is entered in the
//! image's [`LendBook`] while it resolves its data, and:
//! - a punch queued by the data path records the book's [`LendBook::mark`]
//!   and waits (stays queued for a later flush) until every lent read
//!   started before the mark is done ([`LendBook::done_before`]);
//! - reclaim (rollback, snapshot removal), which queues data for the
//!   trimmer under the barrier, first waits (bounded) for the lent reads
//!   started before it.
//!
//! Removals need no wait: lent bytes keep the removed file's data.

use parking_lot::{Condvar, Mutex};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_storage::Lent;

/// Where the bytes of a lent read come from, in order.
#[derive(Debug)]
pub enum Piece {
    /// Lent by the object store: hand to the kernel (see [`Lent`]).
    Lent(Lent),
    /// This many bytes that read as zero.
    Zeros(usize),
    /// Bytes read into a buffer (data the store does not lend, parent
    /// data of a clone).
    Copied(Vec<u8>),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Lent(l) => l.len(),
            Piece::Zeros(n) => *n,
            Piece::Copied(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The data of a range, as pieces; the engine releases none of the lent
/// data until this is dropped.
#[derive(Debug)]
pub struct LentRead {
    pieces: Vec<Piece>,
    _hold: LendHold,
}

impl LentRead {
    pub(crate) fn new(hold: LendHold) -> Self {
        Self {
            pieces: Vec::new(),
            _hold: hold,
        }
    }

    /// Pieces tied to no image (nothing waits for them): for code that
    /// assembles replies by hand, such as tests.
    pub fn detached(pieces: Vec<Piece>) -> Self {
        let mut r = Self::new(Arc::new(LendBook::default()).begin());
        for p in pieces {
            r.push(p);
        }
        r
    }

    /// The pieces, in order; their lengths add up to the range's.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Total length of the pieces.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Piece::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, copied into one buffer (for tests and callers that need
    /// them in user space).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for p in &self.pieces {
            match p {
                Piece::Lent(l) => out.extend_from_slice(l.as_bytes()),
                Piece::Zeros(n) => out.resize(out.len() + n, 0),
                Piece::Copied(v) => out.extend_from_slice(v),
            }
        }
        out
    }

    pub(crate) fn push(&mut self, piece: Piece) {
        if piece.is_empty() {
            return;
        }
        match (self.pieces.last_mut(), piece) {
            (Some(Piece::Zeros(a)), Piece::Zeros(b)) => *a += b,
            (_, piece) => self.pieces.push(piece),
        }
    }
}

/// The lent reads of one image that have not been dropped yet, by the
/// order they started in.
#[derive(Debug, Default)]
pub(crate) struct LendBook {
    inner: Mutex<Book>,
    /// Signalled when a lent read ends.
    ended: Condvar,
}

#[derive(Debug, Default)]
struct Book {
    next: u64,
    active: BTreeSet<u64>,
}

/// One lent read's entry in the book; ends it when dropped.
#[derive(Debug)]
pub(crate) struct LendHold {
    book: Arc<LendBook>,
    seq: u64,
}

impl Drop for LendHold {
    fn drop(&mut self) {
        self.book.inner.lock().active.remove(&self.seq);
        self.book.ended.notify_all();
    }
}

impl LendBook {
    /// Enters a lent read, before it resolves any data.
    pub(crate) fn begin(self: &Arc<Self>) -> LendHold {
        let mut b = self.inner.lock();
        let seq = b.next;
        b.next += 1;
        b.active.insert(seq);
        LendHold {
            book: Arc::clone(self),
            seq,
        }
    }

    /// Now, in the book's order: lent reads entered before this returned
    /// are those [`LendBook::done_before`] waits for.
    pub(crate) fn mark(&self) -> u64 {
        self.inner.lock().next
    }

    /// Every lent read entered before `mark` has ended.
    pub(crate) fn done_before(&self, mark: u64) -> bool {
        self.inner.lock().active.first().is_none_or(|&s| s >= mark)
    }

    /// Waits until [`LendBook::done_before`]`(mark)`, at most `limit`;
    /// returns whether it is.
    pub(crate) fn wait_before(&self, mark: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut b = self.inner.lock();
        loop {
            if b.active.first().is_none_or(|&s| s >= mark) {
                return true;
            }
            if self.ended.wait_until(&mut b, deadline).timed_out() {
                return b.active.first().is_none_or(|&s| s >= mark);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_wait_only_for_reads_entered_before_them() {
        let book = Arc::new(LendBook::default());
        let first = book.begin();
        let mark = book.mark();
        let later = book.begin();
        assert!(!book.done_before(mark));
        assert!(!book.wait_before(mark, Duration::from_millis(5)));
        drop(first);
        // `later` started after the mark: it does not hold it back.
        assert!(book.done_before(mark));
        assert!(book.wait_before(mark, Duration::ZERO));
        assert!(!book.done_before(book.mark()));
        drop(later);
        assert!(book.done_before(book.mark()));
    }

    #[test]
    fn a_wait_ends_when_the_read_ends() {
        let book = Arc::new(LendBook::default());
        let hold = book.begin();
        let mark = book.mark();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(hold);
        });
        assert!(book.wait_before(mark, Duration::from_secs(10)));
        t.join().unwrap();
    }

    #[test]
    fn adjacent_zeros_merge_and_empty_pieces_vanish() {
        let book = Arc::new(LendBook::default());
        let mut r = LentRead::new(book.begin());
        r.push(Piece::Zeros(3));
        r.push(Piece::Copied(Vec::new()));
        r.push(Piece::Zeros(2));
        r.push(Piece::Copied(vec![7, 8]));
        r.push(Piece::Zeros(1));
        assert_eq!(r.pieces().len(), 3);
        assert_eq!(r.to_vec(), vec![0, 0, 0, 0, 0, 7, 8, 0]);
        assert_eq!(r.len(), 8);
    }
}
