//! SQLite's heap, shared by every connection of the process, and each running sync's share
//! of it.

/// SQLite's heap (page caches, sorters) is one pool for every connection of the process,
/// and a connection's cache grows into whatever the others leave unused: without a limit a
/// single big sync keeps taking pages as long as it touches new ones. The soft heap limit
/// makes SQLite recycle its own pages instead, and it follows the number of running syncs:
/// memory grows with how many syncs run at once, never with how big one is.
const HEAP_PER_RUNNING_SYNC: i64 = 4 * 1024 * 1024;
/// The heap kept for reads whatever the syncs: the page caches of the request pool's
/// connections. With less, a read misses its cache and reads its pages from the file on
/// every call (the `reads` benchmark gained a third with it).
const HEAP_FOR_READS: i64 = 16 * 1024 * 1024;

/// Syncs staging on SQLite in this process, whatever the database file: the heap is shared.
static RUNNING_SYNCS: std::sync::Mutex<i64> = std::sync::Mutex::new(0);

/// One running sync's share of SQLite's heap, given back when the staging is dropped,
/// whichever way the sync ends.
pub(super) struct HeapShare;

impl HeapShare {
    pub(super) fn claim() -> HeapShare {
        HeapShare::adjust(1);
        HeapShare
    }

    /// Changes the count and sets the limit under one lock, so that the last limit set
    /// always matches the count.
    pub(super) fn adjust(change: i64) {
        let mut running = RUNNING_SYNCS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *running += change;
        // Reads between syncs get one share too.
        let limit = HEAP_FOR_READS + HEAP_PER_RUNNING_SYNC * *running;
        // SAFETY: sets a process-wide integer under SQLite's own mutex; no pointer is passed
        // and it may be called from any thread at any time.
        unsafe {
            libsqlite3_sys::sqlite3_soft_heap_limit64(limit);
        }
    }
}

impl Drop for HeapShare {
    fn drop(&mut self) {
        HeapShare::adjust(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit SQLite holds now (a negative argument only reads it).
    fn heap_limit() -> i64 {
        // SAFETY: as in `HeapShare::adjust`.
        unsafe { libsqlite3_sys::sqlite3_soft_heap_limit64(-1) }
    }

    #[test]
    fn the_heap_limit_follows_the_running_syncs() {
        // No other test of this binary stages on SQLite, so the counts are this test's.
        let first = HeapShare::claim();
        let second = HeapShare::claim();
        assert_eq!(heap_limit(), HEAP_FOR_READS + 2 * HEAP_PER_RUNNING_SYNC);
        drop(first);
        assert_eq!(heap_limit(), HEAP_FOR_READS + HEAP_PER_RUNNING_SYNC);
        drop(second);
        // Reads keep their share between syncs.
        assert_eq!(heap_limit(), HEAP_FOR_READS);
    }
}
