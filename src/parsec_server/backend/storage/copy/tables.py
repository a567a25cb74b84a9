"""The tables `parsec backend copy` moves, in an order where every row's references are
copied before it. Both storages have these tables with the same columns and keys
(storage/sqlite/migrations/0001_initial.sql mirrors the PostgreSQL layout). A table of
either schema that is in neither list below stops the copy: a new table must be added
here, never skipped without a word."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    key: tuple[str, ...] = ("_id",)  # the primary key: rows are read in its order
    # Columns referring to rows that may come later (a cycle: users are certified by
    # devices, devices belong to users): inserted as NULL, set once every table is copied.
    deferred: tuple[str, ...] = ()


TABLES: tuple[Table, ...] = (
    Table("organization"),
    Table("human"),
    Table("user_", deferred=("user_certifier", "revoked_user_certifier")),
    Table("device", deferred=("device_certifier",)),
    Table("user_invitation"),
    Table("device_invitation"),
    Table("invitation"),
    Table("message"),
    Table("realm"),
    Table("realm_user_role"),
    Table("vlob_encryption_revision"),
    Table("vlob_atom"),
    Table("realm_vlob_update"),
    Table("block"),
    Table("ext_vlob_id", key=("organization", "vlob_id")),
    Table("ext_organization_settings", key=("organization",)),
    Table("ext_user_frozen", key=("user_",)),
)

# Kept by each storage on its own: the migrations applied (the target is migrated by the
# copy itself), and PostgreSQL's `POSTGRESQL` blockstore (copied as blocks).
NOT_COPIED = frozenset({"migration", "ext_migration", "block_data"})
