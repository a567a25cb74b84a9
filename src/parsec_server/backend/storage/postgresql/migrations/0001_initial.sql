-- Base schema. The layout is the one Parsec 2.0.0 builds, object for object (names,
-- column order, types, nullability, constraint names), so that a database can move
-- between that server and ours without converting data (docs/storage-postgresql.md).
-- What our server adds lives apart, in extras/ (objects named ext_*).
--
-- * every table has a SERIAL surrogate key `_id`; foreign keys point to it;
-- * protocol identifiers are kept in `*_id` columns (text or uuid);
-- * timestamps are TIMESTAMPTZ (microsecond precision).


CREATE TABLE organization (
    _id SERIAL PRIMARY KEY,
    organization_id VARCHAR(32) NOT NULL UNIQUE,
    bootstrap_token TEXT NOT NULL,
    -- NULL until the organization is bootstrapped
    root_verify_key BYTEA,
    expiration_date TIMESTAMPTZ
);


-- `user` is a reserved word
CREATE TABLE user_ (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_id VARCHAR(32) NOT NULL,
    -- replaced by `profile` in 0005_redacted_certificates.sql
    is_admin BOOLEAN NOT NULL,
    user_certificate BYTEA NOT NULL,
    -- device._id; NULL when signed by the root key (organization bootstrap)
    user_certifier INTEGER,
    created_on TIMESTAMPTZ NOT NULL,
    revoked_on TIMESTAMPTZ,
    revoked_user_certificate BYTEA,
    -- device._id
    revoked_user_certifier INTEGER,
    UNIQUE (organization, user_id)
);


CREATE TABLE device (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    -- `<user_id>@<device name>`
    device_id VARCHAR(65) NOT NULL,
    device_certificate BYTEA NOT NULL,
    -- NULL when signed by the root key
    device_certifier INTEGER REFERENCES device (_id),
    created_on TIMESTAMPTZ NOT NULL,
    UNIQUE (organization, device_id),
    UNIQUE (user_, device_id)
);

-- user_ and device reference each other, hence the late constraints
ALTER TABLE user_
    ADD CONSTRAINT fk_user_device_user_certifier
        FOREIGN KEY (user_certifier) REFERENCES device (_id),
    ADD CONSTRAINT fk_user_device_revoked_user_certifier
        FOREIGN KEY (revoked_user_certifier) REFERENCES device (_id);


-------------------------------------------------------
-- API 1 invitations (one per invited id, replaced on re-invite)
-------------------------------------------------------


CREATE TABLE user_invitation (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_id VARCHAR(32) NOT NULL,
    creator INTEGER NOT NULL REFERENCES device (_id),
    created_on TIMESTAMPTZ NOT NULL,
    UNIQUE (organization, user_id)
);


CREATE TABLE device_invitation (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    device_id VARCHAR(65) NOT NULL,
    creator INTEGER NOT NULL REFERENCES device (_id),
    created_on TIMESTAMPTZ NOT NULL,
    UNIQUE (organization, device_id)
);


-------------------------------------------------------
-- Messages
-------------------------------------------------------


CREATE TABLE message (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    recipient INTEGER NOT NULL REFERENCES user_ (_id),
    timestamp TIMESTAMPTZ NOT NULL,
    -- 1-based position in the recipient's list (the `count` of message_get)
    index INTEGER NOT NULL,
    sender INTEGER NOT NULL REFERENCES device (_id),
    body BYTEA NOT NULL
);


-------------------------------------------------------
-- Realms
-------------------------------------------------------


CREATE TYPE maintenance_type AS ENUM ('REENCRYPTION', 'GARBAGE_COLLECTION');
CREATE TYPE realm_role AS ENUM ('OWNER', 'MANAGER', 'CONTRIBUTOR', 'READER');


CREATE TABLE realm (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    realm_id UUID NOT NULL,
    encryption_revision INTEGER NOT NULL,
    maintenance_started_by INTEGER REFERENCES device (_id),
    maintenance_started_on TIMESTAMPTZ,
    maintenance_type maintenance_type,
    UNIQUE (organization, realm_id)
);


-- Append-only: one row per accepted role certificate; NULL role = access removed.
CREATE TABLE realm_user_role (
    _id SERIAL PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    role realm_role,
    certificate BYTEA NOT NULL,
    certified_by INTEGER NOT NULL REFERENCES device (_id),
    certified_on TIMESTAMPTZ NOT NULL
);


-------------------------------------------------------
-- Vlobs
-------------------------------------------------------


-- The encryption revisions of each realm: 1 at creation, one more per re-encryption.
CREATE TABLE vlob_encryption_revision (
    _id SERIAL PRIMARY KEY,
    realm INTEGER REFERENCES realm (_id),
    encryption_revision INTEGER NOT NULL,
    UNIQUE (realm, encryption_revision)
);


-- One row per (version, encryption revision): a re-encryption adds a copy of every
-- version under the new revision and keeps the old rows.
CREATE TABLE vlob_atom (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    vlob_encryption_revision INTEGER NOT NULL REFERENCES vlob_encryption_revision (_id),
    vlob_id UUID NOT NULL,
    version INTEGER NOT NULL,
    blob BYTEA NOT NULL,
    size INTEGER NOT NULL,
    author INTEGER NOT NULL REFERENCES device (_id),
    -- The timestamp of the write request, returned unchanged by vlob_read
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    UNIQUE (vlob_encryption_revision, vlob_id, version)
);


-- Change log of each realm: the n-th vlob write of a realm has index n
-- (re-encryption does not count); points at the atom as first written.
CREATE TABLE realm_vlob_update (
    _id SERIAL PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    index INTEGER NOT NULL,
    vlob_atom INTEGER NOT NULL REFERENCES vlob_atom (_id),
    UNIQUE (realm, index)
);


-------------------------------------------------------
-- Blocks
-------------------------------------------------------


CREATE TABLE block (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    block_id UUID NOT NULL,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    author INTEGER NOT NULL REFERENCES device (_id),
    size INTEGER NOT NULL,
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    UNIQUE (organization, block_id)
);


-- The POSTGRESQL blockstore. Deliberately independent from the metadata tables (no
-- foreign key, organization by its text id): it may be one node of a RAID.
CREATE TABLE block_data (
    _id SERIAL PRIMARY KEY,
    organization_id VARCHAR NOT NULL,
    block_id UUID NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (organization_id, block_id)
);
