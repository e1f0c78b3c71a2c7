-- The change feed of connections: how a replica learns, within a few seconds and with one
-- small query, that a connection it caches was deleted, refreshed, reauthorized or marked
-- as needing reauthorization on another replica (src/broker/changes.rs).
--
-- Written by triggers, so that no write path can forget it; the times are the database's
-- clock (like the refresh lease), one clock for every replica. Rows are pruned after a few
-- minutes by the replicas that read them.
CREATE TABLE connection_changes (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: a deletion is a change too.
    connection_id UUID NOT NULL,
    -- The lowest row version a cached token may come from and still be served: the new
    -- version after a refresh or a reauthorization, one more than the row's version when it
    -- stopped being active, the largest BIGINT when it was deleted.
    min_version   BIGINT NOT NULL,
    changed_at    BIGINT NOT NULL
);

CREATE INDEX connection_changes_changed_at ON connection_changes (changed_at);

CREATE FUNCTION connection_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO connection_changes (connection_id, min_version, changed_at)
        VALUES (OLD.id, 9223372036854775807,
                (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT);
        RETURN OLD;
    END IF;
    INSERT INTO connection_changes (connection_id, min_version, changed_at)
    VALUES (NEW.id,
            CASE WHEN NEW.status = 'active' THEN NEW.version ELSE NEW.version + 1 END,
            (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT);
    RETURN NEW;
END;
$$;

-- Token material (the version grows with it) or status changed; not the lease, not the
-- introspected expiry, not a re-sealing under a new key.
CREATE TRIGGER connection_updated AFTER UPDATE ON connections FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION connection_changed();

CREATE TRIGGER connection_deleted AFTER DELETE ON connections FOR EACH ROW
    EXECUTE FUNCTION connection_changed();
