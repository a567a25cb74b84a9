-- Redacted certificates (without human handle / device label, served to OUTSIDER
-- users), user profiles and device labels.

-- Rows created before this migration came from API 1, whose certificates carry
-- neither human handle nor device label: the full certificate is its own redacted
-- version.
ALTER TABLE user_ ADD COLUMN redacted_user_certificate BYTEA;
UPDATE user_ SET redacted_user_certificate = user_certificate;
ALTER TABLE user_ ALTER COLUMN redacted_user_certificate SET NOT NULL;

CREATE TYPE user_profile AS ENUM ('ADMIN', 'STANDARD', 'OUTSIDER');

-- Left nullable, as in Parsec 2.0.0; our server always sets it
ALTER TABLE user_ ADD COLUMN profile user_profile;
UPDATE user_ SET profile = (CASE WHEN is_admin THEN 'ADMIN' ELSE 'STANDARD' END)::user_profile;
ALTER TABLE user_ DROP COLUMN is_admin;

ALTER TABLE device ADD COLUMN redacted_device_certificate BYTEA;
UPDATE device SET redacted_device_certificate = device_certificate;
ALTER TABLE device ALTER COLUMN redacted_device_certificate SET NOT NULL;

-- NULL: no label
ALTER TABLE device ADD COLUMN device_label VARCHAR(254);
