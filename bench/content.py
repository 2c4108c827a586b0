"""Benchmark: ``content move --via db`` against ``--via api`` against ``pg_dump --data-only | psql``.

Run ``.venv/bin/python bench/content.py [--articles 3000]`` with the test servers up (``scripts/servers
start``; ``eval "$(scripts/servers env)"``).  Results go to ``bench/results/content.json`` and a table is
printed.

The source is the recorded PostgreSQL instance with its content rows replaced by generated ones:
``--articles`` articles (uuid keys, a ~1 KB body), each with its author (one of ``articles / 50``,
integer keys), one translation and one comment (integer keys).  Three targets are the same recorded
instance with those tables emptied (so the dump loads without clashes and every path starts from the same
state); the move carries every article with its closure (authors, translations, comments; languages
unchanged):

* ``db``: ``cairn-migrate content move --via db`` (one process: plan, then one target transaction);
* ``api``: the same move ``--via api`` into a running CairnCMS 1.0.0-beta.4 on the second target
  (``--concurrency``, ``--batch-size``): validation, hooks, activity and revision rows included;
  ``--target-flows off`` sets the target's flows inactive first: the recorded instance has one that runs
  on every new article (an ``exec`` script in CairnCMS's sandbox, then a ``log``), the server's work, not ours;
* ``api_replay`` (``--replay N``): after the api move, N plain new articles POSTed straight to the same CairnCMS
  (no cairn-migrate, same batch size and concurrency): the server's own ceiling for any api path;
* ``url``: ``content move --from URL --from-token T`` into a third target by its database: the source read
  through its running CairnCMS's API only (into a scratch copy, no offsets); on the same server, the comments
  (integer keys: keyset paging) and the articles (uuid keys: key list + ``_in``) read alone, and by ``offset``
  paging, 500 a page;
* ``native``: ``pg_dump --data-only -t <the four tables> SRC | psql DST``: no key remapping, no plan,
  no ID map, no checks.

Each of our runs is a separate process (start-up and the plan included; the plan is also timed alone);
peak RSS is its maximum resident set (``/usr/bin/time -f %M``).  items/s counts the rows written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_instance import (  # noqa: E402
    CAIRNCMS,
    free_port,
    server_env,
    start_server,
    stop_process,
    wait_until_up,
)

from cairn_migrate.testing import (  # noqa: E402
    copy_uploads,
    create_postgres_database,
    drop_postgres_database,
    instance_env,
    server_env as database_env,
    write_env,
)

FIXTURE = ROOT / "tests" / "fixtures" / "postgres"
CLI = str(Path(sys.executable).with_name("cairn-migrate"))
TOKEN = "bench-content-admin-token-0123456789"
TABLES = ("articles", "authors", "articles_translations", "article_comments")
EMPTIED = ("articles_tags", "article_comments", "articles_translations", "articles", "authors")


def engine(admin_url: str, name: str) -> sa.Engine:
    return sa.create_engine(sa.engine.make_url(admin_url).set(drivername="postgresql+psycopg", database=name))


def instance(admin_url: str, folder: Path, extra: dict[str, Any] | None = None) -> tuple[str, Path]:
    """The recorded instance in a new database, its content tables emptied; (database, .env)."""
    folder.mkdir(parents=True)
    name = create_postgres_database(admin_url, FIXTURE / "seeded.sql", prefix="cm_bench")
    env = write_env(folder / ".env", instance_env(FIXTURE, database_env(admin_url, name, "pg"), extra or {}))
    copy_uploads(FIXTURE, folder)
    db = engine(admin_url, name)
    with db.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(EMPTIED)}"))
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    db.dispose()
    return name, env


def generate(admin_url: str, name: str, articles: int) -> None:
    authors = max(1, articles // 50)
    db = engine(admin_url, name)
    body = "lorem ipsum dolor sit amet " * 40
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO authors (name, email, bio, rating) VALUES (:n, :e, :b, 4.5)"),
                     [{"n": f"Author {i}", "e": f"author{i}@bench.example", "b": body[:200]} for i in range(authors)])
        ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM authors ORDER BY id"))]
        rows = [{"id": str(uuid.uuid4()), "t": f"Article {i}", "s": f"article-{i}", "b": body, "a": ids[i % authors],
                 "w": 200 + i % 500} for i in range(articles)]
        conn.execute(sa.text("INSERT INTO articles (id, status, title, slug, body, author, word_count) "
                             "VALUES (:id, 'published', :t, :s, :b, :a, :w)"), rows)
        conn.execute(sa.text("INSERT INTO articles_translations (articles_id, languages_code, title, summary) "
                             "VALUES (:id, 'en-US', :t, :b)"), [{"id": r["id"], "t": r["t"], "b": body[:300]} for r in rows])
        conn.execute(sa.text("INSERT INTO article_comments (article, author_name, text, approved) "
                             "VALUES (:id, 'reader', :b, true)"), [{"id": r["id"], "b": body[:150]} for r in rows])
    db.dispose()


def url_source(admin_url: str, base: Path, source_env: Path, source_url: str, state: dict[str, str]) -> dict[str, Any]:
    """``content move --from URL`` (the source read through its running CairnCMS's API, keyset paging) into a
    third target by its database; and, on the same running source, the articles read alone by keyset paging and
    by ``offset`` paging (500 a page), the ratio issue 12 names."""
    from cairn_migrate.content.api_source import SourceApi

    name, env = instance(admin_url, base / "url")
    (source_env.parent / "package.json").write_text('{"name": "bench-content-source", "private": true}\n')
    server = start_server(CAIRNCMS, source_env.parent, source_url, server_env(), base / "cairncms-source.log")
    try:
        move = [CLI, "content", "move", "--from", source_url, "--from-token", TOKEN, "--collection", "articles",
                "--json", "--to", str(env)]
        plan_s, _, planned = timed([*move, "--dry-run"], env=state)
        assert planned.returncode == 1, planned.stdout + planned.stderr
        seconds, rss, done = timed(move, env=state)
        assert done.returncode == 0, done.stdout + done.stderr
        cpu = LAST_CPU[0]
        report = json.loads(done.stdout)
        again_s, _, again = timed(move, env=state)
        assert again.returncode == 0 and not json.loads(again.stdout)["changes"], again.stdout
        api = SourceApi(source_url, TOKEN)
        alone = {}
        for collection, ordered in (("article_comments", True), ("articles", False)):  # integer, uuid keys
            start = time.perf_counter()
            ours = sum(len(page) for page in api.pages(collection, "id", ordered=ordered))
            ours_s = time.perf_counter() - start
            start, offset, got = time.perf_counter(), 0, None
            while got != 0:
                got = len(api.data(f"/items/{collection}", {"fields": "*", "sort": "id", "limit": 500, "offset": offset}))
                offset += got
            offset_s = time.perf_counter() - start
            assert ours == offset
            alone[collection] = {"rows": ours, "how": "keyset _gt" if ordered else "key list + _in",
                                 "seconds": round(ours_s, 2), "offset_seconds": round(offset_s, 2),
                                 "rows_per_s": round(ours / ours_s), "offset_rows_per_s": round(offset / offset_s)}
    finally:
        stop_process(server)
    written = sum(c["created"] + c["updated"] for c in report["plan"].values())
    read = sum(report["source_api"]["rows_read"].values())
    return {"database": name, "seconds": round(seconds, 2), "plan_seconds": round(plan_s, 2), "rows": written,
            "items_per_s": round(written / seconds), "peak_rss_mib": rss and round(rss / 1024), "our_cpu_seconds": cpu,
            "rows_read_through_api": read, "second_run_seconds": round(again_s, 2),
            "read_alone": alone,
            "target_rows": counts(admin_url, name)}


def checkpoint(admin_url: str) -> None:
    """Flush the server's dirty pages before a timed path, so none is timed while the server writes out what the
    path before it wrote (a move of 300 000 rows left the dump after it 1-1.5 s slower)."""
    db = sa.create_engine(sa.engine.make_url(admin_url).set(drivername="postgresql+psycopg"),
                          isolation_level="AUTOCOMMIT")
    with db.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))
    db.dispose()


def counts(admin_url: str, name: str) -> dict[str, int]:
    db = engine(admin_url, name)
    with db.connect() as conn:
        out = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    db.dispose()
    return out


def timed(command: list[str], **kwargs: Any) -> tuple[float, int | None, subprocess.CompletedProcess[str]]:
    """Seconds, peak RSS (KiB, via /usr/bin/time when present) and the finished process (its CPU seconds,
    user + system, in ``LAST_CPU``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        prefix = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file.name] if Path("/usr/bin/time").exists() else []
        start = time.perf_counter()
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=7200, **kwargs)
        seconds = time.perf_counter() - start
        rss = rss_file.read().strip().splitlines()
    fields = rss[-1].split() if rss else []
    LAST_CPU[0] = round(float(fields[1]) + float(fields[2]), 2) if len(fields) == 3 else None
    return seconds, int(fields[0]) if fields and fields[0].isdigit() else None, done


