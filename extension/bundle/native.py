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
import hashlib
import math
import os
import signal
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
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


#: What a bundle's SQLite database may hold besides the manifest's tables: SQLite's own (``sqlite_sequence``,
#: ``sqlite_stat1``…) and CairnCMS's tables and indexes.  Triggers and views are refused: CairnCMS's migrations
#: create none on SQLite, and a trigger in an untrusted file would run inside the target on the first write
#: (our marker, a storage remap, then CairnCMS's own writes).
_SQLITE_REFUSED = ("trigger", "view")


def check_sqlite_file(path: Path, tables: Collection[str], *, member: str) -> None:
    """Refuse a bundle's SQLite database that is damaged or holds more than the bundle's tables.

    The file is untrusted (anyone may hand over a bundle; its SHA-256 only proves it is the one the
    manifest lists): it is opened read-only with ``trusted_schema`` off, and must pass
    ``PRAGMA quick_check`` (every page, b-tree and record well formed: a page copy of a damaged file
    would give the target a damaged database; the full ``integrity_check`` also cross-checks every index
    entry against its table, for what verify's digests catch), hold no trigger or view, and hold every
    table the manifest lists (others may be there: a page copy carries the source's ``DB_EXCLUDE_TABLES``).

    :raises BundleError: naming the member and what is wrong with it (rule ``bad_sqlite``).
    """
    from .bundle import BundleError

    def bad(message: str) -> BundleError:
        return BundleError(f"{member}: {message}", rule="bad_sqlite", member=member,
                           hint="the bundle's SQLite database is not what an export writes: export it again from the source")

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise bad(f"cannot be opened as a SQLite database ({exc})") from None
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        found = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if found != ["ok"]:
            raise bad(f"damaged: {'; '.join(map(str, found))}")
        extra = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN (?, ?) ORDER BY name",
                             _SQLITE_REFUSED).fetchall()
        if extra:
            raise bad("holds " + ", ".join(f"{kind} {name!r}" for kind, name in extra[:5])
                      + ", which CairnCMS never creates (refused: it would run inside the target)")
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                 if not row[0].startswith("sqlite_")}
    except sqlite3.DatabaseError as exc:
        raise bad(f"cannot be read as a SQLite database ({exc})") from None
    finally:
        conn.close()
    missing = sorted(set(tables) - names)
    if missing:
        raise bad(f"lacks the manifest's table(s) {', '.join(missing[:5])}")


#: The header fields a page copy (the backup API) writes in its destination itself: the file change counter
#: (bytes 24-27), the schema cookie (40-43), version-valid-for (92-95) and the library version (96-99)
#: (https://www.sqlite.org/fileformat.html, "The Database Header").
_COPY_COUNTERS = ((24, 28), (40, 44), (92, 100))


def pages_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a SQLite database file with the counters a page copy rewrites zeroed, or None when the file
    alone is not the database (a write-ahead log or hot journal beside it holds pages).

    Two files with equal digests hold the same pages, so the same tables, rows and indexes: a native SQLite
    import ends with a page copy of the bundle's database into the target, so verify proves a target untouched
    since that import by this digest alone (any later write changes a page), and compares rows only when it
    differs.
    """
    for suffix in ("-wal", "-journal"):
        beside = Path(f"{os.fspath(path)}{suffix}")
        if beside.exists() and beside.stat().st_size:
            return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        header = bytearray(fh.read(100))
        for start, end in _COPY_COUNTERS:
            header[start:end] = bytes(end - start)
        digest.update(header)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
