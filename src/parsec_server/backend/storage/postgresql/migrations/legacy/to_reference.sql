-- One-off conversion of the layout of our earlier releases (legacy/0001..0005) into the
-- Parsec 2.0.0 layout at level 5 (0001..0005), rows kept. Run by `parsec backend
-- migrate` (then the extras) and `parsec backend downgrade` (alone), in their single
-- transaction, after they checked that device labels, claimer emails and ids fit the
-- narrower Parsec 2.0.0 columns. Column order may differ from a fresh database
-- (Parsec 2.0.0 never relies on it).
--
-- device.verify_key is dropped like every other column Parsec 2.0.0 lacks: the extras
-- add it back and fill it from the certificates, so that this file lands exactly on the
-- Parsec 2.0.0 catalog whoever runs it.

-- Users: the Parsec 2.0.0 column and constraint names, no CHECK, profile nullable
DROP INDEX user_human_idx;
ALTER TABLE user_ DROP CONSTRAINT user__check, DROP CONSTRAINT user__check1;
ALTER TABLE user_ RENAME COLUMN certifier TO user_certifier;
ALTER TABLE user_ RENAME COLUMN revoker TO revoked_user_certifier;
ALTER TABLE user_ RENAME CONSTRAINT user_certifier_fkey TO fk_user_device_user_certifier;
ALTER TABLE user_ RENAME CONSTRAINT user_revoker_fkey TO fk_user_device_revoked_user_certifier;
ALTER TABLE user_ ALTER COLUMN profile DROP NOT NULL;

-- Devices
DROP INDEX device_user_idx;
ALTER TABLE device RENAME COLUMN certifier TO device_certifier;
ALTER TABLE device RENAME CONSTRAINT device_certifier_fkey TO device_device_certifier_fkey;
ALTER TABLE device ALTER COLUMN device_label TYPE VARCHAR(254), DROP COLUMN verify_key;
ALTER TABLE device ADD CONSTRAINT device_user__device_id_key UNIQUE (user_, device_id);

-- Invitations
DROP INDEX invitation_open_by_greeter_idx;
ALTER TABLE invitation DROP CONSTRAINT invitation_check, DROP CONSTRAINT invitation_check1;
ALTER TABLE invitation ALTER COLUMN claimer_email TYPE VARCHAR(255);

-- Messages: 32-bit ids, the organization stored on the row, no uniqueness of the index
ALTER TABLE message DROP CONSTRAINT message_recipient_index_key,
    DROP CONSTRAINT message_index_check,
    ADD COLUMN organization INTEGER;
UPDATE message m SET organization = u.organization FROM user_ u WHERE u._id = m.recipient;
ALTER TABLE message ALTER COLUMN organization SET NOT NULL,
    ALTER COLUMN _id TYPE INTEGER,
    ADD CONSTRAINT message_organization_fkey FOREIGN KEY (organization) REFERENCES organization (_id);
ALTER SEQUENCE message__id_seq AS INTEGER;

-- Realms: the checkpoint is max(realm_vlob_update.index) in Parsec 2.0.0
ALTER TABLE realm DROP CONSTRAINT realm_check, DROP CONSTRAINT realm_check1;
ALTER TABLE realm ALTER COLUMN encryption_revision DROP DEFAULT, DROP COLUMN checkpoint;

DROP INDEX realm_user_role_realm_user_idx, realm_user_role_user_idx;
ALTER TABLE realm_user_role RENAME COLUMN certifier TO certified_by;
ALTER TABLE realm_user_role RENAME CONSTRAINT realm_user_role_certifier_fkey
    TO realm_user_role_certified_by_fkey;
ALTER TABLE realm_user_role ALTER COLUMN _id TYPE INTEGER;
ALTER SEQUENCE realm_user_role__id_seq AS INTEGER;

-- Re-encryption. Ours: one work row per (atom, new revision) holding the re-encrypted
-- blob once saved, moved into the atom at finish. Parsec 2.0.0: a registry of each
-- realm's revisions, and one atom per (version, revision), old revisions kept. Every
-- atom of ours is at its realm's revision (the previous one during a re-encryption);
-- saved work rows become atoms of the new revision.
CREATE TEMP TABLE legacy_reencrypted ON COMMIT DROP AS
    SELECT realm, encryption_revision, vlob_atom, reencrypted_blob
    FROM vlob_encryption_revision WHERE reencrypted_blob IS NOT NULL;
DROP TABLE vlob_encryption_revision;
CREATE TABLE vlob_encryption_revision (
    _id SERIAL PRIMARY KEY,
    realm INTEGER REFERENCES realm (_id),
    encryption_revision INTEGER NOT NULL,
    UNIQUE (realm, encryption_revision)
);
INSERT INTO vlob_encryption_revision (realm, encryption_revision)
SELECT r._id, revision FROM realm r, generate_series(1, r.encryption_revision) AS revision
ORDER BY r._id, revision;

DROP INDEX vlob_atom_realm_idx;
ALTER TABLE vlob_atom DROP CONSTRAINT vlob_atom_organization_vlob_id_version_key,
    DROP CONSTRAINT vlob_atom_version_check,
    DROP CONSTRAINT vlob_atom_realm_fkey,
    ADD COLUMN vlob_encryption_revision INTEGER;
UPDATE vlob_atom a SET vlob_encryption_revision = v._id
FROM vlob_encryption_revision v
WHERE v.realm = a.realm AND v.encryption_revision = a.encryption_revision;
INSERT INTO vlob_atom (organization, realm, encryption_revision, vlob_encryption_revision,
    vlob_id, version, blob, size, author, created_on, deleted_on)
SELECT a.organization, a.realm, w.encryption_revision, v._id, a.vlob_id, a.version,
    w.reencrypted_blob, octet_length(w.reencrypted_blob), a.author, a.created_on, a.deleted_on
FROM legacy_reencrypted w
JOIN vlob_atom a ON a._id = w.vlob_atom
JOIN vlob_encryption_revision v ON v.realm = w.realm AND v.encryption_revision = w.encryption_revision
ORDER BY a._id;

ALTER TABLE realm_vlob_update DROP CONSTRAINT realm_vlob_update_index_check,
    ALTER COLUMN vlob_atom TYPE INTEGER,
    ALTER COLUMN _id TYPE INTEGER;
ALTER SEQUENCE realm_vlob_update__id_seq AS INTEGER;

ALTER TABLE vlob_atom DROP COLUMN realm, DROP COLUMN encryption_revision,
    ALTER COLUMN vlob_encryption_revision SET NOT NULL,
    ALTER COLUMN _id TYPE INTEGER,
    ALTER COLUMN blob SET STORAGE EXTENDED,
    ADD CONSTRAINT vlob_atom_vlob_encryption_revision_fkey
        FOREIGN KEY (vlob_encryption_revision) REFERENCES vlob_encryption_revision (_id),
    ADD CONSTRAINT vlob_atom_vlob_encryption_revision_vlob_id_version_key
        UNIQUE (vlob_encryption_revision, vlob_id, version);
ALTER SEQUENCE vlob_atom__id_seq AS INTEGER;

-- Blocks
DROP INDEX block_realm_idx;
ALTER TABLE block ALTER COLUMN _id TYPE INTEGER;
ALTER SEQUENCE block__id_seq AS INTEGER;
ALTER TABLE block_data ALTER COLUMN organization_id TYPE VARCHAR,
    ALTER COLUMN _id TYPE INTEGER,
    ALTER COLUMN data SET STORAGE EXTENDED;
ALTER SEQUENCE block_data__id_seq AS INTEGER;
