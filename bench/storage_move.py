"""Benchmark: ``storage move`` local → SeaweedFS S3 against ``rclone copy``, and ``files check`` of 100k rows.

Run ``.venv/bin/python bench/storage_move.py [--small 10000 --large 20 --large-mb 50 --check-rows 100000]``
with the test servers up (``scripts/servers start``).  rclone comes from Debian
(``apt-get install -y rclone``); without it that column is skipped.  Results go
to ``bench/results/storage_move.json``.

Both tools copy the same tree (the instance's uploads folder) to fresh buckets
on the same SeaweedFS in the same run.  Our figure includes everything a move
does: reading rows, copy, verification of every object's size and SHA-256
(by the S3 service's checksum check where it verifies them, else read back),
the copy ledger and the row switch with its recorded migration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402  (files and the rclone remote, shared with bench/run)

from storage_servers import S3_ENDPOINT, S3_KEY, S3_REGION, S3_SECRET, create_container, remove_container  # noqa: E402

from cairn_migrate.operations.file_rows import check  # noqa: E402
from cairn_migrate.instance.instance import Instance  # noqa: E402
from cairn_migrate.instance.storage import open_location  # noqa: E402
from cairn_migrate.operations.storage_move import default_processes, move  # noqa: E402
from cairn_migrate.testing import build_sqlite_instance  # noqa: E402

log = logging.getLogger("bench")


def make_files(uploads: Path, db: Path, small: int, large: int, large_mb: int) -> int:
    """Write the files (``common.make_files``) and their rows; return the byte total."""
    made = common.make_files(uploads, small, large, large_mb)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO directus_files (id, storage, filename_disk, filename_download, type, filesize) "
                         "VALUES (?, 'local', ?, ?, 'application/octet-stream', ?)",
                         [(i, name, f"f{n}.bin", size) for n, (i, name, size) in enumerate(made)])
    return sum(size for _, _, size in made)


def run_rclone(uploads: Path, bucket: str, transfers: int, work: Path) -> float | None:
    if shutil.which("rclone") is None:
        return None
    command, env = common.rclone(work)
    started = time.monotonic()
    subprocess.run([*command, "copy", str(uploads), f"bench:{bucket}", "--transfers", str(transfers),
                    "--checkers", str(transfers * 2)], check=True, env=env)
    return time.monotonic() - started


def fill_rows(instance: Instance, db: Path, location_name: str, target: int) -> None:
    """Top the table up to ``target`` rows on ``location_name`` with tiny objects (for the check benchmark)."""
    with sqlite3.connect(db) as conn:
        have = conn.execute("SELECT count(*) FROM directus_files").fetchone()[0]
    extra = max(0, target - have)
    location = open_location(instance.location(location_name))
    ids = [str(uuid.uuid4()) for _ in range(extra)]
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda i: location.write_bytes(f"{i}.txt", i.encode()), ids))
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO directus_files (id, storage, filename_disk, filename_download, type, filesize) "
                         "VALUES (?,?,?,?,?,?)", [(i, location_name, f"{i}.txt", "x.txt", "text/plain", 36) for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--processes", type=int, default=None,
                        help="copy processes (default: the move's own default, one per CPU, 2 .. 4; 1 = in-process)")
    parser.add_argument("--check-rows", type=int, default=100000)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "storage_move.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-move-"))
    ours_bucket, rclone_bucket = f"bench-{uuid.uuid4().hex[:10]}", f"bench-{uuid.uuid4().hex[:10]}"
    extra = {"STORAGE_LOCATIONS": "local,s3", "STORAGE_S3_DRIVER": "s3", "STORAGE_S3_BUCKET": ours_bucket,
             "STORAGE_S3_KEY": S3_KEY, "STORAGE_S3_SECRET": S3_SECRET, "STORAGE_S3_ENDPOINT": S3_ENDPOINT,
             "STORAGE_S3_FORCE_PATH_STYLE": "true", "STORAGE_S3_REGION": S3_REGION}
    env = build_sqlite_instance(ROOT / "tests" / "fixtures" / "sqlite", work / "instance", extra_env=extra)
    instance = Instance.from_env_file(env, environ={})
    target = open_location(instance.location("s3"))
    rclone_target = open_location(instance.location("s3").__class__(name="rc", driver="s3", options={
        **instance.location("s3").options, "bucket": rclone_bucket}))
    create_container(target)
    create_container(rclone_target)
    try:
        uploads = work / "instance" / "uploads"
        log.info("writing %d small + %d × %d MB files", args.small, args.large, args.large_mb)
        total = make_files(uploads, work / "instance" / "data.db", args.small, args.large, args.large_mb)
        count = args.small + args.large + 3
        log.info("rclone copy (--transfers %d)", args.workers)
        rclone_s = run_rclone(uploads, rclone_bucket, args.workers, work)
        log.info("cairn-migrate storage move (--workers %d)", args.workers)
        started = time.monotonic()
        report = move(instance, "local", "s3", workers=args.workers, state_url=f"sqlite:///{work / 'state.db'}",
                      processes=args.processes)
        ours_s = time.monotonic() - started
        assert report["switched"] == count and not report["failed"], report["failed"][:3]
        log.info("filling to %d rows on s3 for the check", args.check_rows)
        fill_rows(instance, work / "instance" / "data.db", "s3", args.check_rows)
        shutil.rmtree(uploads)
        uploads.mkdir()
        started = time.monotonic()
        checked = check(instance, state_url=f"sqlite:///{work / 'state.db'}")
        check_s = time.monotonic() - started
        mb = total / 1e6
        result = {
            "files": count, "bytes": total, "small": args.small, "large": args.large, "large_mb": args.large_mb,
            "workers": args.workers,
            "processes": args.processes if args.processes is not None else default_processes(),
            "cpus": os.cpu_count(),
            "ours": {"seconds": round(ours_s, 2), "MB_per_s": round(mb / ours_s, 1), "files_per_s": round(count / ours_s, 1),
                     "verified": "size + sha256: checked by the S3 service (x-amz-checksum-sha256, probed) or read back from the target"},
            "rclone": None if rclone_s is None else {"seconds": round(rclone_s, 2), "MB_per_s": round(mb / rclone_s, 1),
                                                     "files_per_s": round(count / rclone_s, 1),
                                                     "version": subprocess.run(["rclone", "version"], capture_output=True,
                                                                               text=True).stdout.splitlines()[0]},
            "throughput_ratio_ours_over_rclone": None if rclone_s is None else round(rclone_s / ours_s, 2),
            "check": {"rows": checked["rows"], "seconds": round(check_s, 2), "ok": checked["ok"],
                      "counts": checked["counts"]},
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        remove_container(target)
        remove_container(rclone_target)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
