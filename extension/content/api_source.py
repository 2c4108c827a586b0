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
  files, folders, users and roles) with **keyset paging**: ``sort=<pk>``,
  ``filter[<pk>][_gt]=<last key>``, ``limit=N``, ``fields=*``: never ``offset``/``page``, whose cost
  grows with the offset (issue 12: 10.9k items/s at the start, 893/s at offset 500k on CairnCMS).
  Each page is written to SQLite before the next is asked for, so memory stays flat;
* the roots' rows through the move's filter as the API's ``filter`` (only the matching rows travel);
  a row the other collections then reference (a self-reference, a junction) that the filter left out
  is read by key afterwards, so the walk sees every row it would see on the source's database;
* a file's bytes from ``GET /assets/<id>`` (streamed, with the project's timeouts): the source's
  storage locations are replaced by one reader of its API.

Concealed values (passwords, tokens, 2FA secrets: the API answers ``**********``) become NULL; a move
never copies them.  The ID map of a URL source is kept per its URL (scheme, host, port, path).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from ..bundle.table_loader import TableLoader
from ..bundle.table_schema import Column, Index, TableDef
from ..bundle.workdir import scratch
from ..errors import ConfigError, Forbidden, InstanceUnreachable, InvalidInput, MigrateError, Unauthorized
from ..instance.database import Database, open_engine
from ..instance.instance import DatabaseConfig, Instance
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


def items_path(collection: str) -> str:
    return SYSTEM_PATHS.get(collection, f"/items/{collection}")


class SourceApi:
    """The source's API with an admin token: GETs with the project's timeouts and errors naming the fix."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, params: Mapping[str, Any] | None = None, *, stream: bool = False) -> requests.Response:
        try:
            response = self.session.get(self.url + path, params=params, stream=stream,
                                        timeout=(connect_timeout(), read_timeout()))
        except requests.RequestException as exc:
            raise InstanceUnreachable(f"The source {self.url} did not answer GET {path}: {exc}",
                                      hint=f"start it, or check --from; {timeout_hint('CAIRN_MIGRATE_READ_TIMEOUT')}") from None
        if response.status_code < 400:
            return response
        from .api_client import error_text

        text = error_text(response)
        response.close()
        if response.status_code == 401:
            raise Unauthorized(f"The source {self.url} refused the token (GET {path}: 401)",
                               hint="pass an admin's static token of the source with --from-token")
        if response.status_code == 403:
            raise Forbidden(f"The source {self.url} answered 403 to GET {path}: {text}",
                            hint="pass the static token of an admin of the source with --from-token")
        raise MigrateError(f"The source {self.url} answered {response.status_code} to GET {path}: {text}",
                           details={"status": response.status_code},
                           hint="check the source instance (its log says why)")

    def data(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self.get(path, params)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise MigrateError(f"The source {self.url} answered GET {path} with something that is not CairnCMS's "
                               "JSON", hint="check --from: it must be the CairnCMS instance's own URL") from None

    def check_admin(self) -> None:
        """The token must be an administrator's (a move reads every row, users and files included)."""
        me = self.data("/users/me", {"fields": "id,role.admin_access"}) or {}
        if (me.get("role") or {}).get("admin_access") is not True:
            raise Forbidden(f"The token for the source {self.url} is not an administrator's",
                            hint="pass the static token of an admin of the source with --from-token")

    def pages(self, collection: str, pk: str, *, where: Mapping[str, Any] | None = None,
              limit: int = PAGE) -> Iterator[list[dict[str, Any]]]:
        """Every row of ``collection`` (matching ``where``) in key order, a page at a time, by **keyset paging**:
        each page asks for the keys after the last one seen (``filter[pk][_gt]``), never for an offset."""
        last: Any = None
        while True:
            clauses = [dict(where)] if where else []
            if last is not None:
                clauses.append({pk: {"_gt": last}})
            params: dict[str, Any] = {"fields": "*", "sort": pk, "limit": limit}
            if clauses:
                params["filter"] = json.dumps(clauses[0] if len(clauses) == 1 else {"_and": clauses})
            rows = self.data(items_path(collection), params) or []
            if isinstance(rows, dict):  # a singleton answers one object
                rows = [rows]
            if rows:
                yield rows
            if len(rows) < limit:
                return
            last = rows[-1][pk]


