"""Benchmark: the lag from an edit on the source to the target, for a scheduled sync every 5 s.

Source and target are copies of the recorded CairnCMS SQLite instance (their own ``KEY``s).  A real
``cairn-migrate serve --scheduler`` sidecar (its state store a SQLite file) runs a profile of
``articles`` with ``interval_seconds: 5``.  Each edit changes one article's title on the source and
writes the ``directus_activity`` row CairnCMS writes for an API edit (reference §1.3: no CairnCMS process
runs here, so the lag is the sidecar's alone: the wait for the next slot, the feed read, the content
move); then the target's database is polled every 50 ms until the new title is there.  Edits are spread
over the interval (a random pause of 0-5 s before each), so the median reflects a uniform phase:
about half the interval plus one run's duration.

Usage: .venv/bin/python bench/sync_lag.py [--edits 7] [--interval 5]
Writes bench/results/sync_lag.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from instance_fixtures import restore_sqlite_instance  # noqa: E402
from live_instance import CLI, free_port, server_env, stop_process  # noqa: E402

TOKEN = "sync-lag-admin-token-0123456789"


def _sql(db: Path, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=7)
    parser.add_argument("--interval", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = restore_sqlite_instance(folder / "instances" / "source")
        target = restore_sqlite_instance(folder / "instances" / "target")
        for instance, key in ((source, "lag-source"), (target, "lag-target")):
            shutil.copytree(ROOT / "tests" / "fixtures" / "sqlite" / "uploads", instance.folder / "uploads",
                            dirs_exist_ok=True)  # the files' bytes, which a move of an article copies
            instance.env_path.write_text(re.sub(r"^KEY=.*$", f"KEY={key}", instance.env_path.read_text(),
                                                flags=re.MULTILINE))
        source.set_token("admin@example.com", TOKEN)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**server_env(), "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{folder / 'state' / 'state.db'}",
               "CAIRN_MIGRATE_HTTP_PATHS": str(folder / "instances"), "CAIRN_MIGRATE_SYNC_POLL_SECONDS": "1"}
        log = folder / "sidecar.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([str(CLI), "--env", str(source.env_path), "serve", "--scheduler", "--port",
                                     str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(url + "/migrate/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the sidecar did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            added = requests.post(url + "/migrate/syncs", headers=headers, timeout=30, json={
                "name": "lag", "source": str(source.env_path), "target": str(target.env_path),
                "collections": ["articles"], "initial": "from-now", "schedule": {"interval_seconds": args.interval}})
            assert added.status_code == 201, added.text
            deadline = time.monotonic() + 4 * args.interval + 30
            while not requests.get(url + "/migrate/syncs/lag/history", headers=headers, timeout=30).json()["runs"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no first run:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            keys = [k for (k,) in _sql(source.db_path, "SELECT id FROM articles ORDER BY id")]
            lags = []
            for n in range(args.edits):
                time.sleep(random.uniform(0, args.interval))
                key, title = keys[n % len(keys)], f"lag edit {n} {time.time()}"
                _sql(source.db_path, "UPDATE articles SET title = ? WHERE id = ?", title, key)
                _sql(source.db_path, "INSERT INTO directus_activity (action, user, timestamp, ip, user_agent, "
                     "collection, item) VALUES ('update', NULL, ?, '127.0.0.1', 'bench', 'articles', ?)",
                     int(time.time() * 1000), key)
                started = time.monotonic()
                while _sql(target.db_path, "SELECT title FROM articles WHERE id = ?", key) != [(title,)]:
                    if time.monotonic() - started > 6 * args.interval + 10:
                        runs = requests.get(url + "/migrate/syncs/lag/history", headers=headers, timeout=30).json()
                        raise SystemExit(f"edit {n} did not reach the target:\n{log.read_text()[-3000:]}\n"
                                         f"{json.dumps(runs['runs'][:2])[:3000]}")
                    time.sleep(0.05)
                lags.append(round(time.monotonic() - started, 3))
            runs = requests.get(url + "/migrate/syncs/lag/history", headers=headers, params={"limit": 500},
                                timeout=30).json()["runs"]
        finally:
            stop_process(proc)
    durations = [round((_t(r["finished_at"]) - _t(r["started_at"])), 3) for r in runs]
    result = {"benchmark": "sync_lag", "interval_seconds": args.interval, "edits": args.edits, "lag_seconds": lags,
              "lag_median_seconds": statistics.median(lags), "lag_max_seconds": max(lags),
              "runs": len(runs), "run_outcomes": sorted({r["outcome"] for r in runs}),
              "run_median_seconds": statistics.median(durations) if durations else None,
              "source": "recorded CairnCMS SQLite instance, edits written as the DB row + its activity row",
              "platform": sys.platform, "python": sys.version.split()[0]}
    out = ROOT / "bench" / "results" / "sync_lag.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _t(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


if __name__ == "__main__":
    main()
