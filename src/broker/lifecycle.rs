//! Shutting down without cutting a refresh in half.
//!
//! Between Salesforce's answer and the commit, a refresh holds the only copy of a rotated
//! refresh token. On SIGTERM the replica stops *starting* refreshes (and keep-alive sweeps)
//! at once, and waits for the ones in flight to commit, for at most the shutdown grace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Refreshes in flight, and whether new ones may start.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One refresh in flight; dropping it ends it.
pub struct RefreshGuard {
    lifecycle: Arc<Lifecycle>,
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if self.lifecycle.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lifecycle.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    /// Registers a refresh about to start; `None` once shutting down.
    pub fn start_refresh(self: &Arc<Self>) -> Option<RefreshGuard> {
        // Count first, then look: a drain that begins in between sees this refresh and
        // waits for it, or this refresh sees the drain and backs out.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = RefreshGuard {
            lifecycle: self.clone(),
        };
        (!self.is_draining()).then_some(guard)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops new refreshes from starting.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Refreshes in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no refresh is in flight, for at most `grace`; `true` when none is left.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, idle).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn drain_refuses_new_refreshes_and_waits_for_the_running_ones() {
        let lifecycle = Arc::new(Lifecycle::default());
        let running = lifecycle.start_refresh().unwrap();
        lifecycle.drain();
        assert!(lifecycle.start_refresh().is_none());
        assert!(!lifecycle.wait_idle(Duration::from_millis(30)).await);
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(running);
        });
        assert!(lifecycle.wait_idle(Duration::from_secs(2)).await);
        finisher.await.unwrap();
        assert_eq!(lifecycle.in_flight(), 0);
    }
}
