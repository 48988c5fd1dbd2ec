//! Lock requests of one owner on one file reach the namenode in the order the kernel sent
//! them.
//!
//! Each request is answered by a task of its own, so without this a later request could
//! overtake an earlier one. That matters for `flock`: its owner is the kernel's address of
//! the open file, which the next open reuses once the last is freed, and the unlock of the
//! old one is sent with its release, after `close` has returned. A process that closes a
//! file and opens and locks it again then has its new lock dropped by the late unlock of
//! the old one, and another mount's process takes the lock it still believes it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_common::Ino;
use tokio::sync::watch;

type Key = (Ino, u64);

#[derive(Default)]
pub struct LockOrder {
    owners: Arc<Mutex<HashMap<Key, Turns>>>,
}

struct Turns {
    /// The number the next request gets.
    next: u64,
    /// Requests before this number are done.
    done: Arc<watch::Sender<u64>>,
}

/// One request's place in its owner's order: [`Ticket::turn`] waits for the requests
/// before it; dropping it lets the next one go.
pub struct Ticket {
    key: Key,
    number: u64,
    done: Arc<watch::Sender<u64>>,
    owners: Arc<Mutex<HashMap<Key, Turns>>>,
}

impl LockOrder {
    /// Takes the next place for `owner`'s requests on `ino`: called where the kernel's
    /// requests arrive, in their order.
    pub fn ticket(&self, ino: Ino, owner: u64) -> Ticket {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let turns = owners.entry((ino, owner)).or_insert_with(|| Turns {
            next: 0,
            done: Arc::new(watch::Sender::new(0)),
        });
        let number = turns.next;
        turns.next += 1;
        Ticket {
            key: (ino, owner),
            number,
            done: turns.done.clone(),
            owners: self.owners.clone(),
        }
    }
}

impl Ticket {
    /// Waits until every request taken before this one is done.
    pub async fn turn(&self) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|d| *d >= self.number).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        self.done.send_modify(|d| *d = (*d).max(self.number + 1));
        // Nothing taken after it: the owner is idle, and forgotten.
        if owners
            .get(&self.key)
            .is_some_and(|t| t.next == self.number + 1)
        {
            owners.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_later_request_waits_for_the_earlier_ones() {
        let order = LockOrder::default();
        let first = order.ticket(Ino(5), 7);
        let second = order.ticket(Ino(5), 7);
        let other_owner = order.ticket(Ino(5), 8);
        other_owner.turn().await;
        first.turn().await;
        let waiting = tokio::spawn(async move { second.turn().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "went before the earlier request ended"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        drop(other_owner);
        assert!(
            order.owners.lock().unwrap().is_empty(),
            "idle owners are forgotten"
        );
    }
}
