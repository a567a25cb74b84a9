"""The PostgreSQL schema: which layout a database is in, and how `parsec backend migrate`
and `parsec backend downgrade` move it between layouts.

* `files`: the migration files (Parsec 2.0.0's numbered series, our extras, our legacy
  layout and its conversion).
* `catalog`: a comparable description of a schema, and the one each level should have.
* `classify`: what a database is (empty, Parsec 2.0.0 at level k, ... or refused).
* `runner`: `migrate` and `downgrade`, each one transaction under the migration lock;
  with `activity` (other clients), `progress` (lines for long steps), `legacy`
  (conversion pre-checks) and `extras_steps` (the Python parts of the extras).
* `startup`: the cheap check of `parsec backend run` and of the readiness probe.
"""
