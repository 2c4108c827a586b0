"""The database path's ``COPY`` on PostgreSQL, kept open across a collection's batches (:mod:`cairn_migrate.content.sink_db`).

Real PostgreSQL (the recorded instance, twice): the keys of a collection the target held no rows of are drawn a
block at a time and none is wasted; a row the server refuses in the middle of a streamed collection is named,
and the whole move rolls back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_instance, query

from cairn_migrate.cli import cli
from cairn_migrate.content.closure import BATCH

pytestmark = pytest.mark.postgres

#: comments moved: more than two of the walk's batches, so the COPY spans batches
COMMENTS = 2 * BATCH + 137


def _instances(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    source = make_instance("postgres", tmp_path / "src", request)
    target = make_instance("postgres", tmp_path / "dst", request)
    article = query(source, "SELECT id FROM articles WHERE status = 'published' ORDER BY id LIMIT 1")[0][0]
    query(source, "INSERT INTO article_comments (article, author_name, text, approved) "
                  "SELECT :a, 'reader', 'comment ' || g, true FROM generate_series(1, :n) AS g", a=article, n=COMMENTS)
    query(target, "DELETE FROM article_comments")
    return source, target


def _move(source: Path, target: Path, state: Path, *more: str) -> Any:
    return CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"}).invoke(
        cli, ["content", "move", "--from", str(source), "--to", str(target), "--json", "--collection", "articles",
              "--filter", '{"status": {"_eq": "published"}}', *more])


def test_a_collection_the_target_lacks_gets_its_keys_in_blocks_without_gaps(tmp_path: Path,
                                                                             request: pytest.FixtureRequest) -> None:
    source, target = _instances(tmp_path, request)
    before = query(target, "SELECT nextval(pg_get_serial_sequence('article_comments', 'id'))")[0][0]
    result = _move(source, target, tmp_path / "state.db")
    assert result.exit_code == 0, result.output
    moved = query(source, "SELECT count(*) FROM article_comments c JOIN articles a ON a.id = c.article "
                          "WHERE a.status = 'published'")[0][0]
    assert moved > COMMENTS
    low, high, count = query(target, "SELECT min(id), max(id), count(*) FROM article_comments")[0]
    assert count == moved and high - low + 1 == moved and low == before + 1  # one block, in order, nothing skipped
    sequence = query(target, "SELECT pg_get_serial_sequence('article_comments', 'id')")[0][0]
    last = query(target, f"SELECT last_value FROM {sequence}")[0][0]
    assert last == high  # no key drawn and left unused
    texts = {r[0] for r in query(target, "SELECT text FROM article_comments")}
    assert {f"comment {i}" for i in range(1, COMMENTS + 1)} <= texts
    again = _move(source, target, tmp_path / "state.db")
    assert again.exit_code == 0 and json.loads(again.output)["changes"] is False, again.output


@pytest.mark.parametrize("table", ["article_comments", "articles"])
def test_a_row_refused_in_the_middle_of_a_copy_rolls_the_whole_move_back(tmp_path: Path,
                                                                          request: pytest.FixtureRequest,
                                                                          table: str) -> None:
    """The loader reports a refusal after the walk has moved on (an article's, while the next collection is
    walked): the message names the collection the refused row belongs to, and nothing stays."""
    source, target = _instances(tmp_path, request)
    if table == "articles":
        title = query(source, "SELECT title FROM articles WHERE status = 'published' ORDER BY id DESC LIMIT 1")[0][0]
        test, word = "NEW.title = " + "'" + title.replace("'", "''") + "'", "article"
        query(target, "DELETE FROM articles WHERE title = :t", t=title)
    else:
        test, word = "NEW.text = 'comment 777'", "comment"
    query(target, "CREATE FUNCTION no_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  f"IF {test} THEN RAISE EXCEPTION 'poisoned {word}'; END IF; RETURN NEW; END $$")
    query(target, f"CREATE TRIGGER no_poison BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION no_poison()")
    counts = {t: query(target, f"SELECT count(*) FROM {t}")[0][0]
              for t in ("articles", "authors", "article_comments", "articles_translations")}
    state = tmp_path / "state.db"
    result = _move(source, target, state)
    assert result.exit_code == 3, result.output
    assert f"refused a write to {table}: poisoned {word}" in result.output, result.output
    assert "rolled back" in result.output
    assert counts == {t: query(target, f"SELECT count(*) FROM {t}")[0][0] for t in counts}
    with sa.create_engine(f"sqlite:///{state}").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cm_content_id_map")).scalar_one() == 0


def test_a_collection_the_move_never_writes_is_looked_up_once_not_per_batch(tmp_path: Path,
                                                                             request: pytest.FixtureRequest) -> None:
    """Each statement on the target's connection first waits for the open ``COPY`` to end: the languages the moved
    translations name (beyond ``--depth 1``, so not carried) are looked up on the target once per pass, not in
    every batch of translations."""
    source, target = _instances(tmp_path, request)
    article = query(source, "SELECT id FROM articles WHERE status = 'published' ORDER BY id LIMIT 1")[0][0]
    query(source, "INSERT INTO articles_translations (articles_id, languages_code, title) "
                  "SELECT :a, 'en-US', 'title ' || g FROM generate_series(1, :n) AS g", a=article, n=COMMENTS)
    query(target, "DELETE FROM articles_translations")
    target_db = query(target, "SELECT current_database()")[0][0]
    looked_up: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.engine.url.database == target_db and "FROM languages" in statement:
            looked_up.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        result = _move(source, target, tmp_path / "state.db", "--depth", "1")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "languages" not in report["plan"] and report["plan"]["articles_translations"]["created"] > COMMENTS
    mine = "SELECT count(*) FROM articles_translations WHERE articles_id = :a"
    assert query(target, mine, a=article)[0][0] == query(source, mine, a=article)[0][0] > COMMENTS
    passes = 2 if "directus_files" in report["plan"] else 1  # a move carrying files is planned, then applied
    assert 1 <= len(looked_up) <= passes, looked_up
