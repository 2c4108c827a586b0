"""A running instance named by URL + admin token as a content move's source: ``content move --from URL --from-token T``.

No ``.env``, no database access: what the walk needs is read through the source's own API and
materialised into a scratch SQLite database, and then the unchanged walk (closure, filter, schema
precondition, transforms, both sinks) reads that copy, exactly as it reads a bundle's
(:mod:`cairn_migrate.content.bundle_source`).  One code path for every source, so a URL source
plans and writes what a ``.env`` source of the same instance would.

What is read, and how:

* the structure: ``GET /fields`` (every collection's columns with their types and keys; alias fields
  are not columns), ``GET /relations`` (the rows of ``directus_relations``: the walk's graph) and
  ``GET /schema/snapshot`` (the precondition compares the source's own snapshot, as for a bundle);
* the rows of the collections the move may reach (the roots, what their links reach up to ``--depth``,
  files, folders, users and roles) never by ``offset``/``page``, whose cost grows with the offset (issue
  12: 10.9k items/s at the start, 893/s at offset 500k on CairnCMS): an integer (or date) key by **keyset
  paging**, ``sort=<pk>``, ``filter[<pk>][_gt]=<last key>``, ``limit=N``, ``fields=*``; a uuid or string
  key, which CairnCMS's filters cannot compare (no ``_gt``), by its key list (``fields=<pk>``, one streamed
  answer parsed as it arrives) and the rows of each N keys by ``filter[<pk>][_in]``.  Each page is written
  to SQLite before the next is asked for, so memory stays flat;
* the roots' rows through the move's filter as the API's ``filter`` (only the matching rows travel);
  a row the other collections then reference (a self-reference, a junction) that the filter left out
  is read by key afterwards, so the walk sees every row it would see on the source's database;
* a file's bytes from ``GET /assets/<id>`` (streamed, with the project's timeouts): the source's
  storage locations are replaced by one reader of its API.

The instance's admin is trusted for that instance only, never for the sidecar's host, so a hostile or broken
remote is held to limits: every request has an overall deadline and a ceiling on its answer's size
(:mod:`cairn_migrate.instance.bounded_http`: a body never longer than it announced, or than
``CAIRN_MIGRATE_MAX_RESPONSE_MB``), and every loop over its answers must make progress: a keyset page may
not hold more rows than asked for nor keys at or before the last one seen (the same page forever), a key
lookup only the keys asked for, and no collection more rows than the instance's own count of them (asked
first, ``aggregate[count]``, with room for rows added while it is read).

Concealed values (passwords, tokens, 2FA secrets: the API answers ``**********``) become NULL; a move
never copies them.  The ID map of a URL source is kept per its URL (scheme, host, port, path).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from ..bundle.table_loader import TableLoader
from ..bundle.table_schema import Column, ForeignKey, Index, TableDef
from ..bundle.workdir import scratch
from ..errors import ConfigError, InstanceUnreachable, InvalidInput, MigrateError, RemoteRefused
from ..instance import bounded_http
from ..instance.database import Database, open_engine
from ..instance.instance import DatabaseConfig, Instance, LocationConfig
from ..instance.storage import CHUNK
from ..instance.timeouts import connect_timeout, hint as timeout_hint, read_timeout
from ..progress import NullProgress, Progress
from .closure import FILES, FOLDERS, USERS, load_graph
from .filter import parse

ROLES = "directus_roles"
#: rows per page (CairnCMS's default QUERY_LIMIT_MAX is unlimited; a page this size is a few MB at most)
PAGE = 500
#: what the API answers for a concealed value
CONCEALED = "**********"
#: the endpoints of the system collections a move reads (``/items/directus_*`` is refused by the API)
SYSTEM_PATHS = {USERS: "/users", FILES: "/files", FOLDERS: "/folders", ROLES: "/roles"}
#: field ``type`` → neutral column type (:data:`cairn_migrate.bundle.table_schema.TYPES`)
TYPES = {"string": "string", "text": "text", "integer": "integer", "bigInteger": "bigint", "float": "float",
         "decimal": "decimal", "boolean": "boolean", "timestamp": "timestamp", "dateTime": "datetime",
         "date": "date", "time": "time", "json": "json", "csv": "text", "uuid": "uuid", "hash": "string",
         "binary": "text"}


def is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def normal_url(url: str) -> str:
    """``scheme://host:port/path`` (the ID map's identity of a URL source: one instance however it is spelled)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"


def url_scope(url: str) -> str:
    """The ID map's identity of an instance given by URL (:attr:`ApiSource.scope`)."""
    return hashlib.sha256(("api\n" + normal_url(url)).encode("utf-8")).hexdigest()[:32]


def items_path(collection: str) -> str:
    return SYSTEM_PATHS.get(collection, f"/items/{collection}")


