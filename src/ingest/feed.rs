//! The change feed: a bounded channel of [`Change`]s that counts each one
//! from the moment it is sent until the receiver has taken it up.
//!
//! Status says idle only when nothing is pending anywhere. A change in the
//! channel is no longer the watcher's work and not yet the pipeline's, so
//! without this count a deletion could read as done before it was seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::Change;

/// Makes a feed holding at most `capacity` changes (at least 1).
pub fn channel(capacity: usize) -> (ChangeTx, ChangeRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let in_flight = Arc::new(AtomicU64::new(0));
    (
        ChangeTx {
            tx,
            in_flight: in_flight.clone(),
        },
        ChangeRx { rx, in_flight },
    )
}

/// The sending side; clones share the count.
#[derive(Clone, Debug)]
pub struct ChangeTx {
    tx: mpsc::Sender<Change>,
    in_flight: Arc<AtomicU64>,
}

/// The receiver has gone: the pipeline stopped.
#[derive(Debug, thiserror::Error)]
#[error("the change feed is closed")]
pub struct Closed;

impl ChangeTx {
    /// Sends `change`, waiting for room; it counts as in flight while it waits.
    pub async fn send(&self, change: Change) -> Result<(), Closed> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.tx.send(change).await.map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Closed
        })
    }

    /// Waits for room for one change, to send it without waiting again.
    pub async fn reserve(&self) -> Result<Permit<'_>, Closed> {
        let permit = self.tx.reserve().await.map_err(|_| Closed)?;
        Ok(Permit {
            permit,
            in_flight: &self.in_flight,
        })
    }
}

/// Room for one change in the feed.
pub struct Permit<'a> {
    permit: mpsc::Permit<'a, Change>,
    in_flight: &'a AtomicU64,
}

impl Permit<'_> {
    /// Sends `change`, counted before the sender stops counting it as its own.
    pub fn send(self, change: Change) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.permit.send(change);
    }
}

/// The receiving side.
#[derive(Debug)]
pub struct ChangeRx {
    rx: mpsc::Receiver<Change>,
    in_flight: Arc<AtomicU64>,
}

impl ChangeRx {
    /// The next change, with the ticket that keeps it counted; `None` once
    /// every sender is gone and the feed is empty.
    pub async fn recv(&mut self) -> Option<(Change, Ticket)> {
        let change = self.rx.recv().await?;
        Some((change, Ticket(self.in_flight.clone())))
    }

    /// The next change if one is waiting now, without waiting for one.
    pub fn try_recv(&mut self) -> Option<(Change, Ticket)> {
        let change = self.rx.try_recv().ok()?;
        Some((change, Ticket(self.in_flight.clone())))
    }

    /// Changes sent and not yet taken up (their tickets not yet dropped).
    pub fn in_flight(&self) -> Arc<AtomicU64> {
        self.in_flight.clone()
    }
}

/// Keeps a received change counted as in flight until dropped: drop it
/// once the change is counted where it went next.
#[derive(Debug)]
pub struct Ticket(Arc<AtomicU64>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn remove(p: &str) -> Change {
        Change::Remove {
            path: PathBuf::from(p),
        }
    }

    #[tokio::test]
    async fn a_change_counts_until_its_ticket_is_dropped() {
        let (tx, mut rx) = channel(4);
        let count = rx.in_flight();
        tx.send(remove("/a")).await.unwrap();
        tx.reserve().await.unwrap().send(remove("/b"));
        assert_eq!(count.load(Ordering::SeqCst), 2);
        let (first, ticket) = rx.recv().await.unwrap();
        assert_eq!(first, remove("/a"));
        assert_eq!(count.load(Ordering::SeqCst), 2, "taken but not accounted");
        drop(ticket);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        drop(rx.recv().await.unwrap());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_send_to_a_closed_feed_is_not_counted() {
        let (tx, rx) = channel(1);
        let count = rx.in_flight();
        drop(rx);
        assert!(tx.send(remove("/a")).await.is_err());
        assert!(tx.reserve().await.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
