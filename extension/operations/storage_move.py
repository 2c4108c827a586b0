"""``storage move`` and ``storage prune``: move file bytes between locations, then switch the rows.

The order is the safety argument:

1. copy each object (server-side when both ends are one S3/GCS service,
   otherwise streamed while hashing the source), in parallel; large moves to
   an async target spread the copies over worker processes
   (:func:`_copy_in_processes`), which only copy and verify: this process alone
   writes the ledger and the rows;
2. verify it on the target: same size, same SHA-256 as the source bytes, either
   checked by the target service itself (S3 with ``x-amz-checksum-sha256``,
   probed once per move; see :class:`_AsyncCopier`) or read back from the target;
3. remember it in a copy ledger in the sidecar's state store (never the
   CairnCMS database), so an interrupted move resumes without copying a
   verified object again.  An object the ledger does not know yet but which
   already sits on the target with the right size is hashed on both sides and
   adopted instead of copied (the ledger is flushed in batches, so a kill may
   lose its last entries, never the bytes);
4. switch ``directus_files.storage`` (and ``filename_disk`` when the layout
   changes) for the verified rows only, in batches inside one transaction,
   recorded as a CairnCMS custom migration (:func:`.scripts.record_generated`)
   so ``migrations down`` or CairnCMS's ``migrate:down`` can revert it;
5. the old bytes stay until ``storage prune``, which first checks every moved
   row's bytes on the target.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..errors import InvalidInput, MigrateError
from ..instance.instance import Instance
from .limits import DEFAULT_WORKERS
from ..progress import NullProgress, Progress
from ..ledger.scripts import id_values
from ..service.state import create_tables, default_state_url, instance_scope
from ..instance import storage as _storage
from ..instance.storage import CHUNK, PART, Location, open_location

log = logging.getLogger(__name__)

FILTER_KEYS = ("id", "filename_disk", "filename_download", "type", "folder")
CHUNK_ROWS = 512

_meta = sa.MetaData()
MOVES = sa.Table(
    "cm_storage_moves", _meta,
    sa.Column("move_id", sa.String(40), primary_key=True),
    # state.instance_scope of the moving instance; rows of earlier versions hold KEY or the
    # database URL instead, which no scope matches, so they are invisible (a clone shares KEY).
    sa.Column("instance", sa.String(255), nullable=False),
    sa.Column("src", sa.String(255), nullable=False),
    sa.Column("dst", sa.String(255), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("version", sa.String(16)),
    sa.Column("updated_at", sa.String(32)),
)
OBJECTS = sa.Table(
    "cm_storage_move_objects", _meta,
    sa.Column("move_id", sa.String(40), primary_key=True),
    sa.Column("file_id", sa.String(64), primary_key=True),
    sa.Column("src_name", sa.Text, nullable=False),
    sa.Column("dst_name", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),  # verified | switched | pruned
    sa.Column("copies", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.String(32)),
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class CopyLedger:
    """The per-move record of verified objects, in the state store (``CAIRN_MIGRATE_STATE_URL``)."""

    def __init__(self, url: str | None = None) -> None:
        from ..service.jobs import _state_engine

        self.engine = _state_engine(url or default_state_url())
        create_tables(self.engine, _meta)

    def close(self) -> None:
        self.engine.dispose()

    def start(self, move_id: str, instance: str, src: str, dst: str, spec: str) -> bool:
        """Register the move; ``True`` when it is new (no earlier, possibly interrupted, run)."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(MOVES.c.move_id).where(MOVES.c.move_id == move_id)).first() is None:
                conn.execute(MOVES.insert().values(move_id=move_id, instance=instance, src=src, dst=dst, spec=spec,
                                                   state="copying", updated_at=_now()))
                return True
            return False

    def set_move(self, move_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(MOVES.update().where(MOVES.c.move_id == move_id).values(updated_at=_now(), **values))

    def moves(self, instance: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(MOVES).where(MOVES.c.instance == instance))]

    def entries(self, move_id: str, file_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(OBJECTS).where(OBJECTS.c.move_id == move_id, OBJECTS.c.file_id.in_(file_ids)))
            return {r.file_id: dict(r._mapping) for r in rows}

    def all_entries(self, move_id: str, state: str | None = None) -> Iterator[dict[str, Any]]:
        query = sa.select(OBJECTS).where(OBJECTS.c.move_id == move_id).order_by(OBJECTS.c.file_id)
        if state:
            query = query.where(OBJECTS.c.state == state)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield dict(row._mapping)

    def source_names(self, move_id: str, state: str) -> list[str]:
        """``src_name`` of the move's objects in ``state`` (one column as plain tuples: cheap for 100k entries)."""
        query = sa.select(OBJECTS.c.src_name).where(OBJECTS.c.move_id == move_id, OBJECTS.c.state == state)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def save(self, move_id: str, results: Sequence[dict[str, Any]]) -> None:
        """Upsert verified objects (one transaction); ``copies`` grows by one per real copy."""
        if not results:
            return
        with self.engine.begin() as conn:
            known = {r.file_id: r.copies for r in conn.execute(
                sa.select(OBJECTS.c.file_id, OBJECTS.c.copies).where(
                    OBJECTS.c.move_id == move_id, OBJECTS.c.file_id.in_([r["id"] for r in results])))}
            inserts: list[dict[str, Any]] = []
            now = _now()
            for r in results:
                values = {"src_name": r["src_name"], "dst_name": r["dst_name"], "size": r["size"], "sha256": r["sha256"],
                          "state": r.get("state", "verified"), "updated_at": now}
                copies = known.get(r["id"])
                values["copies"] = (copies or 0) + (1 if r["action"] == "copied" else 0)
                if copies is None:
                    inserts.append({"move_id": move_id, "file_id": r["id"], **values})
                else:
                    conn.execute(OBJECTS.update().where(OBJECTS.c.move_id == move_id,
                                                        OBJECTS.c.file_id == r["id"]).values(**values))
            if inserts:  # one executemany: a row-by-row insert costs more than the copy of a small object
                conn.execute(OBJECTS.insert(), inserts)

    def mark(self, move_id: str, file_ids: Sequence[str], state: str) -> None:
        with self.engine.begin() as conn:
            for start in range(0, len(file_ids), 500):
                conn.execute(OBJECTS.update().where(OBJECTS.c.move_id == move_id,
                                                    OBJECTS.c.file_id.in_(file_ids[start:start + 500]))
                             .values(state=state, updated_at=_now()))


