//! The audit trail: who read which connection's access token, and who changed what.
//!
//! Token reads are the hot path, so recording one never waits for the database: it adds 1
//! to a counter in memory, keyed by (tenant, actor, action, connection, minute), in one of
//! [`SHARDS`] maps chosen by the connection (one short lock, rarely contended). A flusher
//! writes the counters every `audit_flush_ms` (at most 10 s) and at shutdown, adding each
//! to its stored entry (replicas and successive flushes of one minute merge). Changes
//! (connection created or deleted, app updated or deleted) are entries of their own, with
//! the exact time and the request id.
//!
//! What can be lost: the counters of a replica killed (not stopped) since its last flush,
//! and, while the database stays away, counters beyond [`MAX_PENDING`] (counted in
//! `valo_oauth_audit_entries_dropped_total`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Broker, BrokerError, TenantId};
use crate::metrics::{Event, Metrics};
use crate::store::{AuditEntry, AuditQuery, AuditRecord, Millis};

/// Maps of pending counters; a power of two well above the cores.
const SHARDS: usize = 32;
/// The most counters kept per shard while the database cannot take them.
const MAX_PENDING: usize = 100_000 / SHARDS;
/// The bucket of aggregated actions.
const MINUTE_MS: Millis = 60_000;
/// How often entries past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The actor of refreshes nobody asked for.
const KEEPALIVE_ACTOR: &str = "valo-oauth:keepalive";

/// What an entry records (a contract: keep the names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// An access token was handed out (aggregated per actor, connection and minute).
    TokenServed,
    /// A refresh at Salesforce was made for the actor (aggregated like reads).
    TokenRefreshed,
    ConnectionCreated,
    ConnectionDeleted,
    /// The tenant's app credentials were stored (created or replaced).
    AppUpdated,
    AppDeleted,
}

impl AuditAction {
    pub const ALL: [Self; 6] = [
        Self::TokenServed,
        Self::TokenRefreshed,
        Self::ConnectionCreated,
        Self::ConnectionDeleted,
        Self::AppUpdated,
        Self::AppDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenServed => "token_served",
            Self::TokenRefreshed => "token_refreshed",
            Self::ConnectionCreated => "connection_created",
            Self::ConnectionDeleted => "connection_deleted",
            Self::AppUpdated => "app_updated",
            Self::AppDeleted => "app_deleted",
        }
    }

    /// Frequent actions are counted per minute, without request ids.
    fn aggregated(self) -> bool {
        matches!(self, Self::TokenServed | Self::TokenRefreshed)
    }
}

/// Who acts: the API token's `sub`, and the request's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    pub sub: Arc<str>,
    pub request_id: Option<Arc<str>>,
}

impl Actor {
    pub fn new(sub: Arc<str>, request_id: Option<Arc<str>>) -> Self {
        Self { sub, request_id }
    }

    /// The service itself (keep-alive refreshes).
    fn keepalive() -> Self {
        Self::new(KEEPALIVE_ACTOR.into(), None)
    }

    /// The Salesforce user whose consent completed a flow (the callback carries no API
    /// token).
    pub(super) fn salesforce_user(user_id: &str) -> Self {
        Self::new(format!("salesforce:{user_id}").into(), None)
    }
}

/// A pending counter: what it counts, and when (the minute, for aggregated actions).
#[derive(Clone, Debug)]
struct Key {
    tenant_id: Box<str>,
    actor: Arc<str>,
    action: AuditAction,
    connection_id: Option<Uuid>,
    at: Millis,
    request_id: Option<Arc<str>>,
}

/// A [`Key`], borrowed: counting one more occurrence of a pending counter (every token
/// read but the minute's first) looks it up by this, allocating and cloning nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    tenant_id: &'a str,
    actor: &'a str,
    action: AuditAction,
    connection_id: Option<Uuid>,
    at: Millis,
    request_id: Option<&'a str>,
}

impl KeyRef<'_> {
    fn to_key(self) -> Key {
        Key {
            tenant_id: self.tenant_id.into(),
            actor: self.actor.into(),
            action: self.action,
            connection_id: self.connection_id,
            at: self.at,
            request_id: self.request_id.map(Arc::from),
        }
    }
}

/// What the pending map's keys are compared and hashed as, owned or borrowed alike (the
/// standard library's way to look a `HashMap` up by a borrowed form of a composite key).
trait AsKeyRef {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKeyRef for Key {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            tenant_id: &self.tenant_id,
            actor: &self.actor,
            action: self.action,
            connection_id: self.connection_id,
            at: self.at,
            request_id: self.request_id.as_deref(),
        }
    }
}

