-- Human handles: one (email, label) row per email and organization, shared by the
-- users reusing that email (after the revocation of the previous one).
CREATE TABLE human (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    email VARCHAR(254) NOT NULL,
    label VARCHAR(254) NOT NULL,
    UNIQUE (organization, email)
);

-- NULL: a user without human handle
ALTER TABLE user_ ADD COLUMN human INTEGER REFERENCES human (_id);
