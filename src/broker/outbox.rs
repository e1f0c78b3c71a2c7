//! Delivering the outbox: every replica runs one worker that claims due events, posts them
//! signed ([`crate::webhooks`]), and records each attempt.
//!
//! - **Nothing lost.** An event is written with the state change it reports (one
//!   transaction), so a process killed right after the change leaves the event behind; any
//!   replica (or the same after its restart) delivers it.
//! - **Claims expire.** A claim lasts the webhook timeout plus [`CLAIM_GRACE`]: the claims
//!   of a replica killed mid-delivery end, and another replica delivers the event again
//!   (delivery is at least once; receivers drop duplicates by `webhook-id`).
//! - **Per-connection order.** A claim takes only the oldest unfinished event of each
//!   ordering key (a connection, or a tenant's app): event N+1 of a connection is not sent
//!   before N is delivered or given up.
//! - **Retries** of non-2xx answers, timeouts and connection failures: exponential back-off
//!   (the base, doubling, capped) with ±20 % jitter, until the retry period after the
//!   event was written ends; then the event is given up (kept, with its last error, until
//!   the retention ends).
//! - **Shutdown**: the worker starts no new claim once shutdown begins; attempts in flight
//!   finish within the webhook timeout (or their claims expire).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{Broker, BrokerError};
use crate::config::WebhookSettings;
use crate::metrics::{Event, WebhookOutcome};
use crate::store::{ClaimedEvent, DeliveryOutcome, Millis};
use crate::webhooks::{Attempt, WebhookSender};

/// Events claimed (and posted concurrently) per pass; each is the head of another key.
const BATCH: i64 = 32;
/// How much longer than one attempt a claim lasts: the time to record the attempt's outcome
/// (one short statement; the pool gives up after `db_acquire_timeout_ms`). Short, because a
/// replica killed mid-attempt holds its events back this long.
const CLAIM_GRACE: Duration = Duration::from_secs(5);
/// How often finished events past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The outbox's settings and this replica's view of it.
pub struct Outbox {
    settings: WebhookSettings,
    /// Rung by this replica's state changes, so their events leave at once.
    wake: Notify,
    /// Undelivered events, and the creation time of the oldest (0: none), as last counted.
    pending: AtomicI64,
    oldest_created_at: AtomicI64,
}

impl Outbox {
    pub(super) fn new(settings: WebhookSettings) -> Self {
        Self {
            settings,
            wake: Notify::new(),
            pending: AtomicI64::new(0),
            oldest_created_at: AtomicI64::new(0),
        }
    }

    /// The delay before attempt number `attempts + 1` (after `attempts` failed ones):
    /// base × 2^(attempts − 1), capped, with ±20 % jitter so that a receiver coming back
    /// is not hit by every retry at once.
    fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let delay = self
            .settings
            .retry_base
            .saturating_mul(1 << exponent)
            .min(self.settings.retry_max_interval);
        delay.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

/// The outbox as the metrics show it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboxGauges {
    pub pending: u64,
    /// Age of the oldest undelivered event, in seconds (0: none).
    pub oldest_age_secs: u64,
}

impl Broker {
    /// Rings this replica's worker (after a state change that wrote an event).
    pub(super) fn wake_outbox(&self) {
        if let Some(outbox) = &self.outbox {
            outbox.wake.notify_one();
        }
    }

    /// The outbox gauges as last counted by this replica's worker.
    pub fn outbox_gauges(&self) -> OutboxGauges {
        let Some(outbox) = &self.outbox else {
            return OutboxGauges::default();
        };
        let oldest = outbox.oldest_created_at.load(Ordering::Relaxed);
        OutboxGauges {
            pending: u64::try_from(outbox.pending.load(Ordering::Relaxed)).unwrap_or(0),
            oldest_age_secs: if oldest == 0 {
                0
            } else {
                u64::try_from(self.now().saturating_sub(oldest) / 1000).unwrap_or(0)
            },
        }
    }

