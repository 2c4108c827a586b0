"""``export --full``: one coordinated, verifiable bundle of database + file bytes + config.

Everything is read through one consistent snapshot (see
:func:`~cairn_migrate.instance.database.consistent_snapshot`): every table, the
``directus_files`` rows, and so the list of objects to copy.  Rows are written
as neutral JSON lines (:mod:`cairn_migrate.bundle.values`), bytes verbatim under
``files/<location>/<filename_disk>``; the manifest records counts, sizes and
SHA-256 sums of it all, so an import can prove it restored exactly this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import struct
import json
import sqlite3
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import __version__
from ..bundle import import_marker
from ..bundle.bundle import FORMAT, FORMAT_VERSION, MAGIC, MANIFEST, BundleDirWriter, is_archive_path, pack
from ..instance.database import Database, Platform, consistent_snapshot, open_engine
from ..errors import ConfigError, MigrateError
from .freeze import frozen
from .freeze_proof import prove_enforced
from ..instance.instance import DatabaseConfig, Instance
from ..bundle.native import MEMBERS, available, checksums, dump_mysql, dump_postgres, sqlite_backup
from ..progress import NullProgress, Progress
from ..service.state import instance_scope
from ..instance.storage import Location, open_location
from ..bundle.table_schema import TableDef, load_order, reflect_tables
from ..bundle.values import SQLITE_STORED, dumps_row, dumps_rows, fast_decoder, finite
from ..bundle.workdir import scratch

if TYPE_CHECKING:  # masking (and its YAML and marshmallow) is imported only by an export that masks
    from ..masking import MaskProfile, Profile

log = logging.getLogger(__name__)

#: Env keys a target must set to serve the cloned data, and whether we may copy the value.
_IDENTITY_KEYS = {"KEY": True, "SECRET": False, "PUBLIC_URL": True, "STORAGE_LOCATIONS": True}
_SECRET_WORDS = ("SECRET", "PASSWORD", "KEY", "TOKEN", "CREDENTIALS")


def row_line(values: Any) -> bytes:
    """One JSON line of the bundle (a row as an array, in the table definition's column order)."""
    return dumps_row(values)


#: PostgreSQL types (OIDs) whose ``json_build_array`` element is the value the row-by-row export writes:
#: as they are (booleans, integers) or through their text (the same text psycopg hands out for them,
#: :func:`~cairn_migrate.instance.database.Database.stream_tuples`). Others (floats: ``NaN`` becomes a
#: string; ``bytea``: base64; char(n), arrays, domains, …) keep the row-by-row path.
_PG_JSON_AS_IS = {16, 20, 21, 23}  # bool, int8, int2, int4
_PG_JSON_AS_TEXT = {25, 1043, 2950, 114, 3802, 1184, 1114, 1082, 1083, 1700}  # text, varchar, uuid, json, jsonb,
# timestamptz, timestamp, date, time, numeric
_PG_MAX_ARGS = 100  # a function's argument limit (FUNC_MAX_ARGS)
_BLOCK = 1 << 20


def _pg_columns(conn: sa.Connection, table: TableDef) -> list[tuple[str, int]] | None:
    """The table's quoted columns when PostgreSQL writes every one of them in our neutral form (booleans and
    integers as they are, the other types listed through their text), else ``None`` (a type it does not write
    so, more columns than a function takes, a connection not in UTF-8)."""
    raw = conn.connection.driver_connection  # type: ignore[union-attr]
    if str(raw.info.encoding).replace("-", "").lower() != "utf8" or len(table.columns) > _PG_MAX_ARGS:  # type: ignore[union-attr]
        return None
    quote = conn.dialect.identifier_preparer.quote
    columns = [quote(c.name) for c in table.columns]
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(f"SELECT {', '.join(columns)} FROM {quote(table.name)} LIMIT 0")
        oids = [column.type_code for column in cursor.description or ()]
    if any(oid not in _PG_JSON_AS_IS and oid not in _PG_JSON_AS_TEXT for oid in oids):
        return None
    return list(zip(columns, oids))


def pg_json_line(conn: sa.Connection, table: TableDef) -> str | None:
    """The SQL expression (``json_build_array(…)``) whose text is the table's JSON line as the export writes it,
    or ``None`` where PostgreSQL cannot write it byte for byte (:func:`_pg_columns`)."""
    columns = _pg_columns(conn, table)
    if columns is None:
        return None
    elements = [column if oid in _PG_JSON_AS_IS else f"{column}::text" for column, oid in columns]
    return f"json_build_array({', '.join(elements)})"


#: What :func:`pg_row_hash_query` computes; recorded with the figures, so a later definition is never compared
#: with this one's.
PG_ROW_HASH = "pg-hash_record_extended-text-1"


def pg_row_hash_query(conn: sa.Connection, table: TableDef) -> str | None:
    """SQL giving a table's row count and an order-independent hash of its rows, computed by PostgreSQL alone:
    the sum (``numeric``: exact) of each row's ``hash_record_extended`` over every column's text (``COLLATE
    "C"``: the bytes, whatever the column's collation), or ``None`` where it cannot (a column type the export
    does not write from its text, PostgreSQL before 14).

    The export records it per table from its snapshot (``row_hash``) and ``verify`` runs the same query on the
    target: equal figures mean the target's rows have the texts the source's had, which the bundle's lines hold.
    It is PostgreSQL's C hashing the values it already has (measured: about 2.5× cheaper than building each
    row's JSON line, which is what held verify at the import's time), and no row crosses the wire.  A 64-bit
    hash per row: a changed row goes unnoticed with probability 2⁻⁶⁴.
    """
    if (conn.dialect.server_version_info or (0,)) < (14,):
        return None
    columns = _pg_columns(conn, table)
    if columns is None:
        return None
    texts = ", ".join(f'{column}::text COLLATE "C"' for column, _oid in columns)
    return (f"SELECT count(*), coalesce(sum(hash_record_extended(ROW({texts}), 0)::numeric), 0) "
            f"FROM {conn.dialect.identifier_preparer.quote(table.name)}")


#: What :func:`mysql_row_hash_query` computes (see :data:`PG_ROW_HASH`).
MYSQL_ROW_HASH = "mysql-md5-quote-1"


def mysql_row_hash_query(conn: sa.Connection, table: TableDef) -> str:
    """MariaDB/MySQL's counterpart of :func:`pg_row_hash_query`: the row count and the sums (``DECIMAL``: exact) of
    each row's MD5, read as two unsigned 64-bit halves, over ``CONCAT_WS(',', QUOTE(c1), …)``: ``QUOTE`` writes
    every value as a quoted, escaped literal and NULL as the bare word, so the text is one row's and no other's.
    A target whose column types write other texts (a FLOAT source, a DOUBLE target) gives other figures and is
    compared by the Python paths: slower, never blind."""
    quote = conn.dialect.identifier_preparer.quote
    texts = ", ".join(f"QUOTE({quote(c.name)})" for c in table.columns)
    return ("SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(h, 16), 16, 10) AS UNSIGNED)), 0), "
            "COALESCE(SUM(CAST(CONV(RIGHT(h, 16), 16, 10) AS UNSIGNED)), 0) "
            f"FROM (SELECT MD5(CONCAT_WS(',', {texts})) AS h FROM {quote(table.name)}) AS hashed")


def row_hash_query(conn: sa.Connection, table: TableDef, vendor: str) -> tuple[str, str] | None:
    """(kind, SQL) of the database-computed digest of a table's rows on ``vendor``, or ``None`` (SQLite has no
    hash function; a PostgreSQL table whose column types it cannot use)."""
    if vendor == "postgres":
        query = pg_row_hash_query(conn, table)
        return None if query is None else (PG_ROW_HASH, query)
    if vendor == "mysql":
        return MYSQL_ROW_HASH, mysql_row_hash_query(conn, table)
    return None


def row_hash(conn: sa.Connection, table: TableDef, vendor: str) -> dict[str, Any] | None:
    """The manifest's ``row_hash`` of a table, computed now through ``conn`` (the export's snapshot), or ``None``."""
    found = row_hash_query(conn, table, vendor)
    if found is None:
        return None
    kind, query = found
    counted, *sums = conn.exec_driver_sql(query).one()
    return {"kind": kind, "rows": int(counted), "sums": [str(int(total)) for total in sums]}


class LinesDigest:
    """An order-independent digest of a table's JSON lines: the row count and the sums of each line's MD5
    read as two signed 64-bit integers (high and low half).

    The export records it (``lines_md5``) for the lines Python writes; ``verify`` compares it with the same
    digest of a SQLite target's rows written as lines by SQLite itself (``json_array``), so no row is decoded or
    encoded in Python (:func:`~cairn_migrate.operations.verify._sqlite_digests`).  Sums, not a hash of the
    concatenation, because vendors return rows in different orders.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.high = 0
        self.low = 0

    #: an MD5 digest as its two signed 64-bit big-endian halves, in one C call (two slices and two
    #: ``int.from_bytes`` per row were most of the digest's cost after the hash itself)
    halves = struct.Struct(">qq").unpack

    def add_block(self, block: bytes) -> None:
        """Whole lines, each ending in a newline (blank lines are not rows)."""
        md5, halves = hashlib.md5, self.halves
        high = low = rows = 0
        for line in block.split(b"\n"):
            if line.strip():
                first, second = halves(md5(line.rstrip(b"\r")).digest())
                high += first
                low += second
                rows += 1
        self.high += high
        self.low += low
        self.rows += rows

    def to_manifest(self) -> dict[str, Any]:
        """As the manifest keeps it: strings (the sums pass 2⁵³, which a JSON reader in JavaScript would round)."""
        return {"rows": self.rows, "high": str(self.high), "low": str(self.low)}


def _pg_json_lines(conn: sa.Connection, table: TableDef) -> Iterator[bytes] | None:
    """The table's JSON lines written by PostgreSQL itself (``COPY (SELECT json_build_array(…)) TO STDOUT``),
    in blocks of whole lines, or ``None`` where a column's type is not one it writes in our neutral form.

    In the same transaction (snapshot) as ``conn``. ``FORMAT csv`` with control characters as delimiter and
    quote passes each JSON text through unchanged: PostgreSQL's JSON escapes every control character, so no
    value needs quoting. Python touches no value: each block is read, hashed and written.
    """
    line = pg_json_line(conn, table)
    if line is None:
        return None
    raw = conn.connection.driver_connection  # type: ignore[union-attr]
    quote = conn.dialect.identifier_preparer.quote
    order = f" ORDER BY {', '.join(quote(c) for c in table.primary_key)}" if table.primary_key else ""
    query = (f"COPY (SELECT {line} FROM {quote(table.name)}{order}) TO STDOUT "
             "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')")

    def blocks() -> Iterator[bytes]:
        with raw.cursor() as cursor, cursor.copy(query) as copy:  # type: ignore[union-attr]
            buffer = bytearray()
            for data in copy:  # COPY's messages are small: gather ~1 MiB of whole lines per write
                buffer += data
                if len(buffer) >= _BLOCK:
                    cut = buffer.rfind(b"\n") + 1
                    yield bytes(buffer[:cut])
                    del buffer[:cut]
            if buffer:
                if not buffer.endswith(b"\n"):  # pragma: no cover - COPY ends every row with a newline
                    raise MigrateError(f"{table.name}: PostgreSQL's COPY ended inside a row")
                yield bytes(buffer)

    return blocks()


def _export_table(conn: sa.Connection, db: Database, table: TableDef, writer: BundleDirWriter, progress: Progress,
                  mask: MaskProfile | None = None) -> dict[str, Any]:
    """One table as JSON lines; with ``mask``, every row is masked before it is encoded (no real value
    reaches the bundle), and a row the profile drops is not written."""
    names = [column.name for column in table.columns]
    converting = [(i, codec) for i, column in enumerate(table.columns) if (codec := fast_decoder(column.type, db.vendor))]
    masker = None
    if mask is not None:
        from ..masking import row_masker

        masker = row_masker(mask, table.name, names)
    lines = _pg_json_lines(conn, table) if db.vendor == "postgres" and mask is None and not converting else None
    if lines is not None:
        member = f"tables/{table.name}.jsonl"
        rows = 0
        with writer.open(member) as out:
            for block in lines:
                out.write(block)
                count = block.count(b"\n")
                rows += count
                progress.advance(items=count)
                progress.check_cancelled()
        entry: dict[str, Any] = {"rows": rows, "member": member, **_order(table)}
        if (hashed := row_hash(conn, table, db.vendor)) is not None:  # the same snapshot: the lines' rows
            entry["row_hash"] = hashed
        return entry
    floats = [i for i, column in enumerate(table.columns) if column.type in ("float", "double")]
    if masker is None and floats:  # NaN/Infinity keep the standard library's spelling (orjson writes null)
        converting += [(i, finite) for i in floats]
    elif floats:  # a masked table: the masker's output is made finite (masking may drop or change the row)
        inner = masker
        masker = lambda values: (None if (out := inner(values)) is None  # noqa: E731
                                 else [finite(v) if i in floats else v for i, v in enumerate(out)])
    member = f"tables/{table.name}.jsonl"
    rows = dropped = 0
    digest = LinesDigest() if db.vendor == "sqlite" else None  # the others' databases hash their rows
    with writer.open(member) as out:
        buffer: list[list[Any]] = []
        for row in db.stream_tuples(table.name, names, connection=conn, order_by=table.primary_key):
            values: list[Any] | None = list(row)  # an SQLAlchemy Row is not a JSON array
            for i, codec in converting:
                values[i] = codec(values[i])
            if masker is not None:
                values = masker(values)
                if values is None:
                    dropped += 1
                    continue
            buffer.append(values)
            if len(buffer) == 5000:
                block = dumps_rows(buffer)
                out.write(block)
                if digest is not None:
                    digest.add_block(block)
                rows += 5000
                buffer.clear()
                progress.advance(items=5000)
                progress.check_cancelled()
        if buffer:
            rows += len(buffer)
            progress.advance(items=len(buffer))
            block = dumps_rows(buffer)
            out.write(block)
            if digest is not None:
                digest.add_block(block)
    progress.advance(items=dropped)
    entry = {"rows": rows, "member": member, **_order(table), **({"dropped_by_mask": dropped} if dropped else {})}
    if digest is not None:
        entry["lines_md5"] = digest.to_manifest()
    elif masker is None and (hashed := row_hash(conn, table, db.vendor)) is not None:  # masked: not the rows
        entry["row_hash"] = hashed
    return entry


def _order(table: TableDef) -> dict[str, str]:
    """The manifest's note that a table's rows are in its primary key's order (the source's collation).

    Both readers ask the server for that order: the primary key's index order costs PostgreSQL an index
    scan or a sort and MariaDB nothing (InnoDB keeps rows in it). A MariaDB target then appends each
    row to the clustered index's last page; in random uuid order every row split a random page (an
    import took 4× as long). Older bundles lack the note and still import (in whatever order)."""
    return {"order": "primary key"} if table.primary_key else {}


def _file_rows(conn: sa.Connection, db: Database) -> Iterator[Mapping[str, Any]]:
    if "directus_files" not in db.table_names():
        return iter(())
    return db.stream_rows(
        "directus_files", columns=["id", "storage", "filename_disk", "filesize"], connection=conn, order_by=["id"]
    )


def _spool_file_rows(conn: sa.Connection, db: Database, spool: Path) -> tuple[int, int, set[str]]:
    """Write the snapshot's file rows to a temporary file: the copy runs after the transaction ends."""
    count, total, used = 0, 0, set()
    with spool.open("wb") as out:
        for row in _file_rows(conn, db):
            entry = {
                "id": str(row["id"]).lower(),
                "storage": row["storage"],
                "filename_disk": row["filename_disk"],
                "filesize": None if row["filesize"] is None else int(row["filesize"]),
            }
            out.write(row_line(entry) + b"\n")
            count += 1
            total += entry["filesize"] or 0
            used.add(str(row["storage"]))
    return count, total, used


