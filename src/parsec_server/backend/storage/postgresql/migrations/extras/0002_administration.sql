-- The administration API (docs/administration-api.md): what it stores beyond the Parsec
-- 2.0.0 layout. Organizations and users written by Parsec 2.0.0 have no row here: no
-- limit, OUTSIDER allowed, creation date unknown, not frozen.

CREATE TABLE ext_organization_settings (
    organization INTEGER PRIMARY KEY REFERENCES organization (_id) ON DELETE CASCADE,
    -- NULL: no limit. Counts the users neither revoked nor frozen.
    active_users_limit INTEGER,
    user_profile_outsider_allowed BOOLEAN NOT NULL DEFAULT TRUE,
    -- NULL: created before our server took the database over.
    created_on TIMESTAMPTZ
);

-- One row per frozen user: refused at the handshake (joined by its query).
CREATE TABLE ext_user_frozen (
    user_ INTEGER PRIMARY KEY REFERENCES user_ (_id) ON DELETE CASCADE,
    frozen_on TIMESTAMPTZ NOT NULL
);
