"""The operation registry: every operation of cairn-migrate, registered once.

In the spirit of rclone's ``rc`` and Alembic's ``command``: an operation has a
name, a marshmallow schema of its parameters, an ``apply`` that does the work
and returns a JSON-safe report, optionally a ``plan`` that writes nothing, and
an :class:`Outcome` read off the report.  The outcome maps once to the CLI's
exit code, the job's state and the HTTP status, so no shell decides on its own
whether "differences found" is a success.

Every shell dispatches by name: the CLI verbs (``cli/__init__.py``, ``cli/files.py``,
``cli/install.py``, ``cli/promote.py``) call :func:`run`; ``POST /migrate/ops`` (``{op, params}``)
plans or starts a job; the job runner runs any operation (``service/service_jobs.py``); the
scheduler stores ``{op, params}`` and submits through the job runner
(``hooks/schedule.py``).  A new operation is one :func:`register` call here
(plus its CLI verb, which renders its report).

What an operation needs from its shell travels in one :class:`OpContext`: the
instance, the state store, the bundle folder, progress and in-memory secrets.
The core modules are imported inside ``apply``/``plan``, so importing the
registry (to list it, or to build the CLI) stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import InvalidInput, MigrateError
from ..progress import NullProgress, Progress

#: The built-in masking profiles (``masking/profiles.py`` BUILTIN): names, not paths, in ``mask``.
MASK_PROFILES = ("pii-basic",)
#: content move's modes and paths (mirrored from content/move.py and operations/content.py, kept import-cheap)
CONTENT_MODES = ("merge", "skip-existing", "mirror")
CONTENT_VIA = ("db", "api")
#: promote's kinds (promote.KINDS, kept import-cheap: importing promote here cost every process ~0.5 s of start-up;
#: tests/test_promote_offline.py checks the two agree)
PROMOTE_KINDS = ("schema", "config", "flows", "dashboards", "presets", "settings", "translations")
#: sync profiles' modes, conflict policies and missed-run policies (defined here, import-cheap: ``cli/sync.py``
#: builds its options from them without importing operations/sync_profiles.py, which uses them too)
SYNC_MODES = ("merge", "skip-existing", "mirror")
SYNC_CONFLICTS = ("source-wins", "target-wins", "skip-if-target-modified")
SYNC_MISSED = ("run-once", "skip")

if TYPE_CHECKING:
    from marshmallow import Schema

    from ..instance.instance import Instance

Report = dict[str, Any]



class Outcome(str, Enum):
    """How an operation ended, decided once from its report.

    ``invalid`` (bad input or configuration found while working, e.g. every
    unreadable storage location misconfigured) completes the project's exit
    codes; errors raised before any work keep their own class's code.
    """

    OK = "ok"
    DIFFERENCES = "differences"
    PARTIAL = "partial"
    FAILED = "failed"
    INVALID = "invalid"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code (docs/cli.md, "Exit codes")."""
        return {"ok": 0, "differences": 1, "invalid": 2, "failed": 3, "partial": 4}[self.value]

    @property
    def job_state(self) -> str:
        """The final state of a job: differences are a finished job's findings; partial work is a failure."""
        return "succeeded" if self in (Outcome.OK, Outcome.DIFFERENCES) else "failed"

    @property
    def http_status(self) -> int:
        """The status of an answer given at once (a plan, or a short operation run in the request)."""
        return {"ok": 200, "differences": 200, "partial": 207, "invalid": 422, "failed": 500}[self.value]


class OutcomeError(MigrateError):
    """An operation that finished but not well (partial, failed, invalid): its job fails and keeps the report."""

    def __init__(self, name: str, outcome: Outcome, report: Report) -> None:
        if outcome.value == "invalid":  # refused before any write (a plan's refusals): nothing to resume
            super().__init__(f"{name} was refused before any write: the report lists why",
                             hint="see the job's result (refused: each with its fix), then submit it again")
        else:
            super().__init__(f"{name} finished {outcome.value}: the report lists what did not succeed",
                             hint=f"see the job's result; a retry of {name} resumes where it stopped")
        self.code = outcome.value
        self.exit_code = outcome.exit_code
        self.http_status = outcome.http_status
        self.report = report


