"""Values in the bundle: one neutral JSON form per column type, per-vendor codecs around it.

The same instant is an epoch-milliseconds integer *or* ``'YYYY-MM-DD
HH:MM:SS'`` text in CairnCMS's SQLite, an aware ``datetime`` from PostgreSQL
and a naive UTC ``datetime`` from MariaDB; a boolean is ``0``/``1`` or
``True``; JSON is text or already parsed.  Rows travel through the bundle in
one form (ISO-8601 UTC strings, ``true``/``false``, parsed JSON, decimal
strings, base64 bytes) so that any vendor can read what any vendor wrote, and
so that verification compares like with like.  One exception: a SQLite
source's timestamps and booleans travel as SQLite stored them
(:data:`SQLITE_STORED`), so that SQLite → SQLite keeps values and storage
classes exactly; every encoder reads that form too.

The neutral forms: instants are ISO-8601 strings *with an offset* (as the
source printed them: ``2024-01-05 09:30:00+00`` from PostgreSQL,
``2024-01-05T09:30:00.000000+00:00`` from elsewhere); JSON columns travel as
JSON *text*; decimals as strings; bytes as base64.  Keeping the source's text
where it is already neutral (PostgreSQL's ``COPY``-style output, JSON text)
is what makes export and import cheap: most values pass through untouched.
:func:`comparable` canonicalises for verification.

Codecs are built once per column (:func:`decoder`/:func:`encoder`) and
applied per row: the hot path of export and import.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

Codec = Callable[[Any], Any]


_stdlib_loads = json.JSONDecoder().decode
_stdlib_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def loads_line(line: bytes) -> Any:
    """One JSON line of a bundle member (orjson; what it refuses, such as a ``NaN`` float or an
    integer beyond 64 bits that the standard library wrote, falls back to the standard library)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _stdlib_loads(line.decode("utf-8"))


class _NonFinite:
    """A NaN or infinite float on its way to :func:`dumps_row` (orjson would write ``null``)."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


class _StdlibRow(Exception):
    pass


def _default(value: Any) -> Any:
    if isinstance(value, _NonFinite):
        raise _StdlibRow
    return str(value)


def finite(value: Any) -> Any:
    """A float column's value for :func:`dumps_row`: non-finite floats keep the standard library's ``NaN``/``Infinity``."""
    if type(value) is float and not math.isfinite(value):
        return _NonFinite(value)
    return value


_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps_row(values: list[Any]) -> bytes:
    """One row as a JSON line (no newline), byte for byte what ``json.dumps(values, ensure_ascii=False,
    separators=(",", ":"), default=str)`` means: orjson, with datetimes, uuids' and other objects' ``str``
    as before (date, time and datetime objects included), and the standard library for a row that holds a non-finite float (marked by :func:`finite`)
    or anything else orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(values, default=_default, option=_ORJSON_OPTIONS)
    except (orjson.JSONEncodeError, _StdlibRow):
        plain = [v.value if isinstance(v, _NonFinite) else v for v in values]
        return _stdlib_dumps(plain).encode("utf-8")


_LINE_BREAK = orjson.Fragment(b"\n")  # a raw newline: never inside orjson's own output (strings escape it)


def dumps_rows(rows: list[list[Any]]) -> bytes:
    """Rows as JSON lines, each ending with a newline: the same bytes as :func:`dumps_row` of each, in one
    orjson call (a call per row costs more than its encoding). Rows are separated by a raw-newline
    fragment, which orjson writes as ``,<newline>,`` and nothing else can contain."""
    if not rows:
        return b""
    sequence: list[Any] = [_LINE_BREAK] * (2 * len(rows) - 1)
    sequence[0::2] = rows
    try:
        encoded = orjson.dumps(sequence, default=_default, option=_ORJSON_OPTIONS)
    except (orjson.JSONEncodeError, _StdlibRow):
        return b"".join(dumps_row(row) + b"\n" for row in rows)
    return encoded[1:-1].replace(b",\n,", b"\n") + b"\n"


