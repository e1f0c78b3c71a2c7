-- The change feed of connections: the twin of migrations/postgres/0005_connection_changes.sql,
-- which says why each column exists. UUIDs are hyphenated TEXT here; the time is SQLite's
-- clock (`julianday('now')`, like the refresh lease).
CREATE TABLE connection_changes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL CHECK (length(connection_id) = 36),
    min_version   INTEGER NOT NULL,
    changed_at    INTEGER NOT NULL
);

CREATE INDEX connection_changes_changed_at ON connection_changes (changed_at);

CREATE TRIGGER connection_updated AFTER UPDATE ON connections FOR EACH ROW
    WHEN OLD.version IS NOT NEW.version OR OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO connection_changes (connection_id, min_version, changed_at)
    VALUES (NEW.id,
            CASE WHEN NEW.status = 'active' THEN NEW.version ELSE NEW.version + 1 END,
            CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
END;

CREATE TRIGGER connection_deleted AFTER DELETE ON connections FOR EACH ROW
BEGIN
    INSERT INTO connection_changes (connection_id, min_version, changed_at)
    VALUES (OLD.id, 9223372036854775807,
            CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
END;