class SourceApi:
    """A source's (or a URL target's) API with an admin token: GETs with the project's timeouts and errors naming
    the fix."""

    def __init__(self, url: str, token: str, *, side: str = "source") -> None:
        self.url = url.rstrip("/")
        self.side = side
        self.option = "--from" if side == "source" else "--to"
        self.session = bounded_http.session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, params: Mapping[str, Any] | None = None, *, stream: bool = False,
            method: str = "GET") -> requests.Response:
        """One request, bounded (:func:`~cairn_migrate.instance.bounded_http.request`); a refusal raises naming the
        fix.  ``stream``: the caller reads the body (:func:`~cairn_migrate.instance.bounded_http.iter_body`)."""
        try:
            response = bounded_http.request(self.session, method, self.url + path, params=params, stream=stream,
                                            timeout=(connect_timeout(), read_timeout()))
        except requests.RequestException as exc:
            raise InstanceUnreachable(f"The {self.side} {self.url} did not answer {method} {path}: {exc}",
                                      hint=f"start it, or check {self.option}; "
                                      f"{timeout_hint('CAIRN_MIGRATE_READ_TIMEOUT')}") from None
        if response.status_code < 400:
            return response
        from .api_client import error_text

        if stream:  # the error's text, read within the limits like any answer
            try:
                response._content = b"".join(bounded_http.iter_body(response, ERROR_BODY))  # type: ignore[attr-defined]
            except MigrateError:
                response._content = b""  # type: ignore[attr-defined]
        text = error_text(response)
        response.close()
        if response.status_code == 401:
            raise RemoteRefused(f"The {self.side} {self.url} refused the token (GET {path}: 401)",
                                 hint=f"pass an admin's static token of the {self.side} with {self.option}-token")
        if response.status_code == 403:
            raise RemoteRefused(f"The {self.side} {self.url} answered 403 to GET {path}: {text}",
                                hint=f"pass the static token of an admin of the {self.side} with {self.option}-token")
        raise MigrateError(f"The {self.side} {self.url} answered {response.status_code} to GET {path}: {text}",
                           details={"status": response.status_code},
                           hint=f"check the {self.side} instance (its log says why)")

    def data(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self.get(path, params)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise MigrateError(f"The {self.side} {self.url} answered GET {path} with something that is not CairnCMS's "
                               f"JSON", hint=f"check {self.option}: it must be the CairnCMS instance's own URL") from None

    def check_admin(self) -> None:
        """The token must be an administrator's (a move reads every row, users and files included)."""
        me = self.data("/users/me", {"fields": "id,role.admin_access"}) or {}
        if (me.get("role") or {}).get("admin_access") is not True:
            raise RemoteRefused(f"The token for the {self.side} {self.url} is not an administrator's",
                            hint=f"pass the static token of an admin of the {self.side} with {self.option}-token")

    def misbehaves(self, path: str, what: str) -> bounded_http.RemoteLimit:
        """The error of an answer that breaks the paging's contract (no progress, more rows than asked for)."""
        return bounded_http.RemoteLimit(
            f"The {self.side} {self.url} answered GET {path} with {what}: stopped reading it",
            details={"url": self.url + path},
            hint=f"check {self.option}: it must be the CairnCMS instance's own URL (a proxy or extension that ignores "
            "filter, sort or limit breaks the reading), and its rows must not be bulk-inserted while they are read")

    def count(self, collection: str, where: Mapping[str, Any] | None) -> int:
        """How many rows of ``collection`` (matching ``where``) the instance says it holds (``aggregate[count]``):
        the ceiling of what its pages may deliver."""
        params: dict[str, Any] = {"aggregate[count]": "*"}
        if where:
            params["filter"] = json.dumps(dict(where))
        data = self.data(items_path(collection), params)
        entry = data[0] if isinstance(data, list) and data else data
        value = entry.get("count") if isinstance(entry, dict) else None
        if isinstance(value, dict):  # ``aggregate[count]=<field>`` spells it per field
            value = next(iter(value.values()), None)
        try:
            number = int(str(value))
        except ValueError:
            raise self.misbehaves(items_path(collection), f"a count that is not a number ({value!r})") from None
        if number < 0:
            raise self.misbehaves(items_path(collection), f"a negative count ({number})")
        return number

    def pages(self, collection: str, pk: str, *, where: Mapping[str, Any] | None = None,
              limit: int = PAGE, ordered: bool = True) -> Iterator[list[dict[str, Any]]]:
        """Every row of ``collection`` (matching ``where``) in key order, a page at a time, never by offset.

        ``ordered`` (a key CairnCMS compares: integer, decimal, date and time types): **keyset paging**, each page
        the keys after the last one seen (``filter[pk][_gt]``).  CairnCMS refuses ``_gt`` on uuid and string
        fields (``getFilterOperatorsForType``), so for those keys the key column alone is read in one streamed
        answer (``fields=<pk>&sort=<pk>&limit=-1``, parsed as it arrives) and the rows of each ``limit`` keys
        are asked for by key (``filter[pk][_in]``): every page is an index lookup whatever its position.

        A remote that breaks this contract is stopped (:meth:`misbehaves`): a page with more than ``limit`` rows,
        a row without its key, a key at or before the last one seen (the same page again: paging that would
        never end), more rows in all than the instance's own count allows (:func:`_ceiling`)."""
        path = items_path(collection)
        ceiling = _ceiling(self.count(collection, where), limit)
        if not ordered:
            yield from self._pages_by_keys(collection, pk, where, limit, ceiling)
            return
        last: Any = None
        total = 0
        while True:
            clauses = [dict(where)] if where else []
            if last is not None:
                clauses.append({pk: {"_gt": last}})
            params: dict[str, Any] = {"fields": "*", "sort": pk, "limit": limit}
            if clauses:
                params["filter"] = json.dumps(clauses[0] if len(clauses) == 1 else {"_and": clauses})
            rows = self.data(path, params) or []
            if isinstance(rows, dict):  # a singleton answers one object
                rows = [rows]
            if not isinstance(rows, list) or len(rows) > limit:
                raise self.misbehaves(path, f"{len(rows) if isinstance(rows, list) else 'no list of'} rows to "
                                      f"limit={limit}")
            page_keys = _keys(self, path, rows, pk)
            if last is not None and not all(_after(k, last) for k in page_keys):
                raise self.misbehaves(path, f"rows at or before the last key read ({last!r}) to filter[{pk}][_gt]: "
                                      "keyset paging would never end")
            total += len(rows)
            if total > ceiling:
                raise self.misbehaves(path, f"more rows than its own count allows ({ceiling})")
            if rows:
                yield rows
            if len(rows) < limit:
                return
            last = page_keys[-1]

    def _pages_by_keys(self, collection: str, pk: str, where: Mapping[str, Any] | None,
                       limit: int, ceiling: int) -> Iterator[list[dict[str, Any]]]:
        params: dict[str, Any] = {"fields": pk, "sort": pk, "limit": -1}
        if where:
            params["filter"] = json.dumps(dict(where))
        path = items_path(collection)
        response = self.get(path, params, stream=True)
        try:
            batch: list[Any] = []
            listed = 0
            for key in _stream_values(response, pk):
                listed += 1
                if listed > ceiling:
                    raise self.misbehaves(path, f"a key list longer than its own count allows ({ceiling})")
                batch.append(key)
                if len(batch) >= limit:
                    yield self._rows_of(collection, pk, batch)
                    batch = []
            if batch:
                yield self._rows_of(collection, pk, batch)
        finally:
            response.close()

    def _rows_of(self, collection: str, pk: str, batch: list[Any]) -> list[dict[str, Any]]:
        """The rows with the keys ``batch``, in as many requests as keep each URL under :data:`MAX_FILTER`
        characters (Node refuses a request line over 16 KB: 500 uuids are ~21 KB once encoded)."""
        out: list[dict[str, Any]] = []
        for part in _url_sized(batch):
            rows = self.data(items_path(collection), {"fields": "*", "sort": pk, "limit": len(part),
                                                      "filter": json.dumps({pk: {"_in": part}})}) or []
            out.extend(self.only(items_path(collection), [rows] if isinstance(rows, dict) else rows, pk, part))
        return out

    def only(self, path: str, rows: Any, pk: str, asked: Sequence[Any]) -> list[dict[str, Any]]:
        """``rows``, the answer to a lookup of the keys ``asked``: no more rows than keys, and none with another
        key (a remote answering every lookup with its whole table would never let the closure settle)."""
        if not isinstance(rows, list) or len(rows) > len(asked):
            raise self.misbehaves(path, f"{len(rows) if isinstance(rows, list) else 'no list of'} rows to a lookup "
                                  f"of {len(asked)} keys")
        wanted = {str(k) for k in asked}
        stray = [k for k in _keys(self, path, rows, pk) if str(k) not in wanted]
        if stray:
            raise self.misbehaves(path, f"rows it was not asked for ({', '.join(map(repr, stray[:3]))}) to a lookup "
                                  "by key")
        return rows


#: the most of an error answer's body read for its message
ERROR_BODY = 65536
#: the longest one entry of a streamed key list may be (a key object is a few dozen bytes)
MAX_KEY_ENTRY = 65536


def _ceiling(count: int, limit: int) -> int:
    """The most rows a collection's reading may deliver: the instance's own count, with room for rows added while
    it is read (a tenth more, at least a page)."""
    return count + max(limit, count // 10)


def _keys(api: SourceApi, path: str, rows: list[Any], pk: str) -> list[Any]:
    """The keys of an answer's rows; a row that is not an object with its key stops the reading."""
    out = []
    for row in rows:
        if not isinstance(row, dict) or row.get(pk) is None:
            raise api.misbehaves(path, f"a row without its key {pk!r}")
        out.append(row[pk])
    return out


def _after(key: Any, last: Any) -> bool:
    """Whether ``key`` sorts after ``last`` as the instance compares them: numbers as numbers (decimals arrive as
    text), dates and times as their ISO text; keys of unlike kinds only have to differ."""
    def number(value: Any) -> float | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    a, b = number(key), number(last)
    if a is not None and b is not None:
        return a > b
    if isinstance(key, str) and isinstance(last, str):
        return key > last
    return key != last


#: the longest ``filter`` a key lookup sends (its URL-encoded JSON), well under Node's 16 KB request line
MAX_FILTER = 6000


def _url_sized(keys: list[Any]) -> Iterator[list[Any]]:
    """``keys`` in runs whose URL-encoded ``_in`` list stays under :data:`MAX_FILTER` characters."""
    from urllib.parse import quote

    part: list[Any] = []
    size = 0
    for key in keys:
        cost = len(quote(json.dumps(key))) + 3
        if part and size + cost > MAX_FILTER:
            yield part
            part, size = [], 0
        part.append(key)
        size += cost
    if part:
        yield part


def _stream_values(response: requests.Response, field: str) -> Iterator[Any]:
    """The ``field`` of each object of CairnCMS's ``{"data": [{…}, …]}`` answer, parsed while it streams in (one
    object at a time: memory stays flat however many rows the answer lists).  The answer is read within the
    limits (:func:`~cairn_migrate.instance.bounded_http.iter_body`); an entry longer than :data:`MAX_KEY_ENTRY`
    is refused (parsing a never-ending one again at every chunk would cost quadratic time)."""
    import codecs

    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer, started = "", False
    for raw in bounded_http.iter_body(response):
        buffer += text.decode(raw)
        if not started:
            at = buffer.find("[")
            if at < 0:
                continue
            buffer, started = buffer[at + 1:], True
        while True:
            buffer = buffer.lstrip(" \t\r\n,")
            if buffer.startswith("]"):
                return
            try:
                item, end = decoder.raw_decode(buffer)
            except ValueError:
                if len(buffer) > MAX_KEY_ENTRY:
                    raise bounded_http.RemoteLimit(
                        f"{response.url} answered a key list whose entry is longer than {MAX_KEY_ENTRY} characters "
                        "(a key list holds short objects): stopped reading it",
                        hint="check the URL: it must be the CairnCMS instance's own") from None
                break  # the object is not complete yet: read on
            yield item[field] if isinstance(item, dict) else item
            buffer = buffer[end:]
    if not started:
        raise MigrateError("The instance's answer to a key listing holds no data array",
                           hint="check the URL: it must be the CairnCMS instance's own")


#: field types CairnCMS compares with ``_gt`` (keyset paging on such a key); the others are read by key lists
ORDERED = frozenset({"integer", "bigInteger", "decimal", "float", "dateTime", "date", "time", "timestamp"})


class ApiFiles:
    """An instance's file bytes as its API serves them (``GET /assets/<id>``): the walk's source location (or, for
    a target given by URL, where it checks what the target stores).

    The walk names a file by ``(storage, filename_disk)``; the file rows read into the scratch copy say which
    id that is."""

    def __init__(self, api: SourceApi, storage: str, ids: dict[tuple[str, str], str]) -> None:
        self.api, self.storage, self._ids = api, storage, ids
        self.name = f"api:{storage}"

    def learn(self, filename_disk: str, file_id: str) -> None:
        """A file the move just uploaded to a target given by URL: its object is found by its id from now on."""
        self._ids[(self.storage, filename_disk)] = file_id

    def _id(self, filename_disk: str) -> str | None:
        return self._ids.get((self.storage, filename_disk))

    def size(self, filename_disk: str) -> int | None:
        """The object's size as the API serves it (``HEAD /assets/<id>``), None when it has no bytes."""
        file_id = self._id(filename_disk)
        if file_id is None:
            return None
        try:
            response = bounded_http.request(self.api.session, "HEAD", f"{self.api.url}/assets/{file_id}",
                                            timeout=(connect_timeout(), read_timeout()))
        except requests.RequestException as exc:
            raise InstanceUnreachable(f"The {self.api.side} {self.api.url} did not answer HEAD /assets/{file_id}: "
                                      f"{exc}", hint=f"start it, or check {self.api.option}") from None
        if response.status_code in (403, 404) or response.status_code >= 500:
            return None  # CairnCMS answers 403/404/503 for an object its storage lacks
        length = response.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None

    def open_read(self, filename_disk: str) -> IO[bytes]:
        file_id = self._id(filename_disk)
        if file_id is None:
            raise ConfigError(f"the source holds no file row for {self.storage}:{filename_disk}")
        # never longer than it announces (or the ceiling without a length), never past the deadline
        return bounded_http.BoundedBody(self.api.get(f"/assets/{file_id}", stream=True))

    def sha256(self, filename_disk: str) -> str:
        digest = hashlib.sha256()
        with self.open_read(filename_disk) as reader:
            while block := reader.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()


@dataclass
class ApiSource:
    """A URL source, materialised: the scratch instance to read, the API its bytes come from, its identity."""

    instance: Instance
    api: SourceApi
    #: a source: every collection its API describes (what ``--mask`` is checked against); a target: those read
    tables: list[TableDef]
    label: str
    snapshot: dict[str, Any]
    file_ids: dict[tuple[str, str], str]
    read: dict[str, int]

    @property
    def scope(self) -> str:
        """The ID map's source identity: the instance's URL (so every move from it updates the same rows)."""
        return url_scope(self.api.url)

    def schema_snapshot(self) -> dict[str, Any]:
        return self.snapshot

    def files(self, storage: str) -> ApiFiles:
        return ApiFiles(self.api, storage, self.file_ids)


def _table(collection: str, fields: Sequence[Mapping[str, Any]]) -> TableDef | None:
    """The scratch table of a collection from its ``/fields`` entries (alias fields, which have no ``schema``,
    are not columns); None when it has no single primary key."""
    columns: list[Column] = []
    pk: list[str] = []
    for entry in fields:
        schema = entry.get("schema")
        if not schema or entry.get("type") == "alias":
            continue
        kind = TYPES.get(str(entry.get("type")), "text")
        columns.append(Column(entry["field"], kind, nullable=True,
                              precision=schema.get("numeric_precision") if kind == "decimal" else None,
                              scale=schema.get("numeric_scale") if kind == "decimal" else None,
                              autoincrement=bool(schema.get("has_auto_increment"))))
        if schema.get("is_primary_key"):
            pk.append(entry["field"])
            columns[-1].nullable = False
    if len(pk) != 1 or not columns:
        return None
    return TableDef(collection, columns, pk)


def _flags(entry: Mapping[str, Any]) -> set[str]:
    special = (entry.get("meta") or {}).get("special")
    if isinstance(special, str):
        return {s.strip() for s in special.split(",") if s.strip()}
    return {str(s) for s in special or ()}


def _converters(table: TableDef, fields: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """Per column: the API's JSON value → the neutral form the loader takes (csv arrays joined, JSON as text,
    concealed values NULL)."""
    out = []
    for column in table.columns:
        flags = _flags(fields.get(column.name) or {})
        if "conceal" in flags or "hash" in flags:
            out.append(lambda v: None)
        elif "cast-csv" in flags or (fields.get(column.name) or {}).get("type") == "csv":
            out.append(lambda v: ",".join(map(str, v)) if isinstance(v, list) else v)
        elif column.type == "json":
            out.append(lambda v: None if v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":")))
        else:  # a geometry's GeoJSON (or any structured value) in a text column: its JSON text
            out.append(lambda v: None if v == CONCEALED else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                       if isinstance(v, (dict, list)) else v)
    return out


def _relations(api: SourceApi) -> tuple[TableDef, list[list[Any]], list[dict[str, Any]]]:
    """``directus_relations`` as the instance's database holds it (the relations that have a meta row), and every
    relation as the API gave it (their ``schema``: the foreign keys)."""
    names = ["id", "many_collection", "many_field", "one_collection", "one_field", "one_collection_field",
             "one_allowed_collections", "junction_field", "sort_field", "one_deselect_action"]
    table = TableDef("directus_relations", [Column("id", "integer", nullable=False, autoincrement=True),
                                            *(Column(n, "string") for n in names[1:])], ["id"])
    rows = []
    raw = api.data("/relations") or []
    for relation in raw:
        meta = relation.get("meta")
        if not meta or meta.get("system") or meta.get("id") is None:
            continue
        allowed = meta.get("one_allowed_collections")
        meta = {**meta, "one_allowed_collections": ",".join(allowed) if isinstance(allowed, list) else allowed}
        rows.append([meta.get(n) for n in names])
    return table, rows, raw


def _fields_rows(fields: Sequence[Mapping[str, Any]]) -> tuple[TableDef, list[list[Any]]]:
    """``directus_fields``' columns the walk reads (``collection``, ``field``, ``special``), for the fields that
    have a meta row that is not the system's."""
    table = TableDef("directus_fields", [Column("id", "integer", nullable=False, autoincrement=True),
                                         Column("collection", "string"), Column("field", "string"),
                                         Column("special", "string")], ["id"])
    rows = []
    for entry in fields:
        meta = entry.get("meta")
        if not meta or meta.get("system") or meta.get("id") is None:
            continue
        rows.append([meta["id"], entry["collection"], entry["field"], ",".join(sorted(_flags(entry))) or None])
    return table, rows


def _roots_restrictable(graph: Any, root: str) -> bool:
    """Whether the roots' filter may be the API's: no o2m alias of another collection reaches into the root
    (the closure would take all the root rows of a reached parent that way) and no m2a names it; the m2o
    references into the root that the closure follows are read afterwards by key (:func:`_missing_roots`)."""
    return not any(link.many == root and link.one_field and link.one != root or root in link.allowed
                   for link in graph.links)


def _connect(url: str, token: str | None, side: str) -> tuple[SourceApi, list[dict[str, Any]], dict[str, Any]]:
    """The API of ``side`` (``source``/``target``) checked (token, admin role, reachability), its ``/fields`` and
    its schema snapshot."""
    option = "--from-token (from_token)" if side == "source" else "--to-token (to_token)"
    if not token:
        raise InvalidInput(f"content move reads the {side} {url} through its API: it needs an admin token",
                           hint=f"pass {option} of an admin of the {side}")
    api = SourceApi(url, token, side=side)
    api.check_admin()
    fields = api.data("/fields") or []
    snapshot = api.data("/schema/snapshot")
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("fields"), list):
        raise MigrateError(f"The {side} {api.url} answered /schema/snapshot without a CairnCMS schema snapshot",
                           hint=f"the {side} must be a CairnCMS instance (Directus 9 has no /schema/snapshot)")
    return api, fields, snapshot


