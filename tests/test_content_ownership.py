"""The reviewer's defects in content moves (issue 12), each reproduced on real SQLite instances.

A mirror deletes only what this pair's moves wrote (D1, D2), with database cascades counted (D2); a cloned
target's rows are adopted, not duplicated (D2); file bytes are decided first and never overwrite what a
target row points at before the commit (D3, W4); the ID map is recorded pending before the commit (D4);
the same instance on both sides is refused (W3); the ID map's identity does not depend on the host's
spelling (W5); a refused mirror delete is named (R3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES

from cairn_migrate.cli import cli
from cairn_migrate.testing import build_sqlite_instance


def query(env: Path, sql: str, **params: Any) -> Any:
    engine = sa.create_engine(f"sqlite:///{env.parent / 'data.db'}")
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def move(source: Path, target: Path, state: Path, *args: str) -> tuple[int, Any]:
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"}).invoke(
        cli, ["content", "move", "--from", str(source), "--to", str(target), "--json", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    try:
        return result.exit_code, json.loads(result.output)
    except ValueError:
        return result.exit_code, result.output


def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    return (build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src"),
            build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst"), tmp_path / "state.db")


ONE = '{"slug": {"_eq": "article-1"}}'


def test_mirror_never_deletes_a_target_row_it_did_not_write_even_when_the_filter_names_its_key(tmp_path: Path) -> None:
    """D1: the filter is in source keys; the target's own tag 6 is not the source's tag 6."""
    src, dst, state = pair(tmp_path)
    query(dst, "INSERT INTO tags (name, slug) VALUES ('Target only (never moved)', 'target-only')")
    query(src, "INSERT INTO tags (name, slug) VALUES ('Fresh on source', 'fresh')")
    flt = '{"id": {"_in": [6]}}'
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt, "--mode", "mirror", "--max-delete", "5")
    assert code == 0, report
    assert report["plan"]["tags"]["deleted"] == 0 and report["plan"]["tags"]["created"] == 1
    assert {r.name for r in query(dst, "SELECT name FROM tags WHERE id > 5")} == {"Target only (never moved)",
                                                                                 "Fresh on source"}
    # the moved tag leaves the filter's set on the source: now it is ours, and mirror removes it
    query(src, "DELETE FROM tags WHERE slug = 'fresh'")
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt, "--mode", "mirror", "--max-delete", "5")
    assert code == 0 and report["plan"]["tags"]["deleted"] == 1, report
    assert [r.name for r in query(dst, "SELECT name FROM tags WHERE id > 5")] == ["Target only (never moved)"]


def test_mirror_keeps_comments_written_on_the_target_and_a_clone_is_not_duplicated(tmp_path: Path) -> None:
    """D2: a clone's comment is adopted (every column equal), a comment written on the target survives mirror."""
    src, dst, state = pair(tmp_path)
    article = query(src, "SELECT id FROM articles WHERE slug = 'article-1'")[0][0]
    before = query(dst, "SELECT count(*) FROM article_comments")[0][0]
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0, report
    assert report["matched_on_target"]["article_comments"] == 1
    assert query(dst, "SELECT count(*) FROM article_comments")[0][0] == before  # adopted, not duplicated
    query(dst, "INSERT INTO article_comments (author_name, text, article) VALUES ('Reader on the target', "
               "'written on the target', :a)", a=article)
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE, "--mode", "mirror",
                        "--max-delete", "10")
    assert code == 0 and report["plan"]["article_comments"]["deleted"] == 0, report
    assert {r.author_name for r in query(dst, "SELECT author_name FROM article_comments WHERE article = :a",
                                          a=article)} == {"Reader 1", "Reader on the target"}
    # the source drops its comment: the one we wrote (adopted) goes, the target's own stays
    query(src, "DELETE FROM article_comments WHERE article = :a", a=article)
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE, "--mode", "mirror",
                        "--max-delete", "10")
    assert code == 0 and report["plan"]["article_comments"]["deleted"] == 1, report
    assert [r.author_name for r in query(dst, "SELECT author_name FROM article_comments WHERE article = :a",
                                         a=article)] == ["Reader on the target"]


