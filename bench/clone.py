"""Benchmark: full clone of a generated 1M-row CairnCMS instance on PostgreSQL.

Side by side in one run, on the same database:
  * native:  pg_dump -Fc  +  pg_restore           (what an operator runs by hand)
  * neutral: cairn-migrate export (neutral JSON lines) + import into an empty PostgreSQL
  * fast:    cairn-migrate export --native (pg_dump in our snapshot) + import (pg_restore)
and the peak RSS of our export and import at two sizes, to show memory does not grow with rows.

Usage: .venv/bin/python bench/clone.py [--rows 1000000] [--small 100000] [--admin-url URL]
Writes bench/results/clone.json and prints a table.  Needs PostgreSQL (scripts/servers start).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cairn_migrate.testing import (  # noqa: E402
    create_postgres_database,
    drop_postgres_database,
    instance_env,
    server_env,
    write_env,
)

FIXTURE = ROOT / "tests" / "fixtures" / "postgres"
CLI = [str(Path(sys.executable).with_name("cairn-migrate"))]

GENERATE = """
CREATE TABLE bench_items (
    id uuid PRIMARY KEY,
    status varchar(255) NOT NULL DEFAULT 'draft',
    title varchar(255) NOT NULL,
    body text,
    published_at timestamp with time zone,
    date_created timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    seo json,
    views integer,
    featured boolean DEFAULT false,
    cover_image uuid REFERENCES directus_files (id) ON DELETE SET NULL
);
INSERT INTO bench_items
SELECT md5(i::text)::uuid,
       (ARRAY['draft','published','archived'])[1 + i % 3],
       'Item number ' || i,
       repeat('Lorem ipsum dolor sit amet, consectetur adipiscing elit. ', 1 + i % 4) || i,
       timestamptz '2024-01-01 00:00:00+00' + (i || ' minutes')::interval,
       timestamptz '2023-06-01 12:00:00+00' + (i || ' seconds')::interval,
       json_build_object('title', 'Item ' || i, 'keywords', json_build_array('a', 'b', i % 7), 'score', i % 100),
       i % 10000,
       i % 5 = 0,
       CASE WHEN i % 2 = 0 THEN (SELECT id FROM directus_files ORDER BY id LIMIT 1) END
