"""Benchmark: full clone of a generated 1M-row CairnCMS instance on PostgreSQL.

Side by side in one run, on the same database:
  * native:  pg_dump -Fc  +  pg_restore           (what an operator runs by hand)
  * pipe:    pg_dump | psql                        (the fastest native way: no compression, no file)
  * neutral: cairn-migrate export (neutral JSON lines) + import into an empty PostgreSQL
  * fast:    cairn-migrate export --native (pg_dump in our snapshot) + import (pg_restore)
and the peak RSS of our export and import at two sizes, to show memory does not grow with rows.

Usage: .venv/bin/python bench/clone.py [--rows 1000000] [--small 100000] [--admin-url URL] [--repeat 3] [--no-verify]
With --repeat N the modes run interleaved N times on the same source and each figure is the median.
Writes bench/results/clone.json and prints a table.  Needs PostgreSQL (scripts/servers start).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

from common import GENERATE_PG  # noqa: E402  (bench/ is the script's folder, first on sys.path)

FIXTURE = ROOT / "tests" / "fixtures" / "postgres"
CLI = [str(Path(sys.executable).with_name("cairn-migrate"))]

GENERATE = GENERATE_PG  # the same bench_items as bench/run (common.py), in the PostgreSQL fixture


CPU: dict[str, float] = {}  # the last timed command's user+sys CPU seconds (/usr/bin/time), under load a steadier figure


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``command``; return (seconds, peak RSS in KiB of that child); its CPU seconds land in ``CPU["last"]``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    runner = ["/usr/bin/time", "-f", "%U %S %M"] if shutil.which("time") or Path("/usr/bin/time").exists() else []
    result = subprocess.run(runner + command, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    if runner:
        user, system, _ = result.stderr.strip().splitlines()[-1].split()
        CPU["last"] = float(user) + float(system)
    rss = int(result.stderr.strip().splitlines()[-1].split()[-1]) if runner else max(0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - before)
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


def _pipe(admin_url: str, source: str, target: str) -> float:
    """``pg_dump | psql`` into an empty database: seconds."""
    started = time.monotonic()
    dump = subprocess.Popen(["pg_dump", *pg_args(admin_url), "--no-owner", "--no-privileges", source], stdout=subprocess.PIPE)
    load = subprocess.run(["psql", *pg_args(admin_url), "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", target],
                          stdin=dump.stdout, capture_output=True, text=True)
    dump.stdout.close()  # type: ignore[union-attr]
    if dump.wait() != 0 or load.returncode != 0:
        raise SystemExit(f"pg_dump | psql failed:\n{load.stderr}")
    return time.monotonic() - started


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run(admin_url: str, rows: int, work: Path, modes: list[str], repeat: int = 1, verify: bool = True) -> dict[str, object]:
    """With ``repeat`` > 1: every mode ``repeat`` times, interleaved, medians (and the samples) reported."""
    if repeat > 1:
        samples: dict[str, list[dict[str, Any]]] = {}
        source, source_env = make_source(admin_url, rows, work)
        try:
            for _ in range(repeat):
                one = run_once(admin_url, rows, work, modes, verify, source=(source, source_env))
                for mode, figures in one.items():
                    if isinstance(figures, dict):
                        samples.setdefault(mode, []).append(figures)
        finally:
            drop_postgres_database(admin_url, source)
        result: dict[str, object] = {"rows_generated": rows, "repeat": repeat}
        for mode, runs in samples.items():
            result[mode] = {key: _median([r[key] for r in runs]) for key in runs[0] if isinstance(runs[0][key], (int, float))}
            result[mode]["samples_total_s"] = [r["total_s"] for r in runs]  # type: ignore[index]
        return result
    return run_once(admin_url, rows, work, modes, verify)


def run_once(admin_url: str, rows: int, work: Path, modes: list[str], verify: bool = True,
             source: tuple[str, Path] | None = None) -> dict[str, object]:
    owned = source is None
    source, source_env = source or make_source(admin_url, rows, work)
    result: dict[str, object] = {"rows_generated": rows}
    databases = [source] if owned else []
    try:
        if "pipe" in modes:
            target, _env = empty_target(admin_url, work, f"pipe-{rows}-{time.monotonic_ns()}")
            databases.append(target)
            result["pipe"] = {"total_s": round(_pipe(admin_url, source, target), 2)}
        if "native" in modes:
            dump = work / f"native-{rows}.dump"
            t_dump, _ = timed(["pg_dump", *pg_args(admin_url), "-Fc", "--no-owner", "--no-privileges", "-f", str(dump), source])
            target, _env = empty_target(admin_url, work, f"native-{rows}-{time.monotonic_ns()}")
            databases.append(target)
            t_restore, _ = timed(["pg_restore", *pg_args(admin_url), "--no-owner", "--no-privileges", "-d", target, str(dump)])
            result["native"] = {"export_s": round(t_dump, 2), "import_s": round(t_restore, 2), "total_s": round(t_dump + t_restore, 2),
                                "size_bytes": dump.stat().st_size}
        for mode in [m for m in modes if m not in ("native", "pipe")]:
            bundle = work / f"{mode}-{rows}"
            extra = ["--native"] if mode == "fast" else []
            t_export, rss_export = timed(CLI + ["--env", str(source_env), "export", "--full", "-o", str(bundle), *extra])
            cpu_export = CPU.get("last", 0.0)
            target, target_env = empty_target(admin_url, work, f"{mode}-{rows}-dst-{time.monotonic_ns()}")
            databases.append(target)
            t_import, rss_import = timed(CLI + ["--env", str(target_env), "import", str(bundle)])
            cpu_import = CPU.get("last", 0.0)
            t_verify = timed(CLI + ["--env", str(target_env), "verify", str(bundle)])[0] if verify else 0.0
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            result[mode] = {
                "export_s": round(t_export, 2), "import_s": round(t_import, 2),
                "export_cpu_s": round(cpu_export, 2), "import_cpu_s": round(cpu_import, 2), "total_s": round(t_export + t_import, 2),
                "verify_s": round(t_verify, 2), "export_peak_rss_mib": round(rss_export / 1024, 1),
                "import_peak_rss_mib": round(rss_import / 1024, 1), "size_bytes": size,
            }
            shutil.rmtree(bundle, ignore_errors=True)
    finally:
        for name in databases:
            drop_postgres_database(admin_url, name)
    for base in ("native", "pipe"):
        native = result.get(base)
        if isinstance(native, dict):
            for mode in ("neutral", "fast"):
                if isinstance(result.get(mode), dict):
                    key = "ratio_vs_native" if base == "native" else "ratio_vs_pipe"
                    result[mode][key] = round(result[mode]["total_s"] / native["total_s"], 2)  # type: ignore[index]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000, help="a second, smaller run for the RSS comparison (0: skip)")
    parser.add_argument("--modes", default="native,neutral,fast")
    parser.add_argument("--repeat", type=int, default=1, help="run the modes interleaved N times; medians")
    parser.add_argument("--no-verify", action="store_true", help="skip our verify runs")
    parser.add_argument("--out", default="clone.json", help="file name under bench/results")
    parser.add_argument("--admin-url", default=os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    results = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "runs": []}
    try:
        for rows in [r for r in (args.small, args.rows) if r]:
            print(f"== {rows:,} rows", flush=True)
            run_result = run(args.admin_url, rows, work, modes, args.repeat, not args.no_verify)
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
