"""The API writer of a content move: the walk's decisions written through the target's own API.

So the target's validation, permissions, hooks and flows run: new rows go to ``POST /items/<c>`` (an
array per batch; the response, re-read with ``fields=<pk>&sort=<pk>``, gives the keys the target
numbered, in the order the rows were sent), changes to ``PATCH /items/<c>`` (a batch of
``{pk, …changed}``), deletions to ``DELETE /items/<c>`` (a batch of keys); folders through
``/folders``; a file row and its bytes through one multipart ``POST /files`` (its id kept; its bytes
re-uploaded with ``PATCH /files/<id>`` when only they are missing) followed by a JSON ``PATCH`` of the
row's metadata, the stored object then checked against the source (size + SHA-256); a user
``--create-users`` makes through ``POST /users`` before the walk.  The rows arrive finished (masked, URLs
rewritten, ``--transform`` applied by the walk), the same rows the database sink writes.  Requests run in the
client's bounded pool; :meth:`ApiSink.flush` is the barrier the walk calls at the end of a collection.

Columns the target sets itself on this path (``date-created``/``user-created``/``date-updated``/
``user-updated``/``role-*`` specials; a file's ``filename_disk``, ``uploaded_by``, ``modified_*`` and
``filesize``) are neither sent nor compared: the API overwrites them, so comparing them would make every
re-run an update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ..bundle.table_schema import TableDef
from ..errors import MigrateError
from ..instance.database import Database
from ..instance.storage import Location
from .api_client import DEFAULT_BATCH, ApiClient
from .closure import FILES, FOLDERS
from .sink_db import Done

#: specials whose values CairnCMS's payload service sets on create or update
SERVER_SPECIALS = frozenset({"date-created", "user-created", "role-created", "date-updated", "user-updated",
                             "role-updated"})
#: what ``/files`` sets itself (``SERVER_CONTROLLED_FIELDS``, the object's stat, the caller)
FILES_CONTROLLED = frozenset({"filename_disk", "uploaded_by", "modified_by", "modified_on", "filesize"})


def path(collection: str) -> str:
    """The endpoint of a collection's rows."""
    return {FILES: "/files", FOLDERS: "/folders"}.get(collection, f"/items/{collection}")


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ApiSink:
    """Writes through ``client`` (None in a plan: only :meth:`controlled` is asked)."""

    via = "api"
    keeps_filename = False  # the target names a file's object itself (``<id><ext>``)
    concurrent = True

    def __init__(self, dst: Database, conn: sa.Connection, client: ApiClient | None, *,
                 batch_size: int = DEFAULT_BATCH) -> None:
        self.client = client
        self.batch_size = batch_size
        self._controlled: dict[str, set[str]] = {}
        query = sa.select(sa.column("collection"), sa.column("field"), sa.column("special")).select_from(
            sa.table("directus_fields")).where(sa.column("special").is_not(None))
        for collection, name, special in conn.execute(query).all():
            if SERVER_SPECIALS & {s.strip() for s in str(special).split(",")}:
                self._controlled.setdefault(collection, set()).add(name)
        self._updates: dict[str, list[dict[str, Any]]] = {}
        self._uploads: dict[str, tuple[Location, str, Location, int]] = {}
        #: existing file rows whose bytes are missing: uploaded again before (and in the same task as) their update
        self._reuploads: dict[str, tuple[Mapping[str, Any], tuple[Location, str, Location, int]]] = {}
        self._pks: dict[str, str] = {}
        self.uploaded: list[str] = []

    def controlled(self, name: str) -> frozenset[str]:
        return frozenset(self._controlled.get(name, set())) | (FILES_CONTROLLED if name == FILES else frozenset())

    def prepare(self, name: str, dst_def: TableDef, names: list[str]) -> None:
        """Nothing to prepare: values travel in their neutral JSON form."""

    # ------------------------------------------------------------------ rows
    def create(self, name: str, pk: str, integer: bool, rows: list[dict[str, Any]], done: Done) -> None:
        assert self.client is not None
        client = self.client
        if name == FILES:
            for offset, row in enumerate(rows):
                self._create_file(row, lambda _, offset=offset, key=row[pk]: done([key], offset))
            return
        for offset, chunk in zip(range(0, len(rows), self.batch_size), _chunks(rows, self.batch_size)):
            body = [{n: v for n, v in row.items() if not (integer and n == pk)} for row in chunk]
            params = {"fields": pk, "sort": pk, "limit": -1}

            def post(body: list[dict[str, Any]] = body) -> list[Any]:
                response = client.request("POST", path(name), json=body, params=params)
                data = response.json()["data"] if response.content else None
                if not isinstance(data, list) or len(data) != len(body):
                    raise MigrateError(f"The target answered POST {path(name)} without the {len(body)} created rows",
                                       hint="the token needs read permission on what it creates (an admin's token)")
                return [item[pk] for item in data]

            if integer:  # each chunk's keys are recorded as it is acknowledged (a failed chunk records none)
                client.submit(post, lambda made, offset=offset: done(made, offset))
            else:
                client.submit(post, lambda _, chunk=chunk, offset=offset: done([row[pk] for row in chunk], offset))

    def create_user(self, values: Mapping[str, Any]) -> None:
        """A user ``--create-users`` creates (:mod:`.users`): ``POST /users`` (its id kept), answered before the walk
        writes a row that names the user."""
        assert self.client is not None
        self.client.request("POST", "/users", json={n: v for n, v in values.items() if n != "provider"},
                            params={"fields": "id"})

    def update(self, name: str, pk: str, target_key: Any, values: Mapping[str, Any]) -> None:
        if name == FILES:  # one task per file: its bytes (when missing) first, then its metadata
            self._update_file(str(target_key), dict(values))
            return
        self._pks[name] = pk
        pending = self._updates.setdefault(name, [])
        pending.append({pk: target_key, **values})
        if len(pending) >= self.batch_size:
            self._send_updates(name)

    def set_later(self, name: str, pk: str, target_key: Any, column: str, value: Any) -> None:
        self.update(name, pk, target_key, {column: value})

    def _send_updates(self, name: str) -> None:
        assert self.client is not None
        client, body = self.client, self._updates.pop(name, [])
        if body:
            client.submit(lambda: client.request("PATCH", path(name), json=body, params={"fields": self._pks[name]}))

    def delete(self, name: str, pk: str, batch: Iterable[Any]) -> None:
        assert self.client is not None
        client, keys = self.client, list(batch)
        client.submit(lambda: client.request("DELETE", path(name), json=keys))

    def flush(self) -> None:
        """Send what is buffered and wait for every answer; the first failure is raised."""
        for file_id in list(self._reuploads):
            self._update_file(file_id, {})
        for name in list(self._updates):
            self._send_updates(name)
        if self.client is not None:
            self.client.wait()

    def settle(self) -> None:
        """After a failure: send nothing more, but record the keys of every row the target acknowledged."""
        self._updates.clear()
        self._reuploads.clear()
        if self.client is not None:
            try:
                self.client.wait()
            except Exception:  # noqa: BLE001 - the first failure is already the report's
                pass

    def abandon(self) -> int:
        """After an interrupt: send nothing more, record what the target answered within the grace, and return how
        many requests were still unanswered (:meth:`ApiClient.abandon`)."""
        self._updates.clear()
        self._reuploads.clear()
        return self.client.abandon() if self.client is not None else 0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # ------------------------------------------------------------------ files
    def file_bytes(self, row: Mapping[str, Any], exists: bool, source: Location, source_name: str,
                   target: Location, target_name: str, size: int) -> None:
        """A new row's bytes go with its create; an existing row's missing bytes with its update (or at the flush)."""
        if not exists:
            self._uploads[str(row["id"])] = (source, source_name, target, size)
        else:
            self._reuploads[str(row["id"])] = (dict(row), (source, source_name, target, size))

    def _update_file(self, file_id: str, values: dict[str, Any]) -> None:
        assert self.client is not None
        client, reupload = self.client, self._reuploads.pop(file_id, None)

        metadata = dict(values)
        if reupload is not None:  # new bytes make the server extract metadata again: the source's row wins
            metadata = {k: v for k, v in reupload[0].items() if k != "id" and k not in FILES_CONTROLLED} | metadata

        def update() -> None:
            if reupload is not None:
                self._upload("PATCH", f"/files/{file_id}", *reupload)
            if metadata:
                client.request("PATCH", f"/files/{file_id}", json=metadata, params={"fields": "id"})

        client.submit(update)

    def _create_file(self, row: dict[str, Any], then: Any) -> None:
        assert self.client is not None
        client, file_id = self.client, str(row["id"])
        metadata = {n: v for n, v in row.items() if n != "id"}
        upload = self._uploads.pop(file_id, None)

        def create() -> None:
            if upload is None:  # a row without bytes: metadata only (CairnCMS needs its type)
                client.request("POST", "/files", json={"id": file_id, **metadata}, params={"fields": "id"})
            else:
                self._upload("POST", "/files", row, upload)
            client.request("PATCH", f"/files/{file_id}", json=metadata, params={"fields": "id"})

        client.submit(create, then)

    def _upload(self, method: str, where: str, row: Mapping[str, Any],
                upload: tuple[Location, str, Location, int]) -> None:
        """One multipart request with the row's id, storage and folder, then the bytes; the stored object
        is checked against the source."""
        assert self.client is not None
        source, source_name, target, size = upload
        fields = {"storage": row["storage"]}
        if method == "POST":
            fields["id"] = str(row["id"])
        if row.get("folder"):
            fields["folder"] = str(row["folder"])
        name = str(row.get("filename_download") or source_name)
        kind = str(row.get("type") or "application/octet-stream")
        opened: list[Any] = []

        def body() -> list[tuple[str, Any]]:
            for reader in opened:
                reader.close()
            reader = source.open_read(source_name)
            opened.append(reader)
            return [*((k, (None, v)) for k, v in fields.items()), ("file", (name, reader, kind))]

        try:
            response = self.client.request(method, where, rewind=body, params={"fields": "id,filename_disk"})
        finally:
            for reader in opened:
                reader.close()
        stored = (response.json().get("data") or {}).get("filename_disk") if response.content else None
        if stored and hasattr(target, "learn"):  # a target read through its API finds the object by the file's id
            target.learn(stored, str(row["id"]))
        if not stored or target.size(stored) != size or target.sha256(stored) != source.sha256(source_name):
            raise MigrateError(f"The target's copy of file {row['id']} ({stored}) does not match the source's "
                               f"{source_name} (size or SHA-256)",
                               hint="check the target's storage location and run the move again")
        self.uploaded.append(str(row["id"]))
