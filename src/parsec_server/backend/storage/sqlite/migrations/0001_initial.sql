-- The SQLite schema (docs/storage-sqlite.md). It mirrors the PostgreSQL one (the
-- Parsec 2.0.0 layout after its migrations 0001..0005, plus our ext_* extras): same
-- tables, same columns in the same order with the same meanings, same `_id` surrogate
-- keys and foreign keys, same unique constraints and index names, so that
-- `parsec backend copy` moves a database table by table. Types are mapped:
--
-- * SERIAL            -> INTEGER PRIMARY KEY (the rowid: same numbering, never reused
--                        while the table's highest row exists)
-- * UUID              -> BLOB of 16 bytes (`uuid.UUID.bytes`), CHECKed
-- * TIMESTAMPTZ       -> INTEGER: microseconds since 1970-01-01T00:00:00Z (negative
--                        before), the protocol's resolution; years 1 to 9999 fit in 64 bits
-- * BYTEA             -> BLOB
-- * VARCHAR(n)        -> TEXT CHECK (length(...) <= n) (characters, as PostgreSQL counts)
-- * BOOLEAN           -> INTEGER CHECK (... IN (0, 1))
-- * enum types        -> TEXT CHECK (... IN (<the labels>))
--
-- Every table is STRICT: a value of another type is refused instead of stored.
-- `index` is a keyword of SQLite: always quoted.


CREATE TABLE migration (
    _id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) <= 256),
    applied INTEGER NOT NULL
) STRICT;


CREATE TABLE organization (
    _id INTEGER PRIMARY KEY,
    organization_id TEXT NOT NULL UNIQUE CHECK (length(organization_id) <= 32),
    bootstrap_token TEXT NOT NULL,
    -- NULL until the organization is bootstrapped
    root_verify_key BLOB,
    expiration_date INTEGER
) STRICT;


-- `user` is a reserved word (in PostgreSQL)
CREATE TABLE user_ (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_id TEXT NOT NULL CHECK (length(user_id) <= 32),
    user_certificate BLOB NOT NULL,
    -- device._id; NULL when signed by the root key (organization bootstrap)
    user_certifier INTEGER REFERENCES device (_id),
    created_on INTEGER NOT NULL,
    revoked_on INTEGER,
    revoked_user_certificate BLOB,
    revoked_user_certifier INTEGER REFERENCES device (_id),
    -- NULL: a user without human handle
    human INTEGER REFERENCES human (_id),
    redacted_user_certificate BLOB NOT NULL,
    -- Nullable as in Parsec 2.0.0; always set by our servers
    profile TEXT CHECK (profile IN ('ADMIN', 'STANDARD', 'OUTSIDER')),
    UNIQUE (organization, user_id)
) STRICT;


CREATE TABLE device (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    -- `<user_id>@<device name>`
    device_id TEXT NOT NULL CHECK (length(device_id) <= 65),
    device_certificate BLOB NOT NULL,
    -- NULL when signed by the root key
    device_certifier INTEGER REFERENCES device (_id),
    created_on INTEGER NOT NULL,
    redacted_device_certificate BLOB NOT NULL,
    -- NULL: no label
    device_label TEXT CHECK (length(device_label) <= 254),
    -- extra (ext_*): the certificate's verify key, so that the handshake needs no parsing
    verify_key BLOB,
    UNIQUE (organization, device_id),
    UNIQUE (user_, device_id)
) STRICT;


CREATE TABLE human (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    email TEXT NOT NULL CHECK (length(email) <= 254),
    label TEXT NOT NULL CHECK (length(label) <= 254),
    UNIQUE (organization, email)
) STRICT;


-------------------------------------------------------
-- API 1 invitations (one per invited id, replaced on re-invite)
-------------------------------------------------------


CREATE TABLE user_invitation (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_id TEXT NOT NULL CHECK (length(user_id) <= 32),
    creator INTEGER NOT NULL REFERENCES device (_id),
    created_on INTEGER NOT NULL,
    UNIQUE (organization, user_id)
) STRICT;


CREATE TABLE device_invitation (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    device_id TEXT NOT NULL CHECK (length(device_id) <= 65),
    creator INTEGER NOT NULL REFERENCES device (_id),
    created_on INTEGER NOT NULL,
    UNIQUE (organization, device_id)
) STRICT;


-------------------------------------------------------
-- API 2 invitations and their rendezvous conduit
-------------------------------------------------------


CREATE TABLE invitation (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    token BLOB NOT NULL CHECK (length(token) = 16),
    type TEXT NOT NULL CHECK (type IN ('USER', 'DEVICE')),
    greeter INTEGER NOT NULL REFERENCES user_ (_id),
    -- USER invitations only
    claimer_email TEXT CHECK (length(claimer_email) <= 255),
    created_on INTEGER NOT NULL,
    deleted_on INTEGER,
    deleted_reason TEXT CHECK (deleted_reason IN ('FINISHED', 'CANCELLED', 'ROTTEN')),
    conduit_state TEXT NOT NULL DEFAULT '1_WAIT_PEERS' CHECK (conduit_state IN (
        '1_WAIT_PEERS',
        '2_1_CLAIMER_HASHED_NONCE',
        '2_2_GREETER_NONCE',
        '2_3_CLAIMER_NONCE',
        '3_1_CLAIMER_TRUST',
        '3_2_GREETER_TRUST',
        '4_COMMUNICATE'
    )),
    -- NULL: slot absent; an empty blob is a present payload
    conduit_greeter_payload BLOB,
    conduit_claimer_payload BLOB,
    UNIQUE (organization, token)
) STRICT;


