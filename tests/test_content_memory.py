"""Issue 12: a content move's memory is flat in rows.

What a move learns per row (the closure's keys, each row's target key, the ID map, the entries it saves
and their digests) lives in the move's scratch SQLite file (``content/spill.py``), not in Python objects.
The test moves two generated data sets, one three times the other, on real SQLite instances, and compares
the peak of the Python heap (tracemalloc) of the two moves: held in memory, each extra row cost about
1.4 KB (``bench/results/content-100k.json``: 588 MiB at 302k rows); on disk, the peak does not depend on
the number of rows.  SQLite's own page cache is outside the Python heap and bounded by ``spill.CACHE_KIB``.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES

from cairn_migrate.cli import cli
from cairn_migrate.testing import build_sqlite_instance

#: articles; each has a translation and a comment (integer keys) and one of 10 authors.  The small move is already
#: large enough to fill the walk's read-ahead (writer.READ_AHEAD batches of 500 rows beside the one at work)
SMALL, LARGE = 1600, 4800
#: the Python heap a moved row may add to the move's peak: a fifth of what the move holding its bookkeeping in
#: memory cost here (~1.6 KB a row, measured with this test), above what the on-disk move's bounded caches
#: (statements, a batch's rows and lookups) still add while they fill (~50-150 B a row between these sizes)
PER_ROW_BYTES = 300


def generated(folder: Path, articles: int) -> tuple[Path, Path, Path]:
    """A source holding ``articles`` generated articles (``gen-`` slugs), a target of the same recorded
    instance (so the target is not empty: its own articles and comments are looked at), a state store."""
    src = build_sqlite_instance(FIXTURES / "sqlite", folder / "src")
    dst = build_sqlite_instance(FIXTURES / "sqlite", folder / "dst")
    engine = sa.create_engine(f"sqlite:///{src.parent / 'data.db'}")
    body = "lorem ipsum dolor sit amet " * 20
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO authors (name, email, bio) VALUES (:n, :e, 'bio')"),
                     [{"n": f"Generated {i}", "e": f"gen{i}@memory.example"} for i in range(10)])
        authors = [r[0] for r in conn.execute(sa.text("SELECT id FROM authors WHERE email LIKE 'gen%'"))]
        rows = [{"id": str(uuid.uuid4()), "t": f"Generated {i}", "s": f"gen-{i}", "b": body,
                 "a": authors[i % len(authors)]} for i in range(articles)]
        conn.execute(sa.text("INSERT INTO articles (id, status, title, slug, body, author) "
                             "VALUES (:id, 'published', :t, :s, :b, :a)"), rows)
        conn.execute(sa.text("INSERT INTO articles_translations (articles_id, languages_code, title, summary) "
                             "VALUES (:id, 'en-US', :t, :b)"), rows)
        conn.execute(sa.text("INSERT INTO article_comments (article, author_name, text, approved) "
                             "VALUES (:id, 'reader', :b, 1)"), rows)
    engine.dispose()
    return src, dst, folder / "state.db"


def peak_of_move(folder: Path, articles: int) -> tuple[int, int]:
    """(peak traced bytes of the move above the heap before it, rows it created)."""
    src, dst, state = generated(folder, articles)
    runner = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"})
    args = ["content", "move", "--from", str(src), "--to", str(dst), "--collection", "articles",
            "--filter", '{"slug": {"_contains": "gen-"}}', "--json"]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = runner.invoke(cli, args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    created = sum(c["created"] for c in report["plan"].values())
    return peak - base, created


def test_a_content_moves_peak_memory_does_not_grow_with_its_rows(tmp_path: Path, monkeypatch: Any) -> None:
    """The move's bounded buffers (the target keys kept in memory, the settled rows gathered for one write) are
    set small here, so they are full in both moves: at these sizes they would still be filling, a growth that
    stops at their bound (~40 MB and ~0.6 MB), not one per row (the reads ahead: see SMALL)."""
    from cairn_migrate.content import spill as spill_module

    monkeypatch.setattr(spill_module, "MEMO_ENTRIES", 200)
    monkeypatch.setattr(spill_module, "RECORD_ROWS", 200)
    peak_of_move(tmp_path / "warm", 20)  # imports and caches of the first move in this process: not the rows'
    small, small_rows = peak_of_move(tmp_path / "small", SMALL)
    large, large_rows = peak_of_move(tmp_path / "large", LARGE)
    assert small_rows >= 3 * SMALL and large_rows >= 3 * LARGE  # every article, translation and comment created
    extra = large_rows - small_rows
    print(f"peak {small / 2**20:.1f} MiB at {small_rows} rows, {large / 2**20:.1f} MiB at {large_rows} rows: "
          f"{(large - small) / extra:.0f} bytes per extra row")
    assert large - small < PER_ROW_BYTES * extra, (
        f"the move's peak grew by {(large - small) / extra:.0f} bytes per moved row "
        f"({small} → {large} bytes for {small_rows} → {large_rows} rows)")


def test_a_key_map_past_the_memory_bound_answers_from_disk(monkeypatch: Any) -> None:
    """The target keys of a referenced collection are kept in memory only up to the move's bound; past it every
    lookup still finds every entry (the rest from the scratch file), and an update reaches both."""
    from cairn_migrate.content import spill as spill_module
    from cairn_migrate.content.spill import New, Spill

    monkeypatch.setattr(spill_module, "MEMO_ENTRIES", 100)
    with Spill.open() as spill:
        authors = spill.keymap("authors", remember=True)
        authors.record((i, 1000 + i, None) for i in range(60))
        assert authors.complete and len(authors.memo or {}) == 60
        assert authors.get_many([5, 59, 60]) == {5: 1005, 59: 1059}  # 60 is no entry: the memo says so alone
        articles = spill.keymap("articles", remember=True)
        articles.set_many((f"a{i}", New(f"a{i}")) for i in range(50))  # 40 fit, 10 only on disk
        assert not articles.complete and spill.memo_room == 0
        found = articles.get_many([f"a{i}" for i in range(50)] + ["nope"])
        assert set(found) == {f"a{i}" for i in range(50)} and all(isinstance(v, New) for v in found.values())
        articles.record((f"a{i}", f"a{i}", None) for i in range(50))  # created: the placeholders settle
        assert articles.get_many(["a0", "a49"]) == {"a0": "a0", "a49": "a49"}
        authors.record([(5, 2005, None)])
        assert authors.get_many([5]) == {5: 2005}
        fresh = Spill.keymap(spill, "authors", remember=True)  # started with entries on disk: never answers alone
        assert not fresh.complete and fresh.get_many([1, 5]) == {1: 1001, 5: 2005}


def test_settled_rows_are_written_a_bounded_gathering_at_a_time_and_read_back_at_once(monkeypatch: Any) -> None:
    """``KeyMap.record`` gathers settled rows and writes them RECORD_ROWS at a time (one statement each, not one
    per batch of the walk), never holds more than that, and every read of the map sees them at once."""
    from cairn_migrate.content import spill as spill_module
    from cairn_migrate.content.spill import Spill, Written

    monkeypatch.setattr(spill_module, "RECORD_ROWS", 1000)
    with Spill.open() as spill:
        statements: list[str] = []
        spill.db.set_trace_callback(lambda sql: statements.append(sql) if "INTO resolved" in sql else None)
        comments = spill.keymap("comments")
        for start in range(0, 4500, 500):  # nine batches of the walk
            comments.record((i, 10_000 + i, f"d{i}") for i in range(start, start + 500))
            assert len(spill._records) < 1000
        assert len(statements) == 4  # 1000 rows each; the last 500 still gathered
        assert comments.get_many([4499, 0, 77777]) == {4499: 14499, 0: 10000}  # read back, the gathered included
        assert len(statements) == 5 and not spill._records
        authors = spill.keymap("authors")
        authors.record([(1, 2, None)])
        assert len(Written(spill)) == 4501 and authors[1] == 2
