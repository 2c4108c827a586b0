"""What every benchmark shares: the generated rows, the source instances, timing and the machine.

* :data:`GENERATE_PG` / :data:`GENERATE_MARIADB` / :data:`GENERATE_SQLITE`: the ``bench_items`` table (uuid key,
  varchar, text, two timestamps, json, integer, boolean, an m2o to ``directus_files``) as CairnCMS would
  hold it on each vendor, added to the recorded fixture instance of that vendor (``tests/fixtures/<vendor>``).
* :func:`make_source`: a fresh database of that fixture plus ``rows`` generated rows, and its ``.env``.
* :func:`timed` / :func:`timed_pipeline`: wall seconds and the peak RSS (KiB) of every process of the command
  (``/usr/bin/time -f %M``; a process's figure includes the children it waited for), so a pipeline
  ``pg_dump | psql`` reports its largest process.
* :func:`machine`: CPU model, cores, RAM, disk, the versions of the servers and tools, the load average.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cairn_migrate.testing import (  # noqa: E402
    build_sqlite_instance,
    create_mariadb_database,
    create_postgres_database,
    drop_mariadb_database,
    drop_postgres_database,
    instance_env,
    server_env,
    write_env,
)

FIXTURES = ROOT / "tests" / "fixtures"
CLI = str(Path(sys.executable).with_name("cairn-migrate"))
PG_URL = os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MARIADB_URL = os.environ.get("CAIRN_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/")
TIME = "/usr/bin/time"

GENERATE_PG = """
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

# The same rows as CairnCMS holds them on MariaDB (char(36) uuids, timestamp, json as a checked longtext,
# tinyint(1)) and on SQLite (char(36), datetime as epoch milliseconds, json text, boolean 0/1).
GENERATE_MARIADB = """
CREATE TABLE bench_items (
    id char(36) NOT NULL PRIMARY KEY,
    status varchar(255) NOT NULL DEFAULT 'draft',
    title varchar(255) NOT NULL,
    body text,
    published_at timestamp NULL DEFAULT NULL,
    date_created timestamp NULL DEFAULT CURRENT_TIMESTAMP,
    seo longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(seo)),
    views int(11) DEFAULT NULL,
    featured tinyint(1) DEFAULT 0,
    cover_image char(36) DEFAULT NULL,
    CONSTRAINT bench_items_cover_image_foreign FOREIGN KEY (cover_image) REFERENCES directus_files (id) ON DELETE SET NULL
);
SET time_zone = '+00:00';
INSERT INTO bench_items
SELECT CONCAT_WS('-', SUBSTR(MD5(seq), 1, 8), SUBSTR(MD5(seq), 9, 4), SUBSTR(MD5(seq), 13, 4),
                 SUBSTR(MD5(seq), 17, 4), SUBSTR(MD5(seq), 21, 12)),
       ELT(1 + seq % 3, 'draft', 'published', 'archived'),
       CONCAT('Item number ', seq),
       CONCAT(REPEAT('Lorem ipsum dolor sit amet, consectetur adipiscing elit. ', 1 + seq % 4), seq),
       TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq MINUTE,
       TIMESTAMP '2023-06-01 12:00:00' + INTERVAL seq SECOND,
       JSON_OBJECT('title', CONCAT('Item ', seq), 'keywords', JSON_ARRAY('a', 'b', seq % 7), 'score', seq % 100),
       seq % 10000,
       seq % 5 = 0,
       CASE WHEN seq % 2 = 0 THEN (SELECT id FROM directus_files ORDER BY id LIMIT 1) END
FROM seq_1_to_{rows};
ANALYZE TABLE bench_items;
"""

GENERATE_SQLITE = """
CREATE TABLE bench_items (`id` char(36) NOT NULL, `status` varchar(255) NOT NULL DEFAULT 'draft',
    `title` varchar(255) NOT NULL, `body` text NULL, `published_at` datetime NULL, `date_created` datetime NULL,
    `seo` json NULL, `views` integer NULL, `featured` boolean NULL DEFAULT '0', `cover_image` char(36) NULL,
    PRIMARY KEY (`id`),
    CONSTRAINT `bench_items_cover_image_foreign` FOREIGN KEY (`cover_image`) REFERENCES `directus_files` (`id`) ON DELETE SET NULL);
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
INSERT INTO bench_items
SELECT printf('%08x-%04x-4%03x-8%03x-%012x', i, i % 65536, i % 4096, (i * 7) % 4096, i * 2654435761 % 281474976710656),
       CASE i % 3 WHEN 0 THEN 'draft' WHEN 1 THEN 'published' ELSE 'archived' END,
       'Item number ' || i,
       replace(printf('%.*c', 1 + i % 4, '#'), '#', 'Lorem ipsum dolor sit amet, consectetur adipiscing elit. ') || i,
       1704067200000 + i * 60000,
       1685620800000 + i * 1000,
       json_object('title', 'Item ' || i, 'keywords', json_array('a', 'b', i % 7), 'score', i % 100),
       i % 10000,
       i % 5 = 0,
       CASE WHEN i % 2 = 0 THEN (SELECT id FROM directus_files ORDER BY id LIMIT 1) END
FROM s;
ANALYZE;
"""