-------------------------------------------------------
-- Messages
-------------------------------------------------------


CREATE TABLE message (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    recipient INTEGER NOT NULL REFERENCES user_ (_id),
    timestamp INTEGER NOT NULL,
    -- 1-based position in the recipient's list (the `count` of message_get)
    "index" INTEGER NOT NULL,
    sender INTEGER NOT NULL REFERENCES device (_id),
    body BLOB NOT NULL
) STRICT;


-------------------------------------------------------
-- Realms
-------------------------------------------------------


CREATE TABLE realm (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    realm_id BLOB NOT NULL CHECK (length(realm_id) = 16),
    encryption_revision INTEGER NOT NULL,
    maintenance_started_by INTEGER REFERENCES device (_id),
    maintenance_started_on INTEGER,
    maintenance_type TEXT CHECK (maintenance_type IN ('REENCRYPTION', 'GARBAGE_COLLECTION')),
    UNIQUE (organization, realm_id)
) STRICT;


-- Append-only: one row per accepted role certificate; NULL role = access removed.
CREATE TABLE realm_user_role (
    _id INTEGER PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    role TEXT CHECK (role IN ('OWNER', 'MANAGER', 'CONTRIBUTOR', 'READER')),
    certificate BLOB NOT NULL,
    certified_by INTEGER NOT NULL REFERENCES device (_id),
    certified_on INTEGER NOT NULL
) STRICT;


-------------------------------------------------------
-- Vlobs
-------------------------------------------------------


-- The encryption revisions of each realm: 1 at creation, one more per re-encryption.
CREATE TABLE vlob_encryption_revision (
    _id INTEGER PRIMARY KEY,
    realm INTEGER REFERENCES realm (_id),
    encryption_revision INTEGER NOT NULL,
    UNIQUE (realm, encryption_revision)
) STRICT;


-- One row per (version, encryption revision): a re-encryption adds a copy of every
-- version under the new revision and keeps the old rows.
CREATE TABLE vlob_atom (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    vlob_encryption_revision INTEGER NOT NULL REFERENCES vlob_encryption_revision (_id),
    vlob_id BLOB NOT NULL CHECK (length(vlob_id) = 16),
    version INTEGER NOT NULL,
    blob BLOB NOT NULL,
    size INTEGER NOT NULL,
    author INTEGER NOT NULL REFERENCES device (_id),
    -- The timestamp of the write request, returned unchanged by vlob_read
    created_on INTEGER NOT NULL,
    deleted_on INTEGER,
    UNIQUE (vlob_encryption_revision, vlob_id, version)
) STRICT;


-- Change log of each realm: the n-th vlob write of a realm has index n
-- (re-encryption does not count); points at the atom as first written.
CREATE TABLE realm_vlob_update (
    _id INTEGER PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    "index" INTEGER NOT NULL,
    vlob_atom INTEGER NOT NULL REFERENCES vlob_atom (_id),
    UNIQUE (realm, "index")
) STRICT;


-------------------------------------------------------
-- Blocks (metadata; the data is in the blockstore)
-------------------------------------------------------


CREATE TABLE block (
    _id INTEGER PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    block_id BLOB NOT NULL CHECK (length(block_id) = 16),
    realm INTEGER NOT NULL REFERENCES realm (_id),
    author INTEGER NOT NULL REFERENCES device (_id),
    size INTEGER NOT NULL,
    created_on INTEGER NOT NULL,
    deleted_on INTEGER,
    UNIQUE (organization, block_id)
) STRICT;


-------------------------------------------------------
-- Extras (ext_*): what our server adds to the Parsec 2.0.0 layout
-------------------------------------------------------


-- One row per vlob id: vlob ids are unique per organization.
CREATE TABLE ext_vlob_id (
    organization INTEGER NOT NULL,
    vlob_id BLOB NOT NULL CHECK (length(vlob_id) = 16),
    PRIMARY KEY (organization, vlob_id)
) STRICT;

-- The administration API: settings of the organizations created by our server (none:
-- no limit, OUTSIDER allowed, creation date unknown) and frozen users.
CREATE TABLE ext_organization_settings (
    organization INTEGER PRIMARY KEY REFERENCES organization (_id) ON DELETE CASCADE,
    -- NULL: no limit. Counts the users neither revoked nor frozen.
    active_users_limit INTEGER,
    user_profile_outsider_allowed INTEGER NOT NULL DEFAULT 1
        CHECK (user_profile_outsider_allowed IN (0, 1)),
    created_on INTEGER
) STRICT;

CREATE TABLE ext_user_frozen (
    user_ INTEGER PRIMARY KEY REFERENCES user_ (_id) ON DELETE CASCADE,
    frozen_on INTEGER NOT NULL
) STRICT;

CREATE INDEX ext_vlob_atom_vlob_idx ON vlob_atom (organization, vlob_id, version);
CREATE UNIQUE INDEX ext_message_recipient_index_idx ON message (recipient, "index");
CREATE INDEX ext_realm_user_role_realm_user_idx
    ON realm_user_role (realm, user_, certified_on, _id);
CREATE INDEX ext_realm_user_role_user_idx ON realm_user_role (user_);
CREATE INDEX ext_user_human_idx ON user_ (human);
CREATE INDEX ext_device_user_idx ON device (user_);
CREATE INDEX ext_invitation_open_by_greeter_idx ON invitation (greeter, type)
    WHERE deleted_on IS NULL;
CREATE INDEX ext_block_realm_idx ON block (realm);
