-- What our server adds to the Parsec 2.0.0 layout. Every object is named ext_* and
-- stays correct whoever writes to the database (Parsec 2.0.0 ignores them);
-- `parsec backend downgrade` drops them all. Applied once the five numbered
-- migrations are, recorded in ext_migration (never in `migration`, whose rows Parsec
-- 2.0.0 and its successors read as their own level).

CREATE TABLE ext_migration (
    _id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    applied TIMESTAMPTZ NOT NULL
);

-- The device's verify key, copied from its certificate so that the handshake needs no
-- parsing. NULL for devices written by Parsec 2.0.0: the handshake parses the
-- certificate then (the migration fills the rows it finds).
ALTER TABLE device ADD COLUMN verify_key BYTEA;

-- Lookups of a vlob by id (Parsec 2.0.0 scans the table).
CREATE INDEX ext_vlob_atom_vlob_idx ON vlob_atom (organization, vlob_id, version);

-- One row per vlob id created by our server: makes two concurrent vlob_create of the
-- same id in two realms collide (vlob ids are unique per organization for us). Ids
-- created before are found through ext_vlob_atom_vlob_idx. No foreign key: derived
-- data, dropped at downgrade.
CREATE TABLE ext_vlob_id (
    organization INTEGER NOT NULL,
    vlob_id UUID NOT NULL,
    PRIMARY KEY (organization, vlob_id)
);

-- A message's index is its position in the recipient's list in _id order (what
-- message_get serves). Parsec 2.0.0 may have stored duplicates under concurrency:
-- renumber them, then make the index unique.
UPDATE message m SET index = n.position
FROM (
    SELECT _id, row_number() OVER (PARTITION BY recipient ORDER BY _id) AS position
    FROM message
) n
WHERE m._id = n._id AND m.index <> n.position;
CREATE UNIQUE INDEX ext_message_recipient_index_idx ON message (recipient, index);

-- Secondary indexes of the hot queries
CREATE INDEX ext_realm_user_role_realm_user_idx
    ON realm_user_role (realm, user_, certified_on, _id);
CREATE INDEX ext_realm_user_role_user_idx ON realm_user_role (user_);
CREATE INDEX ext_user_human_idx ON user_ (human);
CREATE INDEX ext_device_user_idx ON device (user_);
CREATE INDEX ext_invitation_open_by_greeter_idx ON invitation (greeter, type)
    WHERE deleted_on IS NULL;
CREATE INDEX ext_block_realm_idx ON block (realm);

-- Blobs are encrypted hence incompressible: skip TOAST's compression attempt (new rows)
ALTER TABLE vlob_atom ALTER COLUMN blob SET STORAGE EXTERNAL;
ALTER TABLE block_data ALTER COLUMN data SET STORAGE EXTERNAL;
