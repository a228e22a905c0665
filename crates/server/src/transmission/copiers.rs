//! The cap on copy threads: the threads a connection starts beyond its
//! first, to receive and copy large WRITEs while another takes its turn on
//! the socket (see `transmission`, "Threads").
//!
//! The threads of all connections together are capped ([`Budget`],
//! [`COPIERS_PER_CPU`] per CPU): a copy is CPU work, so more threads than
//! that add no speed, only stacks and scheduling (the server accepts 1024
//! connections). A connection that gets no place goes on with the threads
//! it has (at least its first).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Threads per connection, its first included. Measured with 1 MiB writes
/// at QD16 on 2 CPUs (BENCHMARKS.md): 2 and 4 about the same, 16 no
/// better.
pub(crate) const COPIERS: usize = 4;

/// Copy threads of all connections together, per CPU this process may
/// use (at least [`COPIERS`] in all).
pub(crate) const COPIERS_PER_CPU: usize = 8;

/// How many copy threads may run, all connections together, and how many
/// do.
#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    live: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            live: AtomicUsize::new(0),
        }
    }

    /// A thread's place, if one is free; given back when dropped.
    pub(crate) fn place(self: &Arc<Self>) -> Option<Place> {
        self.reserve().then(|| Place(self.clone()))
    }

    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Copy threads running now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The most that may run.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// The process-wide budget.
pub(crate) fn budget() -> &'static Arc<Budget> {
    static BUDGET: OnceLock<Arc<Budget>> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Budget::new((cpus * COPIERS_PER_CPU).max(COPIERS)))
    })
}

/// Gives a thread's place back when the thread ends, however it ends.
pub(crate) struct Place(Arc<Budget>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_and_given_back() {
        let budget = Arc::new(Budget::new(2));
        let a = budget.place().expect("first place");
        let b = budget.place().expect("second place");
        assert!(budget.place().is_none(), "over the cap");
        assert_eq!((budget.live(), budget.max()), (2, 2));
        drop(a);
        assert_eq!(budget.live(), 1);
        let _c = budget.place().expect("a place given back is free again");
        drop(b);
        assert_eq!(budget.live(), 1);
    }
}
