-- The fenced refresh lease and the tenant app's credential state.
--
-- A refresh no longer holds a row lock (and a pooled connection) across the call to
-- Salesforce. It takes a lease in a short statement, calls Salesforce with a hard deadline
-- that ends well before the lease does, and commits the result with a compare-and-set on
-- the lease id. A holder whose lease was taken over can therefore never overwrite newer
-- state, and a database session that dies mid-refresh releases nothing early: the lease
-- lives in the row, not in the session (so it also works behind a transaction-mode pooler).

-- The current lease: its random id, who holds it (host/instance, for operators), and when it
-- ends, in the database server's clock (one clock for every replica, no skew between them).
ALTER TABLE connections ADD COLUMN lease_id TEXT;
ALTER TABLE connections ADD COLUMN lease_holder TEXT;
ALTER TABLE connections ADD COLUMN lease_expires_at BIGINT;
-- A lease is all three or none: a half-written lease would either never expire or never be
-- recognised by its holder.
ALTER TABLE connections ADD CONSTRAINT connections_lease_complete CHECK (
    (lease_id IS NULL AND lease_holder IS NULL AND lease_expires_at IS NULL)
    OR (lease_id IS NOT NULL AND lease_holder IS NOT NULL AND lease_expires_at IS NOT NULL)
);

-- Wrong consumer credentials (`invalid_client`, `invalid_client_id` on a refresh) are the
-- app's state, not its connections': fixing the app (a PUT) revives every connection with
-- no reauthorization, because not one refresh token was consumed.
ALTER TABLE tenant_apps ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'credentials_invalid'));
ALTER TABLE tenant_apps ADD COLUMN status_reason TEXT;
-- Grows with every PUT: a refresh that started with the old credentials and fails after the
-- new ones were stored must not mark the new ones invalid (compare-and-set on this).
ALTER TABLE tenant_apps ADD COLUMN credentials_version BIGINT NOT NULL DEFAULT 1
    CHECK (credentials_version >= 1);
