-- What a reconnect needs (issue 10): the Salesforce username of each connection, and the
-- connection a re-authorization flow is meant to renew.

-- The username Salesforce reported for the connection's user (RFC 7662 introspection's
-- `username`). A reconnect passes it as `login_hint`, so the person lands on the login page
-- of the right user. Unknown (NULL) for connections made before this migration or when
-- introspection told nothing; a later authorization fills it in.
ALTER TABLE connections ADD COLUMN username TEXT;

-- The connection a re-authorization flow renews (NULL for a plain authorization). No
-- foreign key: a connection deleted while its reconnect is under way must not make the
-- callback fail; the flow then ends as a plain authorization would.
ALTER TABLE authorization_sessions ADD COLUMN connection_id UUID;