class ApiFiles:
    """The source's file bytes as its API serves them (``GET /assets/<id>``): the walk's source location.

    The walk names a file by ``(storage, filename_disk)``; the file rows read into the scratch copy say which
    id that is."""

    def __init__(self, api: SourceApi, storage: str, ids: Mapping[tuple[str, str], str]) -> None:
        self.api, self.storage, self._ids = api, storage, ids
        self.name = f"api:{storage}"

    def _id(self, filename_disk: str) -> str | None:
        return self._ids.get((self.storage, filename_disk))

    def size(self, filename_disk: str) -> int | None:
        """The object's size as the API serves it (``HEAD /assets/<id>``), None when it has no bytes."""
        file_id = self._id(filename_disk)
        if file_id is None:
            return None
        try:
            response = self.api.session.head(f"{self.api.url}/assets/{file_id}",
                                             timeout=(connect_timeout(), read_timeout()))
        except requests.RequestException as exc:
            raise InstanceUnreachable(f"The source {self.api.url} did not answer HEAD /assets/{file_id}: {exc}",
                                      hint="start it, or check --from") from None
        if response.status_code in (403, 404) or response.status_code >= 500:
            return None  # CairnCMS answers 403/404/503 for an object its storage lacks
        length = response.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None

    def open_read(self, filename_disk: str) -> IO[bytes]:
        file_id = self._id(filename_disk)
        if file_id is None:
            raise ConfigError(f"the source holds no file row for {self.storage}:{filename_disk}")
        response = self.api.get(f"/assets/{file_id}", stream=True)
        response.raw.decode_content = True
        return _Body(response)

    def sha256(self, filename_disk: str) -> str:
        digest = hashlib.sha256()
        with self.open_read(filename_disk) as reader:
            while block := reader.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()


class _Body:
    """A streamed response body as a closable binary reader."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response

    def read(self, size: int = -1) -> bytes:
        return self.response.raw.read(None if size is None or size < 0 else size)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class ApiSource:
    """A URL source, materialised: the scratch instance to read, the API its bytes come from, its identity."""

    instance: Instance
    api: SourceApi
    tables: list[TableDef]
    label: str
    snapshot: dict[str, Any]
    file_ids: dict[tuple[str, str], str]
    read: dict[str, int]

    @property
    def scope(self) -> str:
        """The ID map's source identity: the instance's URL (so every move from it updates the same rows)."""
        return hashlib.sha256(("api\n" + normal_url(self.api.url)).encode("utf-8")).hexdigest()[:32]

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
        else:
            out.append(lambda v: None if v == CONCEALED else v)
    return out


def _relations(api: SourceApi) -> tuple[TableDef, list[list[Any]]]:
    """``directus_relations`` as the source's database holds it: the relations that have a meta row."""
    names = ["id", "many_collection", "many_field", "one_collection", "one_field", "one_collection_field",
             "one_allowed_collections", "junction_field", "sort_field", "one_deselect_action"]
    table = TableDef("directus_relations", [Column("id", "integer", nullable=False, autoincrement=True),
                                            *(Column(n, "string") for n in names[1:])], ["id"])
    rows = []
    for relation in api.data("/relations") or []:
        meta = relation.get("meta")
        if not meta or meta.get("system") or meta.get("id") is None:
            continue
        allowed = meta.get("one_allowed_collections")
        meta = {**meta, "one_allowed_collections": ",".join(allowed) if isinstance(allowed, list) else allowed}
        rows.append([meta.get(n) for n in names])
    return table, rows


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