def test_a_cascade_to_rows_created_on_the_target_is_refused_and_counted(tmp_path: Path) -> None:
    """D2: a root the mirror deletes would take a target-made child with it (ON DELETE CASCADE): refused."""
    src, dst, state = pair(tmp_path)
    for env in (src, dst):
        query(env, "CREATE TABLE notes (id integer PRIMARY KEY AUTOINCREMENT, body text, "
                   "tag integer REFERENCES tags (id) ON DELETE CASCADE)")
    query(src, "INSERT INTO tags (name, slug) VALUES ('Fresh', 'fresh')")
    flt = '{"slug": {"_eq": "fresh"}}'
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt)
    assert code == 0, report
    moved = query(dst, "SELECT id FROM tags WHERE slug = 'fresh'")[0][0]
    query(dst, "INSERT INTO notes (body, tag) VALUES ('an editor''s note on the target', :t)", t=moved)
    query(src, "DELETE FROM tags WHERE slug = 'fresh'")
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt, "--mode", "mirror",
                        "--max-delete", "10")
    assert code == 2 and report["cascaded"] == {"notes": 1}, report
    assert "cascade (ON DELETE CASCADE) to 1 notes rows this move did not write" in str(report["refused"])
    assert query(dst, "SELECT count(*) FROM tags WHERE slug = 'fresh'")[0][0] == 1
    # the note removed on the target: the cascade takes nothing, the tag goes
    query(dst, "DELETE FROM notes")
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt, "--mode", "mirror",
                        "--max-delete", "1")
    assert code == 0 and report["plan"]["tags"]["deleted"] == 1, report


def test_the_same_instance_on_both_sides_is_refused(tmp_path: Path) -> None:
    """W3: the same database, whatever the .env's path spelling."""
    src, _dst, state = pair(tmp_path)
    code, output = move(src, Path(str(src.parent) + "/../src/.env"), state, "--collection", "articles")
    assert code == 2 and "are the same instance" in str(output), output


def test_file_bytes_are_decided_first_and_never_overwritten_before_the_commit(tmp_path: Path) -> None:
    """D3: skip-existing leaves a replaced target file alone; a failed run leaves no bytes behind."""
    src, dst, state = pair(tmp_path)
    article, cover = query(src, "SELECT id, cover_image FROM articles WHERE slug = 'article-1'")[0]
    disk = query(dst, "SELECT filename_disk FROM directus_files WHERE id = :i", i=cover)[0][0]
    replaced = dst.parent / "uploads" / disk
    replaced.write_bytes(b"bytes the target's editor uploaded (replace file) " * 3)
    query(dst, "UPDATE directus_files SET filesize = :s, title = 'Replaced on the target' WHERE id = :i",
          s=replaced.stat().st_size, i=cover)
    before = replaced.read_bytes()
    uploads = sorted(p.name for p in (dst.parent / "uploads").iterdir())
    query(src, "INSERT INTO article_comments (author_name, text, article) VALUES ('New', 'new', :a)", a=article)
    query(dst, "CREATE TRIGGER no_comments BEFORE INSERT ON article_comments BEGIN SELECT RAISE(ABORT, 'closed'); END")
    code, output = move(src, dst, state, "--collection", "articles", "--filter", ONE, "--mode", "skip-existing")
    assert code == 3 and "nothing was written" in str(output), output
    assert replaced.read_bytes() == before
    assert sorted(p.name for p in (dst.parent / "uploads").iterdir()) == uploads  # no object left behind
    # merge, the trigger gone: the row is updated and points at fresh bytes; the target's replaced object
    # (a row we never wrote) is kept for files check
    query(dst, "DROP TRIGGER no_comments")
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0, report
    new_disk, title = query(dst, "SELECT filename_disk, title FROM directus_files WHERE id = :i", i=cover)[0]
    source_disk = query(src, "SELECT filename_disk FROM directus_files WHERE id = :i", i=cover)[0][0]
    assert new_disk != disk and title != "Replaced on the target"
    assert (dst.parent / "uploads" / new_disk).read_bytes() == (src.parent / "uploads" / source_disk).read_bytes()
    assert replaced.read_bytes() == before and report["files"]["replaced"] == {"removed": 0, "kept": 1}


