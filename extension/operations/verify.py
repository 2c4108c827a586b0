"""``verify``: prove that a target holds exactly what a bundle holds.

Per table, the row count and an order-independent content hash are computed
on both sides *after* reducing every value to what the target vendor can
store (:func:`~cairn_migrate.bundle.values.comparable`): MariaDB keeps whole seconds,
SQLite milliseconds, so a correct cross-vendor clone compares equal and a
real difference does not.  A cross-vendor import's rewrite of ``directus_fields.special``
(:func:`~cairn_migrate.bundle.drift.field_flags`) is applied to the bundle's rows too,
and reported as expected drift.  A neutral bundle of the target's own vendor is compared first by the
target's database itself (:func:`_server_digests`: PostgreSQL and
MariaDB hash their rows with the query whose figures the export recorded from its snapshot, SQLite writes its
rows as the export's lines for their MD5s; no row fetched, tables in parallel); where those figures differ,
such a bundle (or a native SQLite file on SQLite) is compared byte for byte (:func:`_exact_wants`): the target's rows written as
the export writes its lines, no value parsed or reduced, the bundle's side hashed by a second process
for large bundles; only a table whose bytes differ takes the comparison above.  A native SQLite bundle on a SQLite target
untouched since its import is proven first by one digest of each file's pages (:func:`_same_pages`).  Every file's bytes are hashed in place.  With a URL,
the running instance is asked too: ``/server/ping``, a login or token check,
one asset and one item.  The target's ``.env`` must set what the bundle's source set: a missing
``KEY`` or ``SECRET`` fails verification (CairnCMS would not start), other missing settings are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..bundle import import_marker
from ..instance import target_env, timeouts
from ..bundle.bundle import iter_file_index, member_path, open_bundle
from ..instance.database import Database
from ..bundle.drift import TIMESTAMP_FLAG_KIND, Check, FieldFlags, field_flags, table_checks
from ..errors import ConfigError, InstanceUnreachable, MigrateError
from ..instance.instance import Instance
from ..progress import NullProgress, Progress
from ..instance.storage import Location, open_location
from ..bundle.table_schema import TableDef
from ..bundle.values import LOSSY, comparer, exact_form, fast_decoder, stored_types
from ..bundle.workdir import scratch

log = logging.getLogger(__name__)

#: How many mismatching files a report names (the counts are always exact).
LISTED = 50


class VerifyFailed(MigrateError):
    """The target differs from the bundle; ``details`` holds the report."""

    exit_code = 1
    http_status = 409
    code = "verify_failed"


class RowHash:
    """An order-independent hash of a table's rows (sum of row digests mod 2²⁵⁶).

    Vendors sort text keys by different collations, so a hash that depended
    on row order would differ between a correct source and a correct target.
    """

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add_line(self, line: bytes) -> None:
        self.total = (self.total + int.from_bytes(hashlib.blake2b(line, digest_size=32).digest(), "big")) % (1 << 256)
        self.rows += 1

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


class ColumnHashes:
    """Exact hashes of the columns a target stores at lower precision (:data:`~cairn_migrate.bundle.values.LOSSY`).

    The row hash compares values reduced to the target's precision, so it
    cannot tell a MariaDB copy that lost milliseconds from an exact one.  Per
    such column, this hashes each value's exact form next to its reduced row
    (order-independent, like :class:`RowHash`); on the bundle's side it also
    counts the values the drift checks predict the target changes.  A column
    whose exact hashes differ while the rows agree drifted: expected when
    predicted, a real difference when not.
    """

    def __init__(self, table: TableDef, vendor: str, *, stored: Collection[str],
                 checks: list[tuple[int, list[Check]]] | None = None, every_column: bool = False) -> None:
        """``vendor``: the target's; ``stored``: the types compared in SQLite's stored form (a SQLite bundle on SQLite).

        ``every_column``: also hash every column's reduced values on their own, to name the
        columns of a table whose rows differ (a second pass, for failed tables only).
        """
        lossy = LOSSY.get(vendor, frozenset()) | frozenset(stored)
        self.columns = [(i, c.type) for i, c in enumerate(table.columns) if c.type in lossy]
        self.sums = [RowHash() for _ in table.columns] if every_column else []
        self.names = {i: c.name for i, c in enumerate(table.columns)}
        self.stored = stored
        self.hashes = {i: RowHash() for i, _ in self.columns}
        self.predicted = {i: 0 for i, _ in self.columns}
        visible = {i: [c for c in cs if c.effect == "changed" and c.visible] for i, cs in (checks or [])}
        self.checks = {i: visible[i] for i, _ in self.columns if visible.get(i)}
        self.kinds = {i: sorted({c.kind for c in cs}) for i, cs in self.checks.items()}

    def exact(self, row: list[Any]) -> list[tuple[int, Any]]:
        return [(i, exact_form(row[i], t, stored=t in self.stored)) for i, t in self.columns]

    def predict(self, row: list[Any]) -> None:
        for i, checks in self.checks.items():
            value = row[i]
            if value is not None and any(check.test(value) for check in checks):
                self.predicted[i] += 1

    def add(self, row: list[Any], line: bytes, exact: list[tuple[int, Any]]) -> None:
        for i, value in exact:
            self.hashes[i].add_line(line + b"\x00" + _encode(value).encode("utf-8"))
        for digest, value in zip(self.sums, row):
            digest.add_line(_encode(value).encode("utf-8"))


class _Reflagged:
    """The import's ``directus_fields.special`` rewrite (:class:`~cairn_migrate.bundle.drift.FieldFlags`) applied to
    the bundle's rows before hashing, counting the rows it changes: an expected change, reported as drift."""

    def __init__(self, flags: FieldFlags) -> None:
        self.flags = flags
        self.rows = 0

    def __call__(self, row: list[Any]) -> None:
        self.rows += self.flags.rewrite(row)