def _scratch_structure(api: SourceApi, fields: list[dict[str, Any]], workdir: Path, progress: Progress) \
        -> tuple[DatabaseConfig, sa.Engine, Any, dict[str, TableDef], dict[str, list[dict[str, Any]]], list[Any]]:
    """The scratch database with ``directus_relations`` and ``directus_fields`` loaded; the instance's graph,
    every collection's table definition and fields, and its relations as the API gave them."""
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for entry in fields:
        by_collection.setdefault(entry["collection"], []).append(entry)
    config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(workdir / "copy.db")))
    engine = open_engine(config, check=False, create=True)
    relations, relation_rows, raw = _relations(api)
    field_table, field_rows = _fields_rows(fields)
    meta_loader = TableLoader(engine, "sqlite", [relations, field_table])
    try:
        meta_loader.load(relations.name, iter(relation_rows), {}, progress, False)
        meta_loader.load(field_table.name, iter(field_rows), {}, progress, False)
    finally:
        meta_loader.close()
    probe = Instance(env_path=None, folder=workdir, env={}, database=config, locations=())
    with Database.open(probe) as db:
        graph = load_graph(db)
    defs = {name: d for name in by_collection if (d := _table(name, by_collection[name])) is not None}
    graph.keys.update({name: d.primary_key[0] for name, d in defs.items()})
    # the m2o columns get an index: the closure (and the target's lookups) find rows by them
    for link in graph.links:
        if link.many in defs and link.field in {c.name for c in defs[link.many].columns}:
            defs[link.many].indexes.append(Index(f"ix_{link.many}_{link.field}"[:60], [link.field]))
    return config, engine, graph, defs, by_collection, raw