def _parse_timestamp(value: Any) -> dt.datetime:
    """Any stored form of an instant → an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _EPOCH + dt.timedelta(milliseconds=value)
    text = str(value).strip()
    if text.isdigit():
        return _EPOCH + dt.timedelta(milliseconds=int(text))
    text = text.replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def moment(value: Any, column_type: str) -> dt.datetime:
    """Any stored form of a ``timestamp`` as an aware UTC datetime, of a ``datetime`` as a naive one."""
    return _parse_timestamp(value) if column_type == "timestamp" else _naive(value)


def format_timestamp(value: dt.datetime) -> str:
    """The neutral form: ``2024-01-05T09:30:00.123456Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _naive(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _parse_timestamp(value).replace(tzinfo=None)
    return dt.datetime.fromisoformat(str(value).strip().replace(" ", "T", 1).rstrip("Z"))


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # not JSON after all: keep the text
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes")
    return bool(value)


def _decimal(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _nullable(codec: Codec) -> Codec:
    return lambda value: None if value is None else codec(value)


def _timestamp_text(value: Any) -> str:
    """Any stored instant → neutral text; strings that already carry an offset pass through."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return (value if value.utcoffset() == dt.timedelta(0) else value.astimezone(UTC)).isoformat()
    if isinstance(value, str) and (value.endswith("Z") or value[-3:-2] in "+-" or value[-6:-5] in "+-") and value[10:11] in (" ", "T"):
        return value  # PostgreSQL's text output (session in UTC) or an ISO string with its offset
    return _parse_timestamp(value).isoformat()


def _json_text(value: Any) -> str:
    """JSON column → JSON text (drivers hand out text, bytes or already parsed values)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_DECODERS: dict[str, Codec] = {
    "uuid": lambda v: v if isinstance(v, str) and v.islower() else str(v).lower(),
    "string": lambda v: v if isinstance(v, str) else str(v),
    "text": lambda v: v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else (v if isinstance(v, str) else str(v)),
    "json": _json_text,
    "boolean": _bool,
    "timestamp": _timestamp_text,
    "datetime": lambda v: v if isinstance(v, str) else _naive(v).isoformat(),
    "date": lambda v: v.isoformat() if isinstance(v, dt.date) else str(v)[:10],
    "time": lambda v: v.isoformat() if isinstance(v, dt.time) else str(v),
    "integer": lambda v: v if type(v) is int else int(v),
    "bigint": lambda v: v if type(v) is int else int(v),
    "float": float,
    "double": float,
    "decimal": _decimal,
    "binary": lambda v: base64.b64encode(bytes(v)).decode("ascii"),
}


#: Types whose driver values are already neutral, per source vendor (with
#: :func:`cairn_migrate.instance.database.Database.stream_tuples`' text loaders on PostgreSQL).
_ALREADY_NEUTRAL = {
    "postgres": {"uuid", "string", "text", "json", "boolean", "timestamp", "datetime", "date", "time",
                 "integer", "bigint", "float", "double", "decimal"},
    "mysql": {"string", "text", "json", "integer", "bigint", "float", "double"},
    "sqlite": {"string", "text", "json", "integer", "bigint", "float", "double"},
}


#: Types whose SQLite values travel as SQLite stored them (bundle format 2, manifest
#: ``sqlite_stored``), so that a SQLite target gets back the same value *and* storage class:
#: a timestamp is an INTEGER epoch-ms JSON number or the TEXT exactly as stored (CairnCMS's
#: SQLite mixes both in one column), a boolean the stored 0/1 (or whatever else SQLite holds).
#: The other vendors' encoders read these forms too.
SQLITE_STORED = frozenset({"boolean", "timestamp"})


def stored_types(manifest: Mapping[str, Any]) -> frozenset[str]:
    """The types a bundle carries as its SQLite source stored them (none before format 2)."""
    return frozenset(manifest.get("sqlite_stored", ()))


def decoder(column_type: str, vendor: str | None = None) -> Codec:
    """Native value → neutral JSON value, for one column type (any vendor unless ``vendor`` is given)."""
    return _nullable(_DECODERS[column_type])


#: types whose decoder gives a value of exactly this Python type back unchanged (:func:`row_decoder` skips the call)
_PASSES = {"string": str, "text": str, "integer": int, "bigint": int}


def row_decoder(names: Sequence[str], column_types: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A row of ``names`` as the driver returned it (a tuple in that order) → ``{name: neutral value}``: what
    ``{n: decoder(t)(v) ...}`` gives, as one generated function per table.

    A content move decodes every row it reads; the generic way called two functions per value (the NULL wrapper
    and the codec), which was a twentieth of a 100k-article move.  Here ``None`` and values of a type the codec
    would hand back unchanged (:data:`_PASSES`) are tested inline and only the rest call their codec.  The
    names are bound as constants of the function, never written into its source."""
    scope: dict[str, Any] = {}
    values, items = [], []
    for i, (name, kind) in enumerate(zip(names, column_types)):
        scope[f"k{i}"], scope[f"d{i}"] = name, _DECODERS[kind]
        if kind in _PASSES:
            scope[f"t{i}"] = _PASSES[kind]
            items.append(f"k{i}: v{i} if v{i} is None or type(v{i}) is t{i} else d{i}(v{i})")
        else:
            items.append(f"k{i}: None if v{i} is None else d{i}(v{i})")
        values.append(f"v{i}")
    if not values:
        return lambda row: {}
    source = f"def decode(row):\n    {', '.join(values)}, = row\n    return {{{', '.join(items)}}}\n"
    exec(source, scope)  # noqa: S102 - generated from the fixed templates above, no caller text in it
    return scope["decode"]  # type: ignore[no-any-return]


def fast_decoder(column_type: str, vendor: str) -> Codec | None:
    """Like :func:`decoder` for rows from :meth:`~cairn_migrate.instance.database.Database.stream_tuples` of
    ``vendor``, but ``None`` where the driver's value is already neutral: the export skips those."""
    if column_type in _ALREADY_NEUTRAL.get(vendor, set()):
        return None
    if vendor == "sqlite" and column_type in SQLITE_STORED:
        return None
    if vendor == "mysql" and column_type in _MYSQL_TEXT:
        return _nullable(_MYSQL_TEXT[column_type])
    return decoder(column_type)


def _mysql_timestamp(value: Any) -> str:
    """MariaDB's text of a ``TIMESTAMP`` (``2024-01-05 09:30:00[.fff]``, the session in UTC) → the neutral text
    :func:`_timestamp_text` gives its ``datetime``: parsed by the C ``fromisoformat`` (which refuses what
    ``datetime`` would, a zero date), written back by ``isoformat``."""
    if type(value) is not str:
        return _timestamp_text(value)
    return dt.datetime.fromisoformat(value).isoformat() + "+00:00"


def _mysql_datetime(value: Any) -> str:
    """MariaDB's text of a ``DATETIME`` → the neutral text of its naive ``datetime``."""
    if type(value) is not str:
        return _naive(value).isoformat()
    return dt.datetime.fromisoformat(value).isoformat()


#: MariaDB's instants as the text :meth:`~cairn_migrate.instance.database.Database.stream_tuples` hands out
_MYSQL_TEXT: dict[str, Codec] = {"timestamp": _mysql_timestamp, "datetime": _mysql_datetime}


def _epoch_ms(value: str) -> int:
    return int((_parse_timestamp(value) - _EPOCH) / dt.timedelta(milliseconds=1))


def _json_in(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encoders(vendor: str) -> dict[str, Codec]:
    if vendor == "postgres":
        # Values go through COPY's text input, which parses timestamps with
        # offsets, uuids, numerics and JSON text itself: most pass through.
        return {"json": _json_in, "binary": base64.b64decode}
    if vendor == "mysql":
        return {
            "json": _json_in,
            "boolean": lambda v: 1 if _bool(v) else 0,
            # MariaDB TIMESTAMP takes the session time zone (UTC, see database.open_engine).
            "timestamp": lambda v: _parse_timestamp(v).replace(tzinfo=None),
            "datetime": _naive,
            "decimal": decimal.Decimal,
            "binary": base64.b64decode,
        }
    # SQLite: write what CairnCMS's own app writes (epoch ms for instants).
    return {
        "json": _json_in,
        "boolean": lambda v: 1 if _bool(v) else 0,
        "timestamp": _epoch_ms,
        "decimal": lambda v: float(v),
        "binary": base64.b64decode,
    }


#: Encoders that replace :func:`_encoders`' for values in SQLite's stored form (``None``: pass as
#: stored). PostgreSQL's COPY needs an offset and ``t``/``f``; MariaDB's already read both forms.
_FROM_SQLITE_STORED: dict[str, dict[str, Codec | None]] = {
    "postgres": {"timestamp": _timestamp_text, "boolean": _bool},
    "sqlite": {"timestamp": None, "boolean": None},
}


def encoder(column_type: str, vendor: str, *, sqlite_stored: bool = False) -> Codec | None:
    """Neutral JSON value → the value to hand ``vendor``'s driver; ``None`` when it passes as is.

    :param sqlite_stored: the column's values are in SQLite's stored form (:data:`SQLITE_STORED`).
    """
    codecs = _encoders(vendor)
    if sqlite_stored and column_type in SQLITE_STORED:
        codecs = {**codecs, **_FROM_SQLITE_STORED.get(vendor, {})}
    codec = codecs.get(column_type)
    return _nullable(codec) if codec else None


#: Types whose neutral values compare as they are (no reduction needed).
_EXACT = {"uuid", "string", "text", "integer", "bigint", "date", "time", "binary"}


def comparer(column_type: str, vendor: str) -> Codec | None:
    """:func:`comparable` for one column, or ``None`` where neutral values already compare exactly."""
    if column_type in _EXACT:
        return None
    return lambda value: comparable(value, column_type, vendor)


def comparable(value: Any, column_type: str, vendor: str) -> Any:
    """A neutral value reduced to what ``vendor`` can store, for verification.

    MariaDB ``timestamp`` keeps whole seconds; SQLite keeps milliseconds;
    SQLite ``float`` loses decimal precision.  Comparing at the target's
    precision tells real differences from the vendor's own rounding.
    """
    if value is None:
        return None
    if column_type == "boolean":
        return _bool(value)  # SQLite's stored 0/1 and true/false are the same value
    if column_type == "json":
        parsed = _json_value(value)
        return json.dumps(parsed, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    if column_type == "timestamp":
        instant = _parse_timestamp(value)
        if vendor == "mysql":
            instant = instant.replace(microsecond=0)
        elif vendor == "sqlite":
            instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
        return instant.isoformat()
    if column_type == "datetime":
        moment = _naive(value)
        if vendor == "mysql":
            moment = moment.replace(microsecond=0)
        return moment.isoformat(timespec="microseconds")
    if column_type == "decimal":
        return format(decimal.Decimal(str(value)).normalize(), "f")
    if column_type == "float" and vendor == "mysql":
        return float(f"{float(value):.6g}")  # MariaDB FLOAT is single precision: 6 significant digits back
    if column_type in ("float", "double"):
        return round(float(value), 6)
    return value


#: Per target vendor, the types it stores at lower precision than the neutral form (MariaDB:
#: whole seconds, single-precision FLOAT; SQLite: epoch ms): verification hashes these columns
#: exactly too, to tell expected drift from equality.
LOSSY = {"mysql": frozenset({"timestamp", "datetime", "float"}), "sqlite": frozenset({"timestamp"})}


def exact_form(value: Any, column_type: str, *, stored: bool = False) -> Any:
    """A neutral value in a lossless canonical form (no reduction to any vendor's precision).

    ``stored``: compare SQLite's stored values as they are (an epoch-ms number is not the
    same as the text of the same instant, nor 2 the same as 1), for a SQLite bundle on SQLite.
    """
    if value is None:
        return None
    if stored and column_type in SQLITE_STORED:
        return value
    if column_type == "boolean":
        return _bool(value)
    if column_type == "timestamp":
        return _parse_timestamp(value).isoformat(timespec="microseconds")
    if column_type == "datetime":
        return _naive(value).isoformat(timespec="microseconds")
    if column_type in ("float", "double"):
        return float(value)
    return value