def _hash_rows(rows: Iterator[list[Any]], reducers: list[tuple[int, Any]], digest: RowHash,
               columns: ColumnHashes | None = None) -> RowHash:
    for row in rows:
        exact = columns.exact(row) if columns else None
        if columns and columns.checks:
            columns.predict(row)
        for i, reduce in reducers:
            row[i] = reduce(row[i])
        line = _encode(row).encode("utf-8")
        digest.add_line(line)
        if columns:
            columns.add(row, line, exact or [])
    return digest


def _bundle_hash(path: Path, table: TableDef, vendor: str, storage_map: Mapping[str, str],
                 columns: ColumnHashes | None = None, reflag: _Reflagged | None = None) -> RowHash:
    """The bundle's rows of ``table``, reduced to what ``vendor`` stores (``reflag``: rewritten as the import did)."""
    reducers = [(i, r) for i, c in enumerate(table.columns) if (r := comparer(c.type, vendor))]
    if table.name == "directus_files" and storage_map:
        index = [c.name for c in table.columns].index("storage")
        reducers.append((index, lambda value: storage_map.get(value, value)))
    loads = json.JSONDecoder().decode

    def rows() -> Iterator[list[Any]]:
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    row = loads(line.decode("utf-8"))
                    if reflag:
                        reflag(row)
                    yield row

    return _hash_rows(rows(), reducers, RowHash(), columns)


def _target_hash(db: Database, table: TableDef, vendor: str | None = None, columns: ColumnHashes | None = None,
                 reflag: _Reflagged | None = None) -> RowHash:
    """Hash of ``table`` in ``db``, values reduced to ``vendor``'s precision (default: ``db``'s own).

    Values are made neutral first, then reduced: ``columns`` needs the neutral values' exact form.
    ``reflag``: rows rewritten as the import did (``db`` is a native SQLite bundle's member).
    """
    decoders = [(i, d) for i, c in enumerate(table.columns) if (d := fast_decoder(c.type, db.vendor))]
    reducers = [(i, r) for i, c in enumerate(table.columns) if (r := comparer(c.type, vendor or db.vendor))]
    names = [column.name for column in table.columns]

    def decoded(rows: Iterator[list[Any]]) -> Iterator[list[Any]]:
        for row in rows:
            for i, decode in decoders:
                row[i] = decode(row[i])
            if reflag:
                reflag(row)
            yield row

    with db.engine.connect() as conn:
        rows = (list(row) for row in db.stream_tuples(table.name, names, connection=conn))
        return _hash_rows(decoded(rows), reducers, RowHash(), columns)