impl AsKeyRef for KeyRef<'_> {
    fn key_ref(&self) -> KeyRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKeyRef + 'a> for Key {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for dyn AsKeyRef + '_ {}

impl Hash for dyn AsKeyRef + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

// `Key` compares and hashes exactly as its borrowed form, as `Borrow` requires.
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

/// The counters not yet written.
pub struct AuditLog {
    enabled: bool,
    /// Where dropped aggregates are counted.
    metrics: Metrics,
    shards: Vec<Mutex<HashMap<Key, i64>>>,
}

impl AuditLog {
    pub(super) fn new(enabled: bool, metrics: Metrics) -> Self {
        Self {
            enabled,
            metrics,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, connection_id: Option<Uuid>) -> &Mutex<HashMap<Key, i64>> {
        let index = connection_id.map_or(0, |id| (id.as_u128() % SHARDS as u128) as usize);
        &self.shards[index]
    }

    /// Counts one occurrence: one short lock, no I/O.
    fn record(
        &self,
        tenant: &str,
        actor: &Actor,
        action: AuditAction,
        connection_id: Option<Uuid>,
        now: Millis,
    ) {
        if !self.enabled {
            return;
        }
        let (at, request_id) = if action.aggregated() {
            (now - now.rem_euclid(MINUTE_MS), None)
        } else {
            (now, actor.request_id.as_deref())
        };
        let key = KeyRef {
            tenant_id: tenant,
            actor: &actor.sub,
            action,
            connection_id,
            at,
            request_id,
        };
        self.add(key, 1);
    }

    fn add(&self, key: KeyRef<'_>, count: i64) {
        let Ok(mut shard) = self.shard(key.connection_id).lock() else {
            return;
        };
        let full = shard.len() >= MAX_PENDING;
        match shard.get_mut(&key as &dyn AsKeyRef) {
            Some(total) => *total = total.saturating_add(count),
            None if full => self.metrics.count(Event::AuditDropped),
            None => {
                shard.insert(key.to_key(), count);
            }
        }
    }

    /// Takes every pending counter out.
    fn drain(&self) -> Vec<(Key, i64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                out.extend(shard.drain());
            }
        }
        out
    }
}

/// One page of the trail.
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; None on the last one.
    pub next_cursor: Option<String>,
}

/// Which entries a page shows.
pub struct AuditFilter {
    pub connection_id: Option<Uuid>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub cursor: Option<String>,
    pub limit: u32,
}

/// The cursor is opaque to callers: the (at, id) of the last entry of a page.
fn encode_cursor(entry: &AuditEntry) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", entry.at, entry.id))
}

fn decode_cursor(cursor: &str) -> Option<(Millis, i64)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, id) = raw.split_once('.')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

impl Broker {
    /// Records an action by an API caller (in memory; written by the flusher).
    pub fn audit(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        action: AuditAction,
        connection_id: Option<Uuid>,
    ) {
        self.audit
            .record(tenant.as_str(), actor, action, connection_id, self.now());
    }

    pub(super) fn audit_at(
        &self,
        actor: Option<&Actor>,
        tenant: &TenantId,
        action: AuditAction,
        connection_id: Option<Uuid>,
        now: Millis,
    ) {
        match actor {
            Some(actor) => self
                .audit
                .record(tenant.as_str(), actor, action, connection_id, now),
            None => self.audit.record(
                tenant.as_str(),
                &Actor::keepalive(),
                action,
                connection_id,
                now,
            ),
        }
    }

    /// Writes the pending counters; on failure they are kept for the next flush. Returns
    /// how many aggregates were written.
    pub async fn flush_audit(&self) -> Result<usize, BrokerError> {
        let pending = self.audit.drain();
        if pending.is_empty() {
            return Ok(0);
        }
        let records: Vec<AuditRecord> = pending
            .iter()
            .map(|(key, count)| AuditRecord {
                tenant_id: key.tenant_id.to_string(),
                at: key.at,
                actor: key.actor.to_string(),
                action: key.action.as_str(),
                connection_id: key.connection_id,
                request_id: key.request_id.as_deref().map(str::to_owned),
                count: *count,
            })
            .collect();
        match self.store.write_audit(&records).await {
            Ok(()) => Ok(records.len()),
            Err(e) => {
                self.metrics.count(Event::AuditFlushFailure);
                for (key, count) in pending {
                    self.audit.add(key.key_ref(), count);
                }
                Err(e.into())
            }
        }
    }

