"""Masking: a production clone without real people's data.

A profile (:mod:`.profiles`: built-in ``pii-basic`` or a YAML file) names per collection and field a
masker; :mod:`.fakers` makes deterministic fake values (HMAC-SHA256 of the value with the salt);
:mod:`.apply` masks rows.  ``export --full --mask PROFILE`` masks every row before it is written
(:func:`prepare`, :func:`row_masker`); other row movers call :func:`mask_row` per row::

    mp = prepare("pii-basic", tables, salt=None, secret=instance.secret)
    masked = mask_row(mp, "authors", {"id": 1, "name": "Ada Lovelace"})  # None: the row is dropped
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..bundle.table_schema import TableDef
from .apply import MaskProfile, bind, mask_row, mask_value, row_masker
from .profiles import BUILTIN, BUILTIN_NAMES, ColumnInfo, Profile, ProfileError, check_against, load, parse

__all__ = ["BUILTIN", "BUILTIN_NAMES", "ColumnInfo", "MaskProfile", "Profile", "ProfileError", "bind",
           "check_against", "columns_of", "load", "mask_row", "mask_value", "parse", "prepare", "row_masker"]


def columns_of(tables: Iterable[TableDef]) -> dict[str, dict[str, ColumnInfo]]:
    """Reflected tables → collection → field → :class:`ColumnInfo` (type, nullable, length, unique)."""
    result: dict[str, dict[str, ColumnInfo]] = {}
    for table in tables:
        unique = {index.columns[0] for index in table.indexes if index.unique and len(index.columns) == 1}
        if len(table.primary_key) == 1:
            unique.add(table.primary_key[0])
        result[table.name] = {c.name: ColumnInfo(c.type, c.nullable, c.length, c.name in unique) for c in table.columns}
    return result


def prepare(spec: str | Path | Profile, tables: Iterable[TableDef] | Mapping[str, Mapping[str, ColumnInfo]], *,
            salt: str | None = None, secret: str | None = None, keep_users: Iterable[str] = ()) -> MaskProfile:
    """Load ``spec`` (a built-in name, a YAML path or a :class:`Profile`), check it against ``tables``
    (an instance's reflected tables) and bind it to its key.

    :raises ProfileError: a bad profile, or one naming what the instance lacks.
    """
    profile = spec if isinstance(spec, Profile) else load(spec)
    columns = tables if isinstance(tables, Mapping) else columns_of(tables)
    checked = check_against(profile, columns)
    return bind(profile, salt=salt, secret=secret, keep_users=keep_users, columns=checked.columns)
