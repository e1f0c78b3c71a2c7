-- The fenced refresh lease and the tenant app's credential state: the twin of
-- migrations/postgres/0002_refresh_lease.sql, which says why each column exists.
-- SQLite cannot add a table CHECK constraint to an existing table; the column CHECKs below
-- are what it can do, and the store writes the three lease columns together.

ALTER TABLE connections ADD COLUMN lease_id TEXT;
ALTER TABLE connections ADD COLUMN lease_holder TEXT;
ALTER TABLE connections ADD COLUMN lease_expires_at INTEGER;

ALTER TABLE tenant_apps ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'credentials_invalid'));
ALTER TABLE tenant_apps ADD COLUMN status_reason TEXT;
ALTER TABLE tenant_apps ADD COLUMN credentials_version INTEGER NOT NULL DEFAULT 1
    CHECK (credentials_version >= 1);
