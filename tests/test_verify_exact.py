"""verify's exact path: a bundle of the target's own vendor is compared byte for byte first.

The target's rows, written as the export writes a JSON line, are hashed against the bundle's lines
without decoding or reducing any value (a native SQLite bundle: its member's rows, written the same
way). A table whose bytes differ is compared again at the target's precision, so the exact path may
only make verify faster, never blind: a changed value, a missing row and an extra row must still fail,
on every vendor pair it serves, whether or not a second process hashes the bundle's side.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_empty_instance, make_instance

from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations import verify
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.operations.restore import import_bundle
from cairn_migrate.operations.verify import verify_bundle


def instance(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


PAIRS = [("postgres", False), ("mariadb", False), ("sqlite", False), ("sqlite", True)]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "two-processes"])
@pytest.mark.parametrize(("vendor", "native"), PAIRS, ids=["postgres", "mariadb", "sqlite", "sqlite-native"])
def test_exact_path_catches_a_changed_value_a_missing_row_and_an_extra_row(
        vendor: str, native: bool, parallel: bool, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "PARALLEL_ROWS", 0 if parallel else 10**12)
    src = make_instance(vendor, tmp_path / "src", request)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle, native=native)
    assert import_bundle(instance(dst), bundle)["applied"]
    report = verify_bundle(instance(dst), bundle)
    assert report["ok"], report["tables_failed"]
    if native:  # the import ended with a page copy of the bundle's database: one digest of each file proves it
        assert {t.get("compared") for t in report["tables"]} == {"file"}
    else:
        assert {t["table"] for t in report["tables"] if t.get("compared") not in ("exact", "server")} == set()
        # the target's database hashes (PostgreSQL) or writes as lines (SQLite) its own rows; the rest in Python
        by_server = {t["table"] for t in report["tables"] if t.get("compared") == "server"}
        assert "articles" in by_server

    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET title = 'Article 1: changed' WHERE slug = 'article-1'"))
        conn.execute(sa.text("DELETE FROM articles_tags WHERE id = (SELECT m FROM (SELECT max(id) AS m FROM articles_tags) t)"))
        conn.execute(sa.text("INSERT INTO articles_translations (id, title) "
                             "SELECT m + 100, 'extra' FROM (SELECT max(id) AS m FROM articles_translations) t"))
    report = verify_bundle(instance(dst), bundle)
    assert not report["ok"]
    problems = {t["table"]: t["problem"] for t in report["tables"] if not t["ok"]}
    assert problems == {"articles": "content differs", "articles_tags": "row count differs",
                        "articles_translations": "row count differs"}
    articles = next(t for t in report["tables"] if t["table"] == "articles")
    if not native:  # the full path's second pass names the column (a rows bundle)
        assert articles["columns"] == ["title"]

    # The same count with one row swapped for another: content differs.
    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM articles_translations WHERE title = 'extra'"))
        conn.execute(sa.text("DELETE FROM articles_translations WHERE id = (SELECT m FROM (SELECT min(id) AS m FROM articles_translations) t)"))
        conn.execute(sa.text("INSERT INTO articles_translations (id, title) "
                             "SELECT m + 100, 'swapped' FROM (SELECT max(id) AS m FROM articles_translations) t"))
    report = verify_bundle(instance(dst), bundle)
    problems = {t["table"]: t["problem"] for t in report["tables"] if not t["ok"]}
    assert problems["articles_translations"] == "content differs"


def test_bytes_that_differ_but_mean_the_same_fall_back_to_the_full_comparison(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """PostgreSQL's ``json`` keeps the text as written: other spacing is the same JSON, compared at the
    target's precision (JSON re-sorted) after the exact path finds different bytes; still ok."""
    src = make_instance("postgres", tmp_path / "src", request)
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    import_bundle(instance(dst), bundle)
    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        changed = conn.execute(sa.text("UPDATE articles SET seo = (seo::jsonb)::json WHERE seo IS NOT NULL")).rowcount
    assert changed
    report = verify_bundle(instance(dst), bundle)
    assert report["ok"], report["tables_failed"]
    articles = next(t for t in report["tables"] if t["table"] == "articles")
    assert "compared" not in articles  # the full path said ok
    assert next(t for t in report["tables"] if t["table"] == "tags")["compared"] == "server"


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_the_digest_the_export_records_is_the_one_the_target_database_computes(
        vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """PostgreSQL and MariaDB: the export records each table's ``row_hash`` from its snapshot, and the same
    query on the imported target gives the same figures.  SQLite: the manifest's ``lines_md5`` of the lines the export wrote,
    the same digest computed from the member (a bundle written before it was recorded), and the target's rows
    written as lines by SQLite: all equal."""
    import json

    src = make_instance(vendor, tmp_path / "src", request)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    import_bundle(instance(dst), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    key = "lines_md5" if vendor == "sqlite" else "row_hash"
    recorded = {n: e[key] for n, e in manifest["tables"].items() if key in e}
    assert "articles" in recorded and recorded["articles"]["rows"] == manifest["tables"]["articles"]["rows"]
    definitions = {t["name"]: verify.TableDef.from_dict(t)
                   for t in json.loads((bundle / "schema" / "tables.json").read_text())}
    with Database.open(instance(dst)) as db:
        server = verify._server_digests(db, bundle, manifest, definitions, list(recorded))
    assert "articles" in server and set(server) <= set(recorded)
    if vendor == "sqlite":
        legacy = {**manifest, "tables": {n: {k: v for k, v in e.items() if k != "lines_md5"}
                                         for n, e in manifest["tables"].items()}}
        for name, entry in recorded.items():
            want = (entry["rows"], int(entry["high"]), int(entry["low"]))
            assert verify._bundle_lines_digest(bundle, legacy, name) == want, name


def test_rows_read_ahead_keep_their_order_their_errors_and_stop_when_abandoned() -> None:
    """The target's rows are read by a second thread (:func:`verify._prefetched`): every row once, in order;
    the reader's error raised in the reader's caller; an abandoned read stops the thread."""
    import threading

    assert [row for batch in verify._prefetched(iter(range(12_345))) for row in batch] == list(range(12_345))

    def failing():
        yield from range(7_000)
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        for _ in verify._prefetched(failing()):
            pass

    read = 0

    def endless():
        nonlocal read
        while True:
            read += 1
            yield read

    batches = verify._prefetched(endless())
    next(batches)
    batches.close()
    assert not any(t.name == "verify-read" for t in threading.enumerate())
    assert read <= 4 * verify._BATCH  # two batches waiting, one being filled, one handed over