def test_same_size_new_bytes_are_copied_when_the_file_row_changed(tmp_path: Path) -> None:
    """W4: new bytes of the same size, the row's modified_on changed: copied again."""
    src, dst, state = pair(tmp_path)
    cover = query(src, "SELECT cover_image FROM articles WHERE slug = 'article-1'")[0][0]
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0, report
    disk = query(src, "SELECT filename_disk FROM directus_files WHERE id = :i", i=cover)[0][0]
    path = src.parent / "uploads" / disk
    path.write_bytes(bytes(reversed(path.read_bytes())))  # same size, other bytes
    query(src, "UPDATE directus_files SET modified_on = '2030-01-01 00:00:00' WHERE id = :i", i=cover)
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0 and report["files"]["copy"] == 1, report
    target_disk = query(dst, "SELECT filename_disk FROM directus_files WHERE id = :i", i=cover)[0][0]
    assert (dst.parent / "uploads" / target_disk).read_bytes() == path.read_bytes()
    # the old object was ours (the first move wrote the row): removed after the commit
    assert report["files"]["replaced"] == {"removed": 1, "kept": 0}
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0 and report["files"]["copy"] == 0 and not report["changes"], report


#: entries of the ID map still pending: written by a run never recorded committed
UNSETTLED = ("SELECT count(*) FROM cm_content_id_map WHERE state = 'pending' "
             "AND run_id NOT IN (SELECT run_id FROM cm_content_id_map_runs)")


def test_pending_id_map_entries_are_kept_only_when_the_target_holds_what_was_written(tmp_path: Path) -> None:
    """D4: entries are recorded pending before the target's commit; a later run keeps them when the target row
    is what the run wrote (it committed), and forgets them when not (it never committed)."""
    src, dst, state = pair(tmp_path)
    query(src, "INSERT INTO tags (name, slug) VALUES ('A', 'a'), ('B', 'b')")
    flt = '{"slug": {"_in": ["a", "b"]}}'
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt)
    assert code == 0 and report["plan"]["tags"]["created"] == 2, report
    store = sa.create_engine(f"sqlite:///{state}")
    with store.begin() as conn:
        assert conn.execute(sa.text(UNSETTLED)).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM cm_content_id_map_runs")).scalar() == 1  # one row per run
        # as if the run had stopped after the target's commit, before recording it committed …
        conn.execute(sa.text("UPDATE cm_content_id_map SET state = 'pending', run_id = 'r' WHERE collection = 'tags'"))
        assert conn.execute(sa.text(UNSETTLED)).scalar() == 2
    # … and as if B's write had never committed: the target's own row now has B's key
    b_target = query(dst, "SELECT id FROM tags WHERE slug = 'b'")[0][0]
    query(dst, "UPDATE tags SET name = 'Target''s own', slug = 'target-own' WHERE id = :i", i=b_target)
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt)
    assert code == 0, report
    assert report["plan"]["tags"] == {"created": 1, "updated": 0, "unchanged": 1, "skipped": 0, "deleted": 0}
    assert query(dst, "SELECT name FROM tags WHERE id = :i", i=b_target)[0][0] == "Target's own"  # never taken
    assert query(dst, "SELECT count(*) FROM tags WHERE slug IN ('a', 'b')")[0][0] == 2  # no duplicate of A
    with store.begin() as conn:
        assert conn.execute(sa.text(UNSETTLED)).scalar() == 0
        runs = conn.execute(sa.text("SELECT count(*) FROM cm_content_id_map_runs")).scalar()
    code, report = move(src, dst, state, "--collection", "tags", "--filter", flt)
    assert code == 0 and not report["changes"], report
    with store.begin() as conn:  # a run that saved nothing pending records no run
        assert conn.execute(sa.text("SELECT count(*) FROM cm_content_id_map_runs")).scalar() == runs
    store.dispose()


