//! This replica's decrypted access tokens, and its per-connection refresh queues.
//!
//! The cache is bounded and concurrent (moka, a TinyLFU cache after Java's Caffeine): at
//! most `token_cache_capacity` entries (least valuable go first), each gone no later than
//! its token's expiry, lookups without a global lock. A connection that is not cached is
//! simply read from the database again. An evicted entry's token is wiped from memory when
//! the last reference to it drops.
//!
//! An entry is compact (`docs/scaling.md`, memory per cached entry): its strings — the
//! token, the instance URL and the tenant id — share one zeroised allocation, and its
//! lifetime is derived from its timestamps rather than stored. A million connections over
//! a few replicas means hundreds of thousands of entries per replica, and moka adds its own
//! few hundred bytes to each. An entry also keeps the API's answer for its token once it
//! was served ([`CachedToken::rendered`], about 250 bytes), so that the hot path answers
//! without copying or serialising the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use uuid::Uuid;

use super::tokens::AccessToken;
use crate::metrics::{Event, Metrics};
use crate::store::Millis;

/// One cached token, the row version it was read from, and when it was cached.
pub struct CachedToken {
    /// The access token, the instance URL and the tenant id, one after the other in one
    /// allocation, wiped on drop.
    text: SecretBox<str>,
    token_len: u32,
    url_len: u32,
    issued_at: Millis,
    expires_at: Millis,
    /// The connection row's version the token was read from (the change feed compares it).
    version: i64,
    /// When this replica cached it.
    cached_at: Millis,
    /// The API's answer for this token, rendered on its first hit and served as is after
    /// (it holds the token, so it is wiped on drop like `text`).
    rendered: OnceLock<SecretBox<[u8]>>,
}

/// The parts of a token the API answers with, borrowed.
pub struct TokenView<'a> {
    pub access_token: &'a str,
    pub instance_url: &'a str,
    pub issued_at: Millis,
    pub expires_at: Millis,
}

impl CachedToken {
    /// `None` when a part is too long to index with a `u32` (then it is simply not cached).
    fn new(tenant_id: &str, token: &AccessToken, version: i64, now: Millis) -> Option<Self> {
        let secret = token.access_token.expose_secret();
        let mut text =
            String::with_capacity(secret.len() + token.instance_url.len() + tenant_id.len());
        text.push_str(secret);
        text.push_str(&token.instance_url);
        text.push_str(tenant_id);
        Some(Self {
            text: SecretBox::from(text.into_boxed_str()),
            token_len: u32::try_from(secret.len()).ok()?,
            url_len: u32::try_from(token.instance_url.len()).ok()?,
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            version,
            cached_at: now,
            rendered: OnceLock::new(),
        })
    }

    fn parts(&self) -> (&str, &str, &str) {
        let text = self.text.expose_secret();
        let token_end = self.token_len as usize;
        let url_end = token_end + self.url_len as usize;
        // The offsets were taken from the same strings at char boundaries: `get` cannot miss.
        (
            text.get(..token_end).unwrap_or_default(),
            text.get(token_end..url_end).unwrap_or_default(),
            text.get(url_end..).unwrap_or_default(),
        )
    }

    pub fn tenant_id(&self) -> &str {
        self.parts().2
    }

    pub fn expires_at(&self) -> Millis {
        self.expires_at
    }

    pub fn access_token(&self) -> &str {
        self.parts().0
    }

    /// The token as handed out (a copy: the entry keeps its own).
    pub fn token(&self) -> AccessToken {
        let view = self.view();
        AccessToken {
            access_token: SecretString::from(view.access_token.to_owned()),
            instance_url: view.instance_url.to_owned(),
            issued_at: view.issued_at,
            expires_at: view.expires_at,
        }
    }

    pub fn view(&self) -> TokenView<'_> {
        let (access_token, instance_url, _) = self.parts();
        TokenView {
            access_token,
            instance_url,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        }
    }

    /// What `render` makes of this token, rendered on the first call and kept with the
    /// entry: the hot path answers a cached token without copying or serialising it. The
    /// caller passes the same `render` every time (the API's one answer format).
    pub fn rendered<E>(
        &self,
        render: impl FnOnce(TokenView<'_>) -> Result<Vec<u8>, E>,
    ) -> Result<&[u8], E> {
        if let Some(done) = self.rendered.get() {
            return Ok(done.expose_secret());
        }
        // Boxed as a secret at once: if another caller's rendering wins the race, this one
        // is wiped when dropped.
        let mine = SecretBox::new(render(self.view())?.into_boxed_slice());
        Ok(self.rendered.get_or_init(|| mine).expose_secret())
    }

    /// What [`Self::rendered`] kept, if it ran (empty otherwise).
    pub fn rendered_bytes(&self) -> &[u8] {
        self.rendered
            .get()
            .map(|done| done.expose_secret())
            .unwrap_or_default()
    }

    /// How long the entry may live: until the token expires (`put` caches only tokens that
    /// have not).
    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.expires_at - self.cached_at).unwrap_or(0))
    }
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
        Some(entry.ttl())
    }

    fn expire_after_update(
        &self,
        _id: &Uuid,
        entry: &Arc<CachedToken>,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl())
    }
}

