//! The change feed follower: how this replica's token cache learns what other replicas did.
//!
//! Database triggers (migration 0005) record every deletion, refresh, reauthorization and
//! status change of a connection in `connection_changes`, stamped with the database's clock.
//! Every `token_cache_revalidate_secs` each replica reads the rows of the last interval
//! (plus a margin) in one indexed query and drops the cached tokens they make stale
//! ([`super::cache::TokenCache::apply_change`]). The cost is one small query per replica
//! per interval, whatever the number of cached connections — where re-reading each cached
//! entry after a fixed age cost one row read per connection in use (`docs/scaling.md`).
//!
//! Re-reading a margin means seeing rows more than once, which is harmless (applying a
//! change is idempotent) and covers a row whose transaction committed a little after its
//! trigger read the clock. Replicas prune rows older than [`KEEP`]; a replica that could not
//! read the feed for that long may have missed rows, so it empties its cache instead.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Broker, BrokerError};
use crate::store::Millis;

/// How far back each read reaches beyond the previous one: longer than any commit takes
/// after its trigger ran.
const MARGIN: Millis = 10_000;
/// How long the feed's rows are kept (database time).
const KEEP: Millis = 10 * 60_000;
/// How long a change still stops older reads from being cached: longer than a read of the
/// row can take to reach the cache (bounded by the refresh wait and the lease).
const FLOOR_AGE: Duration = Duration::from_secs(120);
/// How often a replica prunes the feed.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Where this replica is in the feed.
#[derive(Debug, Default)]
pub struct FeedCursor {
    /// Database time from which the next read starts.
    since: Option<Millis>,
    last_prune: Option<Instant>,
}

impl Broker {
    /// Reads the change feed once and applies it to this replica's cache; returns how many
    /// cached tokens it dropped.
    pub async fn follow_changes(&self, cursor: &mut FeedCursor) -> Result<usize, BrokerError> {
        let first = cursor.since.is_none();
        let read = self.store.connection_changes(cursor.since).await?;
        let since = match cursor.since {
            // The first read only learns the database's clock; the cache may already hold
            // tokens read a moment ago, so the next read starts a floor's age back.
            None => read.now - i64::try_from(FLOOR_AGE.as_millis()).unwrap_or(0),
            Some(since) if read.now - since > KEEP - MARGIN => {
                // Not read for longer than rows are kept: some may be gone unseen.
                tracing::warn!(
                    "the connection change feed was not read for too long; dropping every cached token"
                );
                self.tokens.clear();
                read.now - MARGIN
            }
            Some(_) => read.now - MARGIN,
        };
        let mut dropped = 0;
        for (id, min_version) in &read.changes {
            if self.tokens.apply_change(*id, *min_version) {
                dropped += 1;
            }
        }
        cursor.since = Some(since);
        self.tokens.prune_floors(FLOOR_AGE);
        if first {
            return Ok(dropped);
        }
        if cursor
            .last_prune
            .is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            cursor.last_prune = Some(Instant::now());
            self.store.prune_connection_changes(read.now - KEEP).await?;
        }
        Ok(dropped)
    }

    /// Follows the change feed every `token_cache_revalidate_secs` until `shutdown` turns
    /// true. A failed read is retried at the next tick (the cursor does not move).
    pub async fn run_change_feed(self, mut shutdown: watch::Receiver<bool>) {
        let period = self
            .settings
            .tokens
            .cache_revalidate
            .max(Duration::from_millis(100));
        let mut cursor = FeedCursor::default();
        loop {
            match self.follow_changes(&mut cursor).await {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::debug!(dropped, "cached tokens changed on other replicas dropped");
                }
                Err(e) => tracing::warn!(error = %e, "could not read the connection change feed"),
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