    /// Flushes every `audit_flush_ms` until `shutdown` turns true, then once more; deletes
    /// entries past their retention every hour.
    pub async fn run_audit(self, mut shutdown: watch::Receiver<bool>) {
        if !self.settings.audit.enabled {
            return;
        }
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(self.settings.audit.flush_interval) => false,
                _ = shutdown.changed() => true,
            } || *shutdown.borrow();
            if let Err(e) = self.flush_audit().await {
                tracing::warn!(error = %e, "could not write the audit trail; kept for the next flush");
            }
            if stopping {
                return;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                let retention =
                    i64::try_from(self.settings.audit.retention.as_millis()).unwrap_or(i64::MAX);
                match self
                    .store
                    .prune_audit(self.now().saturating_sub(retention))
                    .await
                {
                    Ok(0) => {}
                    Ok(pruned) => {
                        tracing::info!(pruned, "audit entries past their retention deleted")
                    }
                    Err(e) => tracing::warn!(error = %e, "could not prune the audit trail"),
                }
            }
        }
    }

    /// One page of the tenant's trail, oldest first.
    pub async fn audit_trail(
        &self,
        tenant: &TenantId,
        filter: AuditFilter,
    ) -> Result<AuditPage, BrokerError> {
        let after = match filter.cursor.as_deref() {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
                BrokerError::InvalidRequest(
                    "cursor must be a next_cursor value this endpoint returned".into(),
                )
            })?),
        };
        let limit = i64::from(filter.limit);
        // One more than asked for tells whether another page follows.
        let mut entries = self
            .store
            .list_audit(&AuditQuery {
                tenant_id: tenant.as_str().to_owned(),
                connection_id: filter.connection_id,
                since: filter.since.unwrap_or(Millis::MIN),
                until: filter.until.unwrap_or(Millis::MAX),
                after,
                limit: limit + 1,
            })
            .await?;
        let more = entries.len() as i64 > limit;
        entries.truncate(usize::try_from(limit).unwrap_or(0));
        let next_cursor = if more {
            entries.last().map(encode_cursor)
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_are_counted_per_actor_connection_and_minute() {
        let log = AuditLog::new(true, Metrics::new());
        let actor = Actor::new("svc".into(), Some("r1".into()));
        let id = Uuid::new_v4();
        for now in [60_000, 60_001, 119_999, 120_000] {
            log.record("acme", &actor, AuditAction::TokenServed, Some(id), now);
        }
        log.record(
            "acme",
            &actor,
            AuditAction::ConnectionDeleted,
            Some(id),
            61_000,
        );
        let mut drained = log.drain();
        drained.sort_by_key(|(k, _)| (k.at, k.action.as_str()));
        let counts: Vec<_> = drained
            .iter()
            .map(|(k, c)| (k.at, k.action, k.request_id.is_some(), *c))
            .collect();
        assert_eq!(
            counts,
            vec![
                (60_000, AuditAction::TokenServed, false, 3),
                (61_000, AuditAction::ConnectionDeleted, true, 1),
                (120_000, AuditAction::TokenServed, false, 1),
            ]
        );
        assert!(log.drain().is_empty());
        let off = AuditLog::new(false, Metrics::new());
        off.record("acme", &actor, AuditAction::TokenServed, Some(id), 0);
        assert!(off.drain().is_empty());
    }

    #[test]
    fn another_actor_tenant_or_connection_is_counted_apart() {
        let log = AuditLog::new(true, Metrics::new());
        let (svc, other) = (
            Actor::new("svc".into(), None),
            Actor::new("other".into(), None),
        );
        let id = Uuid::new_v4();
        for (tenant, actor, connection) in [
            ("acme", &svc, Some(id)),
            ("acme", &svc, Some(id)),
            ("acme", &other, Some(id)),
            ("beta", &svc, Some(id)),
            ("acme", &svc, None),
        ] {
            log.record(tenant, actor, AuditAction::TokenServed, connection, 60_001);
        }
        let mut counts: Vec<_> = log
            .drain()
            .into_iter()
            .map(|(k, count)| {
                (
                    k.tenant_id.to_string(),
                    k.actor.to_string(),
                    k.connection_id,
                    count,
                )
            })
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("acme".into(), "other".into(), Some(id), 1),
                ("acme".into(), "svc".into(), None, 1),
                ("acme".into(), "svc".into(), Some(id), 2),
                ("beta".into(), "svc".into(), Some(id), 1),
            ]
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let entry = AuditEntry {
            id: 42,
            at: 1_700_000_000_000,
            actor: "a".into(),
            action: "token_served".into(),
            connection_id: None,
            request_id: None,
            count: 1,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&entry)),
            Some((1_700_000_000_000, 42))
        );
        for bad in ["", "!!", "bm9wZQ", "MS4y.x"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