@dataclass
class OpContext:
    """What an operation gets from its shell.

    :ivar instance: the instance acted on (called on first use, so a shell that
        only lists operations never reads an ``.env``).
    :ivar state_url: the state store (jobs, freeze, copy ledgers), always given:
        a shell resolves it once, so no operation falls back to the process env.
    :ivar bundle_dir: this instance's server-side bundle folder (``serve``); None in the CLI.
    :ivar job_id: the job running the operation, if any (names server-side bundles).
    :ivar locate_bundle: turns ``{"bundle": id}`` or ``{"path": p}`` into a bundle path;
        the sidecar's version refuses paths into its shared folders.
    :ivar secrets: values never persisted (passphrases, tokens), in memory only.
    :ivar scripts_dir: the custom-migrations script directory (None: the default).
    :ivar open_instance: reads another instance's ``.env`` (``files repair --from-env``).
    :ivar host_path: checks a path on this host that the caller named in a parameter (field, value);
        the sidecar's version refuses any outside ``CAIRN_MIGRATE_HTTP_PATHS``: an instance's admin
        is trusted for that instance only, never for the sidecar's host.  None: the CLI (its user is
        the host's operator).
    :ivar place_safety_bundle: where an import with ``replace`` writes its safety bundle; the
        sidecar's version puts it among the instance's own bundles (``safety_bundle`` is a name there).
    :ivar allow_code: checks code a caller names to run on this host (field, ``module:function``, a
        content move's ``transform``); the sidecar's version refuses any not in ``CAIRN_MIGRATE_TRANSFORMS``.
        None: the CLI (its user is the host's operator).
    """

    instance: Callable[[], Instance]
    state_url: str
    progress: Progress = field(default_factory=NullProgress)
    bundle_dir: Path | None = None
    job_id: str | None = None
    locate_bundle: Callable[[Mapping[str, Any]], Path] | None = None
    secrets: Mapping[str, Any] = field(default_factory=dict)
    scripts_dir: Path | None = None
    open_instance: Callable[[str], Instance] | None = None
    host_path: Callable[[str, str], Path] | None = None
    place_safety_bundle: Callable[[Mapping[str, Any]], Path | None] | None = None
    allow_code: Callable[[str, str], None] | None = None
    #: the sidecar's confinement: ``() → (its own instance, the peer .env files CAIRN_MIGRATE_PEERS lists)``;
    #: None: the CLI (its user is the host's operator).  See :meth:`confine`.
    confinement: Callable[[], tuple[Instance, list[Path]]] | None = None
    _confined: set[tuple[Any, ...]] = field(default_factory=set)

    def confine(self, sides: Sequence[Any]) -> None:
        """Refuse (403) a pair of instances the shell does not trust its caller with (:mod:`.confine`): over
        HTTP one side must be the sidecar's own instance, the other proven by an admin token for it or listed
        by the operator in ``CAIRN_MIGRATE_PEERS``.  The one place the rule is applied (content, promote and
        sync runs, their dry runs, jobs and schedules, and ``/migrate/syncs``)."""
        if self.confinement is None or not sides:
            return
        key = tuple((s.field, s.value, s.token, s.url) for s in sides)
        if key in self._confined:
            return
        from . import confine as rule

        own, peers = self.confinement()

        def open_env(value: str, trusted: bool = False) -> Instance | None:
            from ..content.bundle_source import is_bundle_path
            from ..instance.instance import Instance as _Instance

            path = Path(value) if trusted else self.path("from_env", value)
            assert path is not None
            try:
                bundle = path.is_dir() or is_bundle_path(str(path))
            except InvalidInput:
                bundle = False  # a file with another suffix: read as a .env
            if bundle:
                return None  # a bundle or a snapshot folder: not an instance
            try:
                return _Instance.from_env_file(path)
            except MigrateError:
                return rule.UNREADABLE  # no instance we can tell is the sidecar's or a peer: refused as another one

        rule.check(own, peers, sides, open_env=open_env)
        self._confined.add(key)

    def check_instances(self, op: Operation, params: Mapping[str, Any]) -> None:
        """:meth:`confine` the instances the operation's parameters name (nothing for one-instance operations)."""
        if op.sides is not None and self.confinement is not None:
            self.confine(op.sides(self, params))

    def check_code(self, field_name: str, value: str) -> None:
        """Refuse code on this host that the shell does not allow (the CLI allows its user's)."""
        if self.allow_code is not None:
            self.allow_code(field_name, value)

    def path(self, field_name: str, value: str | None) -> Path | None:
        """The host path a parameter names, as the shell allows it (None when not given)."""
        if not value:
            return None
        return self.host_path(field_name, value) if self.host_path is not None else Path(value)

    def check_host_paths(self, op: Operation, params: Mapping[str, Any]) -> None:
        """Refuse now, before any job starts, every host path in ``params`` the shell does not allow.

        The parameters marked ``host_path`` in an operation's schema name files on the
        machine running it; a bundle ``path`` and ``safety_bundle`` go through their own rules.
        """
        if op.needs_bundle or params.get("bundle") or params.get("path"):
            self.bundle(params)
        for name, schema_field in op.schema().fields.items():
            if schema_field.metadata.get("code") and params.get(name):
                self.check_code(name, params[name])
        for name, schema_field in op.schema().fields.items():
            if not schema_field.metadata.get("host_path") or not params.get(name) or name == "path":
                continue
            if schema_field.metadata.get("or_url") and urlsplit(str(params[name])).scheme in ("http", "https"):
                continue  # a running instance's URL (promote's from/to), not a path on this host
            if params[name] in schema_field.metadata.get("or_name", ()):
                continue  # a built-in name (export's mask profile), not a path on this host
            if name == "safety_bundle":
                self.safety_bundle(params)
            else:
                self.path(schema_field.data_key or name, params[name])  # the caller's name: "from", not "from_"
        self.check_instances(op, params)  # the paths are allowed: now whether the caller may name those instances
        if op.precheck is not None:
            op.precheck(self, dict(params))

    def safety_bundle(self, params: Mapping[str, Any]) -> Path | None:
        """Where ``import --replace`` writes its safety bundle (None: the default beside the state store)."""
        if self.place_safety_bundle is not None:
            return self.place_safety_bundle(params)
        return self.path("safety_bundle", params.get("safety_bundle"))

    def secret(self, name: str) -> Any:
        """A secret by name (None when not given)."""
        return self.secrets.get(name)

    def bundle(self, params: Mapping[str, Any]) -> Path:
        """The bundle the parameters name (``bundle`` id or ``path``).

        :raises InvalidInput: neither is given.
        """
        if not params.get("bundle") and not params.get("path"):
            raise InvalidInput("Name the bundle to use", hint="pass 'bundle' (an id from GET /migrate/bundles) or 'path'")
        if self.locate_bundle is not None:
            return self.locate_bundle(params)
        if params.get("bundle"):
            raise InvalidInput("Bundle ids name the sidecar's server-side bundles", hint="pass the bundle's path")
        return Path(params["path"])

    def other_instance(self, env_path: str) -> Instance:
        """Another instance, read from its ``.env`` (the same rules as the main one), where the shell allows it."""
        checked = str(self.path("from_env", env_path))
        if self.open_instance is not None:
            return self.open_instance(checked)
        from ..instance.instance import Instance

        return Instance.from_env_file(checked)


