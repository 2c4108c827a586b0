"""``promote``: move an instance's structure (schema, roles and permissions) onto another, dev → prod.

The target is a running CairnCMS, so the work goes through its own API (reference §2.3, §3.6):
``POST /schema/diff`` of the source's snapshot gives the diff and the hash of the target's
current schema, ``POST /schema/apply`` applies exactly that diff (a target changed in between
refuses the hash); ``POST /config/apply?dry_run=true`` plans the roles and permissions and the same
call without ``dry_run`` applies them.  Schema goes first, because permissions name collections.

CairnCMS's own apply drops populated tables and columns without asking and its CLI skips the
vendor/version check, so the plan is checked here first: a drop of a table or column holding rows
needs ``allow_data_loss`` (the plan names the row counts, counted through the target's API), a
source of another vendor or version needs ``force``.  Before any write a safety snapshot of the
target (its schema snapshot and config directory, in CairnCMS's own formats) is written, so
``cairncms schema apply`` / ``config apply`` can put it back.

A target that is not running, or has no such API (Directus 9/10: ``/schema/*`` answers 404), is
promoted through its database instead (``engine`` ``db``, its ``.env``; ``auto`` picks it for a
``.env`` without a token): :class:`DbTarget` reads its snapshot from the database, diffs it here
(``schema_diff``) and applies the diff with ``schema_engine``; roles and permissions go in as rows
with CairnCMS's own rules (``config_rows``), the extras through ``promote_extras.DbWriter`` (CairnCMS
only: Directus has no role keys).  PostgreSQL takes the whole diff in one
transaction; MariaDB and SQLite do not roll DDL back, so a failure there is reported ``partial``
with the steps applied.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..errors import first_line, ConfigError, InstanceUnreachable, InvalidInput, MigrateError, RemoteRefused
from ..instance import bounded_http
from ..instance.timeouts import CONNECT_ENV, READ_ENV, connect_timeout, hint as timeout_hint, read_timeout
from .promote_noise import drop_vendor_noise, is_empty, type_drift

from .promote_extras import EXTRA_KINDS

#: What ``only`` may name (default: all of them); the extras are planned and applied by ``promote_extras``.
KINDS = ("schema", "config", *EXTRA_KINDS)
#: The schema file of a snapshot directory: CairnCMS's name for it first, then the bundle's.
SCHEMA_FILES = ("schema.yaml", "schema.yml", "schema.json", "schema-snapshot.yaml")


def is_url(value: str) -> bool:
    """Whether ``from``/``to`` names a running instance rather than a path on this host."""
    return urlsplit(value).scheme in ("http", "https")


# --------------------------------------------------------------------------- a running instance
@dataclass
class Remote:
    """A running CairnCMS reached with an admin token; every call has the project's timeouts."""

    url: str
    token: str
    role: str  # "source" or "target", for the messages
    #: the instance whose ``.env`` named this target (its URL its ``PUBLIC_URL``): proven to be this API's before
    #: the first write (:func:`~cairn_migrate.operations.target_api.prove_serves`)
    env_instance: Any = None

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        """One request; a refusal or an unreachable server becomes one line naming the fix."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        try:
            with bounded_http.session() as http:  # bounded: the source may be a URL an HTTP caller names
                response = bounded_http.request(http, method, self.url.rstrip("/") + path, headers=headers,
                                                timeout=(connect_timeout(), read_timeout()), **kwargs)
        except requests.Timeout as exc:
            raise InstanceUnreachable(f"The {self.role} {self.url} did not answer {method} {path} in time: {exc}",
                                      hint=timeout_hint(CONNECT_ENV, READ_ENV)) from None
        except requests.ConnectionError as exc:
            raise InstanceUnreachable(f"The {self.role} {self.url} cannot be reached ({method} {path}): "
                                      f"{_reason(exc)}", hint="start it, or check the URL (scheme, host and port)") from None
        except requests.RequestException as exc:
            raise InstanceUnreachable(f"The {self.role} {self.url} did not answer {method} {path}: {exc}",
                                      hint="check the URL") from None
        if response.status_code in ok:
            return response
        option = "--from-token (from_token)" if self.role == "source" else "--to-token (to_token)"
        if response.status_code == 401:
            raise RemoteRefused(f"The {self.role} {self.url} refused the {self.role}'s token ({method} {path}: 401)",
                                hint=f"pass an admin's static token of the {self.role} with {option}")
        if response.status_code == 403:
            raise RemoteRefused(f"The {self.role} {self.url} answered 403 to {method} {path}: its token is not an "
                                "admin's", hint=f"pass the static token of an admin of the {self.role} with {option}")
        if response.status_code == 404 and urlsplit(self.url).path.strip("/"):
            raise InvalidInput(f"The {self.role} {self.url} answered 404 to {method} {path.split('?')[0]}: "
                               f"{self.url} is probably not the instance's API root",
                               hint="pass the instance's root URL (its PUBLIC_URL, without /admin or another path)")
        if response.status_code == 404 and path.startswith(("/schema/", "/config/")) and self.role == "target":
            raise ConfigError(f"The target {self.url} has no {path.split('?')[0]} endpoint (Directus 9.22.4 has none): "
                              "its API cannot apply a schema",
                              hint="pass the target's .env as --to with --engine db (the offline engine writes the "
                              "same rows through its database)")
        error = InvalidInput if response.status_code == 400 else MigrateError
        raise error(f"The {self.role} {self.url} answered {response.status_code} to {method} {path}: "
                    f"{_error_text(response)}", details={"status": response.status_code},
                    hint="the source's structure is not valid for the target" if response.status_code == 400 else None)

    def data(self, path: str) -> Any:
        response = self.call("GET", path)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise InvalidInput(f"The {self.role} {self.url} answered GET {path.split('?')[0]} with something that is "
                               f"not the API's JSON ({kind}): {self.url} is probably not the instance's API root",
                               hint="pass the instance's root URL (its PUBLIC_URL, without /admin or another path)") from None

    # What promote asks of any target (``DbTarget`` answers the same from the database).
    engine = "api"

    @property
    def label(self) -> str:
        return urlsplit(self.url).netloc.replace(":", "-")

    def schema_snapshot(self) -> dict[str, Any]:
        return self.data("/schema/snapshot")  # type: ignore[no-any-return]

    def config_snapshot(self) -> dict[str, Any] | None:
        return self.data("/config/snapshot")  # type: ignore[no-any-return]

    def count(self, collection: str, field: str) -> int | None:
        """Rows of ``collection`` (``*``) or its non-null values of ``field``, through ``aggregate[count]``."""
        response = self.call("GET", f"/items/{quote(collection)}?aggregate[count]={quote(field)}",
                             ok=(200, 400, 403, 404))
        if response.status_code != 200:
            return None
        rows = response.json()["data"]
        value = rows[0]["count"] if rows else 0
        return int(value[field] if isinstance(value, Mapping) else value)

    def count_not_fitting(self, collection: str, field: str, narrowing: Mapping[str, Any]) -> int | None:
        """The rows whose ``field`` would not fit :func:`narrowed`'s narrower column, read through the items API
        (its filters have no length or scale test, so the non-null values are read and tested here)."""
        response = self.call("GET", f"/items/{quote(collection)}?fields={quote(field)}&limit=-1"
                             f"&filter[{quote(field)}][_nnull]=true", ok=(200, 400, 403, 404))
        if response.status_code != 200:
            return None
        return sum(1 for row in response.json()["data"] if not fits(row.get(field), narrowing))


@dataclass
class DbTarget:
    """A target reached through its database (its ``.env``): the offline engine (``schema_engine``).

    For a CairnCMS that is not running, or Directus 9/10 (no ``/schema/*``).  Roles, permissions and the
    extras go in as rows (``config_rows``, ``promote_extras.DbWriter``), on CairnCMS only: Directus has no
    role keys to match roles by.
    """

    env: Path
    instance: Any  # instance.instance.Instance
    planned: dict[str, Any] | None = None  # the snapshot the plan was made against (apply refuses another)
    engine = "db"
    _db: Any = None  # the database opened for roles, permissions and extras, closed by close()

    @property
    def url(self) -> str:
        return str(self.env)

    @property
    def label(self) -> str:
        return self.env.parent.name or "target"

    def _open(self) -> Any:
        from ..instance.database import Database

        return Database.open(self.instance)

    def database(self) -> Any:
        """The target's database, opened once for the roles, permissions and extras (:meth:`close` it)."""
        if self._db is None:
            self._db = self._open()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def is_cairncms(self) -> bool:
        return self.database().platform().product == "cairncms"

    def schema_snapshot(self) -> dict[str, Any]:
        from ..bundle.schema_snapshot import schema_snapshot

        with self._open() as db:
            return schema_snapshot(db, version=platform_version(db, self.env))

    def config_snapshot(self) -> dict[str, Any] | None:
        from ..bundle.config_snapshot import config_snapshot

        with self._open() as db:
            return config_snapshot(db) if db.platform().product == "cairncms" else None

    def count(self, collection: str, field: str) -> int | None:
        from .schema_engine import count_rows

        with self._open() as db:
            return count_rows(db.engine, collection, field)

    def count_not_fitting(self, collection: str, field: str, narrowing: Mapping[str, Any]) -> int | None:
        from .schema_engine import count_not_fitting

        with self._open() as db:
            return count_not_fitting(db.engine, collection, field, narrowing)

    def apply(self, diff: Mapping[str, Any], progress: Any = None) -> list[str]:
        """Apply ``diff`` (planned against :attr:`planned`); a target changed since is refused, like a stale hash."""
        from ..bundle.schema_snapshot import schema_snapshot
        from .schema_engine import apply_diff

        with self._open() as db:
            current = schema_snapshot(db, version=platform_version(db, self.env))
            if self.planned is not None and current != self.planned:
                raise InvalidInput(f"The schema of the target {self.url} changed since the plan was made",
                                   hint="promote again: the new plan is made against the target as it is now")
            return apply_diff(db.engine, db.vendor, current, diff, progress)


def fits(value: Any, narrowing: Mapping[str, Any]) -> bool:
    """Whether one value read through the API fits :func:`narrowed`'s narrower column (a type change: none does)."""
    if value is None:
        return True
    if narrowing["kind"] == "length":
        return len(value if isinstance(value, str) else json.dumps(value)) <= narrowing["max_length"]
    if narrowing["kind"] == "precision":
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return False
        scale, precision = narrowing["scale"], narrowing["precision"]
        return number == round(number, scale) and abs(number) < Decimal(10) ** (precision - scale)
    return False


def platform_version(db: Any, env: Path) -> str:
    """The release of the instance whose database ``db`` is: CairnCMS's from its migrations; Directus's from the
    ``directus`` package its folder installs (``node_modules/directus/package.json`` beside the ``.env`` or above
    it), else its major line (``9``: the migrations ledger does not name the release)."""
    platform = db.platform()
    if platform.product != "directus":
        return platform.version or "unknown"
    for folder in [env.resolve().parent, *env.resolve().parent.parents][:4]:
        package = folder / "node_modules" / "directus" / "package.json"
        if package.is_file():
            try:
                return str(json.loads(package.read_text(encoding="utf-8"))["version"])
            except (ValueError, KeyError, OSError):
                break
    return platform.version or "unknown"


def _reason(exc: BaseException) -> str:
    """The innermost reason of a connection error (``Connection refused``), not urllib3's nested retries text."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Temporary failure in name resolution"):
        if marker in text:
            return marker
    return first_line(text)


def _error_text(response: requests.Response) -> str:
    """CairnCMS's error messages (``errors[].message``, or plain strings from ``/config/apply``)."""
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return response.text[:300]
    return "; ".join(e.get("message", str(e)) if isinstance(e, Mapping) else str(e) for e in errors) or response.text[:300]


# --------------------------------------------------------------------------- the source
@dataclass
class Source:
    """The structure to promote: a schema snapshot and a config payload (None: the source has none)."""

    described: str
    schema: dict[str, Any] | None
    config: dict[str, Any] | None
    extras: Any = None  # promote_extras.ExtrasPlan, once planned
    bundle: Any = None  # promote_bundle.BundleSource of a bundle source (its extras' rows and identity)


def read_source(ctx: Any, value: str, token: str | None, only: list[str]) -> Source:
    """Read ``from``: a running instance (URL + token), an instance's ``.env``, a bundle or a snapshot directory."""
    if is_url(value):
        if not token:
            raise InvalidInput(f"The source {value} is a running instance: it needs an admin token",
                               hint="pass --from-token (from_token) of an admin of the source")
        remote = Remote(value, token, "source")
        return Source(value, remote.data("/schema/snapshot") if "schema" in only else None,
                      remote.data("/config/snapshot") if "config" in only else None)
    path = ctx.path("from", value)
    if not Path(path).exists():
        raise InvalidInput(f"The source {value} does not exist", details={"from": value},
                           hint="pass a running instance's URL (with --from-token), an instance's .env, a bundle (a "
                           "directory, .tar or .tar.gz written by export) or a snapshot folder (schema.yaml + config/)")
    from .promote_bundle import is_bundle, read_bundle

    if is_bundle(path):  # export's bundle, a directory or an archive: opened safely, its snapshot/ and rows read
        bundle = read_bundle(path, only)
        return Source(str(path), bundle.schema, bundle.config, bundle=bundle)
    if path.is_file():
        return _source_of_instance(path, only)
    if (path / "snapshot").is_dir():  # an unpacked bundle (export writes snapshot/schema-snapshot.yaml + config/)
        path = path / "snapshot"
    if path.is_dir():
        source = _source_of_directory(path, only)
        if (path / SAFETY_EXTRAS).is_file():  # a safety snapshot: a complete source, extras included
            from .promote_bundle import BundleSource

            import hashlib

            rows = json.loads((path / SAFETY_EXTRAS).read_text(encoding="utf-8"))
            scope = "safety-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
            source.bundle = BundleSource(source.schema, source.config, rows, scope)
        return source
    raise ConfigError(f"The source {value} is neither a URL, an instance's .env, a bundle directory nor a snapshot "
                      "directory", hint="pass a running instance's URL, a .env file, an unpacked bundle, or a folder "
                      "holding schema.yaml and config/")


def _source_of_instance(env_file: Path, only: list[str]) -> Source:
    """The snapshots of an instance read from its database, byte-identical to CairnCMS's own."""
    from ..bundle.config_snapshot import config_snapshot
    from ..bundle.schema_snapshot import schema_snapshot
    from ..instance.database import Database
    from ..instance.instance import Instance

    with Database.open(Instance.from_env_file(env_file)) as db:
        platform = db.platform()
        schema = schema_snapshot(db, version=platform_version(db, env_file)) if "schema" in only else None
        config = config_snapshot(db) if "config" in only and platform.product == "cairncms" else None
    return Source(str(env_file), schema, config)


def _source_of_directory(folder: Path, only: list[str]) -> Source:
    """A snapshot directory in CairnCMS's own format: the schema file and the ``config/`` directory."""
    from ..bundle.config_snapshot import read_config_directory
    from ..bundle.schema_snapshot import load_schema_snapshot

    schema_file = next((folder / name for name in SCHEMA_FILES if (folder / name).is_file()), None)
    config_dir = folder / "config"
    if "schema" in only and schema_file is None:
        raise ConfigError(f"The snapshot directory {folder} holds no schema file",
                          hint=f"put the schema snapshot there as {SCHEMA_FILES[0]} (cairncms schema snapshot), "
                          "or leave schema out of --only")
    if "config" in only and not config_dir.is_dir():
        raise ConfigError(f"The snapshot directory {folder} holds no config/ directory",
                          hint="write it with: cairncms config snapshot config/ (or leave config out of --only)")
    return Source(str(folder), load_schema_snapshot(schema_file) if "schema" in only else None,
                  read_config_directory(config_dir) if "config" in only else None)


# --------------------------------------------------------------------------- the target
def open_target(ctx: Any, value: str, token: str | None, engine: str = "auto") -> Remote | DbTarget:
    """``to``: the running target (by URL, or by its ``.env``'s ``PUBLIC_URL``, with an admin token), or its
    database (``engine`` ``db``; ``auto`` picks it for a ``.env`` given without a token)."""
    if is_url(value):
        if engine == "db":
            raise InvalidInput(f"The offline engine (--engine db) writes the target's database: {value} is a URL",
                               hint="pass the target's .env as --to")
        url = value
    else:
        from ..instance.instance import Instance

        env = ctx.path("to", value)
        if not Path(env).is_file():
            raise InvalidInput(f"The target {value} does not exist" if not Path(env).exists() else
                               f"The target {value} is not a file (a running instance's URL or its .env)",
                               details={"to": value}, hint="pass the target's URL (with --to-token) or its .env file")
        instance = Instance.from_env_file(env)
        if engine == "db" or (engine == "auto" and not token):
            return DbTarget(Path(env), instance)
        url = instance.public_url
        if not is_url(url):
            raise ConfigError(f"The target's .env {value} sets no absolute PUBLIC_URL to reach it at",
                              hint="pass the running target's URL as --to, or set PUBLIC_URL in its .env")
    if not token:
        raise InvalidInput(f"The target {url} is changed through its own API: it needs an admin token",
                           hint="pass --to-token (to_token) of an admin of the target")
    return Remote(url, token, "target", env_instance=None if is_url(value) else instance)


# --------------------------------------------------------------------------- the plan
def plan(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The combined plan: the schema diff, the config plan, what would be lost and what is refused."""
    report, _source, target = _prepare(ctx, p)
    _close(target)
    return report


def _close(target: Any) -> None:
    if isinstance(target, DbTarget):
        target.close()


def _prepare(ctx: Any, p: dict[str, Any]) -> tuple[dict[str, Any], Source, Any]:
    """The plan, with the source and target it was made of (``apply`` applies exactly these)."""
    only = list(p["only"]) or list(KINDS)
    target = open_target(ctx, p["to"], ctx.secret("to_token") or p.get("to_token"), p.get("engine", "auto"))
    if isinstance(target, DbTarget) and set(only) - {"schema"} and not target.is_cairncms():
        target.close()
        raise InvalidInput(f"The target {target.url} is not CairnCMS: the offline engine writes only its schema",
                           details={"only": only}, hint="pass --only schema (roles are matched by their CairnCMS key, "
                           "which Directus lacks)")
    try:
        return _plan(ctx, p, only, target)
    except BaseException:
        _close(target)
        raise


def _plan(ctx: Any, p: dict[str, Any], only: list[str], target: Any) -> tuple[dict[str, Any], Source, Any]:
    source = read_source(ctx, p["from_"], ctx.secret("from_token") or p.get("from_token"), only)
    target_schema = target.schema_snapshot()
    if isinstance(target, DbTarget):
        target.planned = target_schema
    report: dict[str, Any] = {"from": source.described, "to": target.url, "engine": target.engine, "only": only, "refused": [],
                              "schema": None, "config": None, "changes": False, "applied": False}
    if source.schema is not None:
        report["schema"] = _schema_plan(target, source.schema, target_schema, p, report["refused"])
    if source.config is not None:
        report["config"] = _config_plan(target, source.config, report["refused"], bool(p.get("destructive")),
                                        bool(p.get("allow_suspend_admins")))
        collections = {c["collection"] for c in [*(target_schema.get("collections") or []),
                                                 *((source.schema or {}).get("collections") or [])]}
        report["config"]["warnings"] = unknown_collections(source.config, collections)
    extras = [kind for kind in only if kind in EXTRA_KINDS]
    if extras:
        from . import promote_extras

        writer = (promote_extras.DbWriter(target.database()) if isinstance(target, DbTarget)
                  else promote_extras.ApiWriter(target))
        report["extras"], source.extras = promote_extras.prepare(ctx, p, writer, extras, source.bundle)
    if p.get("restore_users"):
        report["users"] = _users_plan(ctx, p, target)
    report["changes"] = bool((report["schema"] or {}).get("changes") or (report["config"] or {}).get("changes")
                             or (report.get("extras") or {}).get("changes")
                             or any(u["change"] for u in report.get("users") or []))
    return report, source, target


def _schema_plan(target: Remote | DbTarget, snapshot: Mapping[str, Any], current: Mapping[str, Any], p: Mapping[str, Any],
                 refused: list[dict[str, Any]]) -> dict[str, Any]:
    """``POST /schema/diff`` on the target, checked for vendor/version mismatch and for data loss."""
    mismatch = {key: {"source": snapshot.get(key), "target": current.get(key)} for key in ("vendor", "directus")
                if snapshot.get(key) != current.get(key)}
    if mismatch and not p["force"]:
        refused.append({"code": "mismatch", "message": "the source's " + " and ".join(
            f"{'version' if k == 'directus' else k} {v['source']} differs from the target's {v['target']}"
            for k, v in mismatch.items()), "fix": "pass --force (force) to apply the diff below across them"})
    if isinstance(target, DbTarget):  # the offline engine: CairnCMS's diff computed here, no hash to round-trip
        from .schema_diff import snapshot_diff

        data: dict[str, Any] = {"diff": snapshot_diff(current, snapshot), "hash": None}
        if is_empty(data["diff"]):
            return {"changes": False, "mismatch": mismatch, "diff": None, "hash": None, "steps": [], "data_loss": []}
    else:
        query = "?force" if mismatch else ""
        response = target.call("POST", "/schema/diff" + query, json=dict(snapshot), ok=(200, 204))
        if response.status_code == 204:
            return {"changes": False, "mismatch": mismatch, "diff": None, "hash": None, "steps": [], "data_loss": []}
        data = response.json()["data"]
    noise = 0
    if "vendor" in mismatch:  # a snapshot keeps the vendor's spelling: drop what only that differs in
        data["diff"], noise = drop_vendor_noise(data["diff"], snapshot, current)
        if is_empty(data["diff"]):
            return {"changes": False, "mismatch": mismatch, "diff": None, "hash": None, "steps": [], "data_loss": [],
                    "vendor_noise": noise}
    fields = {(f["collection"], f["field"]): f for f in current.get("fields") or []}
    losses = data_loss(target, data["diff"], fields)
    if losses and not p["allow_data_loss"]:
        refused.append({"code": "data_loss", "message": "the schema diff " + ", ".join(map(loss_text, losses)),
            "fix": "pass --allow-data-loss (allow_data_loss) to drop or cut them (a safety snapshot of the target is "
            "written first)"})
    return {"changes": True, "mismatch": mismatch, "diff": data["diff"], "hash": data["hash"],
            "steps": schema_steps(data["diff"]), "data_loss": losses, "vendor_noise": noise}


def rows_word(count: int | None) -> str:
    """``1 row``, ``2 rows``, ``an unknown number of rows``."""
    return "an unknown number of rows" if count is None else f"{count} row" if count == 1 else f"{count} rows"


def loss_text(loss: Mapping[str, Any]) -> str:
    """One data loss in words: ``drops tags.color (2 rows)``, ``changes t.c (max_length 255 -> 2): 1 row would not fit``."""
    if "change" in loss:
        return f"changes {loss['name']} ({loss['change']}): {rows_word(loss['rows'])} would not fit"
    return f"drops {loss['name']} ({rows_word(loss['rows'])})"


def schema_steps(diff: Mapping[str, Any]) -> list[str]:
    """One line per changed collection, field and relation: ``+`` create, ``-`` delete, ``~`` update."""
    steps = []
    for kind, names in (("collections", ("collection",)), ("fields", ("collection", "field")),
                        ("relations", ("collection", "field"))):
        for entry in diff.get(kind) or []:
            records = entry["diff"]
            whole = next((r for r in records if not r.get("path")), None)
            sign = {"N": "+", "D": "-"}.get(whole["kind"], "~") if whole else "~"
            name = ".".join(str(entry[n]) for n in names)
            detail = "" if whole else " (" + ", ".join(".".join(map(str, r["path"])) for r in records) + ")"
            steps.append(f"{sign} {kind[:-1]} {name}{detail}")
    return steps


def data_loss(target: Remote | DbTarget, diff: Mapping[str, Any],
              current: Mapping[tuple[str, str], Any] | None = None) -> list[dict[str, Any]]:
    """The tables and columns the diff drops that hold rows on the target (non-null values for a column), and the
    columns it narrows with values that would not fit (:func:`narrowed`: a shorter ``max_length``, a smaller
    decimal, another type of a populated column).

    Counted through the target's API (``aggregate[count]``), or in SQL on a database target
    (``COUNT(*)``/``COUNT(col)``); a count the API refuses is reported as unknown (None) and
    treated as data, so it is refused too.
    """
    losses = []
    dropped_collections = set()
    for entry in diff.get("collections") or []:
        drop = next((r for r in entry["diff"] if r["kind"] == "D" and not r.get("path")), None)
        if drop is None or not (drop.get("lhs") or {}).get("schema"):
            continue  # not a drop, or a folder (no table)
        dropped_collections.add(entry["collection"])
        rows = target.count(entry["collection"], "*")
        if rows != 0:
            losses.append({"kind": "collection", "name": entry["collection"], "rows": rows})
    for entry in diff.get("fields") or []:
        name = f"{entry['collection']}.{entry['field']}"
        drop = next((r for r in entry["diff"] if r["kind"] == "D" and not r.get("path")), None)
        if drop is None:
            narrowing = narrowed(entry, (current or {}).get((entry["collection"], entry["field"])))
            if narrowing is not None and entry["collection"] not in dropped_collections:
                rows = target.count_not_fitting(entry["collection"], entry["field"], narrowing)
                if rows != 0:
                    losses.append({"kind": narrowing["kind"], "name": name, "rows": rows,
                                   "change": narrowing["change"]})
            continue
        if entry["collection"] in dropped_collections or not (drop.get("lhs") or {}).get("schema"):
            continue  # counted with its table, or an alias (no column)
        rows = target.count(entry["collection"], entry["field"])
        if rows != 0:
            losses.append({"kind": "field", "name": name, "rows": rows})
    return losses


#: Type changes that keep every value (a wider type of the same kind); any other change of a populated column
#: counts as data loss (CairnCMS casts, truncates or refuses, vendor by vendor).
WIDENING = {("string", "text"), ("integer", "bigInteger"), ("float", "decimal"), ("uuid", "string")}


def narrowed(entry: Mapping[str, Any], field: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a field update makes narrower, as the values that would no longer fit:
    ``{"kind": "type", "from", "to"}`` (every non-null value), ``{"kind": "length", "max_length": n}`` (longer
    strings) or ``{"kind": "precision", "precision": p, "scale": s}`` (numbers out of range or with more decimals);
    None when nothing narrows.  ``field`` is the target's current field (the values the diff leaves unchanged)."""
    edits = {tuple(r.get("path") or ()): r for r in entry["diff"] if r["kind"] in ("E", "N", "D")}
    schema = (field or {}).get("schema") or {}
    if ("type",) in edits:
        before, after = edits[("type",)].get("lhs"), edits[("type",)].get("rhs")
        if before != after and (before, after) not in WIDENING and "alias" not in (before, after):
            return {"kind": "type", "from": before, "to": after, "change": f"type {before} -> {after}"}
    length = edits.get(("schema", "max_length"))
    if length is not None and isinstance(length.get("rhs"), int) and (
            length.get("lhs") is None or (isinstance(length.get("lhs"), int) and length["rhs"] < length["lhs"])):
        return {"kind": "length", "max_length": length["rhs"],
                "change": f"max_length {length.get('lhs')} -> {length['rhs']}"}
    precision, scale = edits.get(("schema", "numeric_precision")), edits.get(("schema", "numeric_scale"))
    if precision is not None or scale is not None:
        old_p, old_s = schema.get("numeric_precision"), schema.get("numeric_scale")
        new_p = precision.get("rhs") if precision is not None else old_p
        new_s = scale.get("rhs") if scale is not None else old_s
        if isinstance(new_p, int) and isinstance(new_s, int) and (
                not isinstance(old_p, int) or not isinstance(old_s, int)
                or new_s < old_s or new_p - new_s < old_p - old_s):
            return {"kind": "precision", "precision": new_p, "scale": new_s,
                    "change": f"decimal({old_p}, {old_s}) -> decimal({new_p}, {new_s})"}
    return None


def _config_plan(target: Remote | DbTarget, config: Mapping[str, Any], refused: list[dict[str, Any]],
                 destructive: bool = False, allow_suspend_admins: bool = False) -> dict[str, Any]:
    """``POST /config/apply?dry_run=true[&destructive=true]``: CairnCMS's own plan of the roles and permissions,
    plus what the target has that the config lacks (``kept``: deleted only with ``destructive``).  On a
    database target ``config_rows.plan`` answers what that call would."""
    from . import config_rows

    errors: list[str] = []
    if isinstance(target, DbTarget):
        try:
            result = config_rows.plan(target.database(), config, destructive)
        except InvalidInput as exc:
            errors = list((exc.details or {}).get("errors") or [exc.message])
        current = config_rows.config_snapshot(target.database()) if not errors else None
    elif config_rows.check(config):  # a shape or role key CairnCMS would refuse only while applying
        errors = config_rows.check(config)
    else:
        query = "?dry_run=true" + ("&destructive=true" if destructive else "")
        response = target.call("POST", "/config/apply" + query, json=dict(config), ok=(200, 400))
        if response.status_code == 400:
            errors = [str(e) if not isinstance(e, Mapping) else e.get("message", str(e))
                      for e in response.json()["errors"]]
        else:
            result, current = response.json()["data"], target.data("/config/snapshot")
    if errors:
        refused.append({"code": "config_invalid", "message": "the target refuses the config: " + "; ".join(errors),
                        "fix": "correct the source's roles and permissions"})
        return {"changes": False, "plan": None, "errors": errors}
    roles, permissions = result["roles"], result["permissions"]
    suspended = _suspended_users(target, list(roles["deleted"])) if destructive and roles["deleted"] else []
    yours = [u["email"] for u in suspended if u.get("caller")]
    admins = [u["email"] for u in suspended if u.get("admin") and not u.get("caller")]
    if yours:
        refused.append({"code": "suspends_caller", "message": "deleting the role " + ", ".join(
            sorted({u["role"] for u in suspended if u.get("caller")})) + f" suspends {yours[0]}, the user of the "
            "target's token that runs this promote (every later step would be refused)",
            "fix": "give that user a role the source has, or promote with another admin's token"})
    if admins and not allow_suspend_admins:
        refused.append({"code": "suspends_admins", "message": "deleting roles suspends users with admin access: "
                        + ", ".join(admins), "fix": "give them a role the source has, or pass --allow-suspend-admins "
                        "(allow_suspend_admins) to suspend them"})
    changes = bool(roles["created"] or roles["updated"] or permissions["created"] or permissions["updated"]
                   or roles["deleted"] or permissions["deleted"])
    computed = config_rows.compute_plan(current, config)
    target_only = config_rows.kept(computed)
    listed = config_rows.permission_changes(current, computed)
    return {"changes": changes, "plan": result, "errors": [], "destructive": destructive,
            "kept": {"roles": [], "permissions": []} if destructive else target_only,
            "delete": target_only if destructive else {"roles": [], "permissions": []}, "suspend": suspended,
            "permissions": listed}


def _users_plan(ctx: Any, p: Mapping[str, Any], target: Remote | DbTarget) -> list[dict[str, Any]]:
    """``restore_users``: the users a safety snapshot (``users.json``) lists, each given back its role (by key) and
    status; ``change`` is false for a user already so, ``missing`` names what the target lacks (the user, or the
    role: promote the folder's config first)."""
    folder = None if is_url(p["from_"]) else ctx.path("from", p["from_"])
    if folder is None or not (folder / SAFETY_USERS).is_file():
        raise InvalidInput(f"The source {p['from_']} is not a promote safety snapshot (it holds no {SAFETY_USERS})",
                           hint="pass the folder a promote printed as its safety snapshot as --from")
    wanted = read_safety_users(folder)
    current = {u["email"]: u for u in _users_now(target, [u["email"] for u in wanted])}
    plan = []
    for user in wanted:
        now = current.get(user["email"])
        missing = "user" if now is None else "role" if now["role_ids"].get(user["role"]) is None else None
        change = missing is None and (now["role"] != user["role"] or now["status"] != user["status"])
        plan.append({**user, "change": change, "missing": missing,
                     "now": None if now is None else {"role": now["role"], "status": now["status"]}})
    return plan


def _users_now(target: Remote | DbTarget, emails: list[str]) -> list[dict[str, Any]]:
    """The target's users of ``emails``: id, email, role key, status, and every role's id by key."""
    if not emails:
        return []
    if isinstance(target, DbTarget):
        import sqlalchemy as sa

        with target.database().engine.connect() as conn:
            role_ids = {r[0]: r[1] for r in conn.execute(sa.text("SELECT key, id FROM directus_roles"))}
            rows = conn.execute(sa.text(
                "SELECT u.id, u.email, r.key, u.status FROM directus_users u LEFT JOIN directus_roles r ON u.role = r.id "
                "WHERE u.email IN :emails").bindparams(sa.bindparam("emails", expanding=True)), {"emails": emails}).all()
        return [{"id": r[0], "email": r[1], "role": r[2], "status": r[3], "role_ids": role_ids} for r in rows]
    role_ids = {r.get("key"): r["id"] for r in target.data("/roles?limit=-1&fields=id,key")}
    users = target.data("/users?limit=-1&fields=id,email,status,role.key&filter[email][_in]="
                        + ",".join(quote(e) for e in emails))
    return [{"id": u["id"], "email": u["email"], "role": (u.get("role") or {}).get("key"), "status": u["status"],
             "role_ids": role_ids} for u in users]


def _restore_users(target: Remote | DbTarget, plan: list[dict[str, Any]]) -> None:
    """Give each planned user back its role (by key, the role's id on the target now) and status."""
    current = {u["email"]: u for u in _users_now(target, [u["email"] for u in plan if u["change"]])}
    for user in plan:
        now = current.get(user["email"])
        if not user["change"] or now is None:
            continue
        values = {"role": now["role_ids"][user["role"]], "status": user["status"]}
        if isinstance(target, DbTarget):
            from .config_rows import update_rows

            with target.database().engine.begin() as conn:
                update_rows(conn, "directus_users", values, {"id": now["id"]})
        else:
            target.call("PATCH", f"/users/{now['id']}", json=values)


def unknown_collections(config: Mapping[str, Any], collections: set[str]) -> list[str]:
    """Permissions on a collection the target will not have (neither now nor from the promoted schema), as
    ``role/collection/action``.  CairnCMS's config apply creates them without a word (a permission names its
    collection by text); they grant nothing until such a collection exists, so the plan lists them as warnings
    rather than refusing: a role may be prepared before its collection, but a typo shows here."""
    return [f"{s['role']}/{perm['collection']}/{perm['action']}" for s in config.get("permissions") or []
            if isinstance(s, Mapping) for perm in s.get("permissions") or []
            if isinstance(perm, Mapping) and not str(perm.get("collection", "")).startswith("directus_")
            and perm.get("collection") not in collections]


def _suspended_users(target: Remote | DbTarget, roles: list[str]) -> list[dict[str, Any]]:
    """The users of the roles a destructive config apply deletes (CairnCMS suspends them, role NULL): email, role
    key, status, whether their role has admin access, and whether it is the user of the target's token."""
    if isinstance(target, DbTarget):
        import sqlalchemy as sa

        with target.database().engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT u.email, u.status, r.key, r.admin_access FROM directus_users u JOIN directus_roles r "
                "ON u.role = r.id WHERE r.key IN :keys ORDER BY u.email").bindparams(
                sa.bindparam("keys", expanding=True)), {"keys": roles}).all()
        return [{"email": r[0], "status": r[1], "role": r[2], "admin": bool(r[3]), "caller": False} for r in rows]
    me = target.data("/users/me?fields=id").get("id")
    keys = ",".join(quote(k) for k in roles)
    users = target.data(f"/users?limit=-1&fields=id,email,status,role.key,role.admin_access"
                        f"&filter[role][key][_in]={keys}")
    return sorted(({"email": u.get("email"), "status": u.get("status"), "role": (u.get("role") or {}).get("key"),
                    "admin": bool((u.get("role") or {}).get("admin_access")), "caller": u.get("id") == me}
                   for u in users), key=lambda u: str(u["email"]))


# --------------------------------------------------------------------------- apply
def apply(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Plan; unless refused or empty, write the target's safety snapshot, then apply schema, then config.

    The schema goes in one transaction on the target (a hash that no longer matches refuses it
    whole).  Forced across vendors, the report then lists the type drift of the target's snapshot
    against the source (``type_drift``); a lossy one makes the outcome ``differences`` (exit 1).  A config apply that fails after the schema went in is reported (``failed``), not
    raised, so the report says what was applied: the outcome is then ``partial``.
    """
    report, source, target = _prepare(ctx, p)
    try:
        return _apply(ctx, p, report, source, target)
    finally:
        _close(target)


def _phases(report: dict[str, Any], source: Source) -> list[str]:
    """The write phases of a plan, in order: ``schema``, ``config``, then each extras kind with changes."""
    phases = [kind for kind in ("schema", "config") if (report[kind] or {}).get("changes")]
    if source.extras is not None and (report.get("extras") or {}).get("changes"):
        from .promote_extras import apply_phases

        phases += apply_phases(source.extras)
    if any(u["change"] for u in report.get("users") or []):
        phases.append("users")
    return phases


def _apply(ctx: Any, p: dict[str, Any], report: dict[str, Any], source: Source, target: Any) -> dict[str, Any]:
    if report["refused"] or not report["changes"]:
        return report
    phases = _phases(report, source)
    report["steps_done"], report["steps_total"] = [], len(phases)
    ctx.progress.check_cancelled()  # a cancel before the first write writes nothing (not even the safety snapshot)
    if isinstance(target, Remote) and target.env_instance is not None:  # a .env's PUBLIC_URL: is it that instance?
        from .target_api import prove_serves

        prove_serves(target.env_instance, target.url, target.token,
                     url_option="--to (the target's URL instead of its .env), or correct PUBLIC_URL in the .env,")
    report["safety_snapshot"] = str(write_safety_snapshot(ctx, target, report, source))

    def begin(phase: str) -> None:
        """Before each write phase: a requested cancel stops here, with the report of what was applied."""
        ctx.progress.progress(items_done=len(report["steps_done"]), items_total=len(phases))
        report["current_step"] = phase
        try:
            ctx.progress.check_cancelled()
        except MigrateError as exc:
            report.pop("current_step", None)
            report["cancelled"] = {"before": phase, "message": exc.message}
            exc.report = report  # type: ignore[attr-defined]  # the job keeps it as its result
            raise

    def done(phase: str) -> None:
        report["steps_done"].append(phase)
        report.pop("current_step", None)
        report["applied"] = True
        ctx.progress.progress(items_done=len(report["steps_done"]), items_total=len(phases))

    try:
        _apply_phases(ctx, p, report, source, target, begin, done)
    except KeyboardInterrupt:
        step = report.pop("current_step", None)
        report["failed"] = {"code": "interrupted", "step": step, "message": f"interrupted at the {step} step (it "
                            "may be applied in part)" if step else "interrupted", "hint": f"the safety snapshot {report['safety_snapshot']} "
                            "holds the target as it was; promote again to finish"}
        report["interrupted"] = True
        return report
    except MigrateError as exc:
        step = report.pop("current_step", None)
        if not report["steps_done"] or getattr(exc, "code", None) == "cancelled":
            raise
        report["failed"] = exc.to_dict() | {"step": step}
    report.pop("current_step", None)
    return report


def _apply_phases(ctx: Any, p: dict[str, Any], report: dict[str, Any], source: Source, target: Any,
                  begin: Any, done: Any) -> None:
    schema, config = report["schema"], report["config"]
    if schema and schema["changes"]:
        begin("schema")
        ctx.progress.log(f"applying {len(schema['steps'])} schema changes to {target.url}")
        if isinstance(target, DbTarget):
            from .schema_engine import PartialApply

            try:
                schema["applied_steps"] = target.apply(schema["diff"], ctx.progress)
            except PartialApply as exc:
                schema["applied_steps"] = exc.details["applied"]
                if exc.details["applied"]:
                    report["applied"] = True
                    report["steps_done"].append("schema (in part)")
                raise
        else:
            target.call("POST", "/schema/apply", json={"hash": schema["hash"], "diff": schema["diff"]}, ok=(200, 204))
        done("schema")
        after = target.schema_snapshot()
        if "vendor" in schema["mismatch"]:  # forced across vendors: what the target really made of the source's types
            report["type_drift"] = type_drift(source.schema or {}, after)
        schema["not_applied"] = not_applied(target, source.schema or {}, after, schema)
    if config and config["changes"]:
        begin("config")
        ctx.progress.log(f"applying roles and permissions to {target.url}")
        if isinstance(target, DbTarget):
            from . import config_rows

            config["result"] = config_rows.apply(target.database(), source.config, bool(p.get("destructive")))
        else:
            query = "?destructive=true" if p.get("destructive") else ""
            config["result"] = target.call("POST", "/config/apply" + query, json=source.config).json()["data"]
        done("config")
    if source.extras is not None and report["extras"]["changes"]:
        from . import promote_extras

        ctx.progress.log(f"applying flows, dashboards, presets and settings to {target.url}")
        promote_extras.apply_plan(source.extras, begin=begin, done=done)
    if any(u["change"] for u in report.get("users") or []):
        begin("users")
        _restore_users(target, report["users"])
        done("users")


#: What a safety snapshot holds beside ``schema.yaml`` and ``config/``: the extras' rows and the users a
#: destructive config apply suspends (``promote --from`` reads the folder back as a complete source).
SAFETY_EXTRAS, SAFETY_USERS, SAFETY_README = "extras.json", "users.json", "RESTORE.txt"


def not_applied(target: Remote | DbTarget, snapshot: Mapping[str, Any], after: Mapping[str, Any],
                schema: Mapping[str, Any]) -> list[str]:
    """What of the planned schema diff the target still lacks after the apply, diffed again (as the plan was).

    CairnCMS's ``applyDiff`` updates a field's metadata but does not change an existing column's type (nor its
    length): the apply answers 200 and the next promote shows the same change.  Each such step is named here,
    so the report says "not applied" and the outcome is ``partial`` rather than ``ok``."""
    from .schema_diff import snapshot_diff

    if isinstance(target, DbTarget):
        diff = snapshot_diff(after, snapshot)
    else:
        response = target.call("POST", "/schema/diff" + ("?force" if schema["mismatch"] else ""), json=dict(snapshot),
                               ok=(200, 204))
        diff = response.json()["data"]["diff"] if response.status_code == 200 else {}
    if "vendor" in schema["mismatch"]:
        diff = drop_vendor_noise(diff, snapshot, after)[0]
    planned = set(schema["steps"])
    left = []
    for step in schema_steps(diff):
        if step not in planned:
            continue  # not part of this promote's plan (changed meanwhile): the next plan shows it
        entry = step.split(" ", 2)
        if entry[1] == "field" and any(part in step for part in ("type", "schema.data_type", "schema.max_length",
                                                                   "schema.numeric_")):
            left.append(f"{step}: CairnCMS's apply does not change an existing column's type or size: not applied")
        else:
            left.append(f"{step}: not applied")
    return left


def write_safety_snapshot(ctx: Any, target: Remote | DbTarget, report: Mapping[str, Any] | None = None,
                          source: Source | None = None) -> Path:
    """The target as it is, before any write: a complete ``promote`` source of it.

    ``schema.yaml`` and ``config/`` in CairnCMS's own formats (``cairncms schema apply`` / ``config apply`` take
    them), ``extras.json`` (its flows, operations, dashboards, panels, presets, settings and translation strings,
    as the extras read them) and ``users.json`` (the users of the roles the plan deletes: email, role key and
    status), with ``RESTORE.txt`` saying how to put it all back.  In the sidecar they go to the instance's bundle
    folder (``<bundle folder>/promote-safety/``); from the command line beside the state store (the folder of
    its SQLite file, else the working directory), like ``import --replace``'s safety bundles.
    """
    import sqlalchemy as sa

    from ..bundle.config_snapshot import write_config_directory
    from ..bundle.schema_snapshot import write_schema_snapshot

    if ctx.bundle_dir is not None:
        base = Path(ctx.bundle_dir)
    else:
        state = ctx.state_url
        base = Path(sa.engine.make_url(state).database or ".").parent if state.startswith("sqlite") else Path.cwd()
    folder = base / "promote-safety" / f"{target.label}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}"
    write_schema_snapshot(target.schema_snapshot(), folder / "schema.yaml")
    config = target.config_snapshot()  # None: a Directus target has no roles/permissions config format
    if config is None:
        return folder
    write_config_directory(config, folder / "config")
    from . import promote_extras

    if source is not None and source.extras is not None:
        rows = source.extras.dst
    elif isinstance(target, DbTarget):
        rows = promote_extras.rows_of_database(target.database())
    else:
        rows = promote_extras.rows_of_remote(target)
    (folder / SAFETY_EXTRAS).write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    users = [{"email": u["email"], "role": u["role"], "status": u["status"]}
             for u in ((report or {}).get("config") or {}).get("suspend") or []]
    (folder / SAFETY_USERS).write_text(json.dumps(users, indent=1), encoding="utf-8")
    (folder / SAFETY_README).write_text(
        f"The target {target.url} before a promote, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC.\n\n"
        "Put it back (schema, roles and permissions, flows, dashboards, presets, settings, translation strings):\n"
        f"  cairn-migrate promote --from {folder} --to <the target> --destructive --allow-data-loss\n"
        "(the columns and tables the promote dropped come back empty: their rows are not in this folder).\n\n"
        "Then give back the users the promote suspended (users.json: email, role key, status before):\n"
        f"  cairn-migrate promote --from {folder} --to <the target> --restore-users\n", encoding="utf-8")
    return folder


def read_safety_users(folder: Path) -> list[dict[str, Any]]:
    """``users.json`` of a safety snapshot (empty when there is none)."""
    users = folder / SAFETY_USERS
    return json.loads(users.read_text(encoding="utf-8")) if users.is_file() else []