def test_the_id_map_identity_does_not_depend_on_the_hosts_spelling(tmp_path: Path) -> None:
    """W5: localhost and 127.0.0.1 are one database; rows of the old, spelling-bound identity move over."""
    from cairn_migrate.content.keys import ID_MAP, IdMap
    from cairn_migrate.content.spill import Spill
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.service.state import database_identity, instance_scope

    def instance(host: str) -> Instance:
        env = tmp_path / host / ".env"
        env.parent.mkdir()
        env.write_text(f"KEY=k\nSECRET=s\nDB_CLIENT=pg\nDB_HOST={host}\nDB_PORT=5432\nDB_DATABASE=cms\n"
                       "DB_USER=u\nDB_PASSWORD=p\n")
        return Instance.from_env_file(env)

    by_name, by_address = instance("localhost"), instance("127.0.0.1")
    assert instance_scope(by_name) != instance_scope(by_address)  # jobs keep their scope
    assert database_identity(by_name) == database_identity(by_address)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Spill.open() as spill:
        old = IdMap(url, ("s", instance_scope(by_name)), spill)
        old.save([("tags", 1, 7, None)])
    with Spill.open() as spill:
        fresh = IdMap(url, ("s", database_identity(by_address)), spill, legacy=("s", instance_scope(by_name)))
        assert fresh.get("tags", 1) == "7"
    with fresh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ID_MAP).where(
            ID_MAP.c.target == instance_scope(by_name))).scalar() == 0


def test_a_refused_mirror_delete_is_named_and_rolled_back(tmp_path: Path) -> None:
    """R3: a foreign key refusing the delete surfaces as the target's refusal, not a generic error."""
    src, dst, state = pair(tmp_path)
    for env in (src, dst):
        query(env, "CREATE TABLE pins (id integer PRIMARY KEY AUTOINCREMENT, "
                   "tag integer NOT NULL REFERENCES tags (id) ON DELETE RESTRICT)")
    query(src, "INSERT INTO tags (name, slug) VALUES ('Fresh', 'fresh')")
    flt = '{"slug": {"_eq": "fresh"}}'
    assert move(src, dst, state, "--collection", "tags", "--filter", flt)[0] == 0
    moved = query(dst, "SELECT id FROM tags WHERE slug = 'fresh'")[0][0]
    query(dst, "INSERT INTO pins (tag) VALUES (:t)", t=moved)
    query(src, "DELETE FROM tags WHERE slug = 'fresh'")
    code, output = move(src, dst, state, "--collection", "tags", "--filter", flt, "--mode", "mirror",
                        "--max-delete", "1")
    assert code == 3 and "The target refused mirror's deletions" in str(output), output
    assert query(dst, "SELECT count(*) FROM tags WHERE slug = 'fresh'")[0][0] == 1


def test_equal_source_rows_in_different_batches_stay_two_target_rows(tmp_path: Path) -> None:
    """Equal-row adoption (D2) takes a target row a clone already held, never one this run created in an
    earlier batch of the same collection: two equal source comments 501 keys apart (one batch is 500 keys)
    become two target comments, and the plan counts what the apply writes."""
    src, dst, state = pair(tmp_path)
    article = query(src, "SELECT id FROM articles WHERE slug = 'article-1'")[0][0]
    comment = {"a": article, "n": "twin", "t": "the same words", "d": "2024-01-01 00:00:00"}
    query(src, "INSERT INTO article_comments (article, author_name, text, approved, date_created) "
               "VALUES (:a, :n, :t, 1, :d)", **comment)
    filler = [{"a": article, "n": f"reader {i}", "t": f"comment {i}", "d": comment["d"]} for i in range(500)]
    engine = sa.create_engine(f"sqlite:///{src.parent / 'data.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO article_comments (article, author_name, text, approved, date_created) "
                             "VALUES (:a, :n, :t, 1, :d)"), filler)
        conn.execute(sa.text("INSERT INTO article_comments (article, author_name, text, approved, date_created) "
                             "VALUES (:a, :n, :t, 1, :d)"), comment)
    engine.dispose()
    keys = [r[0] for r in query(src, "SELECT id FROM article_comments WHERE author_name = 'twin' ORDER BY id")]
    assert len(keys) == 2 and keys[1] - keys[0] > 500  # in two batches
    before = query(dst, "SELECT count(*) FROM article_comments WHERE author_name = 'twin'")[0][0]
    code, planned = move(src, dst, state, "--collection", "articles", "--filter", ONE, "--dry-run")
    assert code == 1, planned
    code, report = move(src, dst, state, "--collection", "articles", "--filter", ONE)
    assert code == 0, report
    assert report["plan"]["article_comments"]["created"] == planned["plan"]["article_comments"]["created"]
    assert query(dst, "SELECT count(*) FROM article_comments WHERE author_name = 'twin'")[0][0] == before + 2
    assert move(src, dst, state, "--collection", "articles", "--filter", ONE)[1]["changes"] is False
