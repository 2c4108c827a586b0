"""Benchmark: ``storage move`` local → SeaweedFS S3 against ``rclone copy``, ``files check`` against ``rclone check``.

Run ``.venv/bin/python bench/storage_move.py [--small 10000 --large 0]`` (small files: files/s) and
``… --small 0 --large 20 --large-mb 50`` (large files: MB/s) with the test servers up
(``scripts/servers start``).  rclone comes from Debian (``apt-get install -y rclone``).  Results go to
``bench/results/storage_move[-<label>].json``.

Each round runs both tools in the same run, interleaved (the order alternates per round), each as its own
process (start-up included, peak RSS from ``/usr/bin/time -f %M``), each into a fresh bucket on the same
SeaweedFS; the figures are medians of ``--repeat`` rounds.  Our figure includes everything a move does:
reading rows, copy, verification of every object's size and SHA-256 (by the S3 service's checksum check
where it verifies them, else read back), the copy ledger and the row switch with its recorded migration.
rclone copy verifies each object's MD5 against the ETag S3 answers.

After the last round, ``files check`` (rows vs objects on both locations, the instance's last move's
source objects kept) runs against ``rclone check`` of the uploads folder against the same bucket, with
``--size-only`` (the same comparison as ours: presence and size) and with its default MD5 comparison,
interleaved, medians of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from storage_servers import S3_ENDPOINT, S3_KEY, S3_REGION, S3_SECRET, create_container, remove_container  # noqa: E402

from cairn_migrate.instance.instance import Instance  # noqa: E402
from cairn_migrate.instance.storage import open_location  # noqa: E402
from cairn_migrate.testing import build_sqlite_instance  # noqa: E402

log = logging.getLogger("bench")
CLI = str(ROOT / ".venv" / "bin" / "cairn-migrate")


def make_files(uploads: Path, db: Path, small: int, large: int, large_mb: int) -> int:
    """Write the files and their rows; return the byte total."""
    rows, total = [], 0
    for n in range(small + large):
        file_id = str(uuid.uuid4())
        size = (large_mb << 20) if n >= small else 1024 + (n * 37) % 7168
        with (uploads / f"{file_id}.bin").open("wb") as fh:
            fh.write(os.urandom(size))
        rows.append((file_id, "local", f"{file_id}.bin", f"f{n}.bin", "application/octet-stream", size))
        total += size
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO directus_files (id, storage, filename_disk, filename_download, type, filesize) "
                         "VALUES (?,?,?,?,?,?)", rows)
    return total


def rclone_env() -> dict[str, str]:
    env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
           "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": S3_KEY, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": S3_SECRET,
           "RCLONE_CONFIG_BENCH_ENDPOINT": S3_ENDPOINT, "RCLONE_CONFIG_BENCH_REGION": S3_REGION}
    env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 refuses a custom CA bundle with its own transport
    return env


def timed(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, int, str]:
    """Run ``cmd`` under ``/usr/bin/time``; ``(seconds, peak RSS in MB, stdout)``."""
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "RSS_KB=%M", *cmd], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode not in ok:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = int(re.findall(r"RSS_KB=(\d+)", proc.stderr)[-1]) // 1024
    return seconds, rss, proc.stdout


def set_bucket(env_file: Path, bucket: str) -> None:
    text = re.sub(r"(?m)^STORAGE_S3_BUCKET=.*$", f"STORAGE_S3_BUCKET={bucket}", env_file.read_text())
    env_file.write_text(text)


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10000)
    parser.add_argument("--large", type=int, default=0)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="skip files check / rclone check")
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-move-"))
    extra = {"STORAGE_LOCATIONS": "local,s3", "STORAGE_S3_DRIVER": "s3", "STORAGE_S3_BUCKET": "unset",
             "STORAGE_S3_KEY": S3_KEY, "STORAGE_S3_SECRET": S3_SECRET, "STORAGE_S3_ENDPOINT": S3_ENDPOINT,
             "STORAGE_S3_FORCE_PATH_STYLE": "true", "STORAGE_S3_REGION": S3_REGION}
    env_file = build_sqlite_instance(ROOT / "tests" / "fixtures" / "sqlite", work / "instance", extra_env=extra)
    instance = Instance.from_env_file(env_file, environ={})
    s3_options = instance.location("s3").options
    config_cls = instance.location("s3").__class__
    buckets = []

    def bucket() -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        location = open_location(config_cls(name="b", driver="s3", options={**s3_options, "bucket": name}))
        create_container(location)
        buckets.append(location)
        return name

    db = work / "instance" / "data.db"
    uploads = work / "instance" / "uploads"
    ours_env = {**os.environ}
    ours_env.pop("CAIRN_MIGRATE_ENV", None)
    rc_env = rclone_env()
    runs: dict[str, list[tuple[float, int]]] = {"ours": [], "rclone": []}
    try:
        log.info("writing %d small + %d × %d MB files", args.small, args.large, args.large_mb)
        for derived in uploads.glob("*__*"):  # a transform without a row: rclone would copy it, the move not
            derived.unlink()
        total = make_files(uploads, db, args.small, args.large, args.large_mb)
        with sqlite3.connect(db) as conn:
            count = conn.execute("SELECT count(*) FROM directus_files WHERE storage = 'local'").fetchone()[0]
        last_bucket = ""
        for rnd in range(args.repeat):
            order = ["rclone", "ours"] if rnd % 2 == 0 else ["ours", "rclone"]
            for tool in order:
                name = bucket()
                if tool == "rclone":
                    seconds, rss, _ = timed(["rclone", "copy", str(uploads), f"bench:{name}", "--transfers",
                                             str(args.workers), "--checkers", str(args.workers * 2)], rc_env)
                else:
                    with sqlite3.connect(db) as conn:
                        conn.execute("UPDATE directus_files SET storage = 'local' WHERE storage = 's3'")
                    set_bucket(env_file, name)
                    ours_env["CAIRN_MIGRATE_STATE_URL"] = f"sqlite:///{work / f'state-{rnd}.db'}"
                    seconds, rss, out = timed([CLI, "--env", str(env_file), "storage", "move", "--from", "local",
                                               "--to", "s3", "--workers", str(args.workers), "--json"], ours_env)
                    report = json.loads(out)
                    assert report["switched"] == count and not report["failed"], (report["switched"], report["failed"][:3])
                    last_bucket = name
                runs[tool].append((seconds, rss))
                log.info("round %d %-6s %.2f s  %d MB", rnd + 1, tool, seconds, rss)
        mb = total / 1e6
        result: dict = {
            "files": count, "bytes": total, "small": args.small, "large": args.large, "large_mb": args.large_mb,
            "workers": args.workers, "repeat": args.repeat, "cpus": os.cpu_count(),
            "load_before": os.getloadavg(),
            "rclone_version": subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0],
        }
        for tool in ("ours", "rclone"):
            secs = [s for s, _ in runs[tool]]
            result[tool] = {"seconds": [round(s, 2) for s in secs], "median_s": med(secs),
                            "MB_per_s": round(mb / statistics.median(secs), 1),
                            "files_per_s": round(count / statistics.median(secs), 1),
                            "peak_rss_mb": max(r for _, r in runs[tool])}
        result["ours"]["verified"] = ("size + sha256 per object: checked by the S3 service "
                                      "(x-amz-checksum-sha256, probed) or read back from the target")
        result["rclone"]["verified"] = "size + MD5 per object (ETag)"
        result["throughput_ratio_ours_over_rclone"] = round(result["rclone"]["median_s"] / result["ours"]["median_s"], 2)
        if not args.no_check:
            checks: dict[str, list[tuple[float, int]]] = {"ours": [], "rclone_size_only": [], "rclone_md5": []}
            for rnd in range(args.repeat):
                order = list(checks) if rnd % 2 == 0 else list(reversed(checks))
                for tool in order:
                    if tool == "ours":
                        seconds, rss, out = timed([CLI, "--env", str(env_file), "files", "check", "--json"],
                                                  ours_env, ok=(0, 1))
                        report = json.loads(out)
                        assert report["counts"]["missing"] == 0 and report["counts"]["orphan"] == 0, report["counts"]
                    else:
                        extra_args = ["--size-only"] if tool == "rclone_size_only" else []
                        seconds, rss, _ = timed(["rclone", "check", str(uploads), f"bench:{last_bucket}",
                                                 "--checkers", str(args.workers), *extra_args], rc_env)
                    checks[tool].append((seconds, rss))
                    log.info("check round %d %-16s %.2f s  %d MB", rnd + 1, tool, seconds, rss)
            result["check"] = {tool: {"seconds": [round(s, 2) for s, _ in v], "median_s": med([s for s, _ in v]),
                                      "peak_rss_mb": max(r for _, r in v)} for tool, v in checks.items()}
            result["check"]["objects"] = count
            result["check"]["ratio_ours_over_rclone_size_only"] = round(
                result["check"]["ours"]["median_s"] / result["check"]["rclone_size_only"]["median_s"], 2)
            result["check"]["ratio_ours_over_rclone_md5"] = round(
                result["check"]["ours"]["median_s"] / result["check"]["rclone_md5"]["median_s"], 2)
        result["load_after"] = os.getloadavg()
        output = args.output or str(ROOT / "bench" / "results" / f"storage_move{'-' + args.label if args.label else ''}.json")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        for location in buckets:
            remove_container(location)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
