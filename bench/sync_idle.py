"""Benchmark: the cost of a sync run on a 100k-row source, idle and with a few changes.

The source is the recorded PostgreSQL fixture plus 100k generated ``articles`` and 100k
``directus_activity`` rows for them (what 100k API creates leave behind), on the real PostgreSQL.
A profile starts ``from-now``; then, each a separate ``cairn-migrate sync run --json`` process
(start-up included, median of 5):
  * idle:    nothing changed since the watermark (the feed read only; no content step);
  * changed: 10 activity rows of ``articles`` after the watermark, the target's database gone, so the
             run reads the feed, builds the key filter and stops at the content step (its cost is the
             content move's own, measured by its benchmark).
Also the feed query alone, in-process (``read_changes``), after 1 and after 1000 changes.

Usage: .venv/bin/python bench/sync_idle.py [--rows 100000]
Writes bench/results/sync_idle.json and prints it.  Needs PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cairn_migrate.instance.database import open_engine  # noqa: E402
from cairn_migrate.instance.instance import Instance  # noqa: E402
from cairn_migrate.operations.sync import read_changes  # noqa: E402
from cairn_migrate.testing import (  # noqa: E402
    create_postgres_database,
    drop_postgres_database,
    instance_env,
    server_env,
    write_env,
)

FIXTURE = ROOT / "tests" / "fixtures" / "postgres"
CLI = Path(sys.executable).parent / "cairn-migrate"


def _cli(env: dict[str, str], *args: str) -> tuple[float, int, dict[str, Any]]:
    started = time.perf_counter()
    result = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    return elapsed, result.returncode, json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    admin = os.environ.get("CAIRN_TEST_PG_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = create_postgres_database(admin, FIXTURE / "seeded.sql", prefix="cm_bench_sync")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "src").mkdir()
            env_path = write_env(folder / "src" / ".env", instance_env(FIXTURE, server_env(admin, name, "pg")))
            target = folder / "dst" / ".env"
            target.parent.mkdir()
            target.write_text("DB_CLIENT=sqlite3\nDB_FILENAME=" + str(folder / "dst" / "gone.db") + "\nKEY=bench-target\n")
            engine = open_engine(Instance.from_env_file(env_path))
            with engine.begin() as conn:
                conn.execute(sa.text(
                    "INSERT INTO articles (id, status, title, slug) SELECT gen_random_uuid(), 'draft', 'bench ' || n, "
                    "'bench-' || n FROM generate_series(1, :rows) AS n"), {"rows": args.rows})
                conn.execute(sa.text(
                    "INSERT INTO directus_activity (action, \"user\", timestamp, collection, item) "
                    "SELECT 'create', NULL, now(), 'articles', id FROM articles WHERE slug LIKE 'bench-%'"))
                conn.execute(sa.text("ANALYZE"))
            env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_MIGRATE_", "DB_"))},
                   "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{folder / 'state.db'}"}
            base = ["--env", str(env_path), "sync"]
            _, code, _ = _cli(env, *base, "add", "bench", "--from", str(env_path), "--to", str(target),
                              "--collection", "articles", "--initial", "from-now", "--json")
            assert code == 0
            first = _cli(env, *base, "run", "bench", "--json")
            assert first[1] == 0, first
            idle = [_cli(env, *base, "run", "bench", "--json") for _ in range(5)]
            assert all(code == 0 and r["status"] == "ok" for _, code, r in idle), idle
            mark = idle[-1][2]["watermark_after"]["articles"]
            with engine.begin() as conn:
                conn.execute(sa.text(
                    "INSERT INTO directus_activity (action, \"user\", timestamp, collection, item) "
                    "SELECT 'update', NULL, now(), 'articles', id FROM articles WHERE slug LIKE 'bench-%' LIMIT 10"))
            changed = [_cli(env, *base, "run", "bench", "--json") for _ in range(5)]
            assert all(len(r["steps"]["articles"]["changed"]["upsert"]) == 10 for _, _, r in changed), changed
            feed = {}
            for extra in (1, 1000):
                with engine.begin() as conn:
                    top = conn.execute(sa.text("SELECT MAX(id) FROM directus_activity")).scalar()
                    conn.execute(sa.text(
                        "INSERT INTO directus_activity (action, \"user\", timestamp, collection, item) "
                        "SELECT 'update', NULL, now(), 'articles', id FROM articles WHERE slug LIKE 'bench-%' "
                        "LIMIT :n"), {"n": extra})
                    upto = conn.execute(sa.text("SELECT MAX(id) FROM directus_activity")).scalar()
                started = time.perf_counter()
                read_changes(engine, ["articles"], {"articles": top}, upto)
                feed[f"after_{extra}_changes_s"] = round(time.perf_counter() - started, 4)
            with engine.connect() as conn:
                activity_rows = conn.execute(sa.text("SELECT COUNT(*) FROM directus_activity")).scalar()
            engine.dispose()
            results = {
                "source_rows": args.rows, "activity_rows": activity_rows, "watermark": mark,
                "idle_run_s_median": round(statistics.median(t for t, _, _ in idle), 3),
                "changed_run_s_median": round(statistics.median(t for t, _, _ in changed), 3),
                "feed_query": feed,
                "note": "each run is a cairn-migrate process: start-up (~0.5-1 s of imports) included",
            }
    finally:
        drop_postgres_database(admin, name)
    out = ROOT / "bench" / "results" / "sync_idle.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
