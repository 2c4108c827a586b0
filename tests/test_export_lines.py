"""The export's fast ways of writing JSON lines give exactly what the row-by-row way gives.

* ``dumps_rows`` (orjson, 5000 rows per call) writes the bytes ``json.dumps`` wrote, NaN included;
  ``loads_line`` reads what the standard library wrote (NaN, Infinity) as it did.
* On PostgreSQL, the lines ``json_build_array`` writes through ``COPY`` (``_pg_json_lines``) hold the
  same values as the row-by-row path, for awkward values of every type it takes; the types it does
  not take (float, bytea, char(n)) leave the table to the row-by-row path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from cairn_migrate.bundle.values import dumps_row, dumps_rows, finite, loads_line
from cairn_migrate.instance import database as dbmod
from cairn_migrate.operations.export import _pg_json_lines
from cairn_migrate.testing import create_postgres_database, drop_postgres_database

_STDLIB = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def _stdlib_lines(rows: list[list[object]]) -> bytes:
    return b"".join(_STDLIB(row).encode("utf-8") + b"\n" for row in rows)


def test_dumps_rows_is_the_standard_library_byte_for_byte() -> None:
    rows: list[list[object]] = [
        ["a\n,\n,b", 1, None, True, "é😀\u2028", "\x00\x01\x02", decimal.Decimal("1.50"),
         dt.datetime(2024, 1, 1, 9, 30, tzinfo=dt.timezone.utc), dt.date(2024, 1, 2), dt.time(12, 0),
         uuid.UUID("c4ca4238-a0b9-2382-0dcc-509a6f75849b"), 1.5, 1e300, -0.0, [1, {"a": "],["}]],
        ["],[", ",\n,", "\\", '"'],
        [2**70, "an integer beyond 64 bits: the standard library writes the row"],
    ]
    assert dumps_rows(rows) == _stdlib_lines(rows)
    assert dumps_rows([]) == b""
    assert [dumps_row(row) + b"\n" for row in rows] == _stdlib_lines(rows).splitlines(keepends=True)
    # A non-finite float (marked by finite(), as the export does for float columns) keeps NaN/Infinity.
    special = [["x", finite(float("nan")), finite(float("inf")), finite(-math.inf), finite(0.5)]]
    assert dumps_rows(special) == b'["x",NaN,Infinity,-Infinity,0.5]\n'


def test_loads_line_reads_what_the_standard_library_wrote() -> None:
    assert loads_line(b'["a",1,null,true,"\\u00e9"]\n') == ["a", 1, None, True, "é"]
    nan_row = loads_line(b'[NaN,Infinity,-Infinity,1]\n')
    assert math.isnan(nan_row[0]) and nan_row[1:] == [math.inf, -math.inf, 1]
    with pytest.raises(ValueError):
        loads_line(b'["not closed"\n')


EDGE_TABLE = """
CREATE TABLE edge (id serial PRIMARY KEY, t text, v varchar(20), u uuid, j json, jb jsonb, b boolean,
                   i2 smallint, i8 bigint, ts timestamptz, tn timestamp, d date, tm time, n numeric(20, 6));
INSERT INTO edge (t, v, u, j, jb, b, i2, i8, ts, tn, d, tm, n) VALUES
 (E'a\\nb\\tc\\\\d"e\\x01f\\x02g\\rh', E'\\\\.', 'C4CA4238-A0B9-2382-0DCC-509A6F75849B',
  '{"a": "\\u00e9\\n", "b": [1, 2.50, 1e400]}', '{"z": 1, "a": "😀"}', true, -32768, 9223372036854775807,
  '2024-01-01 00:00:00.123456+05:30', '2024-01-01 10:00:00.5', '2024-02-29', '23:59:59.999999', '-0.000001'),
 ('', '', NULL, 'null', '"s"', false, 0, -9223372036854775808, 'infinity', '-infinity', '0001-01-01', '00:00',
  '123456789012.5'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (E'😀 \\u2028 é ,\\n, \\\\u0000', E'x,\\n,y', gen_random_uuid(), '[]', '{}', true, 1, 1, '2024-06-01 12:00+00',
  '2024-06-01 12:00', '2024-06-01', '12:00:01', 'NaN');
CREATE TABLE floats (id integer PRIMARY KEY, f double precision);
CREATE TABLE padded (id integer PRIMARY KEY, c char(5));
"""


@pytest.fixture
def edge_db(pg_admin_url: str):
    name = create_postgres_database(pg_admin_url, prefix="cm_test_lines")
    engine = sa.create_engine(sa.engine.make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name),
                              connect_args={"options": "-c timezone=UTC"})
    with engine.begin() as conn:
        for statement in EDGE_TABLE.split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_postgres_database(pg_admin_url, name)


def _table(name: str, columns: list[str]) -> SimpleNamespace:
    return SimpleNamespace(name=name, columns=[SimpleNamespace(name=c) for c in columns], primary_key=["id"])


def test_postgres_lines_hold_the_row_by_row_values(edge_db: sa.Engine) -> None:
    names = ["id", "t", "v", "u", "j", "jb", "b", "i2", "i8", "ts", "tn", "d", "tm", "n"]
    db = dbmod.Database(edge_db, SimpleNamespace(vendor="postgres"))  # type: ignore[arg-type]
    with edge_db.connect() as conn:
        dbmod._pg_text_loaders(conn)
        row_by_row = dumps_rows([list(row) for row in db.stream_tuples("edge", names, connection=conn, order_by=["id"])])
        lines = _pg_json_lines(conn, _table("edge", names))  # type: ignore[arg-type]
        assert lines is not None
        fast = b"".join(lines)
        assert _pg_json_lines(conn, _table("floats", ["id", "f"])) is None  # type: ignore[arg-type]
        assert _pg_json_lines(conn, _table("padded", ["id", "c"])) is None  # type: ignore[arg-type]
    assert fast.count(b"\n") == 4 and fast.endswith(b"\n")
    assert [json.loads(line) for line in fast.splitlines()] == [json.loads(line) for line in row_by_row.splitlines()]