def _copy_object(location: Location, name: str, writer: BundleDirWriter, member: str) -> tuple[int, str]:
    with location.open_read(name) as source:
        entry = writer.add_file(member, source)
    return int(entry["size"]), str(entry["sha256"])


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _export_files(
    spool: Path,
    locations: Mapping[str, Location],
    writer: BundleDirWriter,
    progress: Progress,
    workers: int,
) -> dict[str, Any]:
    """Copy the bytes of every spooled file row, ``workers`` at a time.

    Missing objects and objects whose size no longer matches ``filesize`` are
    reported in the manifest, not fatal: the bundle says exactly what it holds.
    Memory stays flat: rows stream from the spool in small batches.
    """
    summary: dict[str, Any] = {"count": 0, "bytes": 0, "missing": [], "changed": [], "unknown_location": []}

    def rows() -> Iterator[dict[str, Any]]:
        with spool.open("rb") as fh:
            for line in fh:
                yield json.loads(line)

    def copy(row: Mapping[str, Any]) -> tuple[Mapping[str, Any], int | None, str | None, str | None]:
        member = f"files/{row['storage']}/{row['filename_disk']}"
        try:
            size, sha = _copy_object(locations[row["storage"]], row["filename_disk"], writer, member)
        except FileNotFoundError:
            return row, None, None, "missing at capture"
        except MigrateError as exc:
            if "not found" in exc.message.lower() or "does not exist" in exc.message.lower():
                return row, None, None, "missing at capture"
            raise
        return row, size, sha, None

    with writer.open("files/index.jsonl") as index, ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in _batches(rows(), workers * 8):
            progress.check_cancelled()
            todo = []
            for row in batch:
                entry = {"id": row["id"], "storage": row["storage"]}
                if not row["filename_disk"]:
                    summary["missing"].append({**entry, "reason": "no filename_disk"})
                elif row["storage"] not in locations:
                    summary["unknown_location"].append(entry)
                else:
                    todo.append(row)
            for row, size, sha, problem in pool.map(copy, todo):
                entry = {"id": row["id"], "storage": row["storage"], "filename_disk": row["filename_disk"]}
                if problem:
                    summary["missing"].append({**entry, "reason": problem})
                    progress.advance(items=1)
                    continue
                if row["filesize"] is not None and int(row["filesize"]) != size:
                    summary["changed"].append({**entry, "filesize": int(row["filesize"]), "size": size})
                index.write(row_line([row["id"], row["storage"], row["filename_disk"], size, sha]) + b"\n")
                summary["count"] += 1
                summary["bytes"] += size or 0
                progress.advance(items=1, bytes=size or 0)
            progress.advance(items=len(batch) - len(todo))
    summary["member"] = "files/index.jsonl"
    summary["index_columns"] = ["id", "storage", "filename_disk", "size", "sha256"]
    return summary