@contextmanager
def open_source(url: str, token: str | None, params: Mapping[str, Any], *,
                progress: Progress | None = None, page: int = PAGE) -> Iterator[ApiSource]:
    """Read what the move ``params`` may reach from the running instance at ``url`` into a scratch SQLite copy.

    :raises InvalidInput: no token; a root that is not a collection of the source.
    :raises Unauthorized/Forbidden/InstanceUnreachable: the token, its role, the URL.
    """
    progress = progress or NullProgress()
    api, fields, snapshot = _connect(url, token, "source")
    roots = list(dict.fromkeys(params["collections"]))
    depth, spec = params.get("depth"), parse(params.get("filter"))
    with scratch() as workdir:
        config, engine, graph, defs, by_collection, _raw = _scratch_structure(api, fields, workdir, progress)
        read: dict[str, int] = {}
        restricted: set[str] = set()
        file_ids: dict[tuple[str, str], str] = {}
        try:
            for root in roots:
                if root.startswith("directus_") or root not in defs:
                    users = ", ".join(sorted(n for n in defs if not n.startswith("directus_"))) or "none"
                    raise InvalidInput(f"{root} is not a user collection of the source {api.url} (its collections: "
                                       f"{users})", hint="name one of them (the CLI's --collection, the API's "
                                       "'collections'); directus_* tables move only with the rows that reference them")
            wanted = [n for n in graph.reachable(roots, None if depth is None else depth + 1) if n in defs]
            wanted = [n for n in dict.fromkeys([*wanted, FILES, FOLDERS, USERS, ROLES]) if n in defs]
            tables = [defs[n] for n in wanted]
            restricted = {r for r in roots if spec and _roots_restrictable(graph, r)}
            _load(api, engine, tables, by_collection, {r: spec for r in restricted}, page, file_ids, read, progress)
        finally:
            engine.dispose()
        instance = Instance(env_path=None, folder=workdir, env={"PUBLIC_URL": api.url}, database=config, locations=())
        if spec and restricted:
            _missing_roots(api, instance, defs, roots, spec, depth, by_collection, page, file_ids, read)
        # every collection the API describes, not only those loaded: a masking profile is checked against the
        # source's whole structure (pii-basic names directus_sessions and directus_activity, which no move reads)
        yield ApiSource(instance, api, list(defs.values()), f"{api.url} (API)", snapshot, file_ids, read)


