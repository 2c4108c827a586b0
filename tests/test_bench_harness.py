"""bench/run's own arithmetic: timing and peak RSS of pipelines, failures, the fastest native, the table.

The benchmarks themselves need the servers and minutes; these check the parts every ratio rests on.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_module():
    os.environ.setdefault("CAIRN_BENCH_NO_REEXEC", "1")
    loader = importlib.machinery.SourceFileLoader("bench_run", str(ROOT / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_pipeline_reports_its_largest_process(run_module) -> None:
    common = sys.modules["common"]
    hog = [sys.executable, "-c", "import sys; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); "
                                 "sys.stdout.write('ok')"]
    seconds, rss_kib = common.timed_pipeline([hog, ["cat"]])
    assert seconds > 0
    assert rss_kib >= 80 * 1024  # the 80 MiB Python, not cat
    _, small = common.timed(["cat", "/dev/null"])
    assert 0 < small < 40 * 1024


def test_pipeline_failure_names_the_command(run_module, tmp_path) -> None:
    common = sys.modules["common"]
    with pytest.raises(common.Failed, match="exited 3: boom"):
        common.timed_pipeline([["sh", "-c", "echo boom >&2; exit 3"], ["cat"]])
    # a later command failing counts as well; ok_codes lets a check's "differences" through
    with pytest.raises(common.Failed):
        common.timed_pipeline([["echo", "x"], ["sh", "-c", "cat >/dev/null; exit 1"]])
    common.timed(["sh", "-c", "exit 1"], ok_codes=(0, 1))
    out = tmp_path / "out"
    common.timed_pipeline([["printf", "a\\nb\\n"], ["wc", "-l"]], stdout=out)
    assert out.read_text().strip() == "2"


def test_table_ratios_and_the_fastest_native(run_module) -> None:
    bench = run_module.Bench(1000, 3, Path("/nonexistent"))
    for seconds in (4.0, 2.0, 9.0):  # median 4
        bench.add("pg", "pg_dump | psql", seconds, 10_000)
    for seconds in (3.0, 3.0, 1.0):  # median 3: the fastest native
        bench.add("pg", "pg_dump -Fd -j2 + pg_restore -j2", seconds, 11_000)
    for seconds in (12.0, 6.0, 7.0):  # median 7
        bench.add("pg", "ours neutral", seconds, 90_000, export=seconds / 2, import_=seconds / 2, verify=1.0)
    rows = {r["work"]: r for r in run_module.table(bench)}
    assert rows["PG → PG clone"]["ratio"] == round(7 / 4, 2)
    fastest = rows["PG → PG clone (fastest native)"]
    assert fastest["native"] == "pg_dump -Fd -j2 + pg_restore -j2" and fastest["ratio"] == round(7 / 3, 2)
    assert fastest["ours_peak_rss_mib"] == round(90_000 / 1024, 1)
    verify = rows["verify PG (neutral) vs its import"]
    assert verify["native_s"] == 3.5 and verify["ours_s"] == 1.0 and verify["ratio"] == round(1 / 3.5, 2)
    # pairs not run leave no rows; pipes in cells are escaped for Markdown
    assert not any(r["work"].startswith("MariaDB") for r in rows.values())
    rendered = run_module.render(list(rows.values()))
    assert "pg_dump \\| psql" in rendered and rendered.count("\n") == len(rows) + 1
