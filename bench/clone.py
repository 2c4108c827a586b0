"""Benchmark: full clone of a generated 1M-row CairnCMS instance on PostgreSQL.

Side by side in one run, on the same database:
  * native:  pg_dump -Fc  +  pg_restore           (what an operator runs by hand)
  * neutral: cairn-migrate export (neutral JSON lines) + import into an empty PostgreSQL
  * fast:    cairn-migrate export --native (pg_dump in our snapshot) + import (pg_restore)
and the peak RSS of our export and import at two sizes, to show memory does not grow with rows.

Usage: .venv/bin/python bench/clone.py [--rows 1000000] [--small 100000]   (PostgreSQL: $CAIRN_TEST_PG_URL)
Writes bench/results/clone.json and prints a table.  Needs PostgreSQL (scripts/servers start).
bench/run runs this comparison (and the others) interleaved, as medians; this script is the one-shot form.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLI, ROOT, empty_target, make_source, pg_args, timed  # noqa: E402  (the rows: common.GENERATE_PG)


def run(rows: int, work: Path, modes: list[str]) -> dict[str, object]:
    src = make_source("pg", rows, work)
    source, source_env = src.database, src.env
    result: dict[str, object] = {"rows_generated": rows}
    databases = [src]
    try:
        if "native" in modes:
            dump = work / f"native-{rows}.dump"
            t_dump, _ = timed(["pg_dump", *pg_args(), "-Fc", "--no-owner", "--no-privileges", "-f", str(dump), source])
            dst = empty_target("pg", work, f"native-{rows}")
            databases.append(dst)
            t_restore, _ = timed(["pg_restore", *pg_args(), "--no-owner", "--no-privileges", "-d", dst.database, str(dump)])
            result["native"] = {"export_s": round(t_dump, 2), "import_s": round(t_restore, 2), "total_s": round(t_dump + t_restore, 2),
                                "size_bytes": dump.stat().st_size}
        for mode in [m for m in modes if m != "native"]:
            bundle = work / f"{mode}-{rows}"
            extra = ["--native"] if mode == "fast" else []
            t_export, rss_export = timed([CLI, "--env", str(source_env), "export", "--full", "-o", str(bundle), *extra])
            dst = empty_target("pg", work, f"{mode}-{rows}-dst")
            databases.append(dst)
            t_import, rss_import = timed([CLI, "--env", str(dst.env), "import", str(bundle)])
            t_verify, _ = timed([CLI, "--env", str(dst.env), "verify", str(bundle)])
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            result[mode] = {
                "export_s": round(t_export, 2), "import_s": round(t_import, 2), "total_s": round(t_export + t_import, 2),
                "verify_s": round(t_verify, 2), "export_peak_rss_mib": round(rss_export / 1024, 1),
                "import_peak_rss_mib": round(rss_import / 1024, 1), "size_bytes": size,
            }
            shutil.rmtree(bundle, ignore_errors=True)
    finally:
        for database in databases:
            database.drop()
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
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    results = {"machine": {"cpus": os.cpu_count()}, "runs": []}
    try:
        for rows in [r for r in (args.small, args.rows) if r]:
            print(f"== {rows:,} rows", flush=True)
            run_result = run(rows, work, modes)
            print(json.dumps(run_result, indent=2), flush=True)
            results["runs"].append(run_result)  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / "clone.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
