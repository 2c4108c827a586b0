"""Values in the bundle: one neutral JSON form per column type, per-vendor codecs around it.

The same instant is an epoch-milliseconds integer *or* ``'YYYY-MM-DD
HH:MM:SS'`` text in CairnCMS's SQLite, an aware ``datetime`` from PostgreSQL
and a naive UTC ``datetime`` from MariaDB; a boolean is ``0``/``1`` or
``True``; JSON is text or already parsed.  Rows travel through the bundle in
one form (ISO-8601 UTC strings, ``true``/``false``, parsed JSON, decimal
strings, base64 bytes) so that any vendor can read what any vendor wrote, and
so that verification compares like with like.

Codecs are built once per column (:func:`decoder`/:func:`encoder`) and
applied per row: the hot path of export and import.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

Codec = Callable[[Any], Any]


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


_DECODERS: dict[str, Codec] = {
    "uuid": lambda v: str(v).lower(),
    "string": str,
    "text": lambda v: v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v),
    "json": _json_value,
    "boolean": _bool,
    "timestamp": lambda v: format_timestamp(_parse_timestamp(v)),
    "datetime": lambda v: _naive(v).isoformat(timespec="microseconds"),
    "date": lambda v: v.isoformat() if isinstance(v, dt.date) else str(v)[:10],
    "time": lambda v: v.isoformat() if isinstance(v, dt.time) else str(v),
    "integer": int,
    "bigint": int,
    "float": float,
    "double": float,
    "decimal": _decimal,
    "binary": lambda v: base64.b64encode(bytes(v)).decode("ascii"),
}


def decoder(column_type: str) -> Codec:
    """Native value (any vendor) → neutral JSON value, for one column type."""
    return _nullable(_DECODERS[column_type])


def _epoch_ms(value: str) -> int:
    return int((_parse_timestamp(value) - _EPOCH) / dt.timedelta(milliseconds=1))


def _encoders(vendor: str) -> dict[str, Codec]:
    json_text: Codec = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    if vendor == "postgres":
        # Values go through COPY's text input, which parses ISO timestamps,
        # uuids and JSON text itself.
        return {
            "json": json_text,
            "boolean": bool,
            "timestamp": lambda v: v,
            "datetime": lambda v: v,
            "decimal": decimal.Decimal,
            "binary": base64.b64decode,
            "uuid": lambda v: uuid.UUID(v),
        }
    if vendor == "mysql":
        return {
            "json": json_text,
            "boolean": lambda v: 1 if v else 0,
            # MariaDB TIMESTAMP takes the session time zone (set to UTC by the loader).
            "timestamp": lambda v: _parse_timestamp(v).replace(tzinfo=None),
            "datetime": _naive,
            "decimal": decimal.Decimal,
            "binary": base64.b64decode,
        }
    # SQLite: write what CairnCMS's own app writes (epoch ms for instants).
    return {
        "json": json_text,
        "boolean": lambda v: 1 if v else 0,
        "timestamp": _epoch_ms,
        "datetime": lambda v: v,
        "decimal": lambda v: float(v),
        "binary": base64.b64decode,
    }


def encoder(column_type: str, vendor: str) -> Codec:
    """Neutral JSON value → the value to hand ``vendor``'s driver, for one column type."""
    codec = _encoders(vendor).get(column_type)
    return _nullable(codec) if codec else (lambda v: v)


def comparable(value: Any, column_type: str, vendor: str) -> Any:
    """A neutral value reduced to what ``vendor`` can store, for verification.

    MariaDB ``timestamp`` keeps whole seconds; SQLite keeps milliseconds;
    SQLite ``float`` loses decimal precision.  Comparing at the target's
    precision tells real differences from the vendor's own rounding.
    """
    if value is None:
        return None
    if column_type == "timestamp":
        instant = _parse_timestamp(value)
        if vendor == "mysql":
            instant = instant.replace(microsecond=0)
        elif vendor == "sqlite":
            instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
        return format_timestamp(instant)
    if column_type == "datetime":
        moment = _naive(value)
        if vendor == "mysql":
            moment = moment.replace(microsecond=0)
        return moment.isoformat(timespec="microseconds")
    if column_type == "decimal":
        return format(decimal.Decimal(str(value)).normalize(), "f")
    if column_type in ("float", "double"):
        return round(float(value), 6)
    return value
