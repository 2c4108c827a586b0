"""The import's MariaDB load path (multi-row ``INSERT`` text built by cairn-migrate itself, statements
built in a thread while the server runs the previous one) and the export's primary-key order, on real
PostgreSQL and MariaDB servers, with the values that break hand-made SQL: quotes, backslashes, tabs,
newlines, NUL bytes, ``\\N``, the word ``NULL``, emoji, binary, JSON, fractional instants, big numbers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_empty_instance, make_instance

from cairn_migrate.bundle.table_loader import mysql_literal_maker
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.operations.restore import import_bundle
from cairn_migrate.operations.verify import verify_bundle
from test_clone import normalized_rows

NASTY_TEXT = [
    "it's \"quoted\"", "back\\slash\\", "tab\there", "new\nline\r\n", "\\N", "NULL", "", "emoji 🦀🙂 ü ß 中文",
    "\\'; DROP TABLE x; --", "trailing backslash \\", "\x1a ctrl-z \x01\x02", "percent %s %(x)s {0}",
]


def _instance(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


def _add_nasty_postgres(env: Path, rows: int = 3000) -> None:
    """A user table on the PostgreSQL source with every awkward value, many rows (several statements)."""
    with Database.open(_instance(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE nasty (id uuid PRIMARY KEY, label text, name varchar(255), blob bytea, doc json, "
            "at timestamptz, day date, amount numeric(20, 6), ratio double precision, big bigint, flag boolean)"))
        conn.execute(sa.text(
            "INSERT INTO nasty SELECT md5(i::text)::uuid, "
            "  (CAST(:texts AS text[]))[1 + i % :n] || CASE WHEN i % 7 = 0 THEN NULL ELSE '' END, "
            "  CASE WHEN i % 5 = 0 THEN NULL ELSE 'name ' || i || (CAST(:texts AS text[]))[1 + (i + 3) % :n] END, "
            "  CASE WHEN i % 4 = 0 THEN NULL ELSE decode('00275c0a09ff' || lpad(to_hex(i), 8, '0'), 'hex') END, "
            "  json_build_object('q', (CAST(:texts AS text[]))[1 + i % :n], 'n', i, 'nested', json_build_array(true, null, 1.5)), "
            "  CASE WHEN i % 6 = 0 THEN NULL ELSE timestamptz '2024-02-29 23:59:59.123456+05:30' + i * interval '1 s' END, "
            "  date '2000-01-01' + i, (i * 12345.678901)::numeric(20, 6), i / 7.0, 9000000000000000000 + i, i % 2 = 0 "
            "FROM generate_series(1, :rows) AS i"), {"texts": NASTY_TEXT, "n": len(NASTY_TEXT), "rows": rows})


def _mariadb_rows(env: Path, table: str, columns: str) -> list[tuple]:
    with Database.open(_instance(env)) as db, db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM `{table}` ORDER BY id"))]


def test_nasty_values_cross_vendor_into_mariadb_exactly(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("postgres", tmp_path / "src", request)
    _add_nasty_postgres(src)
    dst = make_empty_instance("mariadb", tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(_instance(src), bundle)
    assert import_bundle(_instance(dst), bundle)["applied"]
    verified = verify_bundle(_instance(dst), bundle)
    assert verified["ok"], verified["tables_failed"]
    assert normalized_rows(dst, "mysql") == normalized_rows(src, "mysql")
    # The raw values, as MariaDB holds them (not only through our own decoding).
    got = _mariadb_rows(dst, "nasty", "label, `blob`, CAST(`at` AS CHAR), CAST(amount AS CHAR), big")
    with Database.open(_instance(src)) as db, db.engine.connect() as conn:
        want = [(r[0], bytes(r[1]) if r[1] is not None else None, r[2], r[3], r[4]) for r in conn.execute(sa.text(
            "SELECT label, blob, to_char(\"at\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), amount::text, big "
            "FROM nasty ORDER BY id::text"))]
    assert got == want
    assert {row[0] for row in got} >= set(NASTY_TEXT) - {""}


def test_nasty_values_mariadb_to_mariadb(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """MariaDB's own text (NUL bytes inside strings too, which PostgreSQL cannot hold) through a neutral clone."""
    src = make_instance("mariadb", tmp_path / "src", request)
    with Database.open(_instance(src)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE nasty (id int unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                             "label text, `blob` longblob, doc json)"))
        values = [{"label": t + ("\x00nul" if i % 2 else ""), "blob": bytes(range(256)) if i % 3 else None,
                   "doc": json.dumps({"t": t, "i": i}, ensure_ascii=False)}
                  for i, t in enumerate(NASTY_TEXT * 50)]
        conn.execute(sa.text("INSERT INTO nasty (label, `blob`, doc) VALUES (:label, :blob, :doc)"), values)
    dst = make_empty_instance("mariadb", tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(_instance(src), bundle)
    assert import_bundle(_instance(dst), bundle)["applied"]
    verified = verify_bundle(_instance(dst), bundle)
    assert verified["ok"], verified["tables_failed"]
    assert _mariadb_rows(dst, "nasty", "id, label, `blob`, doc") == _mariadb_rows(src, "nasty", "id, label, `blob`, doc")


@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_literals_read_back_exactly(no_backslash_escapes: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Each literal, sent as SQL text to a real MariaDB session in either quoting mode, reads back as the value."""
    import datetime as dt
    import decimal

    env = make_empty_instance("mariadb", tmp_path / "db", request)
    literal = mysql_literal_maker(no_backslash_escapes)
    texts = [*NASTY_TEXT, "nul \x00 inside", "\\0 \\' \\\\"]
    with Database.open(_instance(env)) as db, db.engine.connect() as sa_conn:
        cursor = sa_conn.connection.driver_connection.cursor()  # no parameters: PyMySQL formats nothing, as the loader

        def first(sql: str) -> tuple:
            cursor.execute(sql)
            return tuple(cursor.fetchone())

        if no_backslash_escapes:
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        for text in texts:
            assert first(f"SELECT CAST({literal(text)} AS CHAR CHARACTER SET utf8mb4)")[0] == text
        blob = bytes(range(256))
        assert first(f"SELECT {literal(blob)}")[0] == blob
        assert first(f"SELECT {literal(None)} IS NULL")[0] == 1
        moment = dt.datetime(2024, 2, 29, 18, 29, 59, 123456)
        assert first(f"SELECT CAST({literal(moment)} AS DATETIME(6))")[0] == moment
        assert first(f"SELECT CAST({literal(decimal.Decimal('1E+3'))} AS DECIMAL(10, 2))")[0] \
            == decimal.Decimal("1000.00")
        assert first(f"SELECT {literal(True)}, {literal(-2**63)}") == (1, -2**63)
    with pytest.raises(ValueError, match="NaN"):
        literal(float("nan"))


def test_a_crafted_timestamp_never_reaches_the_insert_text_unescaped(tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    """A bundle is untrusted: a "timestamp" with a quote in it must not end the literal and put SQL of the
    bundle's choosing into the multi-row INSERT.  UTC text goes through unparsed only when the whole value is
    digits and separators; anything else is parsed by the codec, which refuses it."""
    from cairn_migrate.bundle.table_loader import mysql_row_formatter
    from cairn_migrate.bundle.table_schema import Column, TableDef

    row = mysql_row_formatter(TableDef("t", [Column("id", "integer"), Column("at", "timestamp")], ["id"]))
    assert row([1, "2024-01-05 09:30:00.5+00"]) == "(1,'2024-01-05 09:30:00.5')"
    crafted = "2024-01-05 0'),(2,(SELECT password FROM directus_users LIMIT 1)) -- +00"
    with pytest.raises(ValueError):
        row([1, crafted])
    with pytest.raises(ValueError):  # ASCII digits only: other digits go to the codec, which refuses them
        row([1, "２０２４-01-05 09:30:00+00"])
    import decimal

    literal = mysql_literal_maker()
    for number in ("NaN", "sNaN", "Infinity", "1E+999999999"):  # bare words in SQL, or a 1 GB literal
        with pytest.raises(ValueError, match="DECIMAL"):
            literal(decimal.Decimal(number))
    # and on a real server: the same row never inserts a second, injected row
    env = make_empty_instance("mariadb", tmp_path / "db", request)
    with Database.open(_instance(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, at datetime(6))"))
        conn.exec_driver_sql("INSERT INTO t (id, at) VALUES " + row([1, "2024-01-05T09:30:00Z"]))
        assert conn.execute(sa.text("SELECT id, at FROM t")).all() == [(1, dt.datetime(2024, 1, 5, 9, 30))]


@pytest.mark.parametrize("vendor", ["postgres", "mariadb"])
def test_export_writes_rows_in_primary_key_order(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """InnoDB clusters rows by primary key: rows arriving in key order append to the last page instead of
    splitting a random one (4× faster loads measured). The export writes them so, on either path."""
    src = make_instance(vendor, tmp_path / "src", request)
    with Database.open(_instance(src)) as db, db.engine.begin() as conn:
        if vendor == "postgres":
            conn.execute(sa.text("CREATE TABLE shuffled (id uuid PRIMARY KEY, n integer)"))
            conn.execute(sa.text("INSERT INTO shuffled SELECT md5(i::text)::uuid, i FROM generate_series(1, 2000) i"))
        else:
            conn.execute(sa.text("CREATE TABLE shuffled (id char(36) NOT NULL PRIMARY KEY, n int)"))
            conn.execute(sa.text("INSERT INTO shuffled SELECT UUID(), seq FROM seq_1_to_2000"))
    bundle = tmp_path / "bundle"
    export_bundle(_instance(src), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    lines = (bundle / manifest["tables"]["shuffled"]["member"]).read_text().splitlines()
    keys = [json.loads(line)[0] for line in lines]
    assert len(keys) == 2000
    assert keys == sorted(keys)
    assert manifest["tables"]["shuffled"].get("order") == "primary key"


@pytest.mark.mariadb
def test_the_export_reads_mariadb_instants_as_text_into_the_same_neutral_form(mariadb_instance: Path) -> None:
    """``stream_tuples`` has PyMySQL hand DATETIME and TIMESTAMP out as MariaDB's text (its converter was two fifths
    of an export): the neutral values are exactly those of the ``datetime`` objects it built before, at every
    fractional precision, a zero date still refused, and the connection's converters restored afterwards."""
    from cairn_migrate.bundle.values import decoder, fast_decoder

    db = Database.open(_instance(mariadb_instance))
    values = ["2024-01-05 09:30:00", "2024-01-05 09:30:00.5", "1999-12-31 23:59:59.123456", "2038-01-01 00:00:00.000100"]
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE cm_instants (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL, "
                                 "dt0 DATETIME NULL, dt3 DATETIME(3) NULL)"))
            conn.execute(sa.text("INSERT INTO cm_instants VALUES (:i, :v, :v, :v)"),
                         [{"i": i, "v": v} for i, v in enumerate(values)] + [{"i": 99, "v": None}])
        kinds = ["timestamp", "datetime", "datetime"]
        with db.engine.connect() as conn:
            objects = conn.execute(sa.text("SELECT ts, dt0, dt3 FROM cm_instants ORDER BY id")).all()
            expected = [[None if v is None else decoder(k)(v) for k, v in zip(kinds, row)] for row in objects]
            assert isinstance(objects[0][0], dt.datetime)
            texts = list(db.stream_tuples("cm_instants", ["ts", "dt0", "dt3"], connection=conn, order_by=["id"]))
            assert all(type(v) is str for row in texts[:-1] for v in row)
            got = [[fast_decoder(k, "mysql")(v) for k, v in zip(kinds, row)] for row in texts]  # type: ignore[misc]
            assert got == expected, (got, expected)
            assert got[2] == ["1999-12-31T23:59:59.123456+00:00", "1999-12-31T23:59:59", "1999-12-31T23:59:59.123000"]
            again = conn.execute(sa.text("SELECT ts FROM cm_instants WHERE id = 0")).scalar_one()
            assert isinstance(again, dt.datetime)  # the connection's own converters are back
        with pytest.raises(ValueError):
            fast_decoder("datetime", "mysql")("0000-00-00 00:00:00")  # type: ignore[misc]
    finally:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS cm_instants"))
        db.close()
