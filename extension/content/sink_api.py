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

A ``POST`` of integer-keyed rows cannot be repeated blindly: the target numbers the rows, and an answer
never read (an interrupt after the grace, a kill, a lost connection) leaves rows the ID map does not know.  So
each such request carries a marker as its ``User-Agent`` (CairnCMS writes it into the ``directus_activity`` row
of every item it creates, in the request's transaction), its rows are recorded ``sent`` with that marker before
it leaves (:meth:`~cairn_migrate.content.keys.IdMap.record_sent`), and the next run settles them first
(:func:`settle_sent`): the target keys the request created, read from the activity rows, or nothing created.

Columns the target sets itself on this path (``date-created``/``user-created``/``date-updated``/
``user-updated``/``role-*`` specials; a file's ``filename_disk``, ``uploaded_by``, ``modified_*`` and
``filesize``) are neither sent nor compared: the API overwrites them, so comparing them would make every
re-run an update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ..bundle.table_schema import TableDef
from ..errors import MigrateError
from ..instance.database import Database
from ..instance.storage import Location
from .api_client import DEFAULT_BATCH, AlreadyDone, ApiClient
from .closure import FILES, FOLDERS
from .keys import IdMap
from .sink_db import Done

#: specials whose values CairnCMS's payload service sets on create or update
SERVER_SPECIALS = frozenset({"date-created", "user-created", "role-created", "date-updated", "user-updated",
                             "role-updated"})
#: what ``/files`` sets itself (``SERVER_CONTROLLED_FIELDS``, the object's stat, the caller)
FILES_CONTROLLED = frozenset({"filename_disk", "uploaded_by", "modified_by", "modified_on", "filesize"})


def agent(marker: str) -> str:
    """The ``User-Agent`` of a marked write request (CairnCMS keeps 255 characters of it in ``directus_activity``)."""
    return f"cairn-migrate content-move {marker}"


def settle_sent(idmap: IdMap, conn: sa.Connection, *, persist: bool = True) -> dict[str, Any]:
    """Settle the rows an earlier move sent through the target's API without reading the answer (``sent`` entries
    of the ID map), before this run decides anything: a request's rows are the items CairnCMS created for it, as
    its ``directus_activity`` rows with the request's marker say (``action`` create, in creation order, which is
    the order the rows were sent); none: the request's transaction never committed, the rows are created again.

    Returns the report's ``resumed``: per collection the rows found (``found``), found not written
    (``not_written``), rows a gateway's retry wrote twice (``written_twice``: the extra target keys, left alone),
    and the source keys it cannot tell (``uncertain``: a collection that keeps no activity, its ``accountability``
    NULL, or a target without a ``directus_activity`` to read): the walk then matches them like any row the map
    does not know (a unique column, a junction pair, every column equal), else creates them, possibly a second
    time, and the report says which.

    :param conn: the target's database, or the mirror of a target given by URL (which holds the activity of the
        marked requests: :func:`cairn_migrate.content.api_source.open_target`).
    :param persist: False in a dry run: the entries stay for the real run.
    """
    if not idmap.sent:
        return {}
    requests_: dict[str, list[tuple[str, str, int, int]]] = {}
    for (collection, source_id), (marker, position, size) in idmap.sent.items():
        requests_.setdefault(marker, []).append((collection, source_id, position, size))
    inspector = sa.inspect(conn)
    logged = inspector.has_table("directus_activity") and inspector.has_table("directus_collections")
    untracked: set[str] = set()  # collections whose accountability is NULL: CairnCMS writes them no activity
    created: dict[tuple[str, str], list[str]] = {}
    if logged:
        untracked = {str(c) for c, a in conn.execute(sa.text(
            "SELECT collection, accountability FROM directus_collections")) if a is None}
        activity = sa.table("directus_activity", sa.column("id"), sa.column("action"), sa.column("collection"),
                            sa.column("item"), sa.column("user_agent"))
        markers = sorted(requests_)
        for start in range(0, len(markers), 200):
            agents = {agent(m): m for m in markers[start:start + 200]}
            query = sa.select(activity.c.user_agent, activity.c.collection, activity.c.item).where(
                activity.c.action == "create", activity.c.user_agent.in_(list(agents))).order_by(activity.c.id)
            for user_agent, collection, item in conn.execute(query):
                created.setdefault((agents[user_agent], str(collection)), []).append(str(item))
    found: dict[tuple[str, str], str | None] = {}
    report: dict[str, dict[str, Any]] = {}
    for marker, entries in requests_.items():
        for collection, source_id, position, size in entries:
            counts = report.setdefault(collection, {"found": 0, "not_written": 0, "written_twice": [],
                                                    "uncertain": []})
            items = created.get((marker, collection), [])
            if not logged or collection in untracked or (items and (not size or len(items) % size)):
                counts["uncertain"].append(source_id)  # no activity to read, or not the request's rows alone
                found[(collection, source_id)] = None
            elif not items:
                counts["not_written"] += 1
                found[(collection, source_id)] = None
            else:
                counts["found"] += 1
                found[(collection, source_id)] = items[position]
                if position == 0 and len(items) > size:  # a retry after a gateway's 502/504 wrote it again
                    counts["written_twice"].extend(items[size:])
    idmap.resolve_sent(found, persist=persist)
    for counts in report.values():
        counts["uncertain"].sort(key=lambda k: (len(k), k))
        counts["written_twice"].sort(key=lambda k: (len(k), k))
    return report


def _created_by(client: ApiClient, collection: str, user_agent: str, rows: int) -> None:
    """Before a marked POST is sent again: the items an earlier attempt created, from the target's
    ``directus_activity`` (``GET /activity``, by the request's ``User-Agent``); raises :class:`AlreadyDone` with
    their keys when the attempt was applied (a gateway answered 502/504, or the connection dropped, after
    CairnCMS committed), so the rows are not created a second time."""
    response = client.request("GET", "/activity", params={
        "fields": "item", "sort": "id", "limit": -1,
        "filter": json.dumps({"action": {"_eq": "create"}, "collection": {"_eq": collection},
                              "user_agent": {"_eq": user_agent}})})
    items = (response.json().get("data") or []) if response.content else []
    if len(items) >= rows:
        raise AlreadyDone([int(item["item"]) for item in items[:rows]])


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
                 batch_size: int = DEFAULT_BATCH, idmap: IdMap | None = None) -> None:
        self.client = client
        self.batch_size = batch_size
        #: where an integer-keyed batch is recorded ``sent`` before its POST (:meth:`IdMap.record_sent`)
        self.idmap = idmap
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

    def prepare(self, name: str, dst_def: TableDef, names: list[str], *, rows: int = 0) -> None:
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
            headers: dict[str, str] = {}
            if integer and self.idmap is not None:  # recorded before it leaves: an unread answer is found again
                marker = self.idmap.marker()
                self.idmap.record_sent(name, marker, [row[pk] for row in chunk])
                headers["User-Agent"] = agent(marker)

            def post(body: list[dict[str, Any]] = body, headers: dict[str, str] = headers) -> list[Any]:
                check = None
                if "User-Agent" in headers:  # before a retry: did the lost attempt create the rows already?
                    check = lambda: _created_by(client, name, headers["User-Agent"], len(body))  # noqa: E731
                try:
                    response = client.request("POST", path(name), json=body, params=params, headers=headers,
                                              before_retry=check)
                except AlreadyDone as done_before:
                    return list(done_before.result)
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
