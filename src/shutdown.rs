//! The one shutdown signal of the daemon (mini-redis's `Shutdown`): the
//! daemon holds the [`Trigger`], every task that must stop (the watcher, the
//! progress reporter, the gRPC server and its progress streams) holds a
//! [`Shutdown`] and awaits [`Shutdown::recv`].
//!
//! A dropped trigger counts as a shutdown: nobody could signal one later, and
//! a task left running unowned is worse than one that stops. Only
//! [`Shutdown::never`] (a gRPC service used outside the daemon) never fires.

use tokio::sync::watch;

/// Fires the shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Resolves [`Self::recv`] once the shutdown fires. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

/// A trigger and the first of its receivers.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(Some(rx)))
}

impl Trigger {
    /// Tells every receiver to shut down; idempotent.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// Another receiver of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(Some(self.0.subscribe()))
    }
}

impl Shutdown {
    /// A receiver that never fires.
    pub fn never() -> Self {
        Self(None)
    }

    /// Whether the shutdown has fired (or its trigger is gone).
    pub fn is_fired(&self) -> bool {
        match &self.0 {
            Some(rx) => *rx.borrow() || rx.has_changed().is_err(),
            None => false,
        }
    }

    /// Resolves once the shutdown fires or its trigger is dropped; never for
    /// [`Self::never`]. Cancel-safe: use it in `select!`.
    pub async fn recv(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                let _ = rx.wait_for(|&fired| fired).await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn fires(s: &mut Shutdown) -> bool {
        tokio::time::timeout(Duration::from_millis(50), s.recv())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn fire_reaches_every_receiver_and_later_ones() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!fires(&mut a).await);
        assert!(!a.is_fired());
        trigger.fire();
        assert!(fires(&mut a).await && fires(&mut b).await);
        let mut late = trigger.subscribe();
        assert!(late.is_fired() && fires(&mut late).await);
        trigger.fire();
        assert!(fires(&mut a).await, "fires again after a second call");
    }

    #[tokio::test]
    async fn a_dropped_trigger_is_a_shutdown_and_never_is_not() {
        let (trigger, mut a) = channel();
        drop(trigger);
        assert!(a.is_fired());
        assert!(fires(&mut a).await);
        let mut never = Shutdown::never();
        assert!(!never.is_fired());
        assert!(!fires(&mut never).await);
    }
}
