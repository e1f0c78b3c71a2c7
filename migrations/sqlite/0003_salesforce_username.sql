-- The Salesforce username of each connection and the connection a re-authorization renews:
-- the twin of migrations/postgres/0003_salesforce_username.sql, which says why each column
-- exists. UUIDs are hyphenated TEXT here.

ALTER TABLE connections ADD COLUMN username TEXT;
ALTER TABLE authorization_sessions ADD COLUMN connection_id TEXT
    CHECK (connection_id IS NULL OR length(connection_id) = 36);
