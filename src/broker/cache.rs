//! This replica's decrypted access tokens, and its per-connection refresh queues.
//!
//! The cache is bounded and concurrent (moka, a TinyLFU cache after Java's Caffeine): at
//! most `token_cache_capacity` entries (least valuable go first), each gone no later than
//! its token's expiry, lookups without a global lock. A connection that is not cached is
//! simply read from the database again. An evicted entry's token is a `SecretString`, wiped
//! from memory when the last reference to it drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use uuid::Uuid;

use super::tokens::AccessToken;
use crate::store::Millis;

/// One cached token and when this replica last checked it against the database.
pub(super) struct CachedToken {
    pub tenant_id: String,
    pub token: AccessToken,
    /// When the row was last read (or written) by this replica.
    pub checked_at: Millis,
    /// How long the entry may live: until the token expires.
    ttl: Duration,
}

/// Each entry lives until its token expires (counted from when it was cached).
struct UntilTokenExpiry;

impl moka::Expiry<Uuid, Arc<CachedToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _id: &Uuid,
        entry: &Arc<CachedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _id: &Uuid,
        entry: &Arc<CachedToken>,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// This replica's decrypted access tokens and its per-connection refresh queues.
pub struct TokenCache {
    entries: Cache<Uuid, Arc<CachedToken>>,
    flights: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilTokenExpiry)
            .eviction_listener(|_id, _entry, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    crate::metrics::TOKEN_CACHE_EVICTIONS.inc();
                }
            })
            .build();
        Self {
            entries,
            flights: Mutex::default(),
        }
    }

    pub(super) fn get(&self, id: Uuid) -> Option<Arc<CachedToken>> {
        self.entries.get(&id)
    }

    /// Caches `token` as checked at `now`, until it expires.
    pub(super) fn put(&self, id: Uuid, tenant_id: &str, token: AccessToken, now: Millis) {
        let left = u64::try_from(token.expires_at.saturating_sub(now)).unwrap_or(0);
        if left == 0 {
            self.forget(id);
            return;
        }
        let entry = CachedToken {
            tenant_id: tenant_id.to_owned(),
            token,
            checked_at: now,
            ttl: Duration::from_millis(left),
        };
        self.entries.insert(id, Arc::new(entry));
    }

    /// Drops the connection's cached token (deleted, reauthorized, needs reauthorization).
    pub fn forget(&self, id: Uuid) {
        self.entries.invalidate(&id);
    }

    /// How many tokens are cached (for metrics; eventually consistent).
    pub fn len(&self) -> usize {
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies pending evictions now (moka applies them in batches).
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    /// The queue of one connection's refreshes in this process.
    pub(super) fn flight(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        match self.flights.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            // A poisoned map only loses coalescing; the lease still guarantees one refresh
            // at a time.
            Err(_) => Arc::default(),
        }
    }

    pub(super) fn end_flight(&self, id: Uuid, flight: Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut map) = self.flights.lock() {
            // Ours plus the map's: nobody else is queued, the entry can go.
            if Arc::strong_count(&flight) == 2 {
                map.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use secrecy::SecretString;

    use super::*;

    fn token(expires_at: Millis) -> AccessToken {
        AccessToken {
            access_token: SecretString::from("00Dx!token".to_owned()),
            instance_url: "https://x.my.salesforce.com".into(),
            issued_at: 0,
            expires_at,
        }
    }

    #[test]
    fn the_capacity_holds_under_a_flood_of_distinct_connections() {
        let cache = TokenCache::new(1_000);
        for _ in 0..20_000 {
            cache.put(Uuid::new_v4(), "t", token(3_600_000), 0);
        }
        cache.run_pending_tasks();
        assert!(cache.len() <= 1_000, "{} entries", cache.len());
        assert!(
            cache.len() >= 500,
            "the cache still caches: {}",
            cache.len()
        );
    }

    #[test]
    fn an_entry_is_gone_when_its_token_expires() {
        let cache = TokenCache::new(100);
        let short = Uuid::new_v4();
        let long = Uuid::new_v4();
        cache.put(short, "t", token(1_050), 1_000);
        cache.put(long, "t", token(3_600_000), 1_000);
        let expired = Uuid::new_v4();
        cache.put(expired, "t", token(900), 1_000);
        assert!(
            cache.get(expired).is_none(),
            "an expired token is not cached"
        );
        std::thread::sleep(Duration::from_millis(120));
        cache.run_pending_tasks();
        assert!(cache.get(short).is_none(), "gone once its token expired");
        assert!(cache.get(long).is_some());
        cache.forget(long);
        assert!(cache.get(long).is_none());
    }
}

#[cfg(test)]
mod footprint {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use secrecy::SecretString;

    use super::*;

    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --lib footprint -- --ignored --nocapture"]
    fn bytes_per_entry() {
        let cache = TokenCache::new(100_000);
        let before = rss();
        for i in 0..100_000u64 {
            let token = AccessToken {
                access_token: SecretString::from(format!("00D5g000004ABCD!AR{i:0>94}")),
                instance_url: "https://bench.my.salesforce.com".into(),
                issued_at: 0,
                expires_at: 7_200_000,
            };
            cache.put(Uuid::new_v4(), "bench", token, 1_000);
        }
        cache.run_pending_tasks();
        let after = rss();
        println!(
            "{} entries: {} bytes each",
            cache.len(),
            (after - before) / cache.len() as u64
        );
    }
}