@dataclass(frozen=True)
class Operation:
    """One registered operation.

    :ivar plan: computes what ``apply`` would do and writes nothing; None when the
        operation has no dry run (it only reads, or only makes a new bundle).
    :ivar params: the name of its parameter schema in :mod:`.params` (:attr:`schema`), so the registry
        is listed and the CLI built without importing marshmallow.
    :ivar outcome: ``(report, planned) → Outcome``.
    :ivar cli: the CLI verb (``"files check"``).
    :ivar route: today's HTTP route of the operation, kept as an alias of ``POST /migrate/ops``.
    """

    name: str
    summary: str
    params: str
    apply: Callable[[OpContext, dict[str, Any]], Report]
    outcome: Callable[[Report, bool], Outcome]
    plan: Callable[[OpContext, dict[str, Any]], Report] | None = None
    cli: str = ""
    route: str | None = None
    #: False: the operation writes outside the instance's data (code into its extensions folder), which only
    #: the host's operator may do: the CLI runs it, ``POST /migrate/ops`` refuses it.
    http: bool = True
    #: ``(ctx, params) → [confine.Side]``: the instances the operation reads or writes (:meth:`OpContext.confine`)
    sides: Callable[[OpContext, dict[str, Any]], list[Any]] | None = None
    #: ``(ctx, params) → None``: cheap checks of the parameters against the instances they name, raising
    #: :class:`~cairn_migrate.errors.InvalidInput`; run before a job starts (:meth:`OpContext.check_host_paths`),
    #: so a request that could only fail is answered 422, not 202 and a failed job.  The CLI needs none: its
    #: run fails at once with the same error.
    precheck: Callable[[OpContext, dict[str, Any]], None] | None = None

    @property
    def schema(self) -> type[Schema]:
        """The marshmallow schema of the parameters (:mod:`.params` is imported on first use)."""
        from . import params

        return getattr(params, self.params)  # type: ignore[no-any-return]

    @property
    def needs_bundle(self) -> bool:
        """Whether the operation reads a bundle it must be given (import, verify)."""
        from .params import BundleRef

        return issubclass(self.schema, BundleRef)

    @property
    def secret_params(self) -> list[str]:
        """Parameters kept out of job records and schedules (passed in memory)."""
        return [name for name, f in self.schema().fields.items() if f.metadata.get("secret")]

    def load(self, params: Mapping[str, Any], *, unknown: str | None = None) -> dict[str, Any]:
        """Validate ``params`` with the operation's schema (``unknown``: marshmallow's, default RAISE).

        :raises InvalidInput: one line naming each bad parameter.
        """
        from marshmallow import ValidationError

        try:
            return self.schema(**({"unknown": unknown} if unknown else {})).load(dict(params))
        except ValidationError as exc:
            problems = "; ".join(f"{key}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
                                 for key, msgs in sorted(exc.normalized_messages().items()))
            raise InvalidInput(f"Bad parameters for {self.name}: {problems}",
                               hint="GET /migrate/ops (or cairn-migrate ops list) shows them") from None


