-- valo-oauth schema, Postgres.
--
-- Timestamps are Unix milliseconds (BIGINT) so that the SQLite schema and every query can be
-- the same on both databases. Every `…_enc` column holds a ciphertext made by the service's
-- keyring (AES-256-GCM with a key id and row-bound associated data): the database never
-- sees a plaintext secret. The SQLite twin of this file is migrations/sqlite/0001_initial.sql;
-- keep the two in step.

-- One bring-your-own External Client App per tenant.
CREATE TABLE tenant_apps (
    -- The tenant id is the key that every other row hangs off; an empty one would be a bug
    -- upstream that silently merges tenants.
    tenant_id           TEXT PRIMARY KEY CHECK (tenant_id <> ''),
    -- Where the tenant's users log in (normalised https://… without a trailing slash); the
    -- authorize, token and revoke endpoints are derived from it, so it cannot be empty.
    login_url           TEXT NOT NULL CHECK (login_url <> ''),
    -- A missing credential must fail loudly here, not later as an opaque decrypt error.
    consumer_key_enc    TEXT NOT NULL CHECK (consumer_key_enc <> ''),
    consumer_key_hint   TEXT NOT NULL,
    consumer_secret_enc TEXT NOT NULL CHECK (consumer_secret_enc <> ''),
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- Pending authorization-code flows (RFC 6749 §4.1 with PKCE, RFC 7636).
CREATE TABLE authorization_sessions (
    -- SHA-256 of the state: the state itself is a bearer secret and is never stored. The
    -- primary key makes a state usable by exactly one session; the length check rejects a
    -- hash of the wrong algorithm (or a raw state stored by mistake).
    state_hash        BYTEA PRIMARY KEY CHECK (octet_length(state_hash) = 32),
    -- The id is in the PKCE verifier's associated data, so it must identify one row.
    id                UUID NOT NULL UNIQUE,
    -- Deleting a tenant's app ends its pending flows: their callback could no longer
    -- exchange the code without the app's secret.
    tenant_id         TEXT NOT NULL REFERENCES tenant_apps (tenant_id) ON DELETE CASCADE,
    pkce_verifier_enc TEXT NOT NULL CHECK (pkce_verifier_enc <> ''),
    return_to         TEXT,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    -- Set once, atomically, by the callback (single-use state, RFC 9700 §4.7).
    consumed_at       BIGINT
);

-- Housekeeping deletes expired sessions by range.
CREATE INDEX authorization_sessions_expires_at ON authorization_sessions (expires_at);
-- The cascade from tenant_apps looks sessions up by tenant.
CREATE INDEX authorization_sessions_tenant_id ON authorization_sessions (tenant_id);

-- One connected Salesforce user of one org, for one tenant.
CREATE TABLE connections (
    -- The id is in the tokens' associated data: a ciphertext copied to another row fails.
    id                UUID PRIMARY KEY,
    -- Deleting a tenant's app deletes its connections (their tokens are revoked first by the
    -- service; the rows are useless without the app's secret anyway).
    tenant_id         TEXT NOT NULL REFERENCES tenant_apps (tenant_id) ON DELETE CASCADE,
    -- org and user come from the token response's identity URL; empty ones would make the
    -- uniqueness below meaningless.
    org_id            TEXT NOT NULL CHECK (org_id <> ''),
    user_id           TEXT NOT NULL CHECK (user_id <> ''),
    login_url         TEXT NOT NULL CHECK (login_url <> ''),
    instance_url      TEXT NOT NULL CHECK (instance_url <> ''),
    scopes            TEXT NOT NULL,
    access_token_enc  TEXT NOT NULL CHECK (access_token_enc <> ''),
    -- Never NULL: a connection without a refresh token cannot be kept alive.
    refresh_token_enc TEXT NOT NULL CHECK (refresh_token_enc <> ''),
    issued_at         BIGINT NOT NULL,
    access_expires_at BIGINT NOT NULL,
    expiry_assumed    BOOLEAN NOT NULL,
    -- The statuses the API documents; anything else is a bug.
    status            TEXT NOT NULL CHECK (status IN ('active', 'needs_reauthorization', 'revoked')),
    last_error        TEXT,
    -- Drives the back-off of transient refresh failures.
    failure_count     INTEGER NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    next_attempt_at   BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    last_refreshed_at BIGINT NOT NULL,
    -- Grows with every change of the token material (lets callers tell a newer token).
    version           BIGINT NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- Re-authorizing the same Salesforce user of the same org updates the connection instead
    -- of creating a second one (whose refresh token would then be orphaned). Also serves the
    -- tenant-scoped listing and the cascade from tenant_apps.
    UNIQUE (tenant_id, org_id, user_id)
);

-- The keep-alive scan: active connections ordered by when they were last refreshed.
CREATE INDEX connections_keepalive ON connections (status, last_refreshed_at);
