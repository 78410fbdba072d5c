//! The running route table: swapped whole by a reload, and read by every
//! request. A request holds the table it started with to its end, so a
//! reload never changes a request half-way. Holding it is a count on the
//! table's `Arc`; with one count for the whole process, every request on
//! every worker would write the same cache line twice (arc-swap's
//! `load_full` and the drop), and the workers would pass that line back
//! and forth. So a worker thread keeps its own counted handle on the
//! current table ([`TableCell::snapshot`]), and its requests count on
//! that: a line only its thread writes.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::table::RouteTable;

/// Numbers every table any gateway of the process stores, so a thread's
/// kept handle is known to be current by its number alone (a test process
/// runs many gateways on the same threads).
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// The running table, its number, and a signal for threads that keep a
/// handle on it.
pub struct TableCell {
    current: ArcSwap<RouteTable>,
    version: AtomicU64,
    changed: watch::Sender<u64>,
}

/// A request's hold on the table it started with: a count on its
/// thread's handle, not on the table's own `Arc`.
#[derive(Clone)]
// The extra allocation is the point: its count is the thread's own.
#[allow(clippy::redundant_allocation)]
pub struct Snapshot(Arc<Arc<RouteTable>>);

impl Deref for Snapshot {
    type Target = RouteTable;
    fn deref(&self) -> &RouteTable {
        &self.0
    }
}

thread_local! {
    /// This thread's handle on the table it last read, with its number.
    static KEPT: RefCell<Option<(u64, Snapshot)>> = const { RefCell::new(None) };
}

impl TableCell {
    /// A cell holding `table`.
    pub fn new(table: Arc<RouteTable>) -> TableCell {
        let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        TableCell {
            current: ArcSwap::new(table),
            version: AtomicU64::new(version),
            changed: watch::Sender::new(version),
        }
    }

    /// Make `table` the running one. Requests that started before keep
    /// theirs; threads that keep a handle are told, so an idle one lets an
    /// old table (and its scrapers) go without waiting for its next request.
    pub fn store(&self, table: Arc<RouteTable>) {
        self.current.store(table);
        // After the table: a reader that sees the new number reads the
        // new table (one that reads the old number and the new table
        // reads again next time).
        let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        self.version.store(version, Ordering::Release);
        self.changed.send_replace(version);
    }

    /// The running table, counted on its own `Arc` (admin, reloads: not
    /// the request path).
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// A short look at the running table, for a read that does not await.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// The running table for a request, counted on this thread's handle.
    /// The first request after a swap makes the thread's new handle.
    pub fn snapshot(&self) -> Snapshot {
        let version = self.version.load(Ordering::Acquire);
        let fresh = || Snapshot(Arc::new(self.current.load_full()));
        let Ok(kept) = KEPT.try_with(|kept| {
            let Ok(mut kept) = kept.try_borrow_mut() else {
                return (fresh(), None);
            };
            if let Some((v, snapshot)) = kept.as_ref() {
                if *v == version {
                    return (snapshot.clone(), None);
                }
            }
            let snapshot = fresh();
            // The old handle is dropped after the borrow ends: dropping
            // the last count on a table stops its scrapers.
            let old = kept.replace((version, snapshot.clone()));
            (snapshot, old)
        }) else {
            // The thread is exiting: no handle to keep.
            return fresh();
        };
        let (snapshot, old) = kept;
        drop(old);
        snapshot
    }

    /// Told of every swap: threads that keep a handle drop it then
    /// ([`forget_kept`]).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Drop this thread's handle on a table (after a swap: an idle worker
/// would otherwise hold the old table until its next request).
pub fn forget_kept() {
    let old = KEPT
        .try_with(|kept| kept.try_borrow_mut().ok().and_then(|mut k| k.take()))
        .ok()
        .flatten();
    drop(old);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of its own (told apart from another by address).
    fn table() -> Arc<RouteTable> {
        crate::proxy::one_node_gateway().table()
    }

    /// Whether `snapshot` holds `table`.
    fn holds(snapshot: &Snapshot, table: &Arc<RouteTable>) -> bool {
        Arc::ptr_eq(&*snapshot.0, table)
    }

    #[test]
    fn a_thread_reuses_its_handle_until_the_table_is_swapped() {
        let first = table();
        let cell = TableCell::new(Arc::clone(&first));
        let one = cell.snapshot();
        let two = cell.snapshot();
        assert!(Arc::ptr_eq(&one.0, &two.0), "the thread's handle is reused");
        // Counts on the table: the cell's, the thread's handle's, this one.
        assert_eq!(Arc::strong_count(&first), 3);
        let second = table();
        cell.store(Arc::clone(&second));
        let three = cell.snapshot();
        assert!(holds(&three, &second), "a swap is seen at once");
        assert!(holds(&one, &first), "a request keeps its table");
        assert_eq!(Arc::strong_count(&first), 2, "held by the requests");
        drop((one, two));
        assert_eq!(Arc::strong_count(&first), 1, "the old table is let go");
    }

    #[test]
    fn forgetting_lets_an_idle_thread_release_the_table() {
        let first = table();
        let cell = TableCell::new(Arc::clone(&first));
        drop(cell.snapshot());
        assert_eq!(Arc::strong_count(&first), 3, "cell, handle, here");
        cell.store(table());
        assert_eq!(Arc::strong_count(&first), 2, "the thread still keeps it");
        forget_kept();
        assert_eq!(Arc::strong_count(&first), 1);
    }

    #[test]
    fn two_cells_on_one_thread_never_mix_their_tables() {
        let (first, second) = (table(), table());
        let a = TableCell::new(Arc::clone(&first));
        let b = TableCell::new(Arc::clone(&second));
        for _ in 0..3 {
            assert!(holds(&a.snapshot(), &first));
            assert!(holds(&b.snapshot(), &second));
        }
    }
}