_REGISTRY: dict[str, Operation] = {}


def register(operation: Operation) -> Operation:
    """Add an operation; its name is its job kind and its path under ``/migrate/ops/``."""
    if operation.name in _REGISTRY:
        raise ValueError(f"operation {operation.name!r} is already registered")
    _REGISTRY[operation.name] = operation
    return operation


def get(name: str) -> Operation:
    """The operation called ``name``.

    :raises InvalidInput: no such operation (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"There is no operation {name!r}", hint=f"known operations: {', '.join(sorted(_REGISTRY))}") from None


def all_operations() -> list[Operation]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def run(name: str, ctx: OpContext, params: Mapping[str, Any], *, dry_run: bool = False,
        validated: bool = False) -> tuple[Report, Outcome]:
    """Run operation ``name``: its plan with ``dry_run`` (or a ``dry_run`` parameter), else apply it.

    :param validated: ``params`` were already loaded with the operation's schema.
    :returns: the report and its outcome.
    """
    op = get(name)
    loaded = dict(params) if validated else op.load(params)
    ctx.check_instances(op, loaded)  # over HTTP (and schedules): the pair of instances the caller may name
    planned = bool(dry_run or loaded.get("dry_run"))
    if planned:
        if op.plan is None:
            raise InvalidInput(f"{name} has no dry run", hint="run it without dry_run")
        report = op.plan(ctx, loaded)
    else:
        report = op.apply(ctx, loaded)
    return report, op.outcome(report, planned)


def describe() -> list[dict[str, Any]]:
    """Every operation with its parameters (``GET /migrate/ops``, ``cairn-migrate ops list``).

    A CLI-only operation (``http=False``) has no ``route``: ``POST /migrate/ops`` refuses it.
    """
    return [{"name": op.name, "summary": op.summary, "dry_run": op.plan is not None, "cli": f"cairn-migrate {op.cli}",
             "route": "/migrate/ops" if op.http else None, "alias": op.route, "params": _describe_params(op.schema)}
            for op in all_operations()]


def _describe_params(schema: Any) -> list[dict[str, Any]]:
    from .params import describe_params

    return describe_params(schema)


# --------------------------------------------------------------------------- outcomes
def _ok(report: Report, planned: bool) -> Outcome:
    return Outcome.OK


def _found(report: Report) -> Outcome:
    return Outcome.OK if report["ok"] else Outcome.DIFFERENCES


def _plan_or(done: Callable[[Report], Outcome], has_changes: Callable[[Report], bool]) -> Callable[[Report, bool], Outcome]:
    """A dry run with changes is "differences" (exit 1); a real run is judged by ``done``."""
    def outcome(report: Report, planned: bool) -> Outcome:
        if planned:
            return Outcome.DIFFERENCES if has_changes(report) else Outcome.OK
        return done(report)
    return outcome


def storage_outcome(failed: Sequence[Mapping[str, Any]]) -> Outcome:
    """Unreadable locations: invalid when every one is misconfigured (no bucket, rejected keys), else failed."""
    from ..errors import ConfigError, UnsupportedDriver

    config_codes = {ConfigError.code, UnsupportedDriver.code}
    return Outcome.INVALID if all(loc["error"]["code"] in config_codes for loc in failed) else Outcome.FAILED


def _inspect_outcome(report: Report, planned: bool) -> Outcome:
    failed = [loc for loc in report["storage"] if not loc["reachable"]]
    return storage_outcome(failed) if failed else _found(report)


# --------------------------------------------------------------------------- operations
def _inspect(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .. import api

    return api.inspect(ctx.instance(), check_objects=p["check_objects"], progress=ctx.progress)


def _export(ctx: OpContext, p: dict[str, Any]) -> Report:
    """A bundle at ``output``, or (in the sidecar) a server-side bundle named by the job's id."""
    from .. import api

    passphrase = ctx.secret("passphrase") or p.get("passphrase")
    encrypt = p["encrypt"] if p["encrypt"] is not None else bool(passphrase or p["key_file"])
    if encrypt and not (passphrase or p["key_file"]):
        from ..errors import ConfigError

        raise ConfigError("--encrypt needs a secret", hint="pass --passphrase-file FILE, --key-file FILE or set CAIRN_MIGRATE_PASSPHRASE")
    server_side = not p["output"]
    if server_side:
        if ctx.bundle_dir is None or ctx.job_id is None:
            raise InvalidInput("export needs an output", hint="pass -o PATH")
        output = ctx.bundle_dir / f"{ctx.job_id}{'.tar.gz.enc' if encrypt else '.tar.gz'}"
    else:
        output = ctx.path("output", p["output"])
    manifest = api.export(ctx.instance(), output, passphrase=passphrase if encrypt else None,
                          key_file=ctx.path("key_file", p["key_file"]) if encrypt else None, freeze=p["freeze"],
                          freeze_guarantee=p["freeze_guarantee"], instance_url=p["instance_url"], native=p["native"],
                          overwrite=p["overwrite"], state_url=ctx.state_url, progress=ctx.progress,
                          mask=_mask_spec(ctx, p["mask"]), mask_salt=ctx.secret("mask_salt") or p.get("mask_salt"),
                          mask_keep_users=tuple(p["mask_keep_users"]))
    summary = api.summarize_manifest(manifest, p["output"] or output)
    if server_side:
        summary.update(bundle_id=ctx.job_id, download=f"/migrate/bundles/{ctx.job_id}", size=output.stat().st_size)
    return summary


