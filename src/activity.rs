//! What the server is doing right now: syncs in flight and the products they have received.
//! Operators read it as a gauge; tests wait on it instead of sleeping ("the server has
//! received 10,000 products, cancel now").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A moment's view of the work in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivitySnapshot {
    /// Syncs whose stream is open or whose merge is running.
    pub syncs_in_flight: u64,
    /// Products received by those syncs so far.
    pub products_in_flight: u64,
    /// Of those syncs, the ones whose upload is complete: they are checking and merging.
    pub syncs_merging: u64,
    /// Syncs whose client still waits for the answer: its call is open. A sync in flight
    /// that is not awaited was abandoned, and its worker is winding down.
    pub syncs_awaited: u64,
}

/// Shared tracker of work in flight.
#[derive(Debug, Clone)]
pub struct Activity {
    state: Arc<watch::Sender<ActivitySnapshot>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            state: Arc::new(watch::Sender::new(ActivitySnapshot::default())),
        }
    }
}

impl Activity {
    /// The current view.
    pub fn snapshot(&self) -> ActivitySnapshot {
        *self.state.borrow()
    }

    /// Waits until `condition` holds for the view, at most `deadline`; past it, the last
    /// view seen is the error, so a test that waits on the server fails by name instead of
    /// hanging the run.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        condition: impl FnMut(&ActivitySnapshot) -> bool,
    ) -> Result<(), ActivitySnapshot> {
        let mut receiver = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        match tokio::time::timeout(deadline, receiver.wait_for(condition)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.snapshot()),
        }
    }

    /// Counts a sync as in flight until the returned guard is dropped.
    pub fn start_sync(&self) -> SyncInFlight {
        self.state.send_modify(|state| state.syncs_in_flight += 1);
        SyncInFlight {
            activity: self.clone(),
            products: 0,
            merging: false,
        }
    }
}

/// A sync's open call: counted as awaited until dropped (when the handler ends or the client
/// goes away).
#[derive(Debug)]
pub struct SyncAwaited {
    activity: Activity,
}

impl Activity {
    /// Counts a sync as awaited by its client until the returned guard is dropped.
    pub fn await_sync(&self) -> SyncAwaited {
        self.state.send_modify(|state| state.syncs_awaited += 1);
        SyncAwaited {
            activity: self.clone(),
        }
    }
}

impl Drop for SyncAwaited {
    fn drop(&mut self) {
        self.activity
            .state
            .send_modify(|state| state.syncs_awaited -= 1);
    }
}

/// One sync in flight; dropping it takes the sync and its products off the books.
#[derive(Debug)]
pub struct SyncInFlight {
    activity: Activity,
    products: u64,
    merging: bool,
}

impl SyncInFlight {
    /// Records that the sync received `count` more products.
    pub fn received(&mut self, count: u64) {
        self.products += count;
        self.activity
            .state
            .send_modify(|state| state.products_in_flight += count);
    }
}

impl SyncInFlight {
    /// Records that the sync's upload is complete and its checks and merge run.
    pub fn merging(&mut self) {
        if !self.merging {
            self.merging = true;
            self.activity
                .state
                .send_modify(|state| state.syncs_merging += 1);
        }
    }
}

impl Drop for SyncInFlight {
    fn drop(&mut self) {
        let (products, merging) = (self.products, u64::from(self.merging));
        self.activity.state.send_modify(|state| {
            state.syncs_in_flight -= 1;
            state.products_in_flight -= products;
            state.syncs_merging -= merging;
        });
    }
}