@contextmanager
def open_target(url: str, token: str | None, collections: Iterable[str], *, progress: Progress | None = None,
                page: int = PAGE, agents: Iterable[str] = ()) -> Iterator[ApiSource]:
    """A read-only mirror of the running target at ``url`` for a move ``--via api`` (no ``.env``): the rows of
    ``collections`` (what the move may reach), of the collections whose foreign keys lead to them (mirror's
    ``ON DELETE CASCADE`` count), and its files, folders, users and roles, read by keyset paging into a scratch
    SQLite database, with the target's foreign keys.  The walk reads it where it reads a target's database; its
    writes go to the target's API (:class:`~cairn_migrate.content.sink_api.ApiSink`), and it is read once,
    before the walk, as the database path reads the target once inside its transaction.

    ``agents``: the ``User-Agent`` markers of write requests an earlier move sent and never saw answered; the
    target's ``directus_activity`` rows of those requests, and its collections' ``accountability``, are mirrored
    too, so :func:`~cairn_migrate.content.sink_api.settle_sent` finds what they created as on a ``.env`` target.

    :raises Unauthorized/Forbidden/InstanceUnreachable: the token, its role, the URL.
    """
    progress = progress or NullProgress()
    api, fields, snapshot = _connect(url, token, "target")
    with scratch() as workdir:
        config, engine, _graph, defs, by_collection, raw = _scratch_structure(api, fields, workdir, progress)
        read: dict[str, int] = {}
        file_ids: dict[tuple[str, str], str] = {}
        try:
            wanted = [n for n in dict.fromkeys([*collections, FILES, FOLDERS, USERS, ROLES]) if n in defs]
            foreign = [r.get("schema") for r in raw if r.get("schema") and r["schema"].get("foreign_key_table")]
            # the user tables whose foreign keys lead (transitively) to rows a move may delete (not users or roles,
            # which it never deletes): the cascades mirror counts
            deletable = set(wanted) - {USERS, ROLES}
            while True:
                more = [f["table"] for f in foreign if f["foreign_key_table"] in deletable and f["table"] in defs
                        and f["table"] not in wanted and not f["table"].startswith("directus_")]
                if not more:
                    break
                wanted.extend(dict.fromkeys(more))
                deletable.update(more)
            for key in foreign:
                table = defs.get(key["table"])
                if table is not None and key["foreign_key_table"] in wanted and key.get("column") in {
                        c.name for c in table.columns}:
                    table.foreign_keys.append(ForeignKey([key["column"]], key["foreign_key_table"],
                                                         [key.get("foreign_key_column") or "id"],
                                                         key.get("constraint_name"),
                                                         (key.get("on_delete") or "NO ACTION").upper()))
            tables = [defs[n] for n in wanted]
            _load(api, engine, tables, by_collection, {}, page, file_ids, read, progress)
            if agents:
                _load_activity(api, engine, snapshot, sorted(set(agents)), progress)
            with engine.connect() as conn:
                storages = sorted({str(s) for (s,) in conn.execute(sa.text(f'SELECT DISTINCT storage FROM "{FILES}"'))
                                   if s}) if FILES in wanted else []
        finally:
            engine.dispose()
        # the storage names the target's file rows use (the walk picks a moved file's storage among them)
        locations = tuple(LocationConfig(name, "api") for name in storages or ["local"])
        instance = Instance(env_path=None, folder=workdir, env={"PUBLIC_URL": api.url}, database=config,
                            locations=locations)
        yield ApiSource(instance, api, tables, f"{api.url} (API)", snapshot, file_ids, read)