/// This replica's decrypted access tokens and its per-connection refresh queues.
pub struct TokenCache {
    entries: Cache<Uuid, Arc<CachedToken>>,
    flights: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Per connection changed recently (the change feed, [`super::changes`]): the lowest row
    /// version a token may come from to be cached, and when that was learnt. It stops a
    /// read that began before a change from caching its older token after the change was
    /// applied.
    floors: Mutex<HashMap<Uuid, (i64, Instant)>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64, metrics: Metrics) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilTokenExpiry)
            .eviction_listener(move |_id, _entry, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    metrics.count(Event::TokenCacheEviction);
                }
            })
            .build();
        Self {
            entries,
            flights: Mutex::default(),
            floors: Mutex::default(),
        }
    }

    pub(super) fn get(&self, id: Uuid) -> Option<Arc<CachedToken>> {
        self.entries.get(&id)
    }

    /// Caches `token`, read from row version `version`, at `now` until it expires; unless
    /// the change feed has already reported a newer version (or a deletion).
    pub(super) fn put(
        &self,
        id: Uuid,
        tenant_id: &str,
        token: AccessToken,
        version: i64,
        now: Millis,
    ) {
        if self.floor(id).is_some_and(|floor| version < floor) {
            // Whatever is cached is at least the floor's version (`apply_change` dropped
            // the rest): keep it.
            return;
        }
        match CachedToken::new(tenant_id, &token, version, now) {
            Some(entry) if token.expires_at > now => {
                self.entries.insert(id, Arc::new(entry));
            }
            _ => self.forget(id),
        }
    }

    fn floor(&self, id: Uuid) -> Option<i64> {
        let floors = self.floors.lock().ok()?;
        floors.get(&id).map(|&(floor, _)| floor)
    }

    /// Applies one change of the feed: a token read from a row version below `min_version`
    /// is dropped now and not cached later. Idempotent; returns whether an entry went.
    pub(super) fn apply_change(&self, id: Uuid, min_version: i64) -> bool {
        if let Ok(mut floors) = self.floors.lock() {
            let floor = floors.entry(id).or_insert((min_version, Instant::now()));
            if min_version >= floor.0 {
                *floor = (min_version, Instant::now());
            }
        }
        let stale = self
            .entries
            .get(&id)
            .is_some_and(|entry| entry.version < min_version);
        if stale {
            self.entries.invalidate(&id);
        }
        stale
    }

    /// Forgets the floors learnt longer than `age` ago (no read still under way began before
    /// them).
    pub(super) fn prune_floors(&self, age: Duration) {
        if let Ok(mut floors) = self.floors.lock() {
            floors.retain(|_, (_, learnt)| learnt.elapsed() < age);
        }
    }

    /// Drops every cached token (the feed could not be followed for too long).
    pub(super) fn clear(&self) {
        self.entries.invalidate_all();
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

    /// Caches, for a new connection read at `version`, a token that expires at `expires_at`;
    /// returns the connection's id.
    fn cache_new(cache: &TokenCache, expires_at: Millis, version: i64) -> Uuid {
        let id = Uuid::new_v4();
        cache.put(id, "t", token(expires_at), version, 1_000);
        id
    }

    #[test]
    fn the_capacity_holds_under_a_flood_of_distinct_connections() {
        let cache = TokenCache::new(1_000, Metrics::new());
        for _ in 0..20_000 {
            cache.put(Uuid::new_v4(), "t", token(3_600_000), 1, 0);
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
    fn an_entry_renders_its_answer_once_and_keeps_it() {
        let cache = TokenCache::new(10, Metrics::new());
        let id = cache_new(&cache, 3_600_000, 1);
        let hit = cache.get(id).unwrap();
        assert!(hit.rendered_bytes().is_empty(), "nothing rendered yet");
        let calls = std::cell::Cell::new(0);
        let render = |view: TokenView<'_>| {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(
                format!(
                    "{}|{}|{}",
                    view.access_token, view.instance_url, view.expires_at
                )
                .into_bytes(),
            )
        };
        let first = hit.rendered(render).unwrap().to_vec();
        assert_eq!(first, b"00Dx!token|https://x.my.salesforce.com|3600000");
        assert_eq!(hit.rendered(render).unwrap(), first.as_slice());
        assert_eq!(cache.get(id).unwrap().rendered_bytes(), first.as_slice());
        assert_eq!(calls.get(), 1, "rendered once per entry");
        // A failed rendering is not kept.
        let other = cache.get(cache_new(&cache, 3_600_000, 1)).unwrap();
        assert_eq!(other.rendered(|_| Err::<Vec<u8>, _>("no")), Err("no"));
        assert!(other.rendered_bytes().is_empty());
    }

    #[test]
    fn an_entry_gives_back_what_was_cached() {
        let cache = TokenCache::new(10, Metrics::new());
        let id = Uuid::new_v4();
        cache.put(id, "acme-é", token(3_600_000), 7, 1_000);
        let hit = cache.get(id).unwrap();
        assert_eq!(hit.tenant_id(), "acme-é");
        assert_eq!((hit.version, hit.cached_at), (7, 1_000));
        assert_eq!(hit.expires_at(), 3_600_000);
        let copy = hit.token();
        assert_eq!(copy.access_token.expose_secret(), "00Dx!token");
        assert_eq!(copy.instance_url, "https://x.my.salesforce.com");
        assert_eq!((copy.issued_at, copy.expires_at), (0, 3_600_000));
    }

    #[test]
    fn an_entry_is_gone_when_its_token_expires() {
        let cache = TokenCache::new(100, Metrics::new());
        let short = cache_new(&cache, 1_050, 1);
        let long = cache_new(&cache, 3_600_000, 1);
        let expired = cache_new(&cache, 900, 1);
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

    #[test]
    fn a_change_drops_older_versions_and_keeps_newer_ones() {
        let cache = TokenCache::new(100, Metrics::new());
        let refreshed_elsewhere = cache_new(&cache, 3_600_000, 3);
        let refreshed_here = cache_new(&cache, 3_600_000, 4);
        assert!(
            cache.apply_change(refreshed_elsewhere, 4),
            "version 3 < 4 goes"
        );
        assert!(!cache.apply_change(refreshed_here, 4), "version 4 stays");
        assert!(cache.get(refreshed_elsewhere).is_none());
        assert!(cache.get(refreshed_here).is_some());
        // Applying the same change again (the feed re-reads its margin) changes nothing.
        assert!(!cache.apply_change(refreshed_here, 4));
        assert!(cache.get(refreshed_here).is_some());
        // A deletion drops any version.
        assert!(cache.apply_change(refreshed_here, i64::MAX));
        assert!(cache.get(refreshed_here).is_none());
    }

    #[test]
    fn a_read_from_before_a_change_is_not_cached_after_it() {
        let cache = TokenCache::new(100, Metrics::new());
        let id = Uuid::new_v4();
        // The feed reports version 5 before a slow read of version 4 comes back.
        cache.apply_change(id, 5);
        cache.put(id, "t", token(3_600_000), 4, 1_000);
        assert!(cache.get(id).is_none(), "the older read is not cached");
        cache.put(id, "t", token(3_600_000), 5, 1_000);
        assert!(cache.get(id).is_some(), "the current version is");
        // A lower floor reported later (the feed's rows in any order) does not lower it.
        cache.apply_change(id, 2);
        cache.put(id, "t", token(3_600_000), 4, 1_000);
        assert_eq!(cache.get(id).map(|e| e.version), Some(5));
        // Once the floor is forgotten, nothing holds an older read back any more.
        cache.prune_floors(Duration::ZERO);
        cache.forget(id);
        cache.put(id, "t", token(3_600_000), 4, 1_000);
        assert!(cache.get(id).is_some());
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

    fn token(i: u64) -> AccessToken {
        AccessToken {
            access_token: SecretString::from(format!("00D5g000004ABCD!AR{i:0>94}")),
            instance_url: "https://bench.my.salesforce.com".into(),
            issued_at: 0,
            expires_at: 7_200_000,
        }
    }

    /// Resident bytes per entry of a full cache (100,000 entries), filled on `threads`
    /// threads; with `requests`, each insert comes with the short-lived allocations of a
    /// request (a row of about 1 KiB in ten strings, 32 requests alive at a time), as in
    /// the server.
    fn measure(threads: u64, requests: bool) -> u64 {
        let cache = Arc::new(TokenCache::new(100_000, Metrics::new()));
        let before = rss();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut alive = std::collections::VecDeque::new();
                    for i in 0..100_000 / threads {
                        if requests {
                            let row: Vec<String> =
                                (0..10).map(|k| "x".repeat(40 + 20 * k)).collect();
                            alive.push_back(row);
                            if alive.len() > 32 {
                                alive.pop_front();
                            }
                        }
                        cache.put(Uuid::new_v4(), "bench", token(t * 1_000_000 + i), 1, 1_000);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        cache.run_pending_tasks();
        (rss() - before) / cache.len() as u64
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --lib footprint -- --ignored --nocapture --test-threads 1"]
    fn bytes_per_entry() {
        println!("one thread: {} bytes an entry", measure(1, false));
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --lib footprint -- --ignored --nocapture --test-threads 1"]
    fn bytes_per_entry_among_requests() {
        println!(
            "two threads, with requests' allocations: {} bytes an entry",
            measure(2, true)
        );
    }
}
