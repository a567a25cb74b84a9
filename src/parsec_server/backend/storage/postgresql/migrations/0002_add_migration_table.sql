-- Applied migrations (0001_initial.sql is never recorded: a database with an
-- `organization` table but no `migration` table has exactly migration 1).
-- `_id` is the migration's number, `name` the file name without number and
-- extension. Our own additions are recorded in ext_migration, never here.
CREATE TABLE migration (
    _id INTEGER PRIMARY KEY,
    name VARCHAR(256) NOT NULL UNIQUE,
    applied TIMESTAMPTZ NOT NULL
);
