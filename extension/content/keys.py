"""Keys of a content move: typed columns for conditions, and the ID map per instance pair.

uuid and string primary keys travel as they are; integer keys are remapped (the target
gives new rows its next ids).  The ID map in the state store (``cm_content_id_map``)
remembers, per (source, target) instance pair and collection, which target row each
source row became, so a second run updates or skips the same rows instead of
creating them again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..service.state import create_tables

_META = sa.MetaData()
#: source key → target key of every row a content move wrote, per (source, target) pair and collection.
ID_MAP = sa.Table(
    "cm_content_id_map", _META,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("collection", sa.String(64), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("target_id", sa.String(255), nullable=False),
)


def column(db: Database, table: str, name: str) -> sa.ColumnClause[Any]:
    """``name`` of ``table`` for a condition, unattached (so it adds no table to a FROM): typed on
    PostgreSQL (whose driver casts every parameter to its column's type), untyped elsewhere (so
    SQLite's mixed timestamps and text uuids compare as stored)."""
    if db.vendor == "postgres":
        return sa.column(name, db.table(table).c[name].type)
    return sa.column(name)


def values(db: Database, table: str, name: str, items: Iterable[Any]) -> list[Any]:
    """``items`` as the driver wants them for ``table.name``: ``uuid.UUID`` for PostgreSQL's uuid type."""
    reflected = db.table(table).c[name]
    if db.vendor == "postgres" and getattr(reflected.type, "as_uuid", False):
        return [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in items]
    if db.vendor == "postgres" and isinstance(reflected.type, sa.Integer):
        return [int(i) for i in items]
    return list(items)


def value(db: Database, table: str, name: str, item: Any) -> Any:
    return values(db, table, name, [item])[0]


def in_(db: Database, table: str, name: str, items: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``table.name IN items``, typed for the vendor."""
    return column(db, table, name).in_(values(db, table, name, items))


def equals(db: Database, table: str, name: str, item: Any) -> sa.ColumnElement[bool]:
    """``table.name = item``, typed for the vendor."""
    return column(db, table, name) == value(db, table, name, item)


def is_integer(db: Database, table: str, name: str) -> bool:
    """Whether ``table.name`` is an integer column (an auto-increment key the target renumbers)."""
    return isinstance(db.table(table).c[name].type, sa.Integer)


class IdMap:
    """The ID map of one (source, target) pair: read once, written after the target's commit."""

    def __init__(self, state_url: str, scope: tuple[str, str]) -> None:
        from ..service.jobs import _state_engine

        self.engine = _state_engine(state_url)
        create_tables(self.engine, _META)
        self.scope = scope
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ID_MAP.c.collection, ID_MAP.c.source_id, ID_MAP.c.target_id).where(
                ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1]))
            self.known: dict[tuple[str, str], str] = {(r.collection, r.source_id): r.target_id for r in rows}

    def get(self, collection: str, source_id: Any) -> str | None:
        return self.known.get((collection, str(source_id)))

    def save(self, entries: Mapping[tuple[str, Any], Any]) -> int:
        """Record where source rows went (``(collection, source_id) → target_id``); returns how many changed."""
        changed = {(c, str(s)): str(t) for (c, s), t in entries.items() if self.known.get((c, str(s))) != str(t)}
        if not changed:
            return 0
        with self.engine.begin() as conn:
            for (collection, source_id), target_id in changed.items():
                conn.execute(ID_MAP.delete().where(
                    ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1],
                    ID_MAP.c.collection == collection, ID_MAP.c.source_id == source_id))
            conn.execute(ID_MAP.insert(), [
                {"source": self.scope[0], "target": self.scope[1], "collection": c, "source_id": s, "target_id": t}
                for (c, s), t in changed.items()])
        self.known.update(changed)
        return len(changed)
