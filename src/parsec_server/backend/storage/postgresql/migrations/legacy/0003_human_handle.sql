-- Human handles: one (email, label) pair per email and organization. Users
-- reusing an email (after the revocation of the previous one) share the row,
-- which holds the latest user's label (the earlier ones' are in their
-- certificates).
CREATE TABLE human (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    email VARCHAR(254) NOT NULL,
    label VARCHAR(254) NOT NULL,
    UNIQUE (organization, email)
);

-- NULL: a user without human handle
ALTER TABLE user_ ADD COLUMN human INTEGER REFERENCES human (_id);

CREATE INDEX user_human_idx ON user_ (human);
