-- Base schema: organizations, users, devices, API 1 invitations, messages,
-- realms and their role history, vlobs and the realm change log, blocks.
--
-- Conventions (see docs/storage-postgresql.md):
-- * every table has an integer surrogate key `_id`; foreign keys point to it
--   and are named after the role the row plays (`certifier`, `author`, ...);
-- * protocol identifiers are kept in `*_id` columns (text or uuid), unique per
--   organization;
-- * timestamps are TIMESTAMPTZ (microsecond precision, compared for equality
--   by the protocol).


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
    certifier INTEGER,
    created_on TIMESTAMPTZ NOT NULL,
    revoked_on TIMESTAMPTZ,
    revoked_user_certificate BYTEA,
    -- device._id
    revoker INTEGER,
    UNIQUE (organization, user_id),
    CHECK ((revoked_on IS NULL) = (revoked_user_certificate IS NULL)),
    CHECK ((revoked_on IS NULL) = (revoker IS NULL))
);


CREATE TABLE device (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    -- `<user_id>@<device name>`, so unique per organization means device
    -- name unique per user
    device_id VARCHAR(65) NOT NULL,
    device_certificate BYTEA NOT NULL,
    -- Copied from the certificate so that the handshake needs no parsing
    verify_key BYTEA NOT NULL,
    -- NULL when signed by the root key
    certifier INTEGER REFERENCES device (_id),
    created_on TIMESTAMPTZ NOT NULL,
    UNIQUE (organization, device_id)
);

CREATE INDEX device_user_idx ON device (user_);

-- user_ and device reference each other, hence the late constraints
ALTER TABLE user_
    ADD CONSTRAINT user_certifier_fkey FOREIGN KEY (certifier) REFERENCES device (_id),
    ADD CONSTRAINT user_revoker_fkey FOREIGN KEY (revoker) REFERENCES device (_id);


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
    _id BIGSERIAL PRIMARY KEY,
    recipient INTEGER NOT NULL REFERENCES user_ (_id),
    -- 1-based position in the recipient's list (the `count` of message_get)
    index INTEGER NOT NULL,
    sender INTEGER NOT NULL REFERENCES device (_id),
    timestamp TIMESTAMPTZ NOT NULL,
    body BYTEA NOT NULL,
    UNIQUE (recipient, index),
    CHECK (index >= 1)
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
    encryption_revision INTEGER NOT NULL DEFAULT 1,
    -- Number of vlob writes so far = index of the last realm_vlob_update row.
    -- Incrementing it also locks the realm row, which serializes the writers.
    checkpoint INTEGER NOT NULL DEFAULT 0,
    maintenance_type maintenance_type,
    maintenance_started_on TIMESTAMPTZ,
    maintenance_started_by INTEGER REFERENCES device (_id),
    UNIQUE (organization, realm_id),
    CHECK ((maintenance_type IS NULL) = (maintenance_started_on IS NULL)),
    CHECK ((maintenance_type IS NULL) = (maintenance_started_by IS NULL))
);


-- Append-only: one row per accepted role certificate.
-- The current role of a user is the row with the greatest (certified_on, _id).
CREATE TABLE realm_user_role (
    _id BIGSERIAL PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    user_ INTEGER NOT NULL REFERENCES user_ (_id),
    -- NULL: access removed
    role realm_role,
    certificate BYTEA NOT NULL,
    certifier INTEGER NOT NULL REFERENCES device (_id),
    certified_on TIMESTAMPTZ NOT NULL
);

CREATE INDEX realm_user_role_realm_user_idx ON realm_user_role (realm, user_, certified_on, _id);
CREATE INDEX realm_user_role_user_idx ON realm_user_role (user_);


-------------------------------------------------------
-- Vlobs
-------------------------------------------------------


-- One row per version. `blob` is the version's content at `encryption_revision`;
-- a finished re-encryption replaces it in place (from vlob_encryption_revision).
CREATE TABLE vlob_atom (
    _id BIGSERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    realm INTEGER NOT NULL REFERENCES realm (_id),
    vlob_id UUID NOT NULL,
    version INTEGER NOT NULL,
    encryption_revision INTEGER NOT NULL,
    blob BYTEA NOT NULL,
    size INTEGER NOT NULL,
    author INTEGER NOT NULL REFERENCES device (_id),
    -- The timestamp of the write request, returned unchanged by vlob_read
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    -- vlob ids are unique per organization, not only per realm
    UNIQUE (organization, vlob_id, version),
    CHECK (version >= 1)
);

CREATE INDEX vlob_atom_realm_idx ON vlob_atom (realm);

-- Blobs are encrypted hence incompressible: skip TOAST's compression attempt
ALTER TABLE vlob_atom ALTER COLUMN blob SET STORAGE EXTERNAL;


-- Re-encryption work: during a REENCRYPTION maintenance towards
-- `encryption_revision`, one row per vlob_atom of the realm, with the new blob
-- once saved by the client (NULL before).
CREATE TABLE vlob_encryption_revision (
    _id BIGSERIAL PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    encryption_revision INTEGER NOT NULL,
    vlob_atom BIGINT NOT NULL REFERENCES vlob_atom (_id),
    reencrypted_blob BYTEA,
    UNIQUE (vlob_atom, encryption_revision)
);

CREATE INDEX vlob_encryption_revision_realm_idx
    ON vlob_encryption_revision (realm, encryption_revision);

ALTER TABLE vlob_encryption_revision ALTER COLUMN reencrypted_blob SET STORAGE EXTERNAL;


-- Change log of each realm: the n-th vlob write of a realm has index n
-- (re-encryption does not count).
CREATE TABLE realm_vlob_update (
    _id BIGSERIAL PRIMARY KEY,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    index INTEGER NOT NULL,
    vlob_atom BIGINT NOT NULL REFERENCES vlob_atom (_id),
    UNIQUE (realm, index),
    CHECK (index >= 1)
);


-------------------------------------------------------
-- Blocks
-------------------------------------------------------


CREATE TABLE block (
    _id BIGSERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    block_id UUID NOT NULL,
    realm INTEGER NOT NULL REFERENCES realm (_id),
    author INTEGER NOT NULL REFERENCES device (_id),
    size INTEGER NOT NULL,
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    UNIQUE (organization, block_id)
);

CREATE INDEX block_realm_idx ON block (realm);


-- The POSTGRESQL blockstore. Deliberately independent from the metadata
-- tables (no foreign key, organization by its text id): it is one blockstore
-- among others and may be one node of a RAID.
CREATE TABLE block_data (
    _id BIGSERIAL PRIMARY KEY,
    organization_id TEXT NOT NULL,
    block_id UUID NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (organization_id, block_id)
);

ALTER TABLE block_data ALTER COLUMN data SET STORAGE EXTERNAL;