def required_env(instance: Instance, used_locations: list[str]) -> dict[str, Any]:
    """What the target's ``.env`` must set: values for identity, names only for secrets."""
    values: dict[str, Any] = {}
    names: list[str] = []
    for key, copy_value in _IDENTITY_KEYS.items():
        if copy_value and instance.env.get(key) is not None:
            values[key] = instance.env.get(key)
        else:
            names.append(key)
    for location in instance.locations:
        if location.name not in used_locations:
            continue
        prefix = f"STORAGE_{location.name.upper()}_"
        values[f"{prefix}DRIVER"] = location.driver
        for env_key in sorted(k for k in instance.env if k.startswith(prefix) and not k.endswith("_DRIVER")):
            if any(word in env_key[len(prefix):] for word in _SECRET_WORDS):
                names.append(env_key)
            elif location.driver != "local" or not env_key.endswith("_ROOT"):
                values[env_key] = instance.env[env_key]
            else:
                names.append(env_key)  # a local root is a path on the source machine
    return {"values": values, "secret_names": sorted(set(names))}


def _native_tables(db: Database, conn: sa.Connection, sqlite_copy: Path | None, writer: BundleDirWriter) -> dict[str, Any]:
    """The fast path's table data: the vendor's own dump, plus vendor checksums from the same snapshot."""
    member = MEMBERS[db.vendor]
    tables = [name for name in db.table_names() if name != import_marker.TABLE]
    if sqlite_copy is not None:
        with sqlite_copy.open("rb") as fh:
            writer.add_file(member, fh)
        tool, sums = f"sqlite {sqlite3.sqlite_version} backup API", checksums(db, conn, tables)
    elif db.vendor == "postgres":
        scratch = Path(tempfile.mkdtemp(dir=writer.dir.parent))
        try:
            tool, sums = dump_postgres(db, conn, scratch / "dump", tables, exclude=(import_marker.TABLE,))
            for path in sorted((scratch / "dump").iterdir()):
                with path.open("rb") as fh:
                    writer.add_file(f"{member}/{path.name}", fh)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        with writer.open(member) as out:
            tool = dump_mysql(db, out, exclude=(import_marker.TABLE,))
        sums = checksums(db, conn, tables)
    return {"vendor": db.vendor, "member": member, "tool": tool, "checksums": sums}


