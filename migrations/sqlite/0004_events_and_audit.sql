-- Signed webhooks through a transactional outbox, and the audit trail of token reads: the
-- twin of migrations/postgres/0004_events_and_audit.sql, which says why each column exists.

CREATE TABLE webhook_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE CHECK (id <> ''),
    tenant_id       TEXT NOT NULL CHECK (tenant_id <> ''),
    ordering_key    TEXT NOT NULL CHECK (ordering_key <> ''),
    event_type      TEXT NOT NULL CHECK (event_type IN ('connection.created',
        'connection.reauthorized', 'connection.needs_reauthorization', 'connection.deleted',
        'app.credentials_invalid', 'app.credentials_valid')),
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claim_id        TEXT,
    claim_expires_at INTEGER,
    delivered_at    INTEGER,
    failed_at       INTEGER,
    last_error      TEXT,
    CHECK ((claim_id IS NULL) = (claim_expires_at IS NULL))
);

CREATE INDEX webhook_events_pending ON webhook_events (ordering_key, seq)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_events_created_at ON webhook_events (created_at);

CREATE TABLE audit_entries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id     TEXT NOT NULL CHECK (tenant_id <> ''),
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL CHECK (action IN ('token_served', 'token_refreshed',
        'connection_created', 'connection_deleted', 'app_updated', 'app_deleted')),
    connection_id TEXT NOT NULL DEFAULT '',
    request_id    TEXT NOT NULL DEFAULT '',
    count         INTEGER NOT NULL CHECK (count > 0),
    UNIQUE (tenant_id, at, actor, action, connection_id, request_id)
);

CREATE INDEX audit_entries_tenant_at ON audit_entries (tenant_id, at, id);
CREATE INDEX audit_entries_at ON audit_entries (at);
