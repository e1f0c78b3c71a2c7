-- Signed webhooks through a transactional outbox, and the audit trail of token reads.
--
-- The SQLite twin of this file is migrations/sqlite/0004_events_and_audit.sql; keep the two
-- in step. Numbered 0004: 0003 is taken by a parallel change.

-- The outbox: one row per event, written in the same transaction as the state change it
-- reports, so that a change is never committed without its event (nor an event without its
-- change). Delivery workers on every replica claim due rows, post them, and mark them.
CREATE TABLE webhook_events (
    -- Delivery order within an ordering key (and the claim's tie-break): a row written later
    -- in the same connection's history always gets a higher number, because the state change
    -- that writes it waits for the earlier one's row lock first.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The `webhook-id` header: the same on every attempt, so receivers can drop duplicates.
    id              TEXT NOT NULL UNIQUE CHECK (id <> ''),
    tenant_id       TEXT NOT NULL CHECK (tenant_id <> ''),
    -- Events of one key are delivered in `seq` order, one at a time: the connection id for
    -- connection events, `app:<tenant>` for app events. No foreign key: an event outlives
    -- the connection it reports (`connection.deleted`).
    ordering_key    TEXT NOT NULL CHECK (ordering_key <> ''),
    event_type      TEXT NOT NULL CHECK (event_type IN ('connection.created',
        'connection.reauthorized', 'connection.needs_reauthorization', 'connection.deleted',
        'app.credentials_invalid', 'app.credentials_valid')),
    -- The exact JSON body that is signed and posted (never a token or a secret).
    payload         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    -- No attempt before this time (the back-off after a failed attempt).
    next_attempt_at BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- A worker's claim: it expires, so an event claimed by a replica that died is delivered
    -- by another one (or by the same after its restart).
    claim_id        TEXT,
    claim_expires_at BIGINT,
    delivered_at    BIGINT,
    -- Set when retries stopped (the retry period ended): the event is dropped, not lost
    -- silently (it stays until the retention ends, with its last error).
    failed_at       BIGINT,
    last_error      TEXT,
    CHECK ((claim_id IS NULL) = (claim_expires_at IS NULL))
);

-- The claim and the metrics look only at pending rows, by ordering key and by age.
CREATE INDEX webhook_events_pending ON webhook_events (ordering_key, seq)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
-- Pruning finished rows by age.
CREATE INDEX webhook_events_created_at ON webhook_events (created_at);

-- The audit trail. Token reads are aggregated per (actor, connection, minute): `count` says
-- how many requests an entry stands for. A row is merged into (counts added) when a later
-- flush of the same replica, or another replica, reports the same key.
CREATE TABLE audit_entries (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT NOT NULL CHECK (tenant_id <> ''),
    -- Unix milliseconds: the start of the minute for aggregated entries, else the moment.
    at            BIGINT NOT NULL,
    -- The API token's `sub` (or who acted without one, e.g. `valo-oauth:keepalive`).
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL CHECK (action IN ('token_served', 'token_refreshed',
        'connection_created', 'connection_deleted', 'app_updated', 'app_deleted')),
    -- '' when the action concerns no connection, and '' for no request id: NOT NULL so that
    -- the unique key below merges rows (NULLs never compare equal).
    connection_id TEXT NOT NULL DEFAULT '',
    request_id    TEXT NOT NULL DEFAULT '',
    count         BIGINT NOT NULL CHECK (count > 0),
    UNIQUE (tenant_id, at, actor, action, connection_id, request_id)
);

-- Reading a tenant's trail in time order, and pruning by age.
CREATE INDEX audit_entries_tenant_at ON audit_entries (tenant_id, at, id);
CREATE INDEX audit_entries_at ON audit_entries (at);