LAST_CPU: list[float | None] = [None]


def session_cpu(session: int) -> float:
    """CPU seconds (user + system) of every live process in ``session`` (the CMS server and its children)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 (session id) counted after the ")"
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / tick


def replay_items(url: str, session: int, n: int, batch: int, concurrency: int) -> dict[str, Any]:
    """HTTP replay without cairn-migrate: ``n`` new plain articles (no relations but the author they name) POSTed
    to ``url`` in batches, ``concurrency`` at a time.  What the server alone sustains for the simplest write is
    the ceiling of any api path, ours included: validation, hooks, activity and revision rows per item."""
    import concurrent.futures

    import requests

    headers = {"Authorization": f"Bearer {TOKEN}"}
    author = requests.get(f"{url}/items/authors?fields=id&limit=1", headers=headers, timeout=30).json()["data"][0]["id"]
    body = "lorem ipsum dolor sit amet " * 40
    items = [{"id": str(uuid.uuid4()), "status": "published", "title": f"Replay {i}", "slug": f"replay-{i}",
              "body": body, "author": author, "word_count": 200 + i % 500} for i in range(n)]

    def post(chunk: list[dict[str, Any]]) -> None:
        answer = requests.post(f"{url}/items/articles?fields=id", headers=headers, json=chunk, timeout=300)
        answer.raise_for_status()

    before = session_cpu(session)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, [items[i:i + batch] for i in range(0, n, batch)]))
    seconds = time.perf_counter() - start
    cpu = session_cpu(session) - before
    return {"items": n, "seconds": round(seconds, 2), "items_per_s": round(n / seconds),
            "cairncms_cpu_seconds": round(cpu, 2), "cairncms_cpu_ms_per_item": round(1000 * cpu / n, 2),
            "load_average": os.getloadavg()[0]}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "?")
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(memory) / 1048576, 1),
            "python": platform.python_version(), "postgres_client": postgres, "cairncms": "1.0.0-beta.4",
            "note": "PostgreSQL, CairnCMS and the tool on the same cores; load_average: the 1-minute load at the start",
            "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--paths", default="db,api,native",
                        help="which of db, api, url, native to run (comma-separated; native is always run for the ratio)")
    parser.add_argument("--target-flows", choices=("on", "off"), default="on",
                        help="the api target's flows: on, as recorded (its 'Log new articles' flow runs a script and "
                             "writes a log per created article, in the server), or off (set inactive first)")
    parser.add_argument("--target-extension", choices=("on", "off"), default="off",
                        help="on: the api target runs as deployed, with cairn-migrate's extension installed "
                             "(install-extension) and its sidecar serving: the hook reports each write to it")
    parser.add_argument("--replay", type=int, default=2000, metavar="N",
                        help="after the api move, POST N plain new articles straight to the same CairnCMS (no "
                             "cairn-migrate): the server's own write ceiling for the api path (0: skip)")
    parser.add_argument("--profile", metavar="SVG", help="record the db move with py-spy into this flame graph (SVG; "
                        "a .txt name: collapsed stacks, one line per stack)")
    parser.add_argument("--out", default="content.json", help="the results file's name in bench/results/")
    parser.add_argument("--admin-url", default=os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    admin = args.admin_url
    paths = {p.strip() for p in args.paths.split(",") if p.strip()} | {"native"}
    made: list[str] = []
    results: dict[str, Any] = {"articles": args.articles, "machine": machine(), "concurrency": args.concurrency,
                               "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-content-") as tmp:
        base = Path(tmp)
        state = {**server_env(), "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{base / 'state.db'}"}
        try:
            source_url = f"http://127.0.0.1:{free_port()}"
            source, source_env = instance(admin, base / "src", {"HOST": "127.0.0.1", "PORT": source_url.rsplit(":", 1)[1],
                                                                "PUBLIC_URL": source_url, "LOG_STYLE": "raw"})
            made.append(source)
            generate(admin, source, args.articles)
            results["source_rows"] = counts(admin, source)
            rows = sum(results["source_rows"].values())
            move = [CLI, "content", "move", "--from", str(source_env), "--collection", "articles", "--json"]

            if "db" in paths:
                db_name, db_env = instance(admin, base / "db")
                made.append(db_name)
                plan_s, _, planned = timed([*move, "--to", str(db_env), "--dry-run"], env=state)
                assert planned.returncode == 1, planned.stdout + planned.stderr
                spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-o", args.profile,
                       *(["--format", "raw"] if args.profile.endswith(".txt") else []), "--"] if args.profile else []
                checkpoint(admin)
                seconds, rss, done = timed([*spy, *move, "--to", str(db_env)], env=state)
                assert done.returncode == 0, done.stdout + done.stderr
                report = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("\n{") + 1:] if spy else done.stdout)[0]
                written = sum(c["created"] + c["updated"] for c in report["plan"].values())
                results["db"] = {"seconds": round(seconds, 2), "plan_seconds": round(plan_s, 2), "rows": written,
                                 "items_per_s": round(written / seconds), "peak_rss_mib": rss and round(rss / 1024),
                                 "target_rows": counts(admin, db_name), "profiled": bool(args.profile),
                                 "our_cpu_seconds": LAST_CPU[0]}

            if "api" in paths:
                url = f"http://127.0.0.1:{free_port()}"
                api_name, api_env = instance(admin, base / "api", {"HOST": "127.0.0.1", "PORT": url.rsplit(":", 1)[1],
                                                                   "PUBLIC_URL": url, "LOG_STYLE": "raw"})
                made.append(api_name)
                if args.target_flows == "off":  # the recorded instance's flow runs a script and a log per new article
                    db = engine(admin, api_name)
                    with db.begin() as conn:
                        conn.execute(sa.text("UPDATE directus_flows SET status = 'inactive'"))
                    db.dispose()
                (api_env.parent / "package.json").write_text('{"name": "bench-content", "private": true}\n')
                sidecar = None
                if args.target_extension == "on":  # as deployed: the hook reports every write to the sidecar
                    sidecar_port = free_port()
                    subprocess.run([CLI, "--env", str(api_env), "install-extension", "--sidecar-url",
                                    f"http://127.0.0.1:{sidecar_port}"], env=state, check=True, capture_output=True,
                                   timeout=300)
                    sidecar_log = base / "sidecar.log"
                    with sidecar_log.open("wb") as log:
                        sidecar = subprocess.Popen([CLI, "--env", str(api_env), "serve", "--host", "127.0.0.1",
                                                    "--port", str(sidecar_port)], env=state, start_new_session=True,
                                                   stdout=log, stderr=subprocess.STDOUT)
                    wait_until_up(f"http://127.0.0.1:{sidecar_port}/migrate/health", 60, sidecar, sidecar_log)
                server = start_server(CAIRNCMS, api_env.parent, url, server_env(), base / "cairncms.log")
                try:
                    server_cpu = session_cpu(server.pid)
                    sidecar_cpu = session_cpu(sidecar.pid) if sidecar else 0.0
                    seconds, rss, done = timed([*move, "--to", str(api_env), "--via", "api", "--to-token", TOKEN,
                                                "--concurrency", str(args.concurrency), "--batch-size",
                                                str(args.batch_size)], env=state)
                    server_cpu = round(session_cpu(server.pid) - server_cpu, 2)
                    sidecar_cpu = round(session_cpu(sidecar.pid) - sidecar_cpu, 2) if sidecar else None
                    client_cpu = LAST_CPU[0]
                    assert done.returncode == 0, done.stdout + done.stderr
                    report = json.loads(done.stdout)
                    written = sum(c["created"] + c["updated"] for c in report["plan"].values())
                    again_s, _, again = timed([*move, "--to", str(api_env), "--via", "api", "--to-token", TOKEN], env=state)
                    assert again.returncode == 0 and not json.loads(again.stdout)["changes"], again.stdout
                    api_rows = counts(admin, api_name)
                    if args.replay:
                        replay = replay_items(url, server.pid, min(args.replay, args.articles), args.batch_size,
                                              args.concurrency)
                finally:
                    stop_process(server)
                    stop_process(sidecar)
                results["api"] = {"seconds": round(seconds, 2), "rows": written, "items_per_s": round(written / seconds),
                                  "peak_rss_mib": rss and round(rss / 1024), "retried": report["api"]["retried"],
                                  "second_run_seconds": round(again_s, 2), "cairncms_cpu_seconds": server_cpu,
                                  "our_cpu_seconds": client_cpu, "target_rows": api_rows,
                                  "target_flows": args.target_flows, "target_extension": args.target_extension,
                                  **({"sidecar_cpu_seconds": sidecar_cpu} if sidecar else {})}
                if args.replay:
                    results["api_replay"] = replay
                    results["api"]["x_replay"] = round(results["api"]["items_per_s"] / replay["items_per_s"], 2)

            if "url" in paths:
                results["url"] = url_source(admin, base, source_env, source_url, state)
                made.append(results["url"].pop("database"))

            native_name, _ = instance(admin, base / "native")
            made.append(native_name)
            url_src = sa.engine.make_url(admin).set(database=source).render_as_string(hide_password=False)
            url_dst = sa.engine.make_url(admin).set(database=native_name).render_as_string(hide_password=False)
            tables = " ".join(f"-t {t}" for t in TABLES)
            checkpoint(admin)
            seconds, _, done = timed(["bash", "-o", "pipefail", "-c",
                                      f"pg_dump --data-only {tables} '{url_src}' | psql -q -v ON_ERROR_STOP=1 '{url_dst}'"])
            assert done.returncode == 0, done.stderr
            results["native"] = {"seconds": round(seconds, 2), "rows": rows, "items_per_s": round(rows / seconds),
                                 "target_rows": counts(admin, native_name)}
        finally:
            for name in made:
                drop_postgres_database(admin, name)
    ran = [mode for mode in ("db", "api", "url", "native") if mode in results]
    for mode in ran[:-1]:
        assert results[mode]["target_rows"] == results["native"]["target_rows"] == results["source_rows"], results
    native = results["native"]["seconds"]
    for mode in ran:
        results[mode]["x_native"] = round(results[mode]["seconds"] / native, 1)
    out = ROOT / "bench" / "results" / args.out
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.articles} articles + closure ({rows} rows) on {results['machine']['cores']} cores")
    print("| path | seconds | rows/s | × native | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for mode in ran:
        r = results[mode]
        print(f"| {mode} | {r['seconds']} | {r['items_per_s']} | {r['x_native']} | {r.get('peak_rss_mib') or '-'} |")
    if "api_replay" in results:
        r = results["api_replay"]
        print(f"CairnCMS alone (plain articles POSTed, no cairn-migrate): {r['items_per_s']} items/s, "
              f"{r['cairncms_cpu_ms_per_item']} ms server CPU per item; our api path = {results['api']['x_replay']}× that")


if __name__ == "__main__":
    main()
