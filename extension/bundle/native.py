"""The fast path: the vendor's own dump and restore tools inside our manifest.

Same vendor on both ends and the tools on ``PATH``: ``pg_dump``/``pg_restore``
(run inside our repeatable-read snapshot with ``--snapshot``, so the file list
and the dump describe the same moment), ``mariadb-dump``/``mariadb``
(``--single-transaction``), or SQLite's online backup API.  The bundle keeps
the same manifest, file bytes and verification; only the table data travels
in the vendor's format.  Verification compares per-table row counts and a
checksum the vendor computes itself (same vendor, same text forms), so the
fast path stays fast end to end.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from ..instance import timeouts
from ..instance.database import Database
from ..errors import ConfigError, MigrateError
from ..instance.instance import DatabaseConfig

#: vendor → (dump tool candidates, restore tool candidates)
TOOLS = {
    "postgres": (("pg_dump",), ("pg_restore",)),
    "mysql": (("mariadb-dump", "mysqldump"), ("mariadb", "mysql")),
    "sqlite": ((), ()),
}
#: Where the dump lives in a bundle; PostgreSQL's is a ``pg_dump -Fd`` directory (parallel dump and restore).
MEMBERS = {"postgres": "database/postgres", "mysql": "database/mysql.sql", "sqlite": "database/sqlite.db"}

#: Parallel jobs for pg_dump/pg_restore: one per core, at least two.
JOBS = max(2, os.cpu_count() or 2)


class NativeToolFailed(MigrateError):
    """A vendor tool exited non-zero; its last lines of stderr are in the message."""

    code = "native_tool_failed"


def _which(candidates: Sequence[str]) -> str | None:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def available(vendor: str) -> bool:
    """Are the dump and restore tools of ``vendor`` on ``PATH``? (SQLite needs none.)"""
    dump, restore = TOOLS[vendor]
    return vendor == "sqlite" or bool(_which(dump) and _which(restore))


def _conn_args(config: DatabaseConfig) -> tuple[list[str], dict[str, str]]:
    url = config.url
    env = dict(os.environ)
    if config.vendor == "postgres":
        if url.password:
            env["PGPASSWORD"] = str(url.password)
        env["PGCONNECT_TIMEOUT"] = str(max(2, math.ceil(timeouts.connect_timeout())))  # libpq, like our engines
        args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
        return args, env
    if url.password:
        env["MYSQL_PWD"] = str(url.password)
    return ["-h", url.host or "127.0.0.1", "-P", str(url.port or 3306), "-u", url.username or "root"], env


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up once in the parent: the child between fork and exec only calls it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the tool die (SIGKILL) when the sidecar does.

    A killed sidecar (SIGKILL, OOM) otherwise leaves ``pg_restore`` or
    ``mariadb`` running: it goes on writing into a target whose import is
    recorded as interrupted, and a resume would then drop rows it cannot tell
    apart.  The signal is sent when the thread that started the tool ends, and
    that thread waits for the tool.  If the parent died before ``prctl`` ran,
    the child notices its new parent and ends itself.
    """
    if _PRCTL is None:
        return None
    parent, prctl = os.getpid(), _PRCTL

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _run(command: list[str], env: dict[str, str], *, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
    with tempfile.TemporaryFile() as stderr:
        with subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.PIPE if stdout else None, stderr=stderr,
                              preexec_fn=_dies_with_parent()) as process:
            if stdout is not None and process.stdout is not None:
                shutil.copyfileobj(process.stdout, stdout, 1024 * 1024)
            code = process.wait()
        if code != 0:
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            raise NativeToolFailed(f"{Path(command[0]).name} failed (exit {code}): {' | '.join(tail)}")


def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()


def dump_postgres(db: Database, conn: sa.Connection, folder: Path, tables: Sequence[str],
                  exclude: Sequence[str] = ()) -> tuple[str, dict[str, dict[str, Any]]]:
    """``pg_dump -Fd -j N`` of our snapshot into ``folder``, with the checksums computed meanwhile; ``exclude``: tables left out.

    The dump runs in our repeatable-read snapshot (``--snapshot``), so it
    and the checksums and the file list describe one moment; the checksum
    queries run on our connection while pg_dump's workers run on theirs.
    """
    tool = _which(TOOLS["postgres"][0]) or "pg_dump"
    args, env = _conn_args(db.config)
    snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
    # zlib level 1: most of the size win of the default level at a fraction of its CPU.
    command = [tool, *args, "-Fd", "-j", str(JOBS), "-Z", "1", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
               *(f"--exclude-table={name}" for name in exclude), "-f", str(folder), str(db.config.url.database)]
    with tempfile.TemporaryFile() as stderr:
        with subprocess.Popen(command, env=env, stderr=stderr, preexec_fn=_dies_with_parent()) as process:
            try:
                sums = checksums(db, conn, tables)
            finally:
                code = process.wait()
        if code != 0:
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            raise NativeToolFailed(f"pg_dump failed (exit {code}): {' | '.join(tail)}")
    return _version(tool), sums