    /// Runs the delivery worker until `shutdown` turns true. Does nothing without webhooks.
    pub async fn run_outbox(self, mut shutdown: watch::Receiver<bool>) {
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        let sender = match WebhookSender::new(outbox.settings.target.clone()) {
            Ok(sender) => sender,
            Err(e) => {
                // The events stay in the outbox and leave after a restart (or from
                // another replica).
                tracing::error!(error = %e, "cannot build the webhook client; this replica delivers no webhooks");
                return;
            }
        };
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                self.prune_outbox().await;
            }
            let claimed = match self.deliver_due(&sender).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery pass failed");
                    0
                }
            };
            self.count_outbox().await;
            // A full batch: more may be due right away.
            if claimed as i64 >= BATCH {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(outbox.settings.poll) => {}
                _ = outbox.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass: claims the due events and posts them concurrently (each is the head of
    /// its own ordering key). Returns how many were claimed.
    async fn deliver_due(&self, sender: &WebhookSender) -> Result<usize, BrokerError> {
        let Some(outbox) = &self.outbox else {
            return Ok(0);
        };
        let claim_id = uuid::Uuid::new_v4().to_string();
        let claim_for = outbox.settings.target.timeout + CLAIM_GRACE;
        let events = self
            .store
            .claim_events(&claim_id, self.now(), claim_for, BATCH)
            .await?;
        let claimed = events.len();
        let mut attempts = JoinSet::new();
        for event in events {
            let this = self.clone();
            let sender = sender.clone();
            let claim_id = claim_id.clone();
            attempts.spawn(async move { this.attempt(&sender, &claim_id, event).await });
        }
        while attempts.join_next().await.is_some() {}
        Ok(claimed)
    }

    /// Posts one claimed event and records the outcome.
    async fn attempt(&self, sender: &WebhookSender, claim_id: &str, event: ClaimedEvent) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        // The specification's timestamp is the attempt's (the signature covers it), so a
        // retry is signed anew.
        let timestamp = self.now().div_euclid(1000);
        let result = sender.post(&event.id, timestamp, &event.payload).await;
        match &result {
            Attempt::Delivered => self.metrics.webhook_attempt(WebhookOutcome::Delivered),
            Attempt::Rejected(_) => self.metrics.webhook_attempt(WebhookOutcome::Rejected),
            Attempt::TimedOut => self.metrics.webhook_attempt(WebhookOutcome::Timeout),
            Attempt::Failed(_) => self.metrics.webhook_attempt(WebhookOutcome::Error),
        }
        let now = self.now();
        let attempts = event.attempts.saturating_add(1);
        let outcome = if result == Attempt::Delivered {
            tracing::info!(event = %event.id, event_type = %event.event_type, attempts, "webhook delivered");
            DeliveryOutcome::Delivered { now }
        } else {
            let error = result.describe();
            let next = now.saturating_add(millis(outbox.backoff(attempts)));
            let give_up_at = event
                .created_at
                .saturating_add(millis(outbox.settings.retry_period));
            if next > give_up_at {
                self.metrics.count(Event::WebhookGivenUp);
                tracing::error!(event = %event.id, event_type = %event.event_type, attempts, error = %error, "webhook given up: the retry period is over");
                DeliveryOutcome::GiveUp { now, error }
            } else {
                tracing::warn!(event = %event.id, event_type = %event.event_type, attempts, error = %error, retry_in_ms = next - now, "webhook attempt failed; retrying");
                DeliveryOutcome::Retry {
                    next_attempt_at: next,
                    error,
                }
            }
        };
        match self.store.finish_event(event.seq, claim_id, &outcome).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(event = %event.id, "the event's claim ended before its attempt was recorded; it may be sent again");
            }
            Err(e) => {
                // The claim expires and the event is sent again: at least once.
                tracing::warn!(event = %event.id, error = %e, "could not record a webhook attempt");
            }
        }
    }

    /// Refreshes the outbox gauges.
    async fn count_outbox(&self) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        match self.store.outbox_stats().await {
            Ok(stats) => {
                outbox.pending.store(stats.pending, Ordering::Relaxed);
                outbox
                    .oldest_created_at
                    .store(stats.oldest_created_at.unwrap_or(0), Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "could not count the outbox"),
        }
    }

    /// Deletes delivered and given-up events older than the retention.
    async fn prune_outbox(&self) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let before = self.now().saturating_sub(millis(outbox.settings.retention));
        match self.store.prune_events(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "finished webhook events deleted"),
            Err(e) => tracing::warn!(error = %e, "could not prune the webhook outbox"),
        }
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