def _raw_bundle_hash(path: Path) -> RowHash:
    """The bundle's rows of a table as its JSON lines' bytes, nothing decoded (the exact path)."""
    digest = RowHash()
    total, rows, blake2b = 0, 0, hashlib.blake2b
    with path.open("rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line.strip():
                total += int.from_bytes(blake2b(line, digest_size=32).digest(), "big")
                rows += 1
    digest.total, digest.rows = total % (1 << 256), rows
    return digest


def _raw_target_hash(db: Database, table: TableDef, as_repr: bool = False) -> RowHash:
    """``table`` in ``db`` written as the export writes a JSON line (:func:`~cairn_migrate.operations.export.row_line`),
    hashed like :func:`_raw_bundle_hash`: equal sums mean the same rows, byte for byte, on the same vendor.

    ``as_repr``: the row's values as ``repr`` writes the list instead, about a third of the JSON encoder's
    time, when both sides are rows (a native SQLite member against a SQLite target).  Not for a bundle's
    lines: decoding them to compare so costs more CPU than encoding the target's rows saves (measured:
    9.2 s against 6.6 s for 1M rows), and on 2 shared cores the CPU, not the second process, is scarce.
    """
    decoders = [(i, d) for i, c in enumerate(table.columns) if (d := fast_decoder(c.type, db.vendor))]
    names = [column.name for column in table.columns]
    digest = RowHash()
    total, rows, blake2b, encode = 0, 0, hashlib.blake2b, _encode
    with db.engine.connect() as conn:
        if db.vendor == "postgres" and not decoders and not as_repr:
            from .export import _pg_json_lines

            # where the export let PostgreSQL write the table's lines, the target's are written the same way
            lines = _pg_json_lines(conn, table)
            if lines is not None:
                for block in lines:
                    for line in block.splitlines():
                        if line.strip():
                            total += int.from_bytes(blake2b(line, digest_size=32).digest(), "big")
                            rows += 1
                digest.total, digest.rows = total % (1 << 256), rows
                return digest
        for batch in _prefetched(db.stream_tuples(table.name, names, connection=conn)):
            for row in batch:
                values = list(row)
                for i, decode in decoders:
                    values[i] = decode(values[i])
                line = repr(values) if as_repr else encode(values)
                total += int.from_bytes(blake2b(line.encode("utf-8"), digest_size=32).digest(), "big")
            rows += len(batch)
    digest.total, digest.rows = total % (1 << 256), rows
    return digest


#: Rows per batch handed from the reading thread to the hashing one (:func:`_prefetched`).
_BATCH = 5000


def _prefetched(rows: Iterator[Any]) -> Iterator[list[Any]]:
    """``rows`` in batches, read by a second thread while this one hashes the batch before.

    A server-side cursor fetches only when asked, so the database would otherwise sit idle while Python
    hashes and Python would wait while the database reads; the driver waits for the network without
    the GIL, so the two overlap.  At most two batches wait in between (flat memory).  The reading thread
    stops when this generator is closed early, and its error is raised here.
    """
    import queue
    import threading

    handoff: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            batch: list[Any] = []
            for row in rows:
                batch.append(row)
                if len(batch) == _BATCH:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(end)
        except BaseException as exc:  # handed over, raised by the consumer
            put(exc)

    reader = threading.Thread(target=read, name="verify-read", daemon=True)
    reader.start()
    try:
        while True:
            item = handoff.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


#: From this many rows in the tables compared exactly, a second process hashes the bundle's side (about a
#: fifth of the work for lines, half for a native SQLite member) while this one reads the target; below
#: it, starting that process (a fresh interpreter, ~0.4 s of CPU) costs more than it saves.
PARALLEL_ROWS = 200_000


def _sqlite_member(member: Path) -> Database:
    """A native SQLite bundle's database file, opened to read its rows."""
    import sqlalchemy as sa

    from ..instance.database import open_engine
    from ..instance.instance import DatabaseConfig

    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(member)))
    return Database(open_engine(config), config)


def _want_digest(source: str, table: dict[str, Any] | None) -> tuple[int, int]:
    """The bundle's side of the exact path (run in the worker process): a member of JSON lines (its bytes),
    or with ``table`` that table of a native SQLite member (as ``repr`` writes each row)."""
    if table is None:
        digest = _raw_bundle_hash(Path(source))
    else:
        with _sqlite_member(Path(source)) as member:
            digest = _raw_target_hash(member, TableDef.from_dict(table), as_repr=True)
    return digest.total, digest.rows


def _exact_wants(db: Database, bundle_dir: Path, manifest: Mapping[str, Any], definitions: Mapping[str, TableDef],
                 present: Collection[str], storage_map: Mapping[str, str],
                 reference_db: Database | None) -> tuple[dict[str, tuple[Callable[[], RowHash], bool]], _Worker | None]:
    """Per table compared exactly, how to get the bundle's side and whether rows are hashed as ``repr``
    writes them (:func:`_raw_target_hash`), and the worker process computing that side, if any.

    A neutral bundle the target's own vendor wrote: the target's rows, written as the export writes them,
    are byte-equal to the bundle's lines when the clone is exact.  A native SQLite bundle on SQLite: the
    member's rows and the target's, written the same way.  Across vendors the forms differ by design
    (``comparable`` reduces them): nothing is compared exactly.  ``directus_files`` remapped by
    ``storage_map`` and ``directus_fields`` rewritten by a cross-vendor import never are either.
    """
    native = manifest.get("native") if manifest.get("data") == "native" else None
    if native is None and manifest["source"]["vendor"] == db.vendor:
        def source(name: str) -> tuple[str, dict[str, Any] | None]:
            return str(member_path(bundle_dir, manifest, manifest["tables"][name]["member"],
                                   field=f"tables.{name}.member")), None
    elif native is not None and reference_db is not None and db.vendor == "sqlite":
        member = str(member_path(bundle_dir, manifest, native["member"], field="native.member"))

        def source(name: str) -> tuple[str, dict[str, Any] | None]:
            return member, definitions[name].to_dict()
    else:
        return {}, None
    names = [n for n in manifest["load_order"] if n in present and not (n == "directus_files" and storage_map)]
    if sum(int(manifest["tables"][n]["rows"]) for n in names) < PARALLEL_ROWS:
        def local(name: str) -> tuple[Callable[[], RowHash], bool]:
            path, table = source(name)
            if table is None:  # the lines' bytes as they are: nothing to decode
                return (lambda: _raw_bundle_hash(Path(path))), False
            assert reference_db is not None
            return (lambda: _raw_target_hash(reference_db, definitions[name], as_repr=True)), True
        return {name: local(name) for name in names}, None
    worker = _Worker([(name, *source(name)) for name in names])
    return {name: ((lambda name=name: worker.result(name)), source(name)[1] is not None) for name in names}, worker