FROM generate_series(1, :rows) AS i;
ANALYZE bench_items;
"""


CPU: dict[str, list[float]] = {}


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``command``; return (seconds, peak RSS in KiB of that child); its CPU seconds (user + system,
    its children included) go to ``CPU`` under the command's verb, a measure the machine's load blurs less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    runner = ["/usr/bin/time", "-f", "%M %U %S"] if shutil.which("time") or Path("/usr/bin/time").exists() else []
    result = subprocess.run(runner + command, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    last = result.stderr.strip().splitlines()[-1].split() if runner else []
    if runner:
        CPU.setdefault(next((c for c in ("import", "verify", "export") if c in command), command[0]), []).append(
            round(float(last[1]) + float(last[2]), 2))
    rss = int(last[0]) if runner else max(0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - before)
    return elapsed, rss


def make_source(admin_url: str, rows: int, work: Path) -> tuple[str, Path]:
    name = create_postgres_database(admin_url, FIXTURE / "seeded.sql", prefix="cm_bench_src")
    engine = sa.create_engine(sa.engine.make_url(admin_url).set(drivername="postgresql+psycopg", database=name))
    with engine.begin() as conn:
        for statement in GENERATE.split(";\n"):
            if statement.strip():
                conn.execute(sa.text(statement), {"rows": rows} if ":rows" in statement else {})
    engine.dispose()
    folder = work / f"src-{rows}"
    folder.mkdir()
    shutil.copytree(FIXTURE / "uploads", folder / "uploads")
    return name, write_env(folder / ".env", instance_env(FIXTURE, server_env(admin_url, name, "pg")))


def empty_target(admin_url: str, work: Path, label: str) -> tuple[str, Path]:
    name = create_postgres_database(admin_url, prefix="cm_bench_dst")
    folder = work / label
    folder.mkdir()
    return name, write_env(folder / ".env", instance_env(FIXTURE, server_env(admin_url, name, "pg")))


def pg_args(admin_url: str) -> list[str]:
    url = sa.engine.make_url(admin_url)
    return ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]


def run(admin_url: str, rows: int, work: Path, modes: list[str], repeat: int = 1) -> dict[str, object]:
    source, source_env = make_source(admin_url, rows, work)
    result: dict[str, object] = {"rows_generated": rows}
    databases = [source]
    try:
        if "native" in modes:
            dump = work / f"native-{rows}.dump"
            t_dump, _ = timed(["pg_dump", *pg_args(admin_url), "-Fc", "--no-owner", "--no-privileges", "-f", str(dump), source])
            target, _env = empty_target(admin_url, work, f"native-{rows}")
            databases.append(target)
            t_restore, _ = timed(["pg_restore", *pg_args(admin_url), "--no-owner", "--no-privileges", "-d", target, str(dump)])
            result["native"] = {"export_s": round(t_dump, 2), "import_s": round(t_restore, 2), "total_s": round(t_dump + t_restore, 2),
                                "size_bytes": dump.stat().st_size}
        for mode in [m for m in modes if m != "native"]:
            bundle = work / f"{mode}-{rows}"
            extra = ["--native"] if mode == "fast" else []
            t_export, rss_export = timed(CLI + ["--env", str(source_env), "export", "--full", "-o", str(bundle), *extra])
            imports, verifies, rss_imports, rss_verifies = [], [], [], []
            for attempt in range(repeat):  # interleaved: import, then verify of that import, `repeat` times
                target, target_env = empty_target(admin_url, work, f"{mode}-{rows}-dst{attempt}")
                databases.append(target)
                t_import, rss_import = timed(CLI + ["--env", str(target_env), "import", str(bundle)])
                t_verify, rss_verify = timed(CLI + ["--env", str(target_env), "verify", str(bundle)])
                imports.append(t_import)
                verifies.append(t_verify)
                rss_imports.append(rss_import)
                rss_verifies.append(rss_verify)
                drop_postgres_database(admin_url, target)
                databases.remove(target)
            t_import, t_verify = statistics.median(imports), statistics.median(verifies)
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            result[mode] = {
                "export_s": round(t_export, 2), "import_s": round(t_import, 2), "total_s": round(t_export + t_import, 2),
                "verify_s": round(t_verify, 2), "verify_vs_import": round(t_verify / t_import, 2),
                "import_runs_s": [round(t, 2) for t in imports], "verify_runs_s": [round(t, 2) for t in verifies],
                "export_peak_rss_mib": round(rss_export / 1024, 1),
                "import_peak_rss_mib": round(max(rss_imports) / 1024, 1),
                "verify_peak_rss_mib": round(max(rss_verifies) / 1024, 1), "size_bytes": size,
                "import_cpu_runs_s": CPU.pop("import", []), "verify_cpu_runs_s": CPU.pop("verify", []),
            }
            CPU.clear()
            shutil.rmtree(bundle, ignore_errors=True)
    finally:
        for name in databases:
            drop_postgres_database(admin_url, name)
    native = result.get("native")
    if isinstance(native, dict):
        for mode in ("neutral", "fast"):
            if isinstance(result.get(mode), dict):
                result[mode]["ratio_vs_native"] = round(result[mode]["total_s"] / native["total_s"], 2)  # type: ignore[index]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000, help="a second, smaller run for the RSS comparison (0: skip)")
    parser.add_argument("--modes", default="native,neutral,fast")
    parser.add_argument("--repeat", type=int, default=1, help="imports + verifies per mode, interleaved (medians)")
    parser.add_argument("--out", default="clone.json", help="file name under bench/results/")
    parser.add_argument("--admin-url", default=os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    results = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "runs": []}
    try:
        for rows in [r for r in (args.small, args.rows) if r]:
            print(f"== {rows:,} rows", flush=True)
            run_result = run(args.admin_url, rows, work, modes, args.repeat)
            print(json.dumps(run_result, indent=2), flush=True)
            results["runs"].append(run_result)  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()  # type: ignore[index]
    out = ROOT / "bench" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
