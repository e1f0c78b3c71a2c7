-- valo-oauth schema, SQLite (the embedded, single-replica default).
--
-- The twin of migrations/postgres/0001_initial.sql; see there for why each constraint
-- exists. Differences, and why:
-- * STRICT tables, so that a value of the wrong type (a UUID bound as a BLOB, a timestamp
--   as TEXT) is an error instead of being stored silently.
-- * UUIDs are TEXT in their hyphenated form (36 characters), BOOLEAN is INTEGER 0/1,
--   BYTEA is BLOB, BIGINT is INTEGER (64-bit in SQLite).
-- * Foreign keys are only enforced when every connection turns them on; the service does
--   (`SqliteConnectOptions::foreign_keys(true)`), otherwise ON DELETE CASCADE does nothing.
-- Timestamps are Unix milliseconds.

CREATE TABLE tenant_apps (
    tenant_id           TEXT PRIMARY KEY NOT NULL CHECK (tenant_id <> ''),
    login_url           TEXT NOT NULL CHECK (login_url <> ''),
    consumer_key_enc    TEXT NOT NULL CHECK (consumer_key_enc <> ''),
    consumer_key_hint   TEXT NOT NULL,
    consumer_secret_enc TEXT NOT NULL CHECK (consumer_secret_enc <> ''),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE authorization_sessions (
    -- SHA-256 of the state (never the state itself); single use is keyed on it.
    state_hash        BLOB PRIMARY KEY NOT NULL CHECK (length(state_hash) = 32),
    -- In the PKCE verifier's associated data, so unique; hyphenated UUID text.
    id                TEXT NOT NULL UNIQUE CHECK (length(id) = 36),
    tenant_id         TEXT NOT NULL REFERENCES tenant_apps (tenant_id) ON DELETE CASCADE,
    pkce_verifier_enc TEXT NOT NULL CHECK (pkce_verifier_enc <> ''),
    return_to         TEXT,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    consumed_at       INTEGER
) STRICT;

-- Housekeeping deletes expired sessions by range.
CREATE INDEX authorization_sessions_expires_at ON authorization_sessions (expires_at);
-- The cascade from tenant_apps looks sessions up by tenant.
CREATE INDEX authorization_sessions_tenant_id ON authorization_sessions (tenant_id);

CREATE TABLE connections (
    -- In the tokens' associated data; hyphenated UUID text.
    id                TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    tenant_id         TEXT NOT NULL REFERENCES tenant_apps (tenant_id) ON DELETE CASCADE,
    org_id            TEXT NOT NULL CHECK (org_id <> ''),
    user_id           TEXT NOT NULL CHECK (user_id <> ''),
    login_url         TEXT NOT NULL CHECK (login_url <> ''),
    instance_url      TEXT NOT NULL CHECK (instance_url <> ''),
    scopes            TEXT NOT NULL,
    access_token_enc  TEXT NOT NULL CHECK (access_token_enc <> ''),
    refresh_token_enc TEXT NOT NULL CHECK (refresh_token_enc <> ''),
    issued_at         INTEGER NOT NULL,
    access_expires_at INTEGER NOT NULL,
    expiry_assumed    INTEGER NOT NULL CHECK (expiry_assumed IN (0, 1)),
    status            TEXT NOT NULL CHECK (status IN ('active', 'needs_reauthorization', 'revoked')),
    last_error        TEXT,
    failure_count     INTEGER NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    next_attempt_at   INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    last_refreshed_at INTEGER NOT NULL,
    version           INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- Re-authorizing the same org user updates the existing connection.
    UNIQUE (tenant_id, org_id, user_id)
) STRICT;

-- The keep-alive scan: active connections ordered by when they were last refreshed.
CREATE INDEX connections_keepalive ON connections (status, last_refreshed_at);