class _Worker:
    """A second process hashing the bundle's side of the exact path, table after table in load order,
    while this one reads the target: a fresh interpreter (``-c``, so nothing of the caller's ``__main__``
    runs again), its tasks as JSON on stdin, one line of JSON per digest on stdout.  If it fails, the
    digests it did not give are computed here."""

    def __init__(self, tasks: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        import subprocess
        import sys

        self.tasks = {name: (path, table) for name, path, table in tasks}
        self.done: dict[str, RowHash] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from cairn_migrate.operations.verify import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(tasks).encode("utf-8"))
            self.process.stdin.close()
        except OSError:  # it died at once: everything is computed here
            pass

    def result(self, name: str) -> RowHash:
        assert self.process.stdout is not None
        while name not in self.done:
            line = self.process.stdout.readline()
            if not line:
                log.warning("verify's second process ended early (exit %s); hashing the bundle here",
                            self.process.poll())
                path, table = self.tasks[name]
                digest = RowHash()
                digest.total, digest.rows = _want_digest(path, table)
                return digest
            done, total, rows = json.loads(line)
            digest = self.done[done] = RowHash()
            digest.total, digest.rows = int(total), rows
        return self.done.pop(name)

    def shutdown(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _worker_main() -> None:
    """The second process's loop (:class:`_Worker`)."""
    import sys

    for name, path, table in json.load(sys.stdin):
        total, rows = _want_digest(path, table)
        sys.stdout.write(json.dumps([name, str(total), rows]) + "\n")
        sys.stdout.flush()


#: Tables whose digests the target's database computes at once (one connection each): the aggregates are the
#: server's CPU, so more than the cores it has only queue; PostgreSQL may also split one large table itself.
SERVER_WORKERS = 2


def _server_digests(db: Database, bundle_dir: Path, manifest: Mapping[str, Any], definitions: Mapping[str, TableDef],
                    names: Collection[str]) -> dict[str, tuple[int, int]]:
    """Per table of ``names`` whose digest the database itself can compute against the bundle's: (rows, digest)
    when it equals the bundle's side, in parallel per table; the others are left out (the Python paths compare
    them, and name what differs).

    PostgreSQL and MariaDB: the export recorded each table's ``row_hash`` (:func:`~cairn_migrate.operations.export.row_hash`)
    from the snapshot it wrote the lines from; the same query on the target hashes its rows in C, no row
    fetched.  SQLite (:func:`_sqlite_digests`): the bundle's lines' MD5s (the manifest's ``lines_md5``, or
    computed from the member) against the target's rows written as those lines by SQLite's ``json_array``.
    """
    native = manifest.get("native") if manifest.get("data") == "native" else None
    if native is not None and native.get("vendor") == "sqlite" and db.vendor == "sqlite":
        # a native SQLite bundle: its member's rows and the target's, both written as lines by SQLite
        with _sqlite_member(member_path(bundle_dir, manifest, native["member"], field="native.member")) as member:
            wants = _sqlite_digests(member, definitions, names)
        return {name: (have[0], have[1] * 2**64 + have[2])
                for name, have in _sqlite_digests(db, definitions, list(wants)).items() if have == wants[name]}
    if native is not None or manifest["source"]["vendor"] != db.vendor:
        return {}
    if db.vendor == "sqlite":
        found = _sqlite_digests(db, definitions, names)
        return {name: (have[0], have[1] * 2**64 + have[2]) for name, have in found.items()
                if have == _bundle_lines_digest(bundle_dir, manifest, name)}
    from .export import row_hash

    def one(name: str) -> tuple[str, tuple[int, int] | None]:
        try:
            with db.engine.connect() as conn:
                have = row_hash(conn, definitions[name], db.vendor)
                conn.rollback()
        except Exception as exc:  # a column gone, a type changed: the Python paths compare and name it
            log.debug("%s: no server-side digest (%s)", name, exc)
            return name, None
        if have is None or have["kind"] != manifest["tables"][name]["row_hash"]["kind"]:
            return name, None
        return name, (have["rows"], _combined(have["sums"]))

    wanted = {}
    for name in names:
        recorded = manifest["tables"][name].get("row_hash")
        if name in definitions and isinstance(recorded, Mapping) and isinstance(recorded.get("sums"), list):
            wanted[name] = (int(recorded["rows"]), _combined(recorded["sums"]))
    results: dict[str, tuple[int, int]] = {}
    if not wanted:
        return results
    with ThreadPoolExecutor(max_workers=min(SERVER_WORKERS, len(wanted))) as pool:
        for name, digest in pool.map(one, list(wanted)):
            if digest is not None and digest == wanted[name]:
                results[name] = digest
    return results


def _combined(sums: list[Any]) -> int:
    """One figure of a ``row_hash``'s sums, to compare and report (each sum spaced by 2¹²⁸: the sums of 64-bit
    halves of up to 2⁶⁴ rows cannot overlap)."""
    total = 0
    for value in sums:
        total = (total << 128) + int(value)
    return total


def _sqlite_json_line(table: TableDef, quote: Callable[[str], str]) -> str | None:
    """SQLite's ``json_array(…)`` of a row that is the export's line for it, or ``None`` where a column's
    neutral form is not its stored value (binary, decimal, dates…).  The values the export writes as SQLite
    holds them (text, numbers, and the stored booleans and timestamps) are passed as they are, a uuid
    lower-cased as the export's decoder does.  Where SQLite spells a value otherwise (a float's digits, an
    escape) the bytes differ and the table is compared by the Python paths: slower, never blind."""
    elements = []
    for column in table.columns:
        if fast_decoder(column.type, "sqlite") is None:
            elements.append(quote(column.name))
        elif column.type == "uuid":
            elements.append(f"lower({quote(column.name)})")
        else:
            return None
    return f"json_array({', '.join(elements)})"


def _sqlite_digests(db: Database, definitions: Mapping[str, TableDef],
                    names: Collection[str]) -> dict[str, tuple[int, int, int]]:
    """:func:`_server_digests` on SQLite, which has no hash function: SQLite writes each row's line in C
    (:func:`_sqlite_json_line`), Python only hashes the text it hands over (one ``md5`` per row, no row object,
    no value decoded or encoded in Python)."""
    from .export import LinesDigest

    results: dict[str, tuple[int, int, int]] = {}
    raw = db.engine.raw_connection()
    try:
        quote = db.engine.dialect.identifier_preparer.quote
        cursor = raw.cursor()
        for name in names:
            table = definitions.get(name)
            line = _sqlite_json_line(table, quote) if table is not None else None
            if line is None:
                continue
            digest = LinesDigest()
            md5, halves = hashlib.md5, LinesDigest.halves
            high = low = rows = 0
            try:
                cursor.execute(f"SELECT {line} FROM {quote(name)}")
                while batch := cursor.fetchmany(_BATCH):
                    for (text,) in batch:
                        first, second = halves(md5(text.encode("utf-8")).digest())
                        high += first
                        low += second
                    rows += len(batch)
            except Exception as exc:  # a blob, a column gone: the Python paths compare and name it
                log.debug("%s: no SQLite-written lines (%s)", name, exc)
                continue
            digest.rows, digest.high, digest.low = rows, high, low
            results[name] = (digest.rows, digest.high, digest.low)
        cursor.close()
    finally:
        raw.close()
    return results


def _bundle_lines_digest(bundle_dir: Path, manifest: Mapping[str, Any], name: str) -> tuple[int, int, int]:
    """The bundle's side of :func:`_server_digests`: the manifest's ``lines_md5`` (recorded by the export), else
    computed from the member's lines (a bundle written before the export recorded it)."""
    entry = manifest["tables"][name]
    recorded = entry.get("lines_md5")
    if isinstance(recorded, Mapping):
        return int(recorded["rows"]), int(recorded["high"]), int(recorded["low"])
    from .export import LinesDigest

    digest = LinesDigest()
    with member_path(bundle_dir, manifest, entry["member"], field=f"tables.{name}.member").open("rb") as fh:
        while block := fh.read(1 << 20):
            block += fh.readline()  # whole lines only
            digest.add_block(block)
    return digest.rows, digest.high, digest.low


def _exact_match(entry: dict[str, Any], side: tuple[Callable[[], RowHash], bool], db: Database, table: TableDef,
                 expected: int) -> bool:
    """Compare the bundle's rows with the target's byte for byte; on a match fill ``entry`` (ok)."""
    want_of, as_repr = side
    have = _raw_target_hash(db, table, as_repr=as_repr)
    want = want_of()
    if want.total != have.total or have.rows != expected or want.rows != expected:
        return False
    entry.update(rows=have.rows, hash=have.hexdigest(), expected_hash=want.hexdigest(), ok=True, compared="exact")
    return True


def _column_hashes(table: TableDef, manifest: Mapping[str, Any], vendor: str) -> tuple[ColumnHashes, ColumnHashes]:
    """Exact column hashes for the bundle's side (with the drift checks for ``vendor``) and the target's."""
    sqlite_stored = stored_types(manifest)
    checks = table_checks(table, vendor, source=manifest["source"]["vendor"], sqlite_stored=sqlite_stored)
    stored = sqlite_stored if vendor == "sqlite" else frozenset()  # then storage classes must match too
    return ColumnHashes(table, vendor, stored=stored, checks=checks), ColumnHashes(table, vendor, stored=stored)


def _column_drift(entry: dict[str, Any], want: ColumnHashes, have: ColumnHashes) -> None:
    """Rows agree at the target's precision: name the columns that drifted, expected or not."""
    unexpected = []
    for i, _ in want.columns:
        if want.hashes[i].total == have.hashes[i].total:
            continue
        if want.predicted[i]:
            entry.setdefault("drift", []).append({"column": want.names[i], "values": want.predicted[i], "kinds": want.kinds[i]})
        else:
            unexpected.append(want.names[i])
    if unexpected:
        entry.update(ok=False, problem="content differs", columns=unexpected)


def _differing_columns(path: Path, table: TableDef, db: Database, manifest: Mapping[str, Any],
                       storage_map: Mapping[str, str], reflag: _Reflagged | None = None) -> list[str]:
    """The columns whose values differ between the bundle and the target (a second pass over both)."""
    stored = stored_types(manifest) if db.vendor == "sqlite" else frozenset()
    want = ColumnHashes(table, db.vendor, stored=stored, every_column=True)
    have = ColumnHashes(table, db.vendor, stored=stored, every_column=True)
    _bundle_hash(path, table, db.vendor, storage_map, want, reflag)
    _target_hash(db, table, columns=have)
    return [c.name for c, a, b in zip(table.columns, want.sums, have.sums) if a.total != b.total]


def _verify_tables(db: Database, bundle_dir: Path, manifest: Mapping[str, Any], storage_map: Mapping[str, str], progress: Progress) -> list[dict[str, Any]]:
    schema = member_path(bundle_dir, manifest, "schema/tables.json", field="schema")
    definitions = {t["name"]: TableDef.from_dict(t) for t in json.loads(schema.read_text())}
    flags = field_flags([definitions[n] for n in manifest["load_order"]], manifest["source"]["vendor"], db.vendor)
    native = manifest.get("native") if manifest.get("data") == "native" else None
    if native is not None and native.get("vendor") == "sqlite" and db.vendor == "sqlite" and not storage_map:
        untouched = _same_pages(db, bundle_dir, manifest, progress)
        if untouched is not None:
            return untouched
    present = set(db.table_names())
    same_vendor_native = native is not None and native["vendor"] == db.vendor and native["vendor"] != "sqlite"
    target_checksums: dict[str, dict[str, Any]] = {}
    if same_vendor_native:
        from ..bundle.native import checksums

        with db.engine.connect() as conn:
            target_checksums = checksums(db, conn, [n for n in manifest["load_order"] if n in present])
    reference_db = None
    if native is not None and not same_vendor_native:  # a native SQLite bundle: read the member itself
        reference_db = _sqlite_member(member_path(bundle_dir, manifest, native["member"], field="native.member"))
    results = []
    worker = None
    try:
        # the database's own digests first (PostgreSQL): a table they prove equal needs nothing else
        same = [n for n in manifest["load_order"] if n in present and not (n == "directus_files" and storage_map)]
        server = {name: have for name, have in _server_digests(db, bundle_dir, manifest, definitions, same).items()
                  if have[0] == manifest["tables"][name]["rows"]}
        wants, worker = _exact_wants(db, bundle_dir, manifest, definitions, present - set(server), storage_map,
                                     reference_db)
        for name in manifest["load_order"]:
            expected = manifest["tables"][name]["rows"]
            entry: dict[str, Any] = {"table": name, "expected_rows": expected}
            table = definitions[name]
            if name not in present:
                entry.update(rows=None, ok=False, problem="table missing on the target")
            elif same_vendor_native:
                want, have = native["checksums"][name], target_checksums[name]
                entry.update(rows=have["rows"], expected_hash=want["checksum"], hash=have["checksum"])
                remapped = name == "directus_files" and storage_map
                entry["ok"] = have["rows"] == expected and (remapped or have["checksum"] == want["checksum"])
                if not entry["ok"]:
                    entry["problem"] = "row count differs" if have["rows"] != expected else "content differs"
            elif missing := sorted(set(c.name for c in table.columns) - set(db.columns(name))):
                entry.update(rows=db.row_count(name), ok=False, problem=f"columns missing: {', '.join(missing)}")
            elif name in server:  # the target's rows are the bundle's lines, as the database wrote them
                rows, digest = server[name]
                entry.update(rows=rows, hash=f"{digest:x}", expected_hash=f"{digest:x}", ok=True, compared="server")
            elif name in wants and _exact_match(entry, wants[name], db, table, expected):
                pass  # the target's rows are the bundle's, byte for byte
            else:
                want_columns = have_columns = None
                reflag = _Reflagged(flags) if flags is not None and name == "directus_fields" else None
                if reference_db is not None:
                    want = (_target_hash(reference_db, table, db.vendor, reflag=reflag)
                            if not (name == "directus_files" and storage_map) else None)
                else:
                    want_columns, have_columns = _column_hashes(table, manifest, db.vendor)
                    member = member_path(bundle_dir, manifest, manifest["tables"][name]["member"],
                                         field=f"tables.{name}.member")
                    want = _bundle_hash(member, table, db.vendor, storage_map, want_columns, reflag)
                have = _target_hash(db, table, columns=have_columns)
                entry.update(rows=have.rows, hash=have.hexdigest(), expected_hash=want.hexdigest() if want else None)
                entry["ok"] = have.rows == expected and (want is None or have.total == want.total)
                if not entry["ok"]:
                    entry["problem"] = "row count differs" if have.rows != expected else "content differs"
                    if have.rows == expected and want_columns is not None:
                        member = bundle_dir / manifest["tables"][name]["member"]
                        entry["columns"] = _differing_columns(member, table, db, manifest, storage_map,
                                                              _Reflagged(reflag.flags) if reflag else None)
                else:
                    if want_columns is not None and have_columns is not None:
                        _column_drift(entry, want_columns, have_columns)
                    if reflag and reflag.rows:
                        special = table.columns[reflag.flags.special].name
                        entry.setdefault("drift", []).append({"column": special, "values": reflag.rows,
                                                              "kinds": [TIMESTAMP_FLAG_KIND]})
            results.append(entry)
            progress.advance(items=1)
    finally:
        if worker is not None:
            worker.shutdown()
        if reference_db is not None:
            reference_db.close()
    return results


def _same_pages(db: Database, bundle_dir: Path, manifest: Mapping[str, Any], progress: Progress) -> list[dict[str, Any]] | None:
    """A native SQLite bundle on a SQLite target untouched since its import: the table entries, or None (compare rows).

    The import ends with a page copy of the bundle's database into the target
    (:func:`~cairn_migrate.operations.restore._finish_sqlite_copy`), so the two files hold the same pages
    until something writes to the target: one digest of each file
    (:func:`~cairn_migrate.bundle.native.pages_digest`, a read of both at disk speed) proves every table
    equal at once, instead of writing and hashing every row of both (~3.5 s at 100k rows).  Row counts are
    still read from the target, so a bundle whose database disagrees with its own manifest fails.
    """
    import sqlalchemy as sa

    from ..bundle.native import pages_digest

    target = db.config.url.database
    member = member_path(bundle_dir, manifest, manifest["native"]["member"], field="native.member")
    digest = pages_digest(target) if target else None
    if digest is None or digest != pages_digest(member):
        return None
    results = []
    quote = db.engine.dialect.identifier_preparer.quote
    with db.engine.connect() as conn:
        for name in manifest["load_order"]:
            expected = manifest["tables"][name]["rows"]
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {quote(name)}")).scalar_one()
            entry = {"table": name, "expected_rows": expected, "rows": rows, "hash": digest, "expected_hash": digest,
                     "ok": rows == expected, "compared": "file"}
            if rows != expected:
                entry["problem"] = "row count differs"
            results.append(entry)
            progress.advance(items=1)
    return results


def _verify_files(instance: Instance, bundle_dir: Path, manifest: Mapping[str, Any], storage_map: Mapping[str, str], workers: int, progress: Progress) -> dict[str, Any]:
    locations: dict[str, Location] = {}
    for name in manifest.get("storage_locations_used", []):
        target = storage_map.get(name, name)
        locations[name] = open_location(instance.location(target))
    summary: dict[str, Any] = {"checked": 0, "ok": 0, "missing": [], "mismatched": []}

    def check(entry: list[Any]) -> tuple[list[Any], str | None]:
        _id, storage, filename, size, sha = entry
        location = locations[storage]
        actual = location.size(filename)
        if actual is None:
            return entry, "missing"
        if actual != size or location.sha256(filename) != sha:
            return entry, "mismatched"
        return entry, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        batch: list[list[Any]] = []

        def drain(items: list[list[Any]]) -> None:
            for entry, problem in pool.map(check, items):
                summary["checked"] += 1
                progress.advance(items=1, bytes=int(entry[3] or 0))
                if problem is None:
                    summary["ok"] += 1
                elif len(summary[problem]) < LISTED:
                    summary[problem].append({"id": entry[0], "storage": entry[1], "filename_disk": entry[2]})
                else:
                    summary.setdefault(f"{problem}_unlisted", 0)
                    summary[f"{problem}_unlisted"] += 1

        for entry in iter_file_index(bundle_dir, manifest):
            batch.append(entry)
            if len(batch) >= workers * 8:
                drain(batch)
                batch = []
        drain(batch)
    return summary


def live_checks(url: str, manifest: Mapping[str, Any], *, token: str | None = None, login: tuple[str, str] | None = None, bundle_dir: Path | None = None, timeout: float | tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """Ask the running target: ping, auth, one asset (bytes compared), one item.

    ``timeout`` (for every request) defaults to ``CAIRN_MIGRATE_CONNECT_TIMEOUT`` for connecting
    and for the ping's answer (a ping is instant on a live server, so a listener that accepts and
    never answers fails in seconds, not after the read timeout), and ``CAIRN_MIGRATE_READ_TIMEOUT``
    for the answers after it (a login, asset bytes, items). A request that gets no answer (in time)
    means the checks could not run: that is a failure (:class:`InstanceUnreachable`, exit 3) naming
    the URL and the settings, not a difference found.
    """
    import requests

    from ..instance import bounded_http

    base = url.rstrip("/")
    checks: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    try:
        with bounded_http.session() as http:
            _ask(http, base, manifest, record, token=token, login=login, bundle_dir=bundle_dir, timeout=timeout)
    except requests.RequestException as exc:
        where = str(exc.request.url) if exc.request is not None else f"{base}/server/ping"
        method = exc.request.method if exc.request is not None else "GET"
        raise InstanceUnreachable(
            f"The instance at {base} did not answer {method} {where.split('?')[0].removeprefix(base)} "
            f"({exc.__class__.__name__})",
            hint=f"check --url and that the instance is running; {timeouts.hint(timeouts.CONNECT_ENV, timeouts.READ_ENV)}",
        ) from exc
    return checks


def _ask(http: Any, base: str, manifest: Mapping[str, Any], record: Callable[[str, bool, str], None], *, token: str | None,
         login: tuple[str, str] | None, bundle_dir: Path | None, timeout: float | tuple[float, float] | None) -> None:
    """The requests of :func:`live_checks`, in order; a ping that fails ends them."""
    import requests

    connect = timeouts.connect_timeout()
    ping_timeout = timeout or (connect, connect)
    work_timeout = timeout or (connect, timeouts.read_timeout())

    from ..instance import bounded_http

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        """Under the deadline and size ceiling every call to an instance has (:mod:`..instance.bounded_http`)."""
        return bounded_http.request(http, method, f"{base}{path}", timeout=kwargs.pop("timeout", work_timeout),
                                    **kwargs)

    response = call("GET", "/server/ping", timeout=ping_timeout)
    pong = response.status_code == 200 and response.text.strip() == "pong"
    record("ping", pong, f"HTTP {response.status_code}")
    if not pong:
        return
    headers: dict[str, str] = {}
    if login:
        response = call("POST", "/auth/login", json={"email": login[0], "password": login[1]})
        ok = response.status_code == 200
        record("login", ok, f"{login[0]}: HTTP {response.status_code}")
        if ok:
            headers["Authorization"] = f"Bearer {response.json()['data']['access_token']}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    if headers:
        response = call("GET", "/users/me", headers=headers)
        record("users/me", response.status_code == 200, f"HTTP {response.status_code}")
    if bundle_dir is not None:
        first = next(iter_file_index(bundle_dir, manifest), None)
        if first is not None:
            response = call("GET", f"/assets/{first[0]}", headers=headers)
            same = response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == first[4]
            record("asset", same, f"{first[0]}: HTTP {response.status_code}")
    user_tables = [t for t in manifest["load_order"] if not t.startswith("directus_") and manifest["tables"][t]["rows"]]
    if user_tables:
        table = user_tables[0]
        response = call("GET", f"/items/{table}", params={"limit": 1}, headers=headers)
        data = response.json().get("data") if response.headers.get("content-type", "").startswith("application/json") else None
        record("item", response.status_code == 200 and bool(data), f"{table}: HTTP {response.status_code}")


def verify_bundle(
    instance: Instance,
    bundle: Path,
    *,
    storage_map: Mapping[str, str] | None = None,
    passphrase: str | None = None,
    key_file: Path | None = None,
    url: str | None = None,
    token: str | None = None,
    login: tuple[str, str] | None = None,
    workers: int = 8,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compare ``instance`` with ``bundle``; returns the report (``ok`` true or false)."""
    progress = progress or NullProgress()
    storage_map = dict(storage_map or {})
    with scratch() as workdir, open_bundle(Path(bundle), passphrase=passphrase, key_file=key_file,
                                          workdir=workdir) as bundle_dir:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("kind") != "full":
            raise ConfigError(f"{bundle} is not a full-instance bundle")
        progress.progress(items_done=0, items_total=len(manifest["load_order"]))
        with Database.open(instance) as db:
            incomplete = import_marker.status(db)  # an interrupted import: rows may all be there, FKs not
            tables = _verify_tables(db, bundle_dir, manifest, storage_map, progress)
        progress.progress(items_done=0, items_total=manifest["files"]["count"], bytes_done=0, bytes_total=manifest["files"]["bytes"])
        files = _verify_files(instance, bundle_dir, manifest, storage_map, workers, progress)
        live = live_checks(url, manifest, token=token, login=login, bundle_dir=bundle_dir) if url else []
    env = target_env.missing_for_bundle(instance, manifest, storage_map)
    ok = (
        incomplete is None
        and not (env and env["required"])  # CairnCMS would not start on the target
        and all(t["ok"] for t in tables)
        and files["ok"] == files["checked"] == manifest["files"]["count"]
        and all(check["ok"] for check in live)
    )
    drifted = [(t["table"], d) for t in tables if t["ok"] for d in t.get("drift", [])]
    return {
        "ok": ok,
        # Values the target stores differently, as the import's type-drift report predicted.
        "drift": {"values": sum(d["values"] for _, d in drifted), "columns": [f"{t}.{d['column']}" for t, d in drifted]},
        "tables": tables,
        "tables_ok": sum(1 for t in tables if t["ok"]),
        "tables_failed": [t["table"] for t in tables if not t["ok"]],
        "files": files,
        "live": live,
        "source": manifest["source"],
        "import": incomplete,
        # The settings of the bundle's source the target's .env lacks (names only), or None.
        "env": env,
    }