def dump_mysql(db: Database, out: IO[bytes], exclude: Sequence[str] = ()) -> str:
    """``mariadb-dump --single-transaction`` of the database to ``out``; ``exclude``: tables left out."""
    tool = _which(TOOLS["mysql"][0]) or "mariadb-dump"
    args, env = _conn_args(db.config)
    command = [tool, *args, "--single-transaction", "--quick", "--skip-lock-tables", "--no-tablespaces", "--hex-blob",
               "--default-character-set=utf8mb4", "--skip-triggers", "--tz-utc",
               *(f"--ignore-table={db.config.url.database}.{name}" for name in exclude), str(db.config.url.database)]
    _run(command, env, stdout=out)
    return _version(tool)


def _sqlite_copy(source_path: str | Path, target_path: str | Path) -> None:
    """Copy a SQLite database with the online backup API (consistent even while it is written)."""
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    target = sqlite3.connect(target_path)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


@contextmanager
def sqlite_backup(path: str, workdir: Path) -> Iterator[Path]:
    """A consistent copy of a live SQLite file, removed afterwards."""
    copy = Path(tempfile.mkdtemp(dir=workdir)) / "sqlite.db"
    _sqlite_copy(path, copy)
    try:
        yield copy
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def _q(engine: sa.Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def checksums(db: Database, conn: sa.Connection, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per table: row count and a vendor-computed checksum (comparable only on the same vendor)."""
    result: dict[str, dict[str, Any]] = {}
    for name in tables:
        q = _q(db.engine, name)
        if db.vendor == "postgres":
            row = conn.execute(sa.text(f"SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {q} t")).one()
        elif db.vendor == "mysql":
            columns = ", ".join(f"IFNULL({_q(db.engine, c)}, '\\\\N')" for c in db.columns(name))
            row = conn.execute(sa.text(f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS(0x1f, {columns}))), 0) FROM {q}")).one()
        else:
            row = conn.execute(sa.text(f"SELECT count(*), NULL FROM {q}")).one()
        result[name] = {"rows": int(row[0]), "checksum": None if row[1] is None else str(int(row[1]))}
    return result


def restore(config: DatabaseConfig, member: Path) -> None:
    """Load a native dump into the (empty) target database of the same vendor."""
    args, env = _conn_args(config)
    database = str(config.url.database)
    if config.vendor == "postgres":
        tool = _which(TOOLS["postgres"][1]) or "pg_restore"
        # Parallel, so not one transaction: a failed restore is rolled back by
        # the importer (it drops what was created), like the neutral path.
        _run([tool, *args, "--no-owner", "--no-privileges", "--exit-on-error", "-j", str(JOBS), "-Fd", "-d", database,
              str(member)], env)
    elif config.vendor == "mysql":
        tool = _which(TOOLS["mysql"][1]) or "mariadb"
        with member.open("rb") as stdin:
            _run([tool, *args, "--default-character-set=utf8mb4", database], env, stdin=stdin)
    else:
        target_path = Path(config.url.database or "")
        target_path.parent.mkdir(parents=True, exist_ok=True)
        _sqlite_copy(member, target_path)


def require_same_vendor(manifest: Mapping[str, Any], target_vendor: str) -> None:
    """A PostgreSQL or MariaDB native dump restores only on its own vendor."""
    source = manifest["native"]["vendor"]
    if source != target_vendor and source != "sqlite":
        raise ConfigError(
            f"This bundle holds a native {source} dump; it cannot be restored on {target_vendor}",
            hint="import it into a database of the same vendor, or export again without --native (the portable form)",
        )
    if source == target_vendor and not available(source):
        tools = " and ".join(TOOLS[source][0][:1] + TOOLS[source][1][:1])
        raise ConfigError(f"Restoring this native {source} bundle needs {tools} on PATH", hint=f"install the {source} client tools")