def _mask_spec(ctx: OpContext, mask: str | None) -> str | Path | None:
    """A built-in profile's name as is; any other value is a path on this host, as the shell allows it."""
    if not mask or mask in MASK_PROFILES:
        return mask
    return ctx.path("mask", mask)


def _import(ctx: OpContext, p: dict[str, Any], *, dry_run: bool = False) -> Report:
    from .. import api

    report = api.import_(ctx.instance(), ctx.bundle(p), dry_run=dry_run, replace=p["replace"], resume=p["resume"],
                         storage_map=p["storage_map"], passphrase=ctx.secret("passphrase") or p.get("passphrase"),
                         key_file=ctx.path("key_file", p["key_file"]), safety_bundle=ctx.safety_bundle(p),
                         progress=ctx.progress)
    safety = Path(report["safety_bundle"]) if report.get("safety_bundle") else None
    if safety is not None and ctx.bundle_dir is not None and safety.parent == ctx.bundle_dir:
        safety_id = safety.name.split(".", 1)[0]  # one of the instance's server-side bundles (service_jobs.bundle_id_of)
        report.update(safety_bundle_id=safety_id, safety_bundle_download=f"/migrate/bundles/{safety_id}")
    return report


def _verify(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .. import api

    login = ctx.secret("login") or p.get("login")
    credentials = None
    if login:
        email, sep, password = login.partition(":")
        if not sep:
            from ..errors import ConfigError

            raise ConfigError("--login must be EMAIL:PASSWORD")
        credentials = (email, password)
    return api.verify(ctx.instance(), ctx.bundle(p), storage_map=p["storage_map"], url=p["url"],
                      token=ctx.secret("token") or p.get("token"), login=credentials,
                      passphrase=ctx.secret("passphrase") or p.get("passphrase"),
                      key_file=ctx.path("key_file", p["key_file"]), progress=ctx.progress)


def _files_check(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .file_rows import check

    return check(ctx.instance(), limit=p["limit"], workers=p["workers"], progress=ctx.progress, state_url=ctx.state_url)


def _files_check_outcome(report: Report, planned: bool) -> Outcome:
    return Outcome.FAILED if report["errors"] else _found(report)


def _files_repair(ctx: OpContext, p: dict[str, Any], *, yes: bool = True) -> Report:
    from .file_rows import repair

    bundle = ctx.bundle(p) if p["bundle"] or p["path"] else None
    return repair(ctx.instance(), yes=yes, bundle=bundle, passphrase=ctx.secret("passphrase") or p.get("passphrase"),
                  from_locations=list(p["from_locations"]),
                  from_instance=ctx.other_instance(p["from_env"]) if p["from_env"] else None, orphans=p["orphans"],
                  clear_references=p["clear_references"], progress=ctx.progress, state_url=ctx.state_url)


def _storage_move(ctx: OpContext, p: dict[str, Any], *, dry_run: bool = False) -> Report:
    from .storage_move import move

    return move(ctx.instance(), p["from_"], p["to"], filters=tuple(p["filters"]), layout=p["layout"], dry_run=dry_run,
                workers=p["workers"], version=p["version"], state_url=ctx.state_url, progress=ctx.progress)


def _storage_prune(ctx: OpContext, p: dict[str, Any], *, yes: bool = True) -> Report:
    from .storage_move import prune

    return prune(ctx.instance(), src=p["from_"], yes=yes, state_url=ctx.state_url, progress=ctx.progress)


def _migrations_list(ctx: OpContext, p: dict[str, Any]) -> Report:
    from ..ledger.scripts import list_migrations

    return list_migrations(ctx.instance(), ctx.scripts_dir)


def _migrations_up(ctx: OpContext, p: dict[str, Any], *, dry_run: bool = False) -> Report:
    from ..ledger.scripts import upgrade

    return upgrade(ctx.instance(), version=p["version"], versions_dir=ctx.scripts_dir, dry_run=dry_run)


def _migrations_down(ctx: OpContext, p: dict[str, Any], *, dry_run: bool = False) -> Report:
    from ..ledger.scripts import downgrade

    return downgrade(ctx.instance(), version=p["version"], versions_dir=ctx.scripts_dir, dry_run=dry_run)


def _install_extension(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .install import install, uninstall

    if p["uninstall"]:
        return uninstall(ctx.instance(), module_bar=p["module_bar"])
    return install(ctx.instance(), p["sidecar_url"], module_bar=p["module_bar"])


def _promote(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .promote import apply

    return apply(ctx, p)


def _promote_plan(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .promote import plan

    return plan(ctx, p)


def _promote_outcome(report: Report, planned: bool) -> Outcome:
    """Refused: invalid (exit 2, the plan printed); a step failed, was interrupted, or a schema change the target
    did not take (``not_applied``): partial (exit 4); everything planned applied: ok (exit 0), the type drift of a
    forced cross-vendor apply listed in the report (the plan refused any column change that loses values)."""
    if report["refused"]:
        return Outcome.INVALID
    if report.get("failed") or (report.get("schema") or {}).get("not_applied"):
        return Outcome.PARTIAL  # something planned was not applied: never ok
    return Outcome.DIFFERENCES if planned and report["changes"] else Outcome.OK


def _content_move(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .content import apply

    return apply(ctx, p)


def _content_move_plan(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .content import plan

    return plan(ctx, p)


def _content_precheck(ctx: OpContext, p: dict[str, Any]) -> None:
    from .content import precheck

    precheck(ctx, p)


def _content_outcome(report: Report, planned: bool) -> Outcome:
    """Partial (exit 4: the API path stopped after some writes); refused: invalid (exit 2, the plan printed);
    a dry run with changes: differences (exit 1)."""
    if report.get("partial"):
        return Outcome.PARTIAL
    if report["refused"]:
        return Outcome.INVALID
    return Outcome.DIFFERENCES if planned and report["changes"] else Outcome.OK
def _content_sides(ctx: OpContext, p: dict[str, Any]) -> list[Any]:
    from .confine import Side

    return [Side("from", p["from_"], ctx.secret("from_token") or p.get("from_token")),
            Side("to", p["to"], ctx.secret("to_token") or p.get("to_token"), p.get("to_url"))]


def _promote_sides(ctx: OpContext, p: dict[str, Any]) -> list[Any]:
    from .confine import Side

    return [Side("from", p["from_"], ctx.secret("from_token") or p.get("from_token")),
            Side("to", p["to"], ctx.secret("to_token") or p.get("to_token"))]


def _sync_sides(ctx: OpContext, p: dict[str, Any]) -> list[Any]:
    """A sync profile's source and target (it stores no token: over HTTP the other side is a listed peer)."""
    from ..service.state import instance_scope
    from .confine import Side
    from .sync_profiles import SyncStore

    profile = SyncStore(ctx.state_url, instance_scope(ctx.instance())).get(p["name"])
    return [Side("source", profile["source"]), Side("target", profile["target"])]


def _sync_run(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .sync import run

    return run(ctx, {**p, "dry_run": False})


def _sync_plan(ctx: OpContext, p: dict[str, Any]) -> Report:
    from .sync import run

    return run(ctx, {**p, "dry_run": True})


def _sync_outcome(report: Report, planned: bool) -> Outcome:
    """The run's own verdict: ok (also a skipped run), differences (a dry run with changes), partial (some
    collections failed; their watermarks stay), failed, invalid (refused, or bad input found while running)."""
    return Outcome(report["status"])


def _planning(fn: Callable[..., Report], **flags: bool) -> Callable[[OpContext, dict[str, Any]], Report]:
    """The plan of an operation whose core function plans when told (``dry_run=True`` / ``yes=False``)."""
    def plan(ctx: OpContext, p: dict[str, Any]) -> Report:
        return fn(ctx, p, **flags)
    return plan


register(Operation("inspect", "Describe the instance: identity, tables, storage and missing file bytes.",
                   "InspectParams", _inspect, _inspect_outcome, cli="inspect", route="/migrate/inspect"))
register(Operation("export", "Write one verifiable bundle of the instance: database, file bytes and config.",
                   "ExportParams", _export, lambda r, planned: Outcome.DIFFERENCES if r["warnings"] else Outcome.OK,
                   cli="export", route="/migrate/export"))
register(Operation("import", "Restore a bundle into the instance, on any vendor.", "ImportParams", _import, _plan_or(
    lambda r: Outcome.OK, lambda r: bool(r["plan"]["changes"])), plan=_planning(_import, dry_run=True),
    cli="import", route="/migrate/import"))
register(Operation("verify", "Check that the instance holds exactly the bundle's rows and file bytes.",
                   "VerifyParams", _verify, lambda r, planned: _found(r), cli="verify", route="/migrate/verify"))
register(Operation("files_check", "Report missing bytes, size mismatches, orphans and dangling references.",
                   "FilesCheckParams", _files_check, _files_check_outcome, cli="files check", route="/migrate/files/check"))
register(Operation("files_repair", "Re-fetch missing bytes, quarantine or delete orphans, clear dangling references.",
                   "FilesRepairParams", _files_repair, _plan_or(
                       lambda r: Outcome.PARTIAL if r["unresolved_count"] else Outcome.OK,
                       lambda r: bool(r["planned"] or r["unresolved_count"])),
                   plan=_planning(_files_repair, yes=False), cli="files repair", route="/migrate/files/repair"))
register(Operation("storage_move", "Copy file bytes to another location (verified, resumable), then switch the rows.",
                   "StorageMoveParams", _storage_move, _plan_or(
                       lambda r: Outcome.PARTIAL if r["failed"] else Outcome.OK, lambda r: bool(r["plan"]["rows"])),
                   plan=_planning(_storage_move, dry_run=True), cli="storage move", route="/migrate/storage/move"))
register(Operation("storage_prune", "Delete the source bytes of finished moves.", "StoragePruneParams", _storage_prune,
                   _plan_or(lambda r: Outcome.OK, lambda r: any(m["objects"] for m in r["moves"])),
                   plan=_planning(_storage_prune, yes=False), cli="storage prune", route="/migrate/storage/prune"))
register(Operation("migrations_list", "List cairn-migrate's recorded migrations and their state.", "MigrationsListParams",
                   _migrations_list, _ok, cli="migrations list", route="/migrate/migrations"))
register(Operation("migrations_up", "Apply pending migrations (up to a version).", "MigrationStepParams", _migrations_up,
                   _plan_or(lambda r: Outcome.OK, lambda r: bool(r["plan"])),
                   plan=_planning(_migrations_up, dry_run=True), cli="migrations up", route="/migrate/migrations/up"))
register(Operation("migrations_down", "Revert the latest cairn-migrate migration (or a version).", "MigrationStepParams",
                   _migrations_down, _plan_or(lambda r: Outcome.OK, lambda r: bool(r["plan"])),
                   plan=_planning(_migrations_down, dry_run=True), cli="migrations down",
                   route="/migrate/migrations/down"))
register(Operation("install_extension", "Write (or remove) the /migrate endpoint, hooks and admin module in the instance.",
                   "InstallExtensionParams", _install_extension,
                   lambda r, planned: Outcome.DIFFERENCES if r.get("problems") else Outcome.OK, cli="install-extension",
                   http=False))
register(Operation("promote", "Promote the structure (schema, roles and permissions) of one instance onto another.",
                   "PromoteParams", _promote, _promote_outcome, plan=_promote_plan, cli="promote",
                   sides=_promote_sides))
register(Operation("content", "Move rows of collections, with their related rows, files and bytes, to another instance.",
                   "ContentMoveParams", _content_move, _content_outcome, plan=_content_move_plan, cli="content move",
                   sides=_content_sides, precheck=_content_precheck))
register(Operation("sync_run", "Run a sync profile once: optionally promote, then move the content changed since its "
                   "watermark.", "SyncRunParams", _sync_run, _sync_outcome, plan=_sync_plan, cli="sync run",
                   sides=_sync_sides))
