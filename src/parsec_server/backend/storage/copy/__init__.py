"""`parsec backend copy`: every table and block of one storage into another (SQLite or
PostgreSQL, any blockstore), resumable and checked (docs/data-dir.md, "Moving up")."""
