//! Keep-alive: refreshes active connections nobody asked a token for in a while, so that
//! they survive "expire refresh token if not used for N" policies and Salesforce's idle
//! limit for External Client Apps (`docs/salesforce.md`, "Refresh-token policies").
//!
//! Every replica may run the sweeper: each refresh goes through the same exclusive path as
//! the API ([`Broker::access_token`] with [`Want::KeepAlive`]), which re-checks
//! `last_refreshed_at` under the connection's refresh lease, so a connection another replica
//! just refreshed is left alone. Apps whose credentials were refused are skipped. On
//! shutdown the sweep starts no further refresh.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::tokens::Want;
use super::{Broker, BrokerError, TenantId};

/// At most this many connections are looked at per sweep; the rest wait for the next one.
const SWEEP_LIMIT: i64 = 500;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub due: usize,
    /// Refreshed, or found refreshed by another replica in the meantime.
    pub refreshed: usize,
    pub failed: usize,
}

impl SweepReport {
    /// Whether the sweep took as many connections as one sweep may: more may be due.
    pub fn is_full(&self) -> bool {
        i64::try_from(self.due).is_ok_and(|due| due >= SWEEP_LIMIT)
    }
}

impl Broker {
    /// Refreshes, a few at a time, every active connection not refreshed for the
    /// configured interval. Does nothing when keep-alive is disabled.
    pub async fn keepalive_sweep(&self) -> Result<SweepReport, BrokerError> {
        let Some(interval) = self.settings.tokens.keepalive_interval else {
            return Ok(SweepReport::default());
        };
        let now = self.now();
        let refreshed_before =
            now.saturating_sub(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX));
        let due = self
            .store
            .connections_due_for_keepalive(refreshed_before, now, SWEEP_LIMIT)
            .await?;
        self.metrics.keepalive_due(due.len());
        let mut report = SweepReport {
            due: due.len(),
            ..SweepReport::default()
        };
        // `concurrency` Salesforce calls at a time (the want's `calls`); twice as many
        // refreshes under way, so that their reads and commits overlap those calls and the
        // sweep runs at the rate its calls allow.
        let concurrency = self.settings.tokens.keepalive_concurrency;
        let calls = Arc::new(Semaphore::new(concurrency));
        let permits = Arc::new(Semaphore::new(concurrency.saturating_mul(2)));
        let mut tasks = JoinSet::new();
        for (tenant, id) in due {
            let Ok(tenant) = TenantId::parse(&tenant) else {
                continue;
            };
            let broker = self.clone();
            let permits = permits.clone();
            let calls = calls.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                // Shutting down: start nothing new (the refresh path refuses too).
                if broker.lifecycle.is_draining() {
                    return (
                        id,
                        Err(BrokerError::Busy {
                            reason: "shutting down".into(),
                            retry_after: std::time::Duration::ZERO,
                        }),
                    );
                }
                let result = broker
                    .access_token(
                        &tenant,
                        id,
                        Want::KeepAlive {
                            refreshed_before,
                            calls,
                        },
                    )
                    .await;
                (id, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(_))) => {
                    report.refreshed += 1;
                    self.metrics.keepalive_refresh();
                }
                Ok((id, Err(e))) => {
                    report.failed += 1;
                    tracing::warn!(connection = %id, error = %e, "keep-alive refresh failed");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(error = %e, "keep-alive task failed");
                }
            }
        }
        Ok(report)
    }

    /// Runs [`Broker::keepalive_sweep`] every `keepalive_sweep_secs` until `shutdown` turns
    /// true. A sweep under way is finished, never cut off mid-refresh.
    pub async fn run_keepalive(self, mut shutdown: watch::Receiver<bool>) {
        if self.settings.tokens.keepalive_interval.is_none() {
            return;
        }
        let period = self.settings.tokens.keepalive_sweep;
        let mut backlog = false;
        loop {
            // With a backlog (the last sweep was full and mostly succeeded) the next sweep
            // starts at once: the pause spreads the work of a steady state, it must not cap
            // catching up (keep-alive just enabled on a million connections).
            if !backlog {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = shutdown.changed() => return,
                }
            }
            if *shutdown.borrow() {
                return;
            }
            backlog = match self.keepalive_sweep().await {
                Ok(report) => {
                    if report.due > 0 {
                        tracing::info!(
                            due = report.due,
                            refreshed = report.refreshed,
                            failed = report.failed,
                            "keep-alive sweep"
                        );
                    }
                    report.is_full() && report.failed * 2 < report.due
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keep-alive sweep failed");
                    false
                }
            };
        }
    }
}