def _load_activity(api: SourceApi, engine: sa.Engine, snapshot: Mapping[str, Any], agents: list[str],
                   progress: Progress) -> None:
    """The target's ``create`` activity of the marked requests ``agents`` (``GET /activity``, a few markers a
    request: each is a short ``_in`` list) and its collections' ``accountability`` (from its schema snapshot)."""
    names = ["id", "action", "collection", "item", "user_agent"]
    activity = TableDef("directus_activity", [Column("id", "integer", nullable=False),
                                              *(Column(n, "string") for n in names[1:])], ["id"])
    collections = TableDef("directus_collections", [Column("collection", "string", nullable=False),
                                                    Column("accountability", "string")], ["collection"])
    rows: list[list[Any]] = []
    for start in range(0, len(agents), 40):
        part = agents[start:start + 40]
        found = api.data("/activity", {"fields": ",".join(names), "sort": "id", "limit": -1, "filter": json.dumps(
            {"action": {"_eq": "create"}, "user_agent": {"_in": part}})}) or []
        if not isinstance(found, list):
            raise api.misbehaves("/activity", "no list of activity rows")
        rows += [[entry.get(n) for n in names] for entry in found if isinstance(entry, dict)
                 and entry.get("user_agent") in part]
    kept = [[c["collection"], (c.get("meta") or {}).get("accountability")] for c in snapshot.get("collections") or []
            if isinstance(c, dict) and c.get("collection") and c.get("meta")]
    loader = TableLoader(engine, "sqlite", [activity, collections])
    try:
        loader.load(activity.name, iter(rows), {}, progress, False)
        loader.load(collections.name, iter(kept), {}, progress, False)
    finally:
        loader.close()