class Source:
    """One generated instance: its vendor, database name (or file), ``.env`` and folder."""

    def __init__(self, vendor: str, database: str, env: Path, folder: Path) -> None:
        self.vendor, self.database, self.env, self.folder = vendor, database, env, folder

    def drop(self) -> None:
        drop_database(self.vendor, self.database)


def drop_database(vendor: str, database: str) -> None:
    if vendor == "pg":
        drop_postgres_database(PG_URL, database)
    elif vendor == "mariadb":
        drop_mariadb_database(MARIADB_URL, database)
    else:
        Path(database).unlink(missing_ok=True)


def make_source(vendor: str, rows: int, work: Path, label: str = "src") -> Source:
    """The recorded fixture of ``vendor`` (``pg``, ``mariadb``, ``sqlite``) plus ``rows`` generated ``bench_items``."""
    folder = work / f"{label}-{vendor}-{rows}"
    folder.mkdir(parents=True)
    if vendor == "sqlite":
        env = build_sqlite_instance(FIXTURES / "sqlite", folder)
        with sqlite3.connect(folder / "data.db") as conn:
            conn.executescript(GENERATE_SQLITE.format(rows=int(rows)))
        conn.close()
        return Source("sqlite", str(folder / "data.db"), env, folder)
    if vendor == "pg":
        name = create_postgres_database(PG_URL, FIXTURES / "postgres" / "seeded.sql", prefix="cm_bench_src")
        engine = sa.create_engine(sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg", database=name))
        with engine.begin() as conn:
            for statement in GENERATE_PG.split(";\n"):
                if statement.strip():
                    conn.execute(sa.text(statement), {"rows": rows} if ":rows" in statement else {})
        engine.dispose()
        fixture = FIXTURES / "postgres"
    else:
        name = create_mariadb_database(MARIADB_URL, FIXTURES / "mariadb" / "seeded.sql", prefix="cm_bench_src")
        engine = sa.create_engine(sa.engine.make_url(MARIADB_URL).set(drivername="mysql+pymysql", database=name))
        with engine.begin() as conn:
            for statement in GENERATE_MARIADB.format(rows=int(rows)).split(";\n"):
                if statement.strip():
                    conn.execute(sa.text(statement))
        engine.dispose()
        fixture = FIXTURES / "mariadb"
    shutil.copytree(fixture / "uploads", folder / "uploads")
    env = write_env(folder / ".env", instance_env(fixture, _db_env(vendor, name)))
    return Source(vendor, name, env, folder)


def _db_env(vendor: str, name: str) -> dict[str, object]:
    """The ``DB_*`` of an instance on ``name`` (CairnCMS's client for MariaDB is ``mysql``)."""
    values = server_env(PG_URL if vendor == "pg" else MARIADB_URL, name, "pg" if vendor == "pg" else "mysql")
    if vendor != "pg":
        values.setdefault("DB_PASSWORD", "")  # our reader wants it said: no password
    return values


def empty_target(vendor: str, work: Path, label: str) -> Source:
    """An empty database of ``vendor`` and the ``.env`` of an instance on it (the PostgreSQL fixture's keys)."""
    folder = Path(tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-") + "-", dir=work))
    fixture = FIXTURES / ("postgres" if vendor == "pg" else vendor)
    if vendor == "sqlite":
        env = write_env(folder / ".env", instance_env(fixture, {"DB_CLIENT": "sqlite3", "DB_FILENAME": "./data.db"}))
        return Source("sqlite", str(folder / "data.db"), env, folder)
    if vendor == "pg":
        name = create_postgres_database(PG_URL, prefix="cm_bench_dst")
    else:
        name = create_mariadb_database(MARIADB_URL, prefix="cm_bench_dst")
    env = write_env(folder / ".env", instance_env(fixture, _db_env(vendor, name)))
    return Source(vendor, name, env, folder)


def pg_args(url: str = PG_URL) -> list[str]:
    u = sa.engine.make_url(url)
    return ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]


def mariadb_args(url: str = MARIADB_URL) -> list[str]:
    u = sa.engine.make_url(url)
    args = ["-h", u.host or "127.0.0.1", "-P", str(u.port or 3306), "-u", u.username or "root"]
    return args + ([f"-p{u.password}"] if u.password else [])


class Failed(RuntimeError):
    """A timed command exited non-zero (its stderr's tail in the message)."""


def timed_pipeline(commands: Sequence[Sequence[str]], *, stdin: Path | None = None, stdout: Path | None = None,
                   env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Run ``commands`` as one pipeline (``a | b | …``); return (wall seconds, largest peak RSS in KiB).

    Raises :class:`Failed` (with that command's stderr tail) when any command exits outside ``ok_codes``.
    """
    with tempfile.TemporaryDirectory(prefix="cairn-bench-time-") as tmp, contextlib.ExitStack() as files:
        rss_files = [Path(tmp) / f"rss{n}" for n in range(len(commands))]
        err_files = [files.enter_context(open(Path(tmp) / f"err{n}", "w+b")) for n in range(len(commands))]
        fin: Any = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
        fout: Any = files.enter_context(open(stdout, "wb")) if stdout else subprocess.DEVNULL
        procs: list[subprocess.Popen[bytes]] = []
        started = time.perf_counter()
        previous = fin
        for n, command in enumerate(commands):
            last = n == len(commands) - 1
            proc = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_files[n]), *command], env=env, stdin=previous,
                                    stdout=fout if last else subprocess.PIPE, stderr=err_files[n])
            if n and procs[-1].stdout is not None:
                procs[-1].stdout.close()  # the next command owns the pipe now
            procs.append(proc)
            previous = proc.stdout
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - started
        for code, command, err in zip(codes, commands, err_files):
            if code not in ok_codes:
                err.seek(0)
                tail = err.read().decode(errors="replace")[-1500:]
                raise Failed(f"{' '.join(command)} exited {code}: {tail}")
        rss = 0
        for f in rss_files:
            numbers = re.findall(r"^\d+$", f.read_text(), re.M) if f.exists() else []
            rss = max(rss, int(numbers[-1]) if numbers else 0)
    return elapsed, rss


def timed(command: Sequence[str], **kwargs: Any) -> tuple[float, int]:
    """Run one command; return (wall seconds, peak RSS in KiB of it and the children it waited for)."""
    return timed_pipeline([command], **kwargs)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _first_line(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def server_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version(), "sqlite_library": sqlite3.sqlite_version,
                                "sqlite3_cli": _first_line(["sqlite3", "--version"]),
                                "pg_dump": _first_line(["pg_dump", "--version"]),
                                "mariadb_client": _first_line(["mariadb", "--version"]),
                                "rclone": _first_line(["rclone", "version"])}
    try:
        engine = sa.create_engine(sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg"))
        with engine.connect() as conn:
            versions["postgresql_server"] = conn.execute(sa.text("SELECT version()")).scalar()
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - a description, not a check
        versions["postgresql_server"] = f"unavailable: {exc.__class__.__name__}"
    try:
        engine = sa.create_engine(sa.engine.make_url(MARIADB_URL).set(drivername="mysql+pymysql"))
        with engine.connect() as conn:
            versions["mariadb_server"] = conn.execute(sa.text("SELECT version()")).scalar()
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        versions["mariadb_server"] = f"unavailable: {exc.__class__.__name__}"
    versions["cairn_migrate"] = _first_line([CLI, "--version"])
    return versions


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = None
    try:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    disk = shutil.disk_usage(tempfile.gettempdir())
    root_dev = _first_line(["sh", "-c", "df --output=source,fstype / | tail -1"])
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1) if mem_kib else None,
        "disk": {"tmp_total_gib": round(disk.total / 2**30, 1), "tmp_free_gib": round(disk.free / 2**30, 1),
                 "root": root_dev},
        "kernel": platform.release(), "versions": server_versions(),
    }


def make_files(folder: Path, small: int, large: int, large_mib: int) -> list[tuple[str, str, int]]:
    """``small`` files of 1-8 KiB and ``large`` of ``large_mib`` MiB, random bytes (nothing compresses).

    Returns (id, filename_disk, size) per file, the ids fixed (uuid4 form of 1, 2, …) so runs are alike.
    """
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with open("/dev/urandom", "rb") as rng:
        for n in range(small + large):
            file_id = str(uuid.UUID(int=n + 1, version=4))
            size = (large_mib << 20) if n >= small else 1024 + (n * 37) % 7168
            name = f"{file_id}.bin"
            with (folder / name).open("wb") as fh:
                remaining = size
                while remaining:
                    chunk = rng.read(min(remaining, 8 << 20))
                    fh.write(chunk)
                    remaining -= len(chunk)
            out.append((file_id, name, size))
    return out


def rclone(work: Path) -> tuple[list[str], dict[str, str]]:
    """``rclone --config <a temporary file>`` with a remote ``bench:`` on the test S3 server, and its env.

    The S3 endpoint and keys come from ``scripts/servers env`` (``CAIRN_TEST_S3_*``).  ``AWS_CA_BUNDLE`` is
    left out of the env: rclone 1.60 refuses a custom CA bundle with its own transport.
    """
    config = work / "rclone.conf"
    config.write_text("[bench]\ntype = s3\nprovider = SeaweedFS\n"
                      f"access_key_id = {os.environ.get('CAIRN_TEST_S3_KEY', 'cairn-test-key')}\n"
                      f"secret_access_key = {os.environ.get('CAIRN_TEST_S3_SECRET', 'cairn-test-secret')}\n"
                      f"endpoint = {os.environ.get('CAIRN_TEST_S3_ENDPOINT', 'http://127.0.0.1:8333')}\n"
                      f"region = {os.environ.get('CAIRN_TEST_S3_REGION', 'us-east-1')}\n")
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return ["rclone", "--config", str(config)], env