# --------------------------------------------------------------------------- planning
def parse_filters(filters: Sequence[str]) -> dict[str, str]:
    """``KEY=GLOB`` pairs (AND-ed) on ``id``, ``filename_disk``, ``filename_download``, ``type``, ``folder``."""
    out: dict[str, str] = {}
    for item in filters:
        key, sep, pattern = item.partition("=")
        if not sep or key.strip() not in FILTER_KEYS:
            raise InvalidInput(f"--filter {item!r} is not KEY=GLOB", hint=f"KEY is one of {', '.join(FILTER_KEYS)}")
        out[key.strip()] = pattern
    return out


def _matches(row: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    return all(fnmatch.fnmatchcase("" if row.get(k) is None else str(row[k]), p) for k, p in filters.items())


def target_name(row: Mapping[str, Any], layout: str) -> str:
    """``keep``: the same ``filename_disk``; ``flat``: CairnCMS's upload name ``<id><ext>`` at the root."""
    if layout == "keep":
        return str(row["filename_disk"])
    ext = os.path.splitext(str(row["filename_disk"]))[1] or os.path.splitext(str(row.get("filename_download") or ""))[1]
    return f"{row['id']}{ext}"


@dataclass(frozen=True)
class MoveSpec:
    src: str
    dst: str
    filters: tuple[tuple[str, str], ...] = ()
    layout: str = "keep"

    def move_id(self, instance: Instance) -> str:
        ident = "|".join([instance_scope(instance), self.src, self.dst, self.layout, repr(self.filters)])
        return hashlib.sha1(ident.encode()).hexdigest()[:20]

    def describe(self) -> str:
        return repr({"from": self.src, "to": self.dst, "filters": dict(self.filters), "layout": self.layout})


def _rows(db: Database, spec: MoveSpec) -> Iterator[dict[str, Any]]:
    files = db.table("directus_files")
    cols = ["id", "storage", "filename_disk", "filename_download", "filesize", "type", "folder"]
    filters = dict(spec.filters)
    for row in db.stream_rows("directus_files", columns=cols, where=files.c.storage == spec.src, order_by=["id"]):
        item = {k: row[k] for k in cols}
        item["id"] = str(item["id"])
        if _matches(item, filters):
            yield item


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- copying one object
#: Objects up to this size are copied and read back in one request each (no multipart, no HEAD).
SMALL = 8 * CHUNK


def _stream_copy(src: Location, name: str, dst: Location, dst_name: str, size: int) -> str:
    if size <= SMALL:
        data = src.read_bytes(name)
        if dst.container is None:
            dst.write_bytes(dst_name, data)
        else:
            with dst._errors("write", dst_name):
                dst.fs.pipe_file(dst.path_for(dst_name), data)
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with src.open_read(name) as reader, dst.open_write(dst_name) as writer:
        while block := reader.read(CHUNK):
            digest.update(block)
            writer.write(block)
    return digest.hexdigest()


def _read_back(location: Location, name: str, expected: int) -> tuple[int, str]:
    """Size and SHA-256 of an object from one read (small objects: one GET, no HEAD)."""
    if expected <= SMALL and location.container is not None:
        with location._errors("read", name):
            data = location.fs.cat_file(location.path_for(name))
        return len(data), hashlib.sha256(data).hexdigest()
    digest, size = hashlib.sha256(), 0
    with location.open_read(name) as reader:
        while block := reader.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _transfer(src: Location, dst: Location, row: dict[str, Any], entry: dict[str, Any] | None,
              dst_name: str, check_target: bool = True) -> dict[str, Any]:
    """Copy (or adopt, or skip) one object and verify it on the target; never raises for per-object problems."""
    name = str(row["filename_disk"])
    result = {"id": row["id"], "src_name": name, "dst_name": dst_name, "size": None, "sha256": None}
    try:
        size = src.size(name)
        if size is None:
            return {**result, "action": "failed", "error": "source bytes are missing"}
        result["size"] = size
        if row.get("filesize") is not None and int(row["filesize"]) != size:
            return {**result, "action": "failed", "error": f"source has {size} bytes, the row says {row['filesize']}"}
        present = dst.size(dst_name) if check_target else None
        if entry is not None and entry.get("sha256") and present == size == entry.get("size"):
            return {**result, "action": "skipped", "sha256": entry["sha256"]}
        if present == size:  # a copy the ledger did not record yet (or an identical object): prove it
            source_sha = src.sha256(name)
            if dst.sha256(dst_name) == source_sha:
                return {**result, "action": "adopted", "sha256": source_sha}
        if src.identity == dst.identity and src.driver in ("s3", "gcs"):
            src.copy_to(name, dst, dst_name)
            source_sha = src.sha256(name)
        else:
            source_sha = _stream_copy(src, name, dst, dst_name, size)
        if _read_back(dst, dst_name, size) != (size, source_sha):
            return {**result, "action": "failed", "error": "the copy on the target does not match (size/sha256)"}
        return {**result, "action": "copied", "sha256": source_sha}
    except MigrateError as exc:
        if exc.code in ("unreachable", "config_error"):
            raise  # the location itself is broken: stop the whole move
        return {**result, "action": "failed", "error": exc.message}


#: Objects up to this size go up in one streamed PUT through the lean client (rclone's default
#: ``--s3-upload-cutoff``); larger ones as a checksummed multipart upload.
LEAN_PUT_MAX = 200 * CHUNK


def _local_sha256(path: str) -> tuple[int, str]:
    """Size read and hex SHA-256 of a local file, streamed."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _local_size(location: Location, name: str) -> int | None:
    """:meth:`Location.size` of a local location without fsspec: one ``stat``."""
    import stat

    try:
        st = os.stat(location.path_for(name))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MigrateError(f"could not look up {name!r} on storage location {location.name!r}: "
                           f"{type(exc).__name__}") from exc
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# --------------------------------------------------------------------------- copying on the event loop
#: Bytes of large-object parts in memory at once, over all copies of one move.
PARTS_IN_FLIGHT = 6 * PART


class _AsyncCopier:
    """Copies and verifies objects as coroutines on the target filesystem's event loop.

    s3fs, gcsfs and adlfs run every request on fsspec's one IO loop; calling
    their sync methods from many threads serializes on it.  Here every object
    is one coroutine (at most ``workers`` at a time) submitted from the move's
    thread, which collects them as :class:`concurrent.futures.Future`.

    Verification, per target:

    * S3 that checks ``x-amz-checksum-sha256`` (probed once, see
      :func:`.storage.s3_verifies_checksums`): small objects go up in one PUT
      carrying the SHA-256 of the bytes read from the source; the service
      refuses a body that does not hash to it and answers the hash it stored.
      Large objects go up as a multipart upload with a SHA-256 per part,
      streamed and hashed part by part, then the composite checksum and a HEAD's
      size are compared.  No read-back.
    * other async targets: small objects are written and read back as
      coroutines; large ones take the threaded streaming path.

    Server-side copies and adoptions of objects already on the target take the
    threaded path (:func:`_transfer`) too.
    """

    def __init__(self, src: Location, dst: Location, workers: int, *, checked_puts: bool | None = None,
                 parts_in_flight: int | None = None) -> None:
        self.src, self.dst, self.workers = src, dst, max(1, workers)
        self.loop = _storage.async_loop(dst)
        self.checked_puts = _storage.s3_verifies_checksums(dst) if checked_puts is None else checked_puts
        self.parts_in_flight = PARTS_IN_FLIGHT if parts_in_flight is None else parts_in_flight
        self.threads = ThreadPoolExecutor(self.workers, thread_name_prefix="move")
        self.slots: asyncio.Semaphore | None = None
        self.part_slots: asyncio.Semaphore | None = None
        # Local → S3 that checks checksums: small objects go up through the lean client, from threads of their
        # own (they may wait on the loop for the other cases, which may wait on ``threads``: never the same pool).
        self.lean = dst.lean if self.checked_puts and src.container is None else None
        self.lean_threads = (ThreadPoolExecutor(self.workers, thread_name_prefix="move-s3")
                             if self.lean is not None else None)
        self.lean_slots = threading.Semaphore(self.workers)

    @staticmethod
    def usable(src: Location, dst: Location) -> bool:
        loop = _storage.async_loop(dst)
        return loop is not None and (src.container is None or _storage.async_loop(src) is loop)

    def close(self) -> None:
        if self.lean_threads is not None:
            self.lean_threads.shutdown(wait=True, cancel_futures=True)
            assert self.lean is not None
            self.lean.close()
        self.threads.shutdown(wait=True, cancel_futures=True)

    def submit(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
               check_target: bool) -> Future[dict[str, Any]]:
        if self.lean_threads is not None:
            return self.lean_threads.submit(self._slotted, row, entry, dst_name, check_target)
        return asyncio.run_coroutine_threadsafe(self._run(row, entry, dst_name, check_target), self.loop)

    def _slotted(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                 check_target: bool) -> dict[str, Any]:
        """:meth:`transfer_lean` holding one of ``workers`` slots, released by :meth:`done` (as :meth:`_run`)."""
        self.lean_slots.acquire()
        try:
            return self.transfer_lean(row, entry, dst_name, check_target)
        except BaseException:
            self.lean_slots.release()
            raise

    def copy_batch(self, items: list[tuple[dict[str, Any], dict[str, Any] | None, str, bool]]) -> list[dict[str, Any]]:
        """Copy and verify a batch (``workers`` at a time); one result per item, in order."""
        if self.lean_threads is not None:
            return list(self.lean_threads.map(lambda item: self.transfer_lean(*item), items))
        return asyncio.run_coroutine_threadsafe(_copy_batch(self, items), self.loop).result()

    def transfer_lean(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                      check_target: bool) -> dict[str, Any]:
        """:meth:`_transfer` for a local source and a checksum-checking S3 target, in the calling thread.

        Objects up to :data:`LEAN_PUT_MAX`: a ``stat``, a read and SHA-256 (in
        memory up to :data:`SMALL`, streamed above), one signed PUT through
        :mod:`.s3_lean` carrying that SHA-256 (a HEAD first only when the target
        is checked), the same verification as :func:`.storage.s3_put_verified`.
        Everything else (adoption of an object already there, larger objects:
        checksummed multipart) runs :meth:`_transfer` on the loop.
        """
        src, dst, lean = self.src, self.dst, self.lean
        assert lean is not None
        name = str(row["filename_disk"])
        result = {"id": row["id"], "src_name": name, "dst_name": dst_name, "size": None, "sha256": None}
        try:
            size = _local_size(src, name)
            if size is None:
                return {**result, "action": "failed", "error": "source bytes are missing"}
            result["size"] = size
            if row.get("filesize") is not None and int(row["filesize"]) != size:
                return {**result, "action": "failed", "error": f"source has {size} bytes, the row says {row['filesize']}"}
            key = _storage.object_key(dst.root, dst_name)
            present = None
            if check_target:
                with dst._errors("look up", dst_name):
                    present = lean.head(key)
            if entry is not None and entry.get("sha256") and present == size == entry.get("size"):
                return {**result, "action": "skipped", "sha256": entry["sha256"]}
            if present == size or size > LEAN_PUT_MAX:
                return asyncio.run_coroutine_threadsafe(
                    self._loop_transfer(row, entry, dst_name, check_target), self.loop).result()
            if size > SMALL:  # one streamed PUT, hashed by a first read (as rclone below its 200 MiB cutoff)
                with src._errors("read", name):
                    read, source_sha = _local_sha256(src.path_for(name))
                if read != size:
                    return {**result, "action": "failed", "error": "the source changed while it was copied"}
                digest = bytes.fromhex(source_sha)
                with dst._errors("write", dst_name):  # the target's errors name the target's settings
                    answered = lean.put_file(key, src.path_for(name), size, digest)
            else:
                with src._errors("read", name), open(src.path_for(name), "rb") as fh:
                    data = fh.read()
                if len(data) != size:
                    return {**result, "action": "failed", "error": "the source changed while it was copied"}
                digest = hashlib.sha256(data).digest()
                source_sha = digest.hex()
                with dst._errors("write", dst_name):
                    answered = lean.put(key, data, digest)
                del data
            if answered == _storage._b64(digest):
                return {**result, "action": "copied", "sha256": source_sha}
            if _read_back(dst, dst_name, size) != (size, source_sha):
                return {**result, "action": "failed", "error": "the copy on the target does not match (size/sha256)"}
            return {**result, "action": "copied", "sha256": source_sha}
        except MigrateError as exc:
            if exc.code in ("unreachable", "config_error"):
                raise  # the location itself is broken: stop the whole move
            return {**result, "action": "failed", "error": exc.message}

    async def _loop_transfer(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                             check_target: bool) -> dict[str, Any]:
        if self.part_slots is None:  # made on the loop it belongs to
            self.part_slots = asyncio.Semaphore(max(2, self.parts_in_flight // PART))
        return await self._transfer(row, entry, dst_name, check_target)

    async def _run(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                   check_target: bool) -> dict[str, Any]:
        if self.slots is None:  # made on the loop they belong to
            self.slots = asyncio.Semaphore(self.workers)
            self.part_slots = asyncio.Semaphore(max(2, self.parts_in_flight // PART))
        await self.slots.acquire()  # released by :meth:`done` once the move's thread has the result
        try:
            return await self._transfer(row, entry, dst_name, check_target)
        except BaseException:
            self.slots.release()
            raise

    def done(self, count: int) -> None:
        """``count`` results were collected: their slots may take new objects.

        Holding the slot until then bounds the objects written but not yet
        seen by the move's thread (its progress, its ledger) to ``workers``.
        """
        if self.lean_threads is not None:
            for _ in range(count):
                self.lean_slots.release()
            return

        def release() -> None:
            assert self.slots is not None
            for _ in range(count):
                self.slots.release()

        self.loop.call_soon_threadsafe(release)

    async def _threaded(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                        check_target: bool) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(
            self.threads, _transfer, self.src, self.dst, row, entry, dst_name, check_target)

    async def _transfer(self, row: dict[str, Any], entry: dict[str, Any] | None, dst_name: str,
                        check_target: bool) -> dict[str, Any]:
        """:func:`_transfer` as a coroutine: same results, same rules."""
        src, dst = self.src, self.dst
        name = str(row["filename_disk"])
        result = {"id": row["id"], "src_name": name, "dst_name": dst_name, "size": None, "sha256": None}
        try:
            size = await _storage.asize(src, name)
            if size is None:
                return {**result, "action": "failed", "error": "source bytes are missing"}
            result["size"] = size
            if row.get("filesize") is not None and int(row["filesize"]) != size:
                return {**result, "action": "failed", "error": f"source has {size} bytes, the row says {row['filesize']}"}
            present = await _storage.asize(dst, dst_name) if check_target else None
            if entry is not None and entry.get("sha256") and present == size == entry.get("size"):
                return {**result, "action": "skipped", "sha256": entry["sha256"]}
            if present == size or (src.identity == dst.identity and src.driver in ("s3", "gcs")):
                return await self._threaded(row, entry, dst_name, check_target)  # adoption, server-side copy
            if size > SMALL:
                if not self.checked_puts:
                    return await self._threaded(row, entry, dst_name, False)
                assert self.part_slots is not None
                source_sha, ok = await _storage.s3_upload_verified(
                    dst, dst_name, size, lambda start, end: _storage.aread(src, name, start, end), self.part_slots)
                if not ok and await self._read_back(dst_name, size) != (size, source_sha):
                    return {**result, "action": "failed", "error": "the copy on the target does not match (size/sha256)"}
                return {**result, "action": "copied", "sha256": source_sha}
            data = await _storage.aread(src, name)
            if len(data) != size:
                return {**result, "action": "failed", "error": "the source changed while it was copied"}
            digest = hashlib.sha256(data).digest()
            source_sha = digest.hex()
            if self.checked_puts:
                if await _storage.s3_put_verified(dst, dst_name, data, digest):
                    return {**result, "action": "copied", "sha256": source_sha}
            else:
                await _storage.apipe(dst, dst_name, data)
            del data
            back = await _storage.aread(dst, dst_name)
            if (len(back), hashlib.sha256(back).hexdigest()) != (size, source_sha):
                return {**result, "action": "failed", "error": "the copy on the target does not match (size/sha256)"}
            return {**result, "action": "copied", "sha256": source_sha}
        except MigrateError as exc:
            if exc.code in ("unreachable", "config_error"):
                raise  # the location itself is broken: stop the whole move
            return {**result, "action": "failed", "error": exc.message}

    async def _read_back(self, name: str, size: int) -> tuple[int, str]:
        return await asyncio.get_running_loop().run_in_executor(self.threads, _read_back, self.dst, name, size)


# --------------------------------------------------------------------------- copying in worker processes
#: Moves of at least this many objects spread their copies over worker processes (see :func:`_copy_all`).
PROCESS_MIN = 500
#: Small objects per task sent to a worker process.
PROCESS_BATCH = 256
#: Overrides the number of copy processes (``1``: copy in the move's own process).
PROCESSES_ENV = "CAIRN_MIGRATE_MOVE_PROCESSES"


def default_processes() -> int:
    """Copy processes for a large move: ``$CAIRN_MIGRATE_MOVE_PROCESSES``, else one per CPU (2 .. 4)."""
    value = os.environ.get(PROCESSES_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise InvalidInput(f"{PROCESSES_ENV}={value!r} is not a number") from None
    return max(2, min(4, os.cpu_count() or 1))


_worker_copier: _AsyncCopier | None = None


def _worker_init(src: Any, dst: Any, workers: int, checked_puts: bool, parts_in_flight: int) -> None:
    """Runs once in each worker process: its own locations (from the picklable configs) and copier."""
    global _worker_copier
    _worker_copier = _AsyncCopier(open_location(src), open_location(dst), workers, checked_puts=checked_puts,
                                  parts_in_flight=parts_in_flight)


def _worker_copy(items: list[tuple[dict[str, Any], dict[str, Any] | None, str, bool]]) -> list[dict[str, Any]]:
    """Copy and verify ``(row, ledger entry, target name, check target)`` items in a worker process.

    Returns one result per item, exactly as :meth:`_AsyncCopier.submit` gives
    them; the move's process alone records them (ledger, rows).
    """
    copier = _worker_copier
    assert copier is not None, "worker process without its copier"
    return copier.copy_batch(items)


async def _copy_batch(copier: _AsyncCopier, items: list[tuple[dict[str, Any], dict[str, Any] | None, str, bool]],
                      ) -> list[dict[str, Any]]:
    """All of a worker's batch as one coroutine on the loop (``copier.workers`` at a time): no thread hop per object."""
    if copier.part_slots is None:
        copier.part_slots = asyncio.Semaphore(max(2, copier.parts_in_flight // PART))
    slots = asyncio.Semaphore(copier.workers)

    async def one(item: tuple[dict[str, Any], dict[str, Any] | None, str, bool]) -> dict[str, Any]:
        async with slots:
            return await copier._transfer(*item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()  # cancelled coroutines abort their multipart uploads
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _process_pool(processes: int, source: Location, target: Location, workers: int, checked_puts: bool,
                  parts_in_flight: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(source.config, target.config, workers, checked_puts, parts_in_flight))


# --------------------------------------------------------------------------- move
def move(instance: Instance, src: str, dst: str, *, filters: Sequence[str] = (), layout: str = "keep",
         dry_run: bool = False, workers: int = DEFAULT_WORKERS, state_url: str | None = None, version: str | None = None,
         versions_dir: Path | None = None, progress: Progress | None = None,
         processes: int | None = None) -> dict[str, Any]:
    """Move the bytes of the rows on ``src`` to ``dst`` and switch those rows (see the module docstring).

    ``processes``: copy processes for moves of at least :data:`PROCESS_MIN`
    objects to an async target (default :func:`default_processes`); ``1``
    copies in this process.  ``workers`` is the number of copies in flight over
    all of them.

    :returns: a report with ``plan``, counts per action, ``failed`` objects and the recorded ``migration``.
    :raises ConfigError: an unconfigured location, a missing bucket, rejected credentials.
    """
    progress = progress or NullProgress()
    if src == dst:
        raise InvalidInput("--from and --to name the same location")
    if layout not in ("keep", "flat"):
        raise InvalidInput(f"--layout {layout!r}: use keep or flat")
    spec = MoveSpec(src, dst, tuple(sorted(parse_filters(filters).items())), layout)
    source = open_location(instance.location(src))
    target = open_location(instance.location(dst))
    source.check()
    target.check()
    with Database.open(instance) as db:
        count = bytes_total = 0
        for row in _rows(db, spec):
            count += 1
            bytes_total += int(row["filesize"] or 0)
        report: dict[str, Any] = {"from": source.describe(), "to": target.describe(), "layout": layout,
                                  "filters": dict(spec.filters), "dry_run": dry_run,
                                  "plan": {"rows": count, "bytes": bytes_total}, "copied": 0, "adopted": 0,
                                  "skipped": 0, "failed": [], "switched": 0, "migration": None}
        if dry_run or count == 0:
            return report
        ledger = CopyLedger(state_url)
        try:
            move_id = spec.move_id(instance)
            report["move_id"] = move_id
            fresh = ledger.start(move_id, instance_scope(instance), src, dst, spec.describe())
            progress.progress(items_done=0, items_total=count, bytes_done=0, bytes_total=bytes_total)
            progress.log(f"moving {count} files from {src} to {dst} with {workers} workers")
            if processes is None:
                processes = default_processes() if count >= PROCESS_MIN else 1
            verified = _copy_all(db, spec, source, target, ledger, move_id, workers, report, progress,
                                 check_target=not fresh, processes=processes if count >= PROCESS_MIN else 1)
            if verified:
                report["migration"] = _switch(instance, db, spec, verified, version, versions_dir, progress)
                report["switched"] = report["migration"]["rows"]
                ledger.mark(move_id, [v[0] for v in verified], "switched")
            ledger.set_move(move_id, state="partial" if report["failed"] else "switched",
                            version=(report["migration"] or {}).get("version"))
        finally:
            ledger.close()
    return report


def _copy_all(db: Database, spec: MoveSpec, source: Location, target: Location, ledger: CopyLedger, move_id: str,
              workers: int, report: dict[str, Any], progress: Progress, *, check_target: bool = True,
              processes: int = 1) -> list[tuple[str, str, str]]:
    """Copy and verify every planned object; returns ``(id, old filename_disk, new filename_disk)`` of the verified.

    With ``processes`` > 1 and an async target the copies run in worker
    processes (:func:`_copy_in_processes`); the ledger and the rows are still
    written here only.
    """
    if processes > 1 and _AsyncCopier.usable(source, target):
        return _copy_in_processes(db, spec, source, target, ledger, move_id, workers, report, progress,
                                  check_target=check_target, processes=processes)
    verified: list[tuple[str, str, str]] = []
    taken = _names_on(db, spec.dst)
    pending: set[Future[dict[str, Any]]] = set()
    results: list[dict[str, Any]] = []

    def collect(done: set[Future[dict[str, Any]]]) -> None:
        for future in done:
            _record(future.result(), report, results, verified, progress)
        if copier is not None:
            copier.done(len(done))
        if len(results) >= 256:
            ledger.save(move_id, results)
            results.clear()

    copier = _AsyncCopier(source, target, workers) if _AsyncCopier.usable(source, target) else None
    with ThreadPoolExecutor(1 if copier else max(1, workers), thread_name_prefix="move") as pool:
        try:
            for items in _work_items(db, spec, ledger, move_id, taken, check_target, report, progress):
                for row, entry, dst_name, check in items:
                    if copier is not None:
                        pending.add(copier.submit(row, entry, dst_name, check))
                    else:
                        pending.add(pool.submit(_transfer, source, target, row, entry, dst_name, check))
                    if len(pending) >= workers * 4:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        collect(done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        finally:
            for future in pending:
                future.cancel()
            if copier is not None:
                copier.close()  # cancelled coroutines abort their multipart uploads on the loop
            ledger.save(move_id, results)
    return verified


def _work_items(db: Database, spec: MoveSpec, ledger: Any, move_id: Any, taken: Any, check_target: bool,
                report: dict[str, Any], progress: Progress) -> Iterator[list[tuple[dict[str, Any], Any, str, bool]]]:
    """The rows to copy, a chunk at a time, as ``(row, ledger entry, target name, check target)``.

    Rows that cannot move (no ``filename_disk``, a target name another row
    already holds) go to ``report["failed"]`` here, once, for both copy paths.
    """
    for chunk in _chunks(_rows(db, spec), CHUNK_ROWS):
        progress.check_cancelled()
        entries = ledger.entries(move_id, [r["id"] for r in chunk])
        items = []
        for row in chunk:
            if not row["filename_disk"]:
                report["failed"].append({"id": row["id"], "src_name": None, "error": "the row has no filename_disk"})
                continue
            dst_name = target_name(row, spec.layout)
            if dst_name in taken:
                report["failed"].append({"id": row["id"], "src_name": row["filename_disk"],
                                         "error": f"another row on {spec.dst} already uses {dst_name}"})
                continue
            items.append((row, entries.get(row["id"]), dst_name, check_target or row["id"] in entries))
        yield items


def _record(result: dict[str, Any], report: dict[str, Any], results: list[dict[str, Any]],
            verified: list[tuple[str, str, str]], progress: Progress) -> None:
    """Count one object's result; a verified one goes to ``results`` (for the ledger) and ``verified``."""
    action = result["action"]
    if action == "failed":
        report["failed"].append({k: result[k] for k in ("id", "src_name", "error")})
    else:
        report[action] += 1
        results.append(result)
        verified.append((result["id"], result["src_name"], result["dst_name"]))
    progress.advance(1, int(result["size"] or 0))


def _copy_in_processes(db: Database, spec: MoveSpec, source: Location, target: Location, ledger: CopyLedger,
                       move_id: str, workers: int, report: dict[str, Any], progress: Progress, *,
                       check_target: bool, processes: int) -> list[tuple[str, str, str]]:
    """:func:`_copy_all` over worker processes, for moves whose cost is Python CPU per request.

    Small objects go in batches of :data:`PROCESS_BATCH` to ``processes``
    workers, each running an :class:`_AsyncCopier` with its share of
    ``workers``; objects larger than :data:`SMALL` go one per task to one more
    worker of their own (mostly waiting on IO, with the move's part budget),
    so they overlap the small ones.  Workers only copy and verify; their
    results come back here, where the ledger is saved in batches as before.
    At most two batches per worker wait in line, so rows are read ahead by a
    bounded amount and a kill loses at most the results in flight.
    """
    verified: list[tuple[str, str, str]] = []
    taken = _names_on(db, spec.dst)
    results: list[dict[str, Any]] = []
    checked_puts = _storage.s3_verifies_checksums(target)
    per_process = max(1, -(-workers // processes))
    small_pool = _process_pool(processes, source, target, per_process, checked_puts, PART * 2)
    large_pool: Any = None
    small: set[Future[list[dict[str, Any]]]] = set()
    large: set[Future[list[dict[str, Any]]]] = set()
    batch: list[tuple[dict[str, Any], dict[str, Any] | None, str, bool]] = []

    def collect(block: bool) -> None:
        nonlocal small, large
        if not (small or large):
            return
        done, _ = wait(small | large, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        small -= done
        large -= done
        for future in done:
            for result in future.result():
                _record(result, report, results, verified, progress)
        if len(results) >= 256:
            ledger.save(move_id, results)
            results.clear()

    try:
        for items in _work_items(db, spec, ledger, move_id, taken, check_target, report, progress):
            for item in items:
                row = item[0]
                if int(row["filesize"] or 0) > SMALL:
                    if large_pool is None:
                        large_pool = _process_pool(1, source, target, max(1, PARTS_IN_FLIGHT // PART), checked_puts,
                                                   PARTS_IN_FLIGHT)
                    while len(large) >= 4:
                        collect(True)
                    large.add(large_pool.submit(_worker_copy, [item]))
                    continue
                batch.append(item)
                if len(batch) >= PROCESS_BATCH:
                    while len(small) >= processes * 2:
                        collect(True)
                    small.add(small_pool.submit(_worker_copy, batch))
                    batch = []
            collect(False)
        if batch:
            small.add(small_pool.submit(_worker_copy, batch))
        while small or large:
            collect(True)
    finally:
        for future in small | large:
            future.cancel()
        small_pool.shutdown(wait=True, cancel_futures=True)
        if large_pool is not None:
            large_pool.shutdown(wait=True, cancel_futures=True)
        ledger.save(move_id, results)
    return verified


def _names_on(db: Database, location: str) -> set[str]:
    """``filename_disk`` values already used on the target location (their objects must not be overwritten)."""
    files = db.table("directus_files")
    return {str(r["filename_disk"]) for r in db.stream_rows("directus_files", columns=["filename_disk"],
                                                              where=files.c.storage == location) if r["filename_disk"]}


def _switch(instance: Instance, db: Database, spec: MoveSpec, verified: list[tuple[str, str, str]],
            version: str | None, versions_dir: Path | None, progress: Progress) -> dict[str, Any]:
    from ..ledger.scripts import record_generated

    verified.sort()
    data = {"from": spec.src, "to": spec.dst,
            "ids": [i for i, old, new in verified if old == new],
            "renames": [[i, old, new] for i, old, new in verified if old != new]}
    slug = f"move-files-{spec.src}-to-{spec.dst}".lower().replace("_", "-")
    slug = "-".join(part for part in slug.split("-") if part.isalnum()) or "move-files"
    return record_generated(instance, db, slug, data, version=version, versions_dir=versions_dir,
                            progress_log=progress.log)


# --------------------------------------------------------------------------- prune
def prune(instance: Instance, *, src: str | None = None, yes: bool = False, state_url: str | None = None,
          workers: int = DEFAULT_WORKERS, progress: Progress | None = None) -> dict[str, Any]:
    """Delete the old bytes of switched moves, after checking every moved row's bytes on the target.

    Without ``yes`` only the plan is returned.  Rows switched back (``migrations
    down``) keep their bytes.  Derived transforms ``<stem>__<hash>.<ext>`` of
    the pruned objects go too (CairnCMS regenerates them).

    :raises ConfigError: ``src`` is not a configured location (the rule of ``move``'s
        ``--from``), so a typo is not a quiet "would delete 0".
    """
    progress = progress or NullProgress()
    if src is not None:
        instance.location(src)
    ledger = CopyLedger(state_url)
    report: dict[str, Any] = {"dry_run": not yes, "moves": [], "deleted": 0, "problems": []}
    try:
        with Database.open(instance) as db:
            files = db.table("directus_files")
            fid = files.c.id
            for move_row in ledger.moves(instance_scope(instance)):
                if (src and move_row["src"] != src) or move_row["state"] not in ("switched", "partial"):
                    continue
                entries = list(ledger.all_entries(move_row["move_id"], "switched"))
                if not entries:
                    continue
                source = open_location(instance.location(move_row["src"]))
                target = open_location(instance.location(move_row["dst"]))
                source.check()
                target.check()
                current: dict[str, Any] = {}
                ids = [e["file_id"] for e in entries]
                with db.engine.connect() as conn:
                    for start in range(0, len(ids), 500):
                        for r in conn.execute(sa.select(fid.label("id"), files.c.storage, files.c.filename_disk)
                                              .where(fid.in_(id_values(fid, ids[start:start + 500])))):
                            current[str(r.id)] = r
                todo = [e for e in entries if (row := current.get(e["file_id"])) is not None
                        and row.storage == move_row["dst"] and row.filename_disk == e["dst_name"]]
                with ThreadPoolExecutor(workers) as pool:
                    sizes = list(pool.map(lambda e: target.size(e["dst_name"]), todo))
                problems = [{"id": e["file_id"], "error": "bytes missing or wrong size on " + move_row["dst"]}
                            for e, size in zip(todo, sizes) if size != e["size"]]
                report["problems"].extend(problems)
                report["moves"].append({"move_id": move_row["move_id"], "from": move_row["src"], "to": move_row["dst"],
                                        "version": move_row["version"], "objects": len(todo)})
                if problems or not yes:
                    continue
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda e: _delete_with_transforms(source, e["src_name"]), todo))
                ledger.mark(move_row["move_id"], [e["file_id"] for e in todo], "pruned")
                report["deleted"] += len(todo)
                progress.log(f"pruned {len(todo)} objects from {move_row['src']}")
    finally:
        ledger.close()
    if report["problems"]:
        raise _PruneRefused(report)
    return report


class _PruneRefused(MigrateError):
    exit_code = 1
    http_status = 409
    code = "check_failed"

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(f"{len(report['problems'])} moved file(s) are not intact on the target; nothing was pruned",
                         hint="run cairn-migrate files check and repair first", details=report)


def _delete_with_transforms(location: Location, name: str) -> None:
    location.delete(name)
    stem = os.path.splitext(os.path.basename(name))[0]
    for derived, _size in location.list(stem + "__"):
        if "/" not in derived:
            location.delete(derived)