@contextmanager
def open_source(url: str, token: str | None, params: Mapping[str, Any], *,
                progress: Progress | None = None, page: int = PAGE) -> Iterator[ApiSource]:
    """Read what the move ``params`` may reach from the running instance at ``url`` into a scratch SQLite copy.

    :raises InvalidInput: no token; a root that is not a collection of the source.
    :raises Unauthorized/Forbidden/InstanceUnreachable: the token, its role, the URL.
    """
    progress = progress or NullProgress()
    if not token:
        raise InvalidInput(f"content move --from {url} reads the source through its API: it needs an admin token",
                           hint="pass --from-token (from_token) of an admin of the source")
    api = SourceApi(url, token)
    api.check_admin()
    fields = api.data("/fields") or []
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for entry in fields:
        by_collection.setdefault(entry["collection"], []).append(entry)
    snapshot = api.data("/schema/snapshot")
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("fields"), list):
        raise MigrateError(f"The source {api.url} answered /schema/snapshot without a CairnCMS schema snapshot",
                           hint="the source must be a CairnCMS instance (Directus 9 has no /schema/snapshot)")
    roots = list(dict.fromkeys(params["collections"]))
    depth, spec = params.get("depth"), parse(params.get("filter"))
    with scratch() as workdir:
        database = workdir / "source.db"
        config = DatabaseConfig("sqlite3", "sqlite", sa.engine.URL.create("sqlite", database=str(database)))
        engine = open_engine(config, check=False, create=True)
        read: dict[str, int] = {}
        restricted: set[str] = set()
        file_ids: dict[tuple[str, str], str] = {}
        tables: list[TableDef] = []
        try:
            relations, relation_rows = _relations(api)
            field_table, field_rows = _fields_rows(fields)
            meta_loader = TableLoader(engine, "sqlite", [relations, field_table])
            try:
                meta_loader.load(relations.name, iter(relation_rows), {}, progress, False)
                meta_loader.load(field_table.name, iter(field_rows), {}, progress, False)
            finally:
                meta_loader.close()
            instance = Instance(env_path=None, folder=workdir, env={"PUBLIC_URL": api.url}, database=config,
                                locations=())
            with Database.open(instance) as db:
                graph = load_graph(db)
            defs = {name: d for name in by_collection if (d := _table(name, by_collection[name])) is not None}
            for root in roots:
                if root.startswith("directus_") or root not in defs:
                    raise InvalidInput(f"{root} is not a user collection of the source {api.url}",
                                       hint="name a collection of the source with --collection (not a directus_* "
                                       "table)")
            graph.keys.update({name: d.primary_key[0] for name, d in defs.items()})
            wanted = [n for n in graph.reachable(roots, None if depth is None else depth + 1) if n in defs]
            wanted = list(dict.fromkeys([*wanted, FILES, FOLDERS, USERS, ROLES]))
            wanted = [n for n in wanted if n in defs]
            # the m2o columns get an index: the closure looks children up by them
            for link in graph.links:
                if link.many in defs and link.many in wanted and link.field in {c.name for c in defs[link.many].columns}:
                    defs[link.many].indexes.append(Index(f"ix_{link.many}_{link.field}"[:60], [link.field]))
            tables = [defs[n] for n in wanted]
            loader = TableLoader(engine, "sqlite", tables)
            restricted = {r for r in roots if spec and _roots_restrictable(graph, r)}
            try:
                for name in wanted:
                    table = defs[name]
                    where = spec if name in restricted else None
                    read[name] = loader.load(name, _rows(api, table, by_collection[name], where, page, file_ids),
                                             {}, progress, False)
                    progress.check_cancelled()
            finally:
                loader.close()
        finally:
            engine.dispose()
        if spec and any(root in restricted for root in roots):
            _missing_roots(api, instance, defs, roots, spec, depth, by_collection, page, file_ids, read)
        yield ApiSource(instance, api, tables, f"{api.url} (API)", snapshot, file_ids, read)


def _rows(api: SourceApi, table: TableDef, fields: Sequence[Mapping[str, Any]], where: Mapping[str, Any] | None,
          page: int, file_ids: dict[tuple[str, str], str], pages: Iterator[list[dict[str, Any]]] | None = None) \
        -> Iterator[list[Any]]:
    """The collection's rows as the loader takes them, page after page (files: their id by storage object)."""
    by_name = {f["field"]: f for f in fields}
    convert = _converters(table, by_name)
    names = [c.name for c in table.columns]
    for rows in pages if pages is not None else api.pages(table.name, table.primary_key[0], where=where, limit=page):
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

    with Database.open(instance) as db:
        graph = source_graph(db, roots)
        for _round in range(100):
            fetched = 0
            with db.engine.connect() as conn:
                closure = compute(db, graph, {r: condition(spec, r)(db) for r in roots}, depth, conn)
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
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    sql = f'INSERT OR IGNORE INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(table.columns))})'
    count = 0
    for start in range(0, len(wanted), page):
        batch = api.data(items_path(table.name), {"fields": "*", "limit": -1,
                                                  "filter": json.dumps({pk: {"_in": wanted[start:start + page]}})})
        rows = [tuple(c(v) if c else v for c, v in zip(codecs, row))
                for row in _rows(api, table, fields, None, page, file_ids, iter([batch or []]))]
        if rows:
            with db.engine.begin() as conn:
                conn.exec_driver_sql(sql, rows)
            count += len(rows)
    return count


def check_distinct(source_url: str, target: Instance, to_url: str | None) -> None:
    """The same instance on both sides is refused (by URL: the target's ``--to-url`` or ``PUBLIC_URL``)."""
    theirs = to_url or target.public_url
    if theirs and is_url(theirs) and normal_url(theirs) == normal_url(source_url):
        raise InvalidInput(f"The source {source_url} and the target {target.label} are the same instance (the same URL)",
                           hint="name another instance with --to (or --from)")


