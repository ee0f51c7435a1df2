//! Which syncs may run, so that no store or token can take the service from the others.
//!
//! A sync is first counted against its store and its token: over either limit it is refused
//! at once, before it costs a history row or a connection. Then it waits, a bounded time, for
//! one of the server's turns. Every count is given back when the returned guard drops,
//! however the sync ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{SyncError, SyncLimits};

/// Counts the running syncs and hands out turns.
#[derive(Debug, Clone)]
pub struct Admission {
    turns: Arc<Semaphore>,
    running: Arc<Mutex<Running>>,
    max_concurrent: usize,
    max_per_store: usize,
    max_per_token: usize,
    queue_timeout: Duration,
}

/// Syncs admitted and not yet ended, by store and by token.
#[derive(Debug, Default)]
struct Running {
    by_store: HashMap<i64, usize>,
    by_token: HashMap<i64, usize>,
}

/// One admitted sync's place, held until it ends.
#[derive(Debug)]
pub struct Seat {
    running: Arc<Mutex<Running>>,
    store_id: i64,
    token_id: Option<i64>,
}

/// A seat with its turn: the sync may use a connection now.
#[derive(Debug)]
pub struct Turn {
    _seat: Seat,
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(limits: &SyncLimits) -> Self {
        Admission {
            turns: Arc::new(Semaphore::new(limits.max_concurrent_syncs)),
            running: Arc::default(),
            max_concurrent: limits.max_concurrent_syncs,
            max_per_store: limits.max_syncs_per_store,
            max_per_token: limits.max_syncs_per_token,
            queue_timeout: limits.queue_timeout,
        }
    }

    /// Counts a sync of `store_id` sent with token `token_id` (`None` when authentication
    /// is off), or refuses it at once when its store or token is at its limit.
    pub fn seat(&self, store_id: i64, token_id: Option<i64>) -> Result<Seat, SyncError> {
        let mut running = self.lock();
        if count(&running.by_store, &store_id) >= self.max_per_store {
            return Err(SyncError::StoreBusy {
                store_id,
                limit: self.max_per_store,
            });
        }
        if let Some(token_id) = token_id
            && count(&running.by_token, &token_id) >= self.max_per_token
        {
            return Err(SyncError::TokenBusy {
                limit: self.max_per_token,
            });
        }
        *running.by_store.entry(store_id).or_default() += 1;
        if let Some(token_id) = token_id {
            *running.by_token.entry(token_id).or_default() += 1;
        }
        Ok(Seat {
            running: self.running.clone(),
            store_id,
            token_id,
        })
    }

    /// Waits for one of the server's turns, at most the queue timeout.
    pub async fn turn(&self, seat: Seat) -> Result<Turn, SyncError> {
        let waited = self.queue_timeout;
        match tokio::time::timeout(waited, self.turns.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Turn {
                _seat: seat,
                _permit: permit,
            }),
            // The semaphore is never closed; a timeout is the only way to get here.
            Ok(Err(_)) | Err(_) => Err(SyncError::Busy {
                limit: self.max_concurrent,
                waited,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        lock(&self.running)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        release(&mut running.by_store, self.store_id);
        if let Some(token_id) = self.token_id {
            release(&mut running.by_token, token_id);
        }
    }
}

fn lock(running: &Mutex<Running>) -> std::sync::MutexGuard<'_, Running> {
    // The counts stay consistent even if a holder panicked: every change is one statement.
    running
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn count<K: Eq + Hash>(counts: &HashMap<K, usize>, key: &K) -> usize {
    counts.get(key).copied().unwrap_or_default()
}

/// Gives a count back; an entry at zero is removed, so that the maps hold only the stores
/// and tokens with syncs running.
fn release<K: Eq + Hash>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.entry(key) {
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        Admission::new(&SyncLimits {
            max_syncs_per_store: 2,
            max_syncs_per_token: 3,
            ..SyncLimits::default()
        })
    }

    #[test]
    fn a_store_over_its_limit_is_refused_and_others_are_not() {
        let admission = admission();
        let first = admission.seat(1, None).unwrap();
        let _second = admission.seat(1, None).unwrap();
        assert!(matches!(
            admission.seat(1, None),
            Err(SyncError::StoreBusy {
                store_id: 1,
                limit: 2
            })
        ));
        assert!(admission.seat(2, None).is_ok());
        drop(first);
        assert!(
            admission.seat(1, None).is_ok(),
            "an ended sync frees its seat"
        );
    }

    #[test]
    fn a_token_over_its_limit_is_refused_across_stores() {
        let admission = admission();
        let seats: Vec<_> = (1..=3)
            .map(|store| admission.seat(store, Some(7)))
            .collect();
        assert!(seats.iter().all(Result::is_ok));
        assert!(matches!(
            admission.seat(4, Some(7)),
            Err(SyncError::TokenBusy { limit: 3 })
        ));
        assert!(admission.seat(4, Some(8)).is_ok());
        assert!(admission.seat(4, None).is_ok(), "no token, no token limit");
        drop(seats);
        assert!(!admission.lock().by_token.contains_key(&7));
    }
}
