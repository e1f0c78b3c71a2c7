//! The limit on Salesforce calls in flight per replica, shared fairly between tenants.
//!
//! A plain semaphore serves waiters first come, first served: one tenant's burst (ten
//! thousand connections refreshing after an outage) would queue every other tenant behind
//! it. Here each tenant has its own queue and a freed permit goes to the tenants in turn
//! (round robin), so a tenant waits for at most one call of each other waiting tenant.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// A fair, per-tenant round-robin limiter of concurrent calls.
pub struct FairLimiter {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Permits not handed out.
    available: usize,
    /// Waiters by tenant, in arrival order.
    queues: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
    /// Tenants with waiters, in the order they are served next.
    turn: VecDeque<String>,
}

/// The right to make one call; the permit returns (to the next tenant in turn) on drop.
pub struct Permit {
    limiter: Option<Arc<FairLimiter>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.release();
        }
    }
}

impl FairLimiter {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            state: Mutex::new(State {
                available: capacity,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step below, so a poisoned lock
        // (a panic elsewhere while holding it) can be used as is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a permit in `tenant`'s queue. Cancel-safe: a waiter that gives up before
    /// its turn leaves the queue, and a permit handed to it as it gave up returns.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Permit {
        let receiver = {
            let mut state = self.lock();
            if state.available > 0 && state.turn.is_empty() {
                state.available -= 1;
                return Permit {
                    limiter: Some(self.clone()),
                };
            }
            let (sender, receiver) = oneshot::channel();
            let queue = state.queues.entry(tenant.to_owned()).or_default();
            let first = queue.is_empty();
            queue.push_back(sender);
            if first {
                state.turn.push_back(tenant.to_owned());
            }
            receiver
        };
        match receiver.await {
            Ok(permit) => permit,
            // The limiter is gone (no sender can be dropped unsent otherwise): nothing to
            // limit any more.
            Err(_) => Permit { limiter: None },
        }
    }

    /// Hands a freed permit to the next waiting tenant, or keeps it.
    fn release(self: Arc<Self>) {
        let mut state = self.lock();
        while let Some(tenant) = state.turn.pop_front() {
            let Some(queue) = state.queues.get_mut(&tenant) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.queues.remove(&tenant);
            } else {
                state.turn.push_back(tenant);
            }
            let Some(waiter) = next else { continue };
            let permit = Permit {
                limiter: Some(self.clone()),
            };
            match waiter.send(permit) {
                Ok(()) => return,
                // That waiter gave up: disarm the returned permit (its capacity is still
                // ours to hand on) and try the next one.
                Err(mut unsent) => {
                    unsent.limiter = None;
                }
            }
        }
        state.available += 1;
    }

    /// Calls in flight now (permits handed out).
    pub fn in_flight(&self) -> usize {
        self.capacity.saturating_sub(self.lock().available)
    }

    /// Callers waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.lock().queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn never_more_than_the_capacity() {
        let limiter = FairLimiter::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (limiter, running, peak) = (limiter.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire(&format!("t{}", i % 4)).await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(limiter.waiting(), 0);
    }

    #[tokio::test]
    async fn a_burst_of_one_tenant_does_not_starve_another() {
        let limiter = FairLimiter::new(1);
        let held = limiter.acquire("burst").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // 50 waiters of one tenant queue first, then one of another tenant.
        for i in 0..51 {
            let tenant = if i < 50 { "burst" } else { "quiet" };
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire(tenant).await;
                order.lock().unwrap().push(tenant);
            }));
            tokio::task::yield_now().await;
        }
        while limiter.waiting() < 51 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        let quiet = order.iter().position(|t| *t == "quiet").unwrap();
        assert!(
            quiet <= 1,
            "the quiet tenant was served at position {quiet}"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_permit() {
        let limiter = FairLimiter::new(1);
        let held = limiter.acquire("a").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), limiter.acquire("b")).await;
        assert!(gave_up.is_err());
        drop(held);
        // The permit is available again, not stuck with the waiter that left.
        let again = tokio::time::timeout(Duration::from_millis(200), limiter.acquire("c")).await;
        assert!(again.is_ok());
        assert_eq!(limiter.in_flight(), 1);
    }
}
