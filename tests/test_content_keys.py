"""The content move's key lookups and row digests (``content/keys.py``), on a real PostgreSQL instance.

Key lookups on PostgreSQL bind the keys as one array literal the server reads as ``uuid[]``/``integer[]``
(psycopg adapts a list element by element in Python, a fifth of a move's CPU).  The literal must reach the
plan as a constant array, which PostgreSQL hashes: typed as text and cast in SQL, the cast is evaluated per
row and a 20 000-key lookup over an unindexed foreign key (CairnCMS indexes none) became quadratic.
"""

from __future__ import annotations

import contextlib

import datetime
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cairn_migrate.content import keys
from cairn_migrate.content.spill import Spill
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance


def test_row_digest_is_the_json_dumps_form() -> None:
    """Digests stored as pending by earlier versions (``json.dumps`` of the sorted ``repr`` pairs) still match."""
    rows = [
        {},
        {"title": "Grüße \"quoted\" \\ back\nslash ✓", "n": 3, "none": None, "ok": True, "x": 1.5},
        {"when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc), "emoji": "😀", "b": "\x00\x1f"},
    ]
    for row in rows:
        old = hashlib.sha256(json.dumps(sorted((k, repr(v)) for k, v in row.items())).encode("utf-8")).hexdigest()
        assert keys.row_digest(row) == old


@pytest.mark.parametrize("vendor", ["postgres", "mysql", "sqlite"])
def test_row_digest_of_a_collection(vendor: str) -> None:
    """The per-collection digester gives, for every row, the digest of its comparable values (ID map entries saved
    as pending by either are confirmed by the other); a placeholder value is left out, as before."""
    from cairn_migrate.bundle.values import comparable

    class Placeholder:
        pass

    kinds = {"title": "string", "seo": "json", "at": "timestamp", "ok": "boolean", "n": "integer",
             "price": "decimal", "f": "float", "id": "integer"}
    rows = [{"title": "Grüße ✓", "seo": '{"b": 1, "a": [1, 2]}', "at": "2024-05-01T12:00:00.123456+00:00",
             "ok": 1, "n": 3, "price": "4.50", "f": 1.23456789, "id": 9},
            {"title": None, "seo": None, "at": None, "ok": None, "n": None, "price": None, "f": None, "id": 1},
            {"title": "x", "seo": {"a": 1}, "at": "2024-05-01T12:00:00Z", "ok": "true", "n": Placeholder(),
             "price": 1, "f": 2, "id": 3}]
    digest = keys.RowDigest([n for n in kinds if n != "id"], kinds, vendor, absent=Placeholder)
    for row in rows:
        expected = keys.row_digest({n: comparable(v, kinds[n], vendor) for n, v in row.items()
                                    if n != "id" and not isinstance(v, Placeholder)})
        assert digest.v1(row) == expected, row
        # what this version stores is the cheaper form; an entry stored in either form is recognised
        assert digest(row).startswith("2:") and len(digest(row)) == 64
        assert digest.matches(row, digest(row)) and digest.matches(row, expected)
    assert len({digest(r) for r in rows}) == 3
    assert len({digest.v1(r) for r in rows}) == 3


def test_the_stored_digest_tells_rows_apart_as_their_comparable_values_do() -> None:
    """Equal comparable values give the same digest whatever their spelling (a timestamp's zone, a JSON text's
    key order); any change of a value, of a type (1 against "1") or of a placeholder's place gives another."""
    kinds = {"title": "string", "seo": "json", "at": "timestamp", "n": "integer"}
    digest = keys.RowDigest(list(kinds), kinds, "postgres", absent=type(Ellipsis))
    row = {"title": "Grüße ✓", "seo": '{"b": 1, "a": [1, 2]}', "at": "2024-05-01T12:00:00+00:00", "n": 3}
    same = {**row, "seo": {"a": [1, 2], "b": 1}, "at": "2024-05-01T14:00:00+02:00"}
    assert digest(row) == digest(same)
    others = [{**row, "title": "Grüße ✓ "}, {**row, "n": "3"}, {**row, "n": None}, {**row, "seo": '{"a": [2, 1], "b": 1}'},
              {**row, "title": "Ellipsis"}, {**row, "title": None}]
    assert len({digest(r) for r in [row, *others]}) == 1 + len(others)
    assert not digest.matches(others[0], digest(row)) and not digest.matches(others[0], digest.v1(row))


def test_postgres_key_lookups_find_the_rows_in_one_hashed_array(postgres_instance: Path) -> None:
    with Database.open(Instance.from_env_file(postgres_instance)) as db, db.engine.begin() as conn:
        article = conn.execute(sa.text("SELECT id FROM articles ORDER BY id LIMIT 1")).scalar_one()
        before = conn.execute(sa.text("SELECT count(*) FROM article_comments WHERE article = :a"), {"a": article}).scalar_one()
        conn.execute(sa.text("INSERT INTO article_comments (article, author_name, text, approved) "
                             "SELECT :a, 'reader', 'x', true FROM generate_series(1, 20000)"), {"a": article})
        others = [uuid.uuid4() for _ in range(19999)]
        # uuid objects, upper-case text: the same keys; 20 000 of them against 20 000 rows without an index
        conn.execute(sa.text("SET LOCAL statement_timeout = '5s'"))
        for wanted in ([article, *others], [str(article).upper(), *map(str, others)]):
            found = conn.execute(sa.select(sa.func.count()).select_from(sa.table("article_comments")).where(
                keys.in_(db, "article_comments", "article", wanted))).scalar_one()
            assert found == before + 20000
        ids = conn.execute(sa.text("SELECT id FROM article_comments ORDER BY id LIMIT 3")).scalars().all()
        got = conn.execute(sa.select(sa.column("id")).select_from(sa.table("article_comments")).where(
            keys.in_(db, "article_comments", "id", [str(i) for i in ids] + [10 ** 9]))).scalars().all()
        assert sorted(got) == sorted(ids)
        with pytest.raises(ValueError):  # not a uuid: refused before any SQL, as before
            keys.in_(db, "article_comments", "article", [str(article), "x', 'y"])


@pytest.mark.parametrize("vendor", ["sqlite", "postgres", "mariadb"])
def test_id_map_records_pending_entries_then_commits_and_replaces_them(vendor: str, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    """The map's entries go in with the store's own driver (``executemany``): on every state store vendor they are
    written pending with their digests, committed, read back by a new run and replaced when a row moves again."""
    from cairn_migrate.testing import (create_mariadb_database, create_postgres_database, drop_mariadb_database,
                                       drop_postgres_database)

    if vendor == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        admin = request.getfixturevalue("pg_admin_url" if vendor == "postgres" else "mariadb_admin_url")
        create, drop = (create_postgres_database, drop_postgres_database) if vendor == "postgres" else \
            (create_mariadb_database, drop_mariadb_database)
        name = create(admin)
        request.addfinalizer(lambda: drop(admin, name))
        driver = "postgresql+psycopg" if vendor == "postgres" else "mysql+pymysql"
        url = sa.engine.make_url(admin).set(drivername=driver, database=name).render_as_string(hide_password=False)
    scope = ("src-db", "dst-db")
    maps: list[keys.IdMap] = []
    request.addfinalizer(lambda: [m.engine.dispose() for m in maps])  # before the database is dropped
    with contextlib.ExitStack() as stack:
        def run() -> keys.IdMap:  # each run reads the map into its own scratch database
            idmap = keys.IdMap(url, scope, stack.enter_context(Spill.open()))
            maps.append(idmap)
            return idmap

        first = run()
        entries = [("comments", i, 1000 + i, "d1" if i == 1 else None) for i in range(1200)] + \
            [("articles", "a'b", "a'b", None)]
        assert first.save(entries, pending=True) == 1201
        first.commit()
        again = run()
        assert not again.is_pending("comments", 1)
        assert again.get("comments", 1199) == "2199" and again.get("articles", "a'b") == "a'b"
        assert again.save([("comments", 5, 7, None), ("comments", 5000, 8, None)]) == 2  # one replaced, one new
        third = run()
        assert third.get("comments", 5) == "7" and third.get("comments", 5000) == "8"
        assert len(list(third.owned("comments"))) == 1201


@pytest.mark.parametrize("vendor", ["sqlite", "postgres"])
def test_the_closure_follows_a_roots_links_through_its_condition(vendor: str, request: pytest.FixtureRequest) -> None:
    """The first level of the closure reads what a root's rows link to through the root's own condition, in one
    query per link: a self-reference (the same table inside and outside the subquery) and a foreign key of
    another type than the key it names (looked up with key lists instead) give the closure the key lists gave."""
    from conftest import query

    from cairn_migrate.content.closure import Graph, Link, compute
    from cairn_migrate.content.move import condition

    env = request.getfixturevalue(f"{vendor}_instance")
    note_key = "text" if vendor == "sqlite" else "integer"  # SQLite: a text column naming integer keys
    query(env, "CREATE TABLE cm_nodes (id integer PRIMARY KEY, parent integer, label varchar(10))")
    query(env, f"CREATE TABLE cm_notes (id integer PRIMARY KEY, node {note_key}, body varchar(10))")
    for row in ((1, None, "a"), (2, 1, "b"), (3, 1, "a"), (4, 2, "z"), (5, None, "z"), (6, 5, "a2")):
        query(env, "INSERT INTO cm_nodes (id, parent, label) VALUES (:i, :p, :l)", i=row[0], p=row[1], l=row[2])
    for row in ((1, 3), (2, 5), (3, 4)):
        query(env, "INSERT INTO cm_notes (id, node, body) VALUES (:i, :n, 'x')", i=row[0],
              n=str(row[1]) if vendor == "sqlite" else row[1])
    graph = Graph([Link("cm_nodes", "parent", "cm_nodes", one_field="children"),
                   Link("cm_notes", "node", "cm_nodes", one_field="notes")],
                  keys={"cm_nodes": "id", "cm_notes": "id"}, integer={"cm_nodes", "cm_notes"})
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn, Spill.open() as spill:
        where = {"cm_nodes": condition({"label": {"_eq": "a"}}, "cm_nodes")(db)}
        shallow = compute(db, graph, where, 1, conn, spill)
        assert set(shallow.rows["cm_nodes"].batches(100).__next__()) == {1, 2, 3}
        assert list(shallow.rows["cm_notes"].batches(100)) == [[1]]
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn, Spill.open() as spill:
        deep = compute(db, graph, {"cm_nodes": condition({"label": {"_eq": "a"}}, "cm_nodes")(db)}, None, conn, spill)
        assert [k for b in deep.rows["cm_nodes"].batches(100) for k in b] == [1, 2, 3, 4]
        assert [k for b in deep.rows["cm_notes"].batches(100) for k in b] == [1, 3]


@pytest.mark.parametrize("vendor", ["sqlite", "postgres"])
def test_the_closure_does_not_read_a_childs_key_back_to_the_parents_that_found_it(
        vendor: str, request: pytest.FixtureRequest) -> None:
    """Children found through their foreign key name, through it, parents the closure holds already: that column is
    not read again (100k comments' article keys, at 100k articles), while every other column of theirs is, and a
    child also reached another way is read whole."""
    from conftest import query

    from cairn_migrate.content.closure import Graph, Link, compute
    from cairn_migrate.content.move import condition

    env = request.getfixturevalue(f"{vendor}_instance")
    query(env, "CREATE TABLE cm_nodes (id integer PRIMARY KEY, label varchar(10))")
    query(env, "CREATE TABLE cm_notes (id integer PRIMARY KEY, node integer, also integer, body varchar(10))")
    for row in ((1, "a"), (2, "a"), (7, "q"), (8, "q"), (9, "q")):
        query(env, "INSERT INTO cm_nodes (id, label) VALUES (:i, :l)", i=row[0], l=row[1])
    for row in ((1, 1, 7), (2, 2, None), (3, 9, None)):
        query(env, "INSERT INTO cm_notes (id, node, also, body) VALUES (:i, :n, :a, 'x')", i=row[0], n=row[1], a=row[2])
    graph = Graph([Link("cm_notes", "node", "cm_nodes", one_field="notes"), Link("cm_notes", "also", "cm_nodes")],
                  keys={"cm_nodes": "id", "cm_notes": "id"}, integer={"cm_nodes", "cm_notes"})
    read: list[str] = []
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn, Spill.open() as spill:
        sa.event.listen(conn, "before_cursor_execute", lambda *a: read.append(" ".join(a[2].split())))
        closure = compute(db, graph, {"cm_nodes": condition({"label": {"_eq": "a"}}, "cm_nodes")(db)}, None, conn,
                          spill)
        assert [k for b in closure.rows["cm_nodes"].batches(100) for k in b] == [1, 2, 7]  # 7: note 1's "also"
        assert [k for b in closure.rows["cm_notes"].batches(100) for k in b] == [1, 2]
    assert any("SELECT DISTINCT also FROM cm_notes" in q for q in read), read
    assert not any("SELECT DISTINCT node FROM cm_notes" in q for q in read), read


def test_a_first_save_of_a_collection_inserts_at_once_and_a_concurrent_one_is_refused(tmp_path: Path) -> None:
    """A collection the pair's map held nothing of is inserted without looking up what to replace; a second
    save of it in the same run still replaces; and two runs of one pair that both started from an empty map
    cannot both record a source row: the second's save (before its target commits) is refused, by name."""
    from cairn_migrate.errors import MigrateError

    url = f"sqlite:///{tmp_path / 'state.db'}"
    scope = ("src-db", "dst-db")
    with Spill.open() as one_spill, Spill.open() as other_spill:
        one, other = keys.IdMap(url, scope, one_spill), keys.IdMap(url, scope, other_spill)  # both see no entries
        try:
            assert one.save([("comments", i, 100 + i, f"d{i}") for i in range(700)], pending=True) == 700
            assert one.save([("comments", 3, 9, "again")], pending=True) == 1  # this run saved it: replaced
            one.commit()
            with pytest.raises(MigrateError, match="Another move of the same source and target .* comments"):
                other.save([("comments", 3, 555, "theirs")], pending=True)
            with keys.IdMap(url, scope, other_spill).engine.connect() as conn:
                stored = dict(conn.execute(sa.select(keys.ID_MAP.c.source_id, keys.ID_MAP.c.target_id)).all())
            assert len(stored) == 700 and stored["3"] == "9" and stored["699"] == "799"  # the first run's, whole
        finally:
            one.engine.dispose()
            other.engine.dispose()


def test_row_decoder_gives_each_columns_decoder_value() -> None:
    """The generated row decoder gives what each column's own decoder gives, for every type, NULLs and values of
    another type than the column's (SQLite's type affinity), whatever the column's name."""
    from cairn_migrate.bundle.values import decoder, row_decoder

    columns = [("id", "integer"), ("big", "bigint"), ("title", "string"), ("body", "text"), ("key", "uuid"),
               ("doc", "json"), ("flag", "boolean"), ("at", "timestamp"), ("day", "date"), ("price", "decimal"),
               ("odd 'name\"\n", "string"), ("k0", "float")]
    names, kinds = [n for n, _ in columns], [k for _, k in columns]
    decode = row_decoder(names, kinds)
    rows = [
        (1, 2**40, "t", "b", uuid.UUID(int=7), {"a": [1]}, True,
         datetime.datetime(2024, 1, 5, 9, 30, tzinfo=datetime.timezone.utc), datetime.date(2024, 1, 5), "1.50", "x", 1.5),
        ("12", "13", 14, b"bytes", "ABCDEF01-0000-0000-0000-000000000000", '{"b": 2}', 0, "2024-01-05 09:30:00",
         "2024-01-05", 2, True, "2.5"),
        (None,) * len(columns),
    ]
    for row in rows:
        assert decode(row) == {n: decoder(k)(v) for n, k, v in zip(names, kinds, row)}


def test_read_ahead_reads_the_next_items_while_the_caller_works_and_waits_for_them_on_a_stop() -> None:
    """The walk's source reads (writer.read_ahead): answers in order, the next READ_AHEAD reads already run while
    the caller works on one, a read's error raised to the caller, and a stop returns only once no read runs."""
    import threading
    import time

    from cairn_migrate.content.writer import READ_AHEAD, read_ahead

    started: list[int] = []
    running = threading.Event()

    def read(item: int) -> int:
        started.append(item)
        running.set()
        time.sleep(0.05)
        running.clear()
        if item == 99:
            raise ValueError("refused")
        return item * 10

    seen = []
    for answer in read_ahead(read, iter([1, 2, 3, 4, 5])):
        assert max(started) <= answer // 10 + READ_AHEAD  # never more than that many ahead
        time.sleep(0.25)  # the caller's work: the next reads have run meanwhile
        seen.append((answer, max(started)))
    assert READ_AHEAD >= 1 and seen == [(10 * k, min(k + READ_AHEAD, 5)) for k in range(1, 6)]
    assert started == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="refused"):
        list(read_ahead(read, iter([1, 99, 3])))
    reads = read_ahead(read, iter([1, 2, 3]))
    assert next(reads) == 10
    reads.close()  # the caller stops while 2 is being read
    assert not running.is_set()
    assert list(read_ahead(read, iter([]))) == []


def test_a_walks_entries_go_into_a_sqlite_store_in_sql_as_they_would_a_batch_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite state store takes the walk's entries (``Written``) in SQL from the scratch database: the store ends
    as the batch-at-a-time save leaves it (a collection new to the pair inserted, a held one's changed entries
    replaced and the rest left alone, pending with the run and digests), and a concurrent first save of the same
    pair is still refused by name."""
    from cairn_migrate.content.spill import Written
    from cairn_migrate.errors import MigrateError

    scope = ("src-db", "dst-db")

    def stored(url: str) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT collection, source_id, target_id, state, run_id IS NOT NULL, digest "
                                        "FROM cm_content_id_map ORDER BY collection, source_id")).all()
        engine.dispose()
        return [tuple(r) for r in rows]

    results = []
    for in_sql in (True, False):
        url = f"sqlite:///{tmp_path / f'state-{in_sql}.db'}"
        with contextlib.ExitStack() as stack:
            if not in_sql:
                stack.enter_context(monkeypatch.context()).setattr(keys.IdMap, "_store_file", lambda self: None)
            first = keys.IdMap(url, scope, stack.enter_context(Spill.open()))
            first.spill.keymap("comments").record((i, 100 + i, f"d{i}") for i in range(10))
            assert first.save(Written(first.spill), pending=True) == 10
            first.commit()
            again = keys.IdMap(url, scope, stack.enter_context(Spill.open()))
            again.spill.keymap("comments").record([(i, 100 + i if i < 5 else 200 + i, f"e{i}") for i in range(12)])
            again.spill.keymap("articles").record([("a'b", "a'b", "x"), ("c", "c", None)])
            total = again.save(Written(again.spill), pending=True)
            rival = keys.IdMap(url, ("src-db", "other"), stack.enter_context(Spill.open()))
            late = keys.IdMap(url, ("src-db", "other"), stack.enter_context(Spill.open()))  # both see no entries
            rival.spill.keymap("tags").record([(1, 2, None)])
            late.spill.keymap("tags").record([(1, 3, None)])
            rival.save(Written(rival.spill), pending=True)
            with pytest.raises(MigrateError, match="Another move of the same source and target .* tags"):
                late.save(Written(late.spill), pending=True)
            for idmap in (first, again, rival, late):
                idmap.engine.dispose()
        results.append((total, stored(url)))
    (total, rows), (expected_total, expected_rows) = results
    assert total == expected_total == 9  # 5 changed, 2 new comments, 2 articles
    assert rows == expected_rows
    assert ("comments", "7", "207", "pending", 1, "e7") in rows and ("comments", "2", "102", "pending", 1, "d2") in rows
    assert ("articles", "a'b", "a'b", "pending", 1, "x") in rows and ("tags", "1", "2", "pending", 1, None) in rows


@pytest.mark.parametrize("vendor", ["sqlite", "postgres", "mariadb"])
def test_keys_are_read_as_the_text_a_move_keys_rows_by(vendor: str, request: pytest.FixtureRequest) -> None:
    """A PostgreSQL uuid is read as its text (no ``uuid.UUID`` built and turned back into text per value), the
    same lower-case text ``Graph.key`` gives of what the driver returns; other columns and vendors as they are."""
    from cairn_migrate.instance.instance import Instance

    env = request.getfixturevalue(f"{vendor}_instance")
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn:
        read = conn.execute(sa.select(keys.selected(db, "articles", "id"), keys.selected(db, "articles", "author"))
                            .select_from(sa.table("articles")).order_by(sa.column("id"))).all()
        plain = conn.execute(sa.select(sa.column("id"), sa.column("author")).select_from(sa.table("articles"))
                             .order_by(sa.column("id"))).all()
    assert read and all(isinstance(key, str) and key == str(raw).lower() for (key, _), (raw, _) in zip(read, plain))
    assert [author for _, author in read] == [author for _, author in plain]
    assert ("CAST" in str(keys.selected(db, "articles", "id"))) == (vendor == "postgres")