def _load(api: SourceApi, engine: sa.Engine, tables: Sequence[TableDef], by_collection: Mapping[str, Any],
          where: Mapping[str, Any], page: int, file_ids: dict[tuple[str, str], str], read: dict[str, int],
          progress: Progress) -> None:
    """Create ``tables`` in the scratch database and stream their rows into it, page after page."""
    loader = TableLoader(engine, "sqlite", tables)
    try:
        for table in tables:
            read[table.name] = loader.load(table.name, _rows(api, table, by_collection[table.name],
                                                             where.get(table.name), page, file_ids),
                                           {}, progress, False)
            progress.check_cancelled()
    finally:
        loader.close()


def _rows(api: SourceApi, table: TableDef, fields: Sequence[Mapping[str, Any]], where: Mapping[str, Any] | None,
          page: int, file_ids: dict[tuple[str, str], str], pages: Iterator[list[dict[str, Any]]] | None = None) \
        -> Iterator[list[Any]]:
    """The collection's rows as the loader takes them, page after page (files: their id by storage object)."""
    by_name = {f["field"]: f for f in fields}
    convert = _converters(table, by_name)
    names = [c.name for c in table.columns]
    pk = table.primary_key[0]
    ordered = str((by_name.get(pk) or {}).get("type")) in ORDERED
    for rows in pages if pages is not None else api.pages(table.name, pk, where=where, limit=page, ordered=ordered):
        for row in rows:
            if table.name == FILES and row.get("filename_disk"):
                file_ids[(str(row.get("storage")), str(row["filename_disk"]))] = str(row["id"])
            yield [c(row.get(n)) for c, n in zip(convert, names)]