def _snapshots(db: Database, writer: BundleDirWriter, platform: Platform, workdir: Path) -> dict[str, Any]:
    """The schema snapshot and roles/permissions in CairnCMS's own formats.

    Config-as-code is CairnCMS's own (roles are matched by ``key``, a column
    Directus does not have), so a Directus source gets the schema snapshot only.
    """
    result: dict[str, Any] = {}
    try:
        from ..bundle.config_snapshot import config_snapshot, write_config_directory
        from ..bundle.schema_snapshot import schema_snapshot, write_schema_snapshot
    except ImportError:  # pragma: no cover - both modules ship with the package
        return result
    scratch = Path(tempfile.mkdtemp(dir=workdir))
    try:
        snapshot = schema_snapshot(db, version=platform.version or "unknown")
        write_schema_snapshot(snapshot, scratch / "schema-snapshot.yaml")
        if platform.product == "cairncms":
            write_config_directory(config_snapshot(db), scratch / "config")
        for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
            relative = path.relative_to(scratch).as_posix()
            member = f"snapshot/{relative}"
            with path.open("rb") as fh:
                writer.add_file(member, fh)
        result = {"schema": "snapshot/schema-snapshot.yaml"}
        if platform.product == "cairncms":
            result["config"] = "snapshot/config"
        else:
            result["config_skipped"] = f"config-as-code is a CairnCMS format; the source is {platform.product} {platform.version}"
    except MigrateError as exc:
        log.warning("snapshots not written: %s", exc)
        result = {"error": exc.to_dict()}
    except Exception as exc:  # noqa: BLE001 - the snapshots are a convenience; the data is the bundle
        log.exception("snapshots not written")
        result = {"error": {"code": "internal", "message": f"schema/config snapshot failed: {exc}"}}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def export_bundle(
    instance: Instance,
    output: Path,
    *,
    passphrase: str | None = None,
    key_file: Path | None = None,
    freeze: bool = False,
    freeze_guarantee: bool = True,
    instance_url: str | None = None,
    native: bool = False,
    state_url: str | None = None,
    overwrite: bool = False,
    capture_incomplete: bool = False,
    workers: int = 8,
    mask: str | Path | Profile | None = None,
    mask_salt: str | None = None,
    mask_keep_users: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a full bundle of ``instance`` to ``output`` (a directory, or an archive by suffix).

    :param passphrase: encrypt the archive (``output`` must then be an archive).
    :param freeze: hold the instance's writes while capturing (its hook asks the sidecar); the
        capture starts only once the instance proves its hook enforces the freeze.
    :param freeze_guarantee: refuse (:class:`~cairn_migrate.errors.FreezeNotEnforced`) when that
        proof fails; false: warn and capture anyway.
    :param instance_url: where to ask the instance for the proof (default: its ``PUBLIC_URL``).
    :param native: the fast path: table data as the vendor's own dump (restores on the same vendor).
    :param overwrite: replace ``output`` if it is an existing bundle; anything else there is refused.
    :param capture_incomplete: capture a target an interrupted import left incomplete (only
        ``import --replace``'s safety bundle does: the manifest's ``incomplete`` says so).
    :param mask: a masking profile (a built-in name, a YAML path or a loaded profile): every row is
        masked before it is written (:mod:`cairn_migrate.masking`), the manifest's ``masked`` says by which.
    :param mask_salt: the masking salt (default: derived from the profile and the instance's ``SECRET``).
    :param mask_keep_users: emails of users whose ``directus_users`` row is kept as is (they can log in).
    :returns: the manifest, with ``freeze`` (id, ``guaranteed``, ``lifted_at``, …) when frozen.
    :raises ConfigError: ``output`` exists (without ``overwrite``, or is no bundle), the instance
        holds an unfinished import (without ``capture_incomplete``), or the options conflict.
    :raises InvalidInput: ``output`` has a suffix that is no bundle form.
    :raises ProfileError: a bad masking profile, one naming what the instance lacks, or a kept user it lacks.
    """
    progress = progress or NullProgress()
    output = Path(output)
    profile = None
    if mask is not None:
        if native:
            raise ConfigError("--native cannot be masked: the vendor's own dump holds the rows as they are",
                              hint="drop --native to export a masked bundle (rows are masked one by one)")
        from ..masking import Profile, load as load_profile

        profile = mask if isinstance(mask, Profile) else load_profile(mask)
    elif mask_salt is not None or mask_keep_users:
        raise ConfigError("--mask-salt and --mask-keep-user need --mask", hint="add --mask PROFILE (e.g. pii-basic), "
                          "or drop them")
    archive = is_archive_path(output)
    if (passphrase or key_file) and not archive:
        raise ConfigError(
            "Encryption needs an archive bundle",
            hint="name the output like clone.tar.gz.enc (or .tar/.tar.gz), or drop --encrypt",
        )
    incomplete = _unfinished_import(instance)
    if incomplete is not None and not capture_incomplete:
        raise ConfigError(
            f"{instance.database.display_url} holds an unfinished import (step {incomplete.step}, "
            f"{len(incomplete.tables)} tables done): a bundle of it would lack the rest",
            hint=f"finish the import first: {import_marker.RESUME_FIX}",
        )
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise ConfigError(f"{output} already exists", hint="choose another path, or remove it first")
        if not is_bundle(output):
            raise ConfigError(f"{output} exists and is not a cairn-migrate bundle: --overwrite replaces only a bundle",
                              hint="choose another path (a new name inside that folder), or remove it yourself")
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as staging:
        # An archive is staged in this run's scratch folder (TMPDIR), removed on exit: a killed export
        # leaves no plaintext copy beside the output, and the next run of the tool sweeps it.
        bundle_dir = staging.enter_context(scratch()) / "bundle" if archive else output

        def prove(state: dict[str, Any]) -> dict[str, Any]:
            progress.log("proving the instance holds writes")
            return prove_enforced(instance, state, instance_url, guarantee=freeze_guarantee)

        try:
            with frozen(state_url, scope=instance_scope(instance), enabled=freeze, reason=f"export to {output.name}",
                        prove=prove) as held:
                manifest = _capture(instance, bundle_dir, native=native, workers=workers, progress=progress,
                                    incomplete=incomplete, mask=profile, mask_salt=mask_salt,
                                    mask_keep_users=mask_keep_users)
            if held is not None:
                manifest["freeze"] = held
            if archive:
                progress.log(f"packing {output.name}")
                pack(bundle_dir, output, passphrase=passphrase, key_file=key_file)
        except BaseException:
            if output.exists() and not archive:
                shutil.rmtree(output, ignore_errors=True)
            if archive and output.exists():
                output.unlink()
            raise
    return manifest


def _secrets_note(masking: MaskProfile | None) -> dict[str, Any]:
    """What secrets the bundle holds: directus_users' hashes, tokens and 2FA secrets, unless a profile nulls them."""
    rules = masking.profile.rules("directus_users") if masking is not None else {}
    nulled = rules is None or {"password", "token", "tfa_secret"} <= {f for f, m in rules.items() if m == "null"}
    if masking is not None and nulled:
        kept = bool(masking.keep_users)
        return {"password_hashes": kept, "static_tokens": kept,
                "note": f"masked with {masking.profile.name}: no password hash, static token or 2FA secret"
                        + (" except the kept user's" if kept else "")}
    return {
        "password_hashes": True,
        "static_tokens": True,
        "note": "directus_users holds argon2 password hashes, static API tokens and 2FA secrets; "
        "encrypt the bundle (--encrypt) or keep it as private as the database itself",
    }


def _unfinished_import(instance: Instance) -> import_marker.Marker | None:
    """The marker of an import left unfinished in ``instance``, if any (its bundle would pass as complete)."""
    with Database.open(instance) as db:
        return import_marker.read(db)


def _drop_marker(sqlite_copy: Path) -> None:
    """Drop the marker from our scratch copy of a SQLite database: the native dump never carries it."""
    conn = sqlite3.connect(sqlite_copy)
    try:
        conn.execute(f'DROP TABLE IF EXISTS "{import_marker.TABLE}"')
        conn.commit()
    finally:
        conn.close()


def is_bundle(path: Path) -> bool:
    """Whether ``path`` holds a bundle of ours, the only thing ``--overwrite`` may replace.

    A directory: its ``manifest.json`` names our format.  A file: a bundle
    archive name, and either our encryption magic or a tar whose first member
    is such a manifest (as :func:`~cairn_migrate.bundle.bundle.pack` writes it).
    """
    if path.is_symlink():
        return False
    if path.is_dir():
        try:
            return json.loads((path / MANIFEST).read_bytes()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    try:
        if not path.is_file() or not is_archive_path(path):
            return False
        with path.open("rb") as fh:
            if fh.read(len(MAGIC)) == MAGIC:
                return True
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                return False
            raw = tar.extractfile(first)
            return raw is not None and json.loads(raw.read()).get("format") == FORMAT
    except (MigrateError, OSError, tarfile.TarError, ValueError, AttributeError):
        return False


def _capture(instance: Instance, bundle_dir: Path, *, native: bool, workers: int, progress: Progress,
             incomplete: import_marker.Marker | None = None, mask: Profile | None = None, mask_salt: str | None = None,
             mask_keep_users: tuple[str, ...] = ()) -> dict[str, Any]:
    writer = BundleDirWriter(bundle_dir)
    with Database.open(instance) as live:
        platform = live.platform()
        if platform.product == "unknown":
            raise ConfigError(
                f"{instance.database.display_url} holds no CairnCMS instance (no directus_collections table)",
                hint="point --env at the instance's .env, or run `cairncms bootstrap` first",
            )
        if native and not available(live.vendor):
            raise ConfigError(
                f"--native needs the {live.vendor} dump and restore tools on PATH",
                hint="install the database client tools, or export without --native",
            )
        with contextlib.ExitStack() as stack:
            db = live
            if native and live.vendor == "sqlite":
                # The online backup is itself the consistent snapshot: read everything from it.
                copy = stack.enter_context(sqlite_backup(str(live.config.url.database), bundle_dir.parent))
                _drop_marker(copy)
                config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(copy)),
                                        live.config.exclude_tables)
                db = stack.enter_context(Database(open_engine(config), config))
            # The marker of an unfinished import is ours, not the instance's (a --replace safety bundle of it).
            names = [name for name in db.table_names() if name != import_marker.TABLE]
            tables = reflect_tables(db.engine, names, db.vendor)
            order = load_order(tables)
            by_name = {t.name: t for t in tables}
            masking = None
            if mask is not None:
                from ..masking import prepare

                masking = prepare(mask, tables, salt=mask_salt, secret=instance.secret, keep_users=mask_keep_users)
            with writer.open("schema/tables.json") as out:
                out.write(json.dumps([by_name[n].to_dict() for n in order], indent=1).encode())
            counts = {} if native else db.row_counts(order)  # the native checksums count rows themselves
            progress.progress(items_done=0, items_total=sum(counts.values()) or None)
            table_entries: dict[str, Any] = {}
            native_entry: dict[str, Any] | None = None
            spool = bundle_dir.parent / f".{bundle_dir.name}.files-spool"
            with consistent_snapshot(db) as conn:
                progress.log("capturing tables in one snapshot")
                if native:
                    native_entry = _native_tables(db, conn, copy if db is not live else None, writer)
                    table_entries = {name: {"rows": native_entry["checksums"][name]["rows"]} for name in order}
                else:
                    for name in order:
                        table_entries[name] = _export_table(conn, db, by_name[name], writer, progress, masking)
                    if masking is not None and masking.keep_users - masking.kept:
                        missing = ", ".join(sorted(masking.keep_users - masking.kept))
                        from ..masking import ProfileError

                        raise ProfileError(f"--mask-keep-user {missing}: no such user (directus_users.email)",
                                           hint="name the email of an existing user, or drop --mask-keep-user")
                file_count, file_bytes, used_set = _spool_file_rows(conn, db, spool)
            snapshots = _snapshots(db, writer, platform, bundle_dir.parent)
        used = sorted(used_set)
        locations = {}
        for location_config in instance.locations:
            if location_config.name in used:
                location = open_location(location_config)
                location.check()
                locations[location_config.name] = location
        progress.progress(items_done=0, items_total=file_count, bytes_done=0, bytes_total=file_bytes)
        progress.log(f"copying the bytes of {file_count} files")
        try:
            files = _export_files(spool, locations, writer, progress, workers)
        finally:
            spool.unlink(missing_ok=True)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "cairn-migrate", "version": __version__},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": "full",
        "data": "native" if native else "neutral",
        "source": {
            "key": instance.key,
            "vendor": instance.database.vendor,
            "client": instance.database.client,
            "platform": platform.to_dict(),
            "public_url": instance.public_url,
            "locations": [{"name": loc.name, "driver": loc.driver} for loc in instance.locations],
        },
        "storage_locations_used": used,
        "capture": {
            "consistent": True,
            "isolation": {"postgres": "repeatable read", "mysql": "consistent snapshot", "sqlite": "read transaction"}[
                instance.database.vendor
            ],
        },
        "load_order": order,
        # A --replace safety bundle of a target an import left unfinished: importing it restores that state.
        **({"incomplete": incomplete.status()} if incomplete is not None else {}),
        # A SQLite source's timestamps and booleans travel as stored (values.SQLITE_STORED).
        **({"sqlite_stored": sorted(SQLITE_STORED)} if not native and instance.database.vendor == "sqlite" else {}),
        **({"native": native_entry} if native_entry else {}),
        "tables": table_entries,
        "files": files,
        "snapshots": snapshots,
        "env": required_env(instance, used),
        "contains_secrets": _secrets_note(masking),
        **({"masked": masking.describe()} if masking is not None else {}),
    }
    writer.write_manifest(manifest)
    return manifest
