"""Benchmark: one page (500 rows) read through CairnCMS's API at growing depth, ``offset`` vs keyset paging.

Run ``.venv/bin/python bench/keyset_offset.py [ROWS]`` (default 300000) with PostgreSQL up.  The recorded
PostgreSQL instance gets ROWS generated ``article_comments`` (integer keys), a real CairnCMS 1.0.0-beta.4 is
booted on it, and at depths 0, 10 %, 50 % and the end the same 500 rows are asked for two ways, three times
each (the best kept): ``sort=id&limit=500&offset=<depth>`` and ``sort=id&limit=500&filter[id][_gt]=<key
before them>`` (what ``content move --from URL`` sends; the rows are checked equal).  Results go to
``bench/results/keyset-offset.json``.  Why: issue 12 measured offset paging falling from 10.9k items/s to
893/s at offset 500k on CairnCMS.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import sqlalchemy as sa  # noqa: E402
import content as bench  # noqa: E402
from live_instance import CAIRNCMS, free_port, server_env, start_server, stop_process
from cairn_migrate.content.api_source import SourceApi
from cairn_migrate.testing import drop_postgres_database

admin = os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300000
with tempfile.TemporaryDirectory() as tmp:
    url = f"http://127.0.0.1:{free_port()}"
    name, env = bench.instance(admin, Path(tmp) / "src", {"HOST": "127.0.0.1", "PORT": url.rsplit(":", 1)[1], "PUBLIC_URL": url})
    try:
        db = bench.engine(admin, name)
        with db.begin() as conn:
            conn.execute(sa.text("INSERT INTO article_comments (author_name, text, approved) "
                                 "SELECT 'reader', repeat('lorem ipsum ', 12), true FROM generate_series(1, :n)"), {"n": N})
            conn.execute(sa.text("ANALYZE article_comments"))
            ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM article_comments ORDER BY id"))]
        db.dispose()
        (env.parent / "package.json").write_text('{"name": "kb", "private": true}\n')
        server = start_server(CAIRNCMS, env.parent, url, server_env(), Path(tmp) / "log")
        try:
            api = SourceApi(url, bench.TOKEN)
            out = []
            for depth in (0, N // 10, N // 2, N - 1000):
                t = []
                for _ in range(3):
                    s = time.perf_counter(); rows = api.data("/items/article_comments", {"fields": "*", "sort": "id", "limit": 500, "offset": depth}); t.append(time.perf_counter() - s)
                    assert len(rows) == 500
                    last = ids[depth - 1] if depth else 0
                    s = time.perf_counter(); rows2 = api.data("/items/article_comments", {"fields": "*", "sort": "id", "limit": 500, "filter": json.dumps({"id": {"_gt": last}})}); t.append(time.perf_counter() - s)
                    assert [r["id"] for r in rows] == [r["id"] for r in rows2]
                off, key = min(t[0::2]), min(t[1::2])
                out.append({"depth": depth, "offset_s": round(off, 3), "keyset_s": round(key, 3), "offset_rows_per_s": round(500 / off), "keyset_rows_per_s": round(500 / key)})
                print(out[-1], flush=True)
        finally:
            stop_process(server)
    finally:
        drop_postgres_database(admin, name)
(ROOT / "bench" / "results" / "keyset-offset.json").write_text(json.dumps(
    {"rows": N, "page": 500, "machine": bench.machine(), "pages": out}, indent=2) + "\n")