def _missing_roots(api: SourceApi, instance: Instance, defs: Mapping[str, TableDef], roots: list[str],
                   spec: Mapping[str, Any] | None, depth: int | None, by_collection: Mapping[str, list[dict[str, Any]]],
                   page: int, file_ids: dict[tuple[str, str], str], read: dict[str, int]) -> None:
    """Root rows the API's filter left out that the move's closure reaches (a self-reference, an m2m back to
    the root collection), read by key until none is missing: the walk then sees every row it would see on the
    source's database.  The closure is the walk's own (:func:`~cairn_migrate.content.closure.compute`)."""
    from . import keys as key_rules
    from .closure import compute
    from .move import condition, source_graph
    from .spill import Spill

    with Database.open(instance) as db:
        graph = source_graph(db, roots)
        for _round in range(100):
            fetched = 0
            with db.engine.connect() as conn, Spill.open() as spill:
                closure = compute(db, graph, {r: condition(spec, r)(db) for r in roots}, depth, conn, spill)
                for root in roots:
                    pk, missing = graph.keys[root], set()
                    for link in graph.links:
                        if link.one != root or not closure.rows.get(link.many) or link.many not in graph.keys:
                            continue
                        many_pk, held = graph.keys[link.many], sorted(closure.rows[link.many], key=str)
                        for start in range(0, len(held), page):
                            query = sa.select(sa.column(link.field)).select_from(sa.table(link.many)).where(
                                key_rules.in_(db, link.many, many_pk, held[start:start + page]),
                                sa.column(link.field).is_not(None))
                            missing.update(conn.execute(query).scalars())
                    have: set[Any] = set()
                    listed = sorted(missing, key=str)
                    for start in range(0, len(listed), page):
                        have.update(conn.execute(sa.select(sa.column(pk)).select_from(sa.table(root)).where(
                            key_rules.in_(db, root, pk, listed[start:start + page]))).scalars())
                    got = _fetch(api, db, defs[root], by_collection[root], sorted(missing - have, key=str), page,
                                 file_ids)
                    read[root] = read.get(root, 0) + got
                    fetched += got
            if not fetched:
                return
    raise MigrateError("The source's references into the moved collections did not settle after 100 rounds",
                       hint="move with a narrower --filter or --depth")


def _fetch(api: SourceApi, db: Database, table: TableDef, fields: Sequence[Mapping[str, Any]], wanted: list[Any],
           page: int, file_ids: dict[tuple[str, str], str]) -> int:
    """Read the rows of ``table`` with the keys ``wanted`` (``filter[pk][_in]``, a page at a time) into the copy."""
    from ..bundle.values import encoder

    pk = table.primary_key[0]
    codecs = [encoder(c.type, "sqlite") for c in table.columns]
    quote = db.engine.dialect.identifier_preparer.quote  # the names are the remote's (its /fields): quoted, escaped
    names = ", ".join(quote(c.name) for c in table.columns)
    sql = f'INSERT OR IGNORE INTO {quote(table.name)} ({names}) VALUES ({", ".join("?" * len(table.columns))})'
    count = 0
    for part in _url_sized(wanted):
        path = items_path(table.name)
        batch = api.only(path, api.data(path, {"fields": "*", "limit": -1, "filter": json.dumps({pk: {"_in": part}})})
                         or [], pk, part)
        rows = [tuple(c(v) if c else v for c, v in zip(codecs, row))
                for row in _rows(api, table, fields, None, page, file_ids, iter([batch]))]
        if rows:
            with db.engine.begin() as conn:
                conn.exec_driver_sql(sql, rows)
            count += len(rows)
    return count


def check_distinct(source: str | Instance, target: str | Instance, to_url: str | None = None) -> None:
    """The same instance on both sides is refused (by URL: a side given by URL, a ``.env``'s ``PUBLIC_URL``, or
    the target's ``--to-url``)."""
    def url(side: str | Instance, override: str | None = None) -> str | None:
        value = override or (side if isinstance(side, str) else side.public_url)
        return normal_url(value) if value and is_url(value) else None

    ours, theirs = url(source), url(target, to_url)
    if ours is not None and ours == theirs:
        label = lambda side: side if isinstance(side, str) else side.label  # noqa: E731
        raise InvalidInput(f"The source {label(source)} and the target {label(target)} are the same instance "
                           "(the same URL)", hint="name another instance with --to (or --from)")
