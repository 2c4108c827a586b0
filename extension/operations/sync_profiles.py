"""Sync profiles in the state store: what a recurring instance-to-instance content sync does, and when.

A profile names a source and a target (instance ``.env`` files: a schedule is
stored and never holds a secret, so URL+token instances are refused), the
collections with their filters, the content move's ``mode``, a conflict
policy, whether ``promote`` runs first, a masking profile's name, a schedule
(cron expression or interval seconds, in an IANA time zone) and what to do
with runs missed while no sidecar ran.  Profiles are records of one instance
(:func:`~cairn_migrate.service.state.instance_scope`, the sidecar's own), like
jobs, so sidecars of several instances share one store.

Tables (created on first use):

- ``cm_sync_profiles``: one row per profile (the validated profile as JSON, ``enabled``).
- ``cm_sync_slots``: one row per profile, the **run lock**: a run holds it
  ``FOR UPDATE SKIP LOCKED`` for its whole duration (PostgreSQL, MariaDB) and
  records the due slot it ran for, so a second sidecar firing for that slot skips.
  A row apart from the profile's, so editing or pausing a profile never waits for a run.
- ``cm_sync_watermarks``: per profile, side (``source``/``target``) and collection, the
  last ``directus_activity.id`` read.
- ``cm_sync_runs``: the history: job id, trigger, slot, outcome, counts, watermarks
  before and after, the report, the alert sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema
from sqlalchemy.engine import Engine

from ..errors import InvalidInput, MigrateError, NotFound
from . import SYNC_CONFLICTS, SYNC_MISSED, SYNC_MODES
from . import MASK_PROFILES as _BUILTIN_PROFILES  # masking's BUILTIN_NAMES, import-cheap (test_masking checks)
from ..service.jobs import _state_engine
from ..service.state import create_tables

#: The content operation's modes (its ``--mode``).
MODES, CONFLICTS, MISSED = SYNC_MODES, SYNC_CONFLICTS, SYNC_MISSED  # defined in the registry, import-cheap
INITIAL = ("full", "from-now")
#: The masking profiles a sync may name: the built-in ones (a YAML profile is a path, which a stored profile avoids).
MASK_PROFILES = _BUILTIN_PROFILES
NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
#: The sidecar's setting listing the hosts (``host`` or ``host:port``, comma-separated) an alert webhook may name
#: besides the profile's instances' ``PUBLIC_URL``.
WEBHOOK_HOSTS = "CAIRN_MIGRATE_WEBHOOK_HOSTS"
#: ``target_token_env`` may name only the sidecar's environment variables starting with this.
TOKEN_ENV_PREFIX = "CAIRN_MIGRATE_TOKEN_"
#: With ``missed: skip``, a run later than this many seconds after its slot (at most half the period) is dropped.
SKIP_GRACE_SECONDS = 30


class SyncConflict(MigrateError):
    """A profile of that name exists already."""

    exit_code = 2
    http_status = 409
    code = "conflict"


class SyncNotFound(NotFound):
    """No sync profile of that name: the caller named it, so it is bad input (exit 2), not a failure; HTTP 404."""

    exit_code = 2


class SyncRunning(MigrateError):
    """The profile is running: it cannot be removed now."""

    exit_code = 2
    http_status = 409
    code = "running"

    def __init__(self, name: str) -> None:
        super().__init__(f"The sync profile {name!r} is running; it cannot be removed while a run holds it",
                         hint="wait for the run to finish (GET /migrate/jobs, cairn-migrate sync history), then "
                         "remove it again; pause it first so no new run starts")


metadata = sa.MetaData()

profiles_table = sa.Table(
    "cm_sync_profiles", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("instance", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("anchor", sa.String(40), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("instance", "name", name="uq_cm_sync_profiles_instance_name"),
)

slots_table = sa.Table(
    "cm_sync_slots", metadata,
    sa.Column("profile_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_slot", sa.String(40), nullable=True),
)

watermarks_table = sa.Table(
    "cm_sync_watermarks", metadata,
    sa.Column("profile_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("side", sa.String(8), primary_key=True),
    sa.Column("collection", sa.String(64), primary_key=True),
    sa.Column("activity_id", sa.BigInteger, nullable=False),
)

runs_table = sa.Table(
    "cm_sync_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.Integer, nullable=False, index=True),
    sa.Column("job_id", sa.String(64), nullable=True),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("slot", sa.String(40), nullable=True),
    sa.Column("full", sa.Boolean, nullable=False, default=False),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("finished_at", sa.String(40), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("counts", sa.Text, nullable=True),
    sa.Column("watermark_before", sa.Text, nullable=True),
    sa.Column("watermark_after", sa.Text, nullable=True),
    sa.Column("report", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("alert", sa.Text, nullable=True),
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- validation
class _FilterMap(fields.Dict):
    """collection → a Directus-style filter (a JSON object, or its text)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        loaded = super()._deserialize(value, attr, data, **kwargs)
        out = {}
        for collection, spec in loaded.items():
            if isinstance(spec, str):
                try:
                    spec = json.loads(spec)
                except ValueError:
                    raise ValidationError(f"the filter of {collection} is not JSON") from None
            if not isinstance(spec, dict):
                raise ValidationError(f"the filter of {collection} must be a JSON object")
            out[collection] = spec
        return out


class ScheduleSchema(Schema):
    cron = fields.String(load_default=None, allow_none=True, metadata={
        "description": "A crontab expression (minute hour day month weekday), e.g. \"*/15 * * * *\"."})
    interval_seconds = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1), metadata={
        "description": "Run every N seconds (instead of cron)."})
    timezone = fields.String(load_default="UTC", metadata={"description": "The IANA time zone of the cron expression."})

    @validates("timezone")
    def _zone(self, value: str, **kwargs: Any) -> None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"{value!r} is not an IANA time zone (like UTC or Europe/Berlin)") from None

    @validates_schema
    def _one(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        if data.get("cron") and data.get("interval_seconds"):
            raise ValidationError("give cron or interval_seconds, not both", "cron")
        if data.get("cron"):
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(data["cron"], timezone=ZoneInfo(data.get("timezone") or "UTC"))
            except (ValueError, ZoneInfoNotFoundError) as exc:
                raise ValidationError(f"{data['cron']!r} is not a crontab expression: {exc}", "cron") from None


def _instance_ref(field_name: str) -> fields.String:
    return fields.String(required=True, metadata={
        "description": f"The {field_name} instance's .env file on the sidecar's machine (URLs are refused: a "
        "schedule is stored and never holds a token).", "host_path": True})


class SyncProfileSchema(Schema):
    """A sync profile as given to ``sync add`` / ``POST /migrate/syncs`` (every field but the name editable)."""

    name = fields.String(required=True, validate=validate.Regexp(NAME, error="letters, digits, '-' and '_' (at most "
                         "64, starting with a letter or digit)"), metadata={"description": "The profile's name."})
    source = _instance_ref("source")
    target = _instance_ref("target")
    collections = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                              validate=validate.Length(min=1), metadata={"description": "The collections to sync."})
    filters = _FilterMap(keys=fields.String(), load_default=dict, metadata={
        "description": "Per collection, a Directus-style filter of the rows to sync."})
    mode = fields.String(load_default="merge", validate=validate.OneOf(MODES), metadata={
        "description": "The content move's mode: merge, skip-existing, or mirror (deletes propagate)."})
    max_delete = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0), metadata={
        "description": "mirror: the most target rows one run may delete per collection (required with mirror)."})
    conflict = fields.String(load_default="source-wins", validate=validate.OneOf(CONFLICTS), metadata={
        "description": "Rows changed on both sides: source-wins (the mode as given), target-wins (skip-existing, "
        "no deletes), skip-if-target-modified (rows the target changed since the last run are left alone)."})
    initial = fields.String(load_default="full", validate=validate.OneOf(INITIAL), metadata={
        "description": "A collection's first run: full (re-scan every row its filter selects) or from-now (only "
        "changes after it, for a target already cloned from the source)."})
    promote_first = fields.Boolean(load_default=False, metadata={
        "description": "Run promote (structure) from source to target before the content."})
    target_token_env = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(
        TOKEN_ENV_PREFIX + r"[A-Z0-9_]+", error=f"the name must start {TOKEN_ENV_PREFIX} (only those variables of the "
        "sidecar's environment may be named), e.g. CAIRN_MIGRATE_TOKEN_STAGING"),
        metadata={"description": "promote_first: the name of the sidecar's environment variable holding the "
                  f"target's admin token (the token is never stored); it must start {TOKEN_ENV_PREFIX}."})
    mask = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MASK_PROFILES), metadata={
        "description": "A built-in masking profile's name (pii-basic), passed to the content step."})
    schedule = fields.Nested(ScheduleSchema, load_default=None, allow_none=True, metadata={
        "description": "When it runs (none: only when asked)."})
    missed = fields.String(load_default="run-once", validate=validate.OneOf(MISSED), metadata={
        "description": "Runs missed while no sidecar ran: run-once (one catch-up run) or skip."})
    enabled = fields.Boolean(load_default=True, metadata={"description": "false: paused."})
    alert_webhook = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"http", "https"},
                               metadata={"description": "POST the JSON report of a failed run here: a URL under the "
                                         "source's or target's PUBLIC_URL (e.g. a webhook-triggered flow), or on a host "
                                         f"the sidecar's operator lists in {WEBHOOK_HOSTS}."})

    @validates("source")
    def _source(self, value: str, **kwargs: Any) -> None:
        refuse_url(value)

    @validates("target")
    def _target(self, value: str, **kwargs: Any) -> None:
        refuse_url(value)

    @validates_schema(skip_on_field_errors=False)
    def _consistent(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        """Every inconsistency at once, even beside a bad field (one error must not hide the next)."""
        if kwargs.get("partial"):
            return  # a change: the changed profile is validated as a whole (SyncStore.update)
        errors: dict[str, str] = {}
        extra = sorted(set(data.get("filters") or {}) - set(data.get("collections") or []))
        if extra:
            errors["filters"] = f"filters name collections the profile does not sync: {', '.join(extra)}"
        if data.get("mode") == "mirror" and data.get("max_delete") is None:
            errors["max_delete"] = "mirror deletes target rows and needs max_delete (the most one run may delete)"
        if data.get("promote_first") and not data.get("target_token_env"):
            errors["target_token_env"] = ("promote_first changes the target through its API: name the environment "
                                          "variable holding its admin token in target_token_env")
        if data.get("source") and data.get("source") == data.get("target"):
            errors["target"] = "source and target are the same instance"
        if errors:
            raise ValidationError(errors)


def webhook_hosts(raw: str | None = None) -> set[str]:
    """The hosts of :data:`WEBHOOK_HOSTS` (``raw``, else the process environment), lower case."""
    import os

    text = os.environ.get(WEBHOOK_HOSTS, "") if raw is None else str(raw)
    return {part.strip().lower() for part in re.split(r"[,\s]+", text) if part.strip()}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def webhook_refusal(url: str, public_urls: list[str], hosts: set[str]) -> str | None:
    """Why ``url`` may not be an alert webhook (None: allowed): it must lie under one of ``public_urls`` (same
    scheme, host, port and path prefix) or on a host (``host`` or ``host:port``) of ``hosts``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return "it is not a plain http(s) URL"
    for public in public_urls:
        base = urlsplit(public)
        if base.scheme in ("http", "https") and _origin(public) == _origin(url):
            prefix = base.path.rstrip("/") + "/"
            if (parts.path or "/").startswith(prefix) or parts.path == base.path.rstrip("/"):
                return None
    host = parts.hostname.lower()
    if host in hosts or f"{host}:{_origin(url)[2]}" in hosts:
        return None
    return "it is under neither instance's PUBLIC_URL nor on a host the sidecar's operator allows"


def _where(instance: Any) -> tuple[str, str]:
    """The database ``instance`` uses: vendor and location (a SQLite file's real path, or host:port/name)."""
    from pathlib import Path

    database = instance.database
    url = database.url
    if database.vendor == "sqlite":
        return database.vendor, str(Path(url.database or "").expanduser().resolve())
    host = (url.host or "").lower()
    host = "localhost" if host in ("127.0.0.1", "::1", "[::1]") else host
    return database.vendor, f"{host}:{url.port or ''}/{url.database or ''}"


def check_instances(profile: Mapping[str, Any], *, hosts: set[str] | None = None) -> dict[str, Any]:
    """The profile with its ``.env`` paths made absolute (symlinks resolved), after reading both instances.

    An ``.env`` that cannot be read now is stored as named (its runs end ``invalid``, saying why).

    :raises InvalidInput: source and target use the same database, or the alert webhook is not allowed
        (:func:`webhook_refusal`).
    """
    from pathlib import Path

    from ..instance.instance import Instance

    out = dict(profile)
    instances = {}
    for side in ("source", "target"):
        if not out.get(side):
            continue
        path = Path(out[side]).expanduser().resolve()
        out[side] = str(path)
        try:
            instances[side] = Instance.from_env_file(path)
        except (MigrateError, OSError):
            continue  # not readable now (its runs end invalid, naming it); nothing to compare
    if len(instances) == 2 and _where(instances["source"]) == _where(instances["target"]):
        vendor, where = _where(instances["source"])
        raise InvalidInput(f"Bad sync profile: source and target are the same instance (both .env files use the "
                           f"{vendor} database {where})", hint="name the .env of another instance as the target")
    if out.get("alert_webhook"):
        publics = [i.public_url for i in instances.values()]
        reason = webhook_refusal(out["alert_webhook"], publics, webhook_hosts() if hosts is None else hosts)
        if reason:
            raise InvalidInput(f"Bad sync profile: alert_webhook: {out['alert_webhook']} is not allowed: {reason}",
                               hint=f"use a URL under the source's or target's PUBLIC_URL (a webhook flow), or have "
                               f"the sidecar's operator list its host in {WEBHOOK_HOSTS}")
    return out


def refuse_url(value: str) -> None:
    """:raises ValidationError: ``value`` is an http(s) URL, not an instance's ``.env``."""
    if urlsplit(value).scheme in ("http", "https"):
        raise ValidationError(f"{value} is a URL: a sync reaches its instances by their .env files (a schedule never "
                              "stores the token a URL would need)")


def env_problems(data: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Whether both ``.env`` files of a new profile exist and read: the problems (each with its fix) and the
    instances that read.  No database is opened."""
    from pathlib import Path

    from ..instance.instance import Instance

    problems: list[str] = []
    instances: dict[str, Any] = {}
    for side in ("source", "target"):
        value = data.get(side)
        if not isinstance(value, str) or not value or urlsplit(value).scheme in ("http", "https"):
            continue  # missing or a URL: the schema names it
        path = Path(value).expanduser().resolve()
        if not path.exists():
            problems.append(f"{side}: {path} does not exist (fix: name the {side} instance's .env file)")
            continue
        try:
            instances[side] = Instance.from_env_file(path)
        except (MigrateError, OSError) as exc:
            problems.append(f"{side}: {path} cannot be read: {getattr(exc, 'message', None) or exc} (fix: "
                            f"{getattr(exc, 'hint', None) or 'make it a readable CairnCMS .env'})")
    return problems, instances


def instance_problems(data: Mapping[str, Any], instances: Mapping[str, Any] | None = None) -> list[str]:
    """What of a new profile can be checked on its instances now, each problem with its fix: both ``.env`` files
    exist and read (:func:`env_problems`, unless ``instances`` were read already), and the source's database has
    each collection and each filter's fields (and operators).

    ``data`` may be the raw profile (its schema refused something else): whatever is usable is checked, so that
    one bad field does not hide the next.  The target's database is not opened (it may be down until the run).
    """
    from ..content.filter import compile_filter
    from ..instance.database import Database

    problems: list[str] = []
    if instances is None:
        problems, instances = env_problems(data)
    collections = [c for c in data.get("collections") or [] if isinstance(c, str) and c]
    filters = data.get("filters") if isinstance(data.get("filters"), Mapping) else {}
    if "source" not in instances or not collections:
        return problems
    try:
        with Database.open(instances["source"]) as db:
            tables = set(db.table_names())
            for collection in collections:
                if collection not in tables:
                    users = ", ".join(sorted(t for t in tables if not t.startswith("directus_"))) or "none"
                    problems.append(f"collections: {collection} is not a collection of the source (fix: name one of "
                                    f"its collections: {users})")
            for collection, spec in filters.items():
                if collection not in tables or collection not in collections:
                    continue  # named above
                if isinstance(spec, str):
                    try:
                        spec = json.loads(spec)
                    except ValueError:
                        continue  # the schema names it
                if not isinstance(spec, Mapping):
                    continue
                try:
                    compile_filter(spec, collection, db.columns(collection))
                except InvalidInput as exc:
                    problems.append(f"filters.{collection}: {exc.message} (fix: {exc.hint})")
    except MigrateError as exc:
        problems.append(f"source: its database cannot be opened to check the collections: {exc.message} (fix: "
                        f"{exc.hint or 'make the source database reachable'})")
    return problems


def validate_new_profile(data: Mapping[str, Any], *, schema: type[Schema] | None = None,
                         confine: Callable[[Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """A profile to add (``sync add``, ``POST /migrate/syncs``), validated as far as it can be now: its fields
    (:func:`validate_profile`) and its instances (:func:`instance_problems`), so that a profile that could only
    fail at run time is refused before it is stored and scheduled.

    The instances are checked even when another field is bad, but never a side the schema refused (an HTTP
    caller's path outside the allowed folders is not probed).  ``confine`` (the sidecar's peer rule) sees both
    sides before anything in them is read; with ``confine``, only a path that is not there is named before it.

    :raises InvalidInput: (exit 2, HTTP 422) every problem at once, each naming its fix (``details.problems``).
    """
    problems: list[str] = []
    profile: dict[str, Any] | None = None
    bad: set[str] = set()
    try:
        profile = (schema or SyncProfileSchema)().load(dict(data))
    except ValidationError as exc:
        problems.extend(_problem_list(exc))
        messages = exc.normalized_messages()
        bad = set(messages) if isinstance(messages, Mapping) else {"source", "target"}
    candidate = profile if profile is not None else {k: v for k, v in data.items() if k not in bad}
    if confine is None:
        problems.extend(instance_problems(candidate))
    elif all(isinstance(candidate.get(side), str) and candidate.get(side) for side in ("source", "target")):
        # Over HTTP both paths passed the allowed folders: a path that is not there is named (a typo, 422); any
        # other is judged by the peer rule (403) before anything in it is read.
        missing = [problem for problem in env_problems(candidate)[0] if problem.endswith(".env file)")]
        problems.extend(missing)
        if not missing:
            confine({"source": candidate["source"], "target": candidate["target"]})
            problems.extend(instance_problems(candidate))
    if problems:
        raise InvalidInput(f"Bad sync profile: {'; '.join(problems)}",
                           hint="cairn-migrate sync add --help (or GET /migrate/openapi.json) lists the fields",
                           details={"problems": problems})
    assert profile is not None
    return profile


def validate_profile(data: Mapping[str, Any], *, partial: bool = False,
                     schema: type[Schema] | None = None) -> dict[str, Any]:
    """The profile ``data`` describes, validated (by ``schema``, default :class:`SyncProfileSchema`).

    :raises InvalidInput: one line naming each bad field.
    """
    try:
        return (schema or SyncProfileSchema)(partial=partial).load(dict(data))
    except ValidationError as exc:
        raise InvalidInput(f"Bad sync profile: {_problems(exc)}",
                           hint="cairn-migrate sync add --help (or GET /migrate/openapi.json) lists the fields") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(_problem_list(exc))


def _problem_list(exc: ValidationError) -> list[str]:
    """``field: message`` for each bad field (nested ones dotted: ``schedule.cron``)."""
    messages = exc.normalized_messages()

    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [item for key, sub in sorted(value.items(), key=lambda kv: str(kv[0]))
                    for item in flat(f"{prefix}.{key}" if prefix else str(key), sub)]
        text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        return [f"{prefix}: {text}"]

    return flat("", messages)


#: ``sync add``'s option for each profile field, so its errors name what the operator typed
CLI_OPTIONS = {"name": "NAME", "source": "--from", "target": "--to", "collections": "--collection",
               "filters": "--filter", "mode": "--mode", "max_delete": "--max-delete", "conflict": "--conflict",
               "initial": "--initial", "promote_first": "--promote-first", "target_token_env": "--target-token-env",
               "mask": "--mask", "schedule": "--cron/--interval", "schedule.cron": "--cron",
               "schedule.interval_seconds": "--interval", "schedule.timezone": "--timezone", "missed": "--missed",
               "enabled": "--paused", "alert_webhook": "--alert-webhook"}


def for_cli(exc: InvalidInput) -> InvalidInput:
    """The same refusal with each problem led by the CLI option rather than the profile field (``--from: …``,
    ``--filter articles=…: …``): the HTTP API's callers send fields, the CLI's type options."""
    def label(problem: str) -> str:
        field, sep, rest = problem.partition(": ")
        if not sep:
            return problem
        if field.startswith("filters."):
            return f"--filter {field.removeprefix('filters.')}=…: {rest}"
        return f"{CLI_OPTIONS[field]}: {rest}" if field in CLI_OPTIONS else problem

    head = "Bad sync profile: "
    if not exc.message.startswith(head):
        return exc
    problems = (exc.details or {}).get("problems") if isinstance(exc.details, Mapping) else None
    labelled = [label(p) for p in problems] if problems else [label(exc.message.removeprefix(head))]
    return InvalidInput(head + "; ".join(labelled), hint="cairn-migrate sync add --help lists the options",
                        details={**(exc.details or {}), "problems": labelled} if problems else exc.details)


# --------------------------------------------------------------------------- schedule
def trigger_of(profile: Mapping[str, Any], anchor: str) -> Any | None:
    """The APScheduler trigger of a profile's schedule (None: no schedule).

    An interval starts at the profile's ``anchor`` (its creation time), so every
    sidecar computes the same due slots.
    """
    schedule = profile.get("schedule") or {}
    zone = ZoneInfo(schedule.get("timezone") or "UTC")
    if schedule.get("cron"):
        from apscheduler.triggers.cron import CronTrigger

        return CronTrigger.from_crontab(schedule["cron"], timezone=zone)
    if schedule.get("interval_seconds"):
        from apscheduler.triggers.interval import IntervalTrigger

        return IntervalTrigger(seconds=int(schedule["interval_seconds"]), start_date=datetime.fromisoformat(anchor),
                               timezone=zone)
    return None


def misfire_grace(profile: Mapping[str, Any]) -> int | None:
    """APScheduler's ``misfire_grace_time``: None (any delay: one coalesced catch-up) for ``run-once``;
    a short grace for ``skip``, so a run missed by more is dropped."""
    if profile.get("missed", "run-once") == "run-once":
        return None
    interval = (profile.get("schedule") or {}).get("interval_seconds")
    return max(1, min(SKIP_GRACE_SECONDS, int(interval) // 2)) if interval else SKIP_GRACE_SECONDS


def due_slot(profile: Mapping[str, Any], anchor: str, now: datetime | None = None) -> str | None:
    """The latest fire time of the profile's schedule at or before ``now`` (ISO, UTC), or None.

    Two sidecars firing for the same slot compute the same value, which is what
    the run lock records.
    """
    trigger = trigger_of(profile, anchor)
    if trigger is None:
        return None
    now = now or datetime.now(timezone.utc)  # APScheduler never fires early: the slot is the latest fire time
    interval = (profile.get("schedule") or {}).get("interval_seconds")
    if interval:
        start = datetime.fromisoformat(anchor)
        if now < start:
            return None
        steps = int((now - start).total_seconds() // int(interval))
        return (start + timedelta(seconds=steps * int(interval))).astimezone(timezone.utc).isoformat(timespec="seconds")
    lookback = timedelta(minutes=1)
    while lookback < timedelta(days=800):
        fire = trigger.get_next_fire_time(None, now - lookback)
        if fire is not None and fire <= now:
            while True:
                following = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
                if following is None or following > now:
                    return fire.astimezone(timezone.utc).isoformat(timespec="seconds")
                fire = following
        lookback *= 2
    return None


# --------------------------------------------------------------------------- store
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_of(state_url: str) -> Engine:
    """One engine per state store in this process, its sync tables created."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(state_url)
        if engine is None:
            engine = _state_engine(state_url)
            create_tables(engine, metadata)
            _ENGINES[state_url] = engine
        return engine


def dispose(state_url: str) -> None:
    """Close this process's engine of the state store at ``state_url`` (reopened on next use)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(state_url, None)
    if engine is not None:
        engine.dispose()


def _row_profile(row: Mapping[str, Any]) -> dict[str, Any]:
    spec = json.loads(row["spec"])
    spec["enabled"] = bool(row["enabled"])
    return {**spec, "name": row["name"], "id": row["id"], "anchor": row["anchor"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


class SyncStore:
    """The sync records of one instance (``scope``) in the state store at ``state_url``."""

    def __init__(self, state_url: str, scope: str) -> None:
        self.state_url = state_url
        self.scope = scope
        self.engine = engine_of(state_url)

    # profiles ---------------------------------------------------------------
    def add(self, profile: Mapping[str, Any], *, hosts: set[str] | None = None) -> dict[str, Any]:
        """Store a validated profile (its instances checked and their paths made absolute: :func:`check_instances`,
        ``hosts`` the alert webhook hosts the shell allows, default :data:`WEBHOOK_HOSTS` of the environment).

        :raises SyncConflict: (exit 2, 409) a profile of that name exists.
        """
        profile = check_instances(profile, hosts=hosts)
        spec = {k: v for k, v in SyncProfileSchema().dump(profile).items() if k not in ("name", "enabled")}
        stamp = now_iso()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(profiles_table.insert().values(
                    instance=self.scope, name=profile["name"], spec=json.dumps(spec, sort_keys=True),
                    enabled=bool(profile.get("enabled", True)), anchor=datetime.now(timezone.utc).replace(
                        microsecond=0).isoformat(), created_at=stamp, updated_at=stamp))
                profile_id = result.inserted_primary_key[0]
                conn.execute(slots_table.insert().values(profile_id=profile_id, last_slot=None))
        except sa.exc.IntegrityError:
            raise SyncConflict(f"There is already a sync profile {profile['name']!r}",
                               hint=f"choose another name, change it with PATCH /migrate/syncs/{profile['name']}, or "
                               f"remove it first: cairn-migrate sync remove {profile['name']}") from None
        return self.get(profile["name"])

    def get(self, name: str) -> dict[str, Any]:
        """:raises NotFound: no such profile of this instance."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(profiles_table).where(
                profiles_table.c.instance == self.scope, profiles_table.c.name == name)).mappings().first()
        if row is None:
            raise SyncNotFound(f"There is no sync profile {name!r}",
                               hint="cairn-migrate sync list (GET /migrate/syncs) lists them")
        return _row_profile(row)

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(profiles_table).where(profiles_table.c.instance == self.scope)
                                .order_by(profiles_table.c.name)).mappings().all()
        return [_row_profile(row) for row in rows]

    def update(self, name: str, changes: Mapping[str, Any], *, hosts: set[str] | None = None) -> dict[str, Any]:
        """Change fields of a profile (validated as a whole afterwards); the name stays.

        :raises InvalidInput: a rename, or the changed profile is not valid.
        """
        current = self.get(name)
        if "name" in changes and changes["name"] != name:
            raise InvalidInput("A sync profile cannot be renamed", hint="remove it and add it under the new name")
        given = {k: v for k, v in SyncProfileSchema().dump(current).items()}
        given.update({k: v for k, v in changes.items() if k != "name"})
        profile = check_instances(validate_profile(given), hosts=hosts)
        spec = {k: v for k, v in SyncProfileSchema().dump(profile).items() if k not in ("name", "enabled")}
        with self.engine.begin() as conn:
            conn.execute(profiles_table.update().where(profiles_table.c.id == current["id"]).values(
                spec=json.dumps(spec, sort_keys=True), enabled=bool(profile["enabled"]), updated_at=now_iso()))
        return self.get(name)

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        current = self.get(name)
        with self.engine.begin() as conn:
            conn.execute(profiles_table.update().where(profiles_table.c.id == current["id"]).values(
                enabled=enabled, updated_at=now_iso()))
        return self.get(name)

    def remove(self, name: str) -> dict[str, Any]:
        """Delete the profile with its watermarks and history."""
        current = self.get(name)
        if self.engine.dialect.name == "sqlite":
            lock = _local_lock(self.state_url, current["id"])
            if not lock.acquire(blocking=False):
                raise SyncRunning(name)
            lock.release()  # a run starting now finds the profile gone
        with self.engine.begin() as conn:
            if self.engine.dialect.name != "sqlite":
                # A run holds its lock row for its whole duration: answer at once instead of waiting for it.
                held = conn.execute(sa.select(slots_table.c.profile_id).where(slots_table.c.profile_id == current["id"])
                                    .with_for_update(skip_locked=True)).first()
                if held is None and conn.execute(sa.select(sa.func.count()).select_from(slots_table).where(
                        slots_table.c.profile_id == current["id"])).scalar():
                    raise SyncRunning(name)
            for table in (runs_table, watermarks_table, slots_table):
                conn.execute(table.delete().where(table.c.profile_id == current["id"]))
            conn.execute(profiles_table.delete().where(profiles_table.c.id == current["id"]))
        return current

    # watermarks and history ------------------------------------------------
    def watermarks(self, profile_id: int, side: str = "source", conn: sa.Connection | None = None) -> dict[str, int]:
        query = sa.select(watermarks_table.c.collection, watermarks_table.c.activity_id).where(
            watermarks_table.c.profile_id == profile_id, watermarks_table.c.side == side)
        if conn is not None:
            return {r.collection: int(r.activity_id) for r in conn.execute(query)}
        with self.engine.connect() as own:
            return {r.collection: int(r.activity_id) for r in own.execute(query)}

    @staticmethod
    def save_watermarks(conn: sa.Connection, profile_id: int, side: str, marks: Mapping[str, int]) -> None:
        for collection, activity_id in marks.items():
            key = (watermarks_table.c.profile_id == profile_id, watermarks_table.c.side == side,
                   watermarks_table.c.collection == collection)
            if conn.execute(watermarks_table.update().where(*key).values(activity_id=activity_id)).rowcount == 0:
                conn.execute(watermarks_table.insert().values(profile_id=profile_id, side=side, collection=collection,
                                                              activity_id=activity_id))

    def history(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        profile = self.get(name)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs_table).where(runs_table.c.profile_id == profile["id"])
                                .order_by(runs_table.c.id.desc()).limit(limit)).mappings().all()
        return [_run_record(row) for row in rows]

    def last_run(self, profile_id: int, conn: sa.Connection) -> dict[str, Any] | None:
        row = conn.execute(sa.select(runs_table).where(runs_table.c.profile_id == profile_id, runs_table.c.dry_run
                                                       .is_(False), runs_table.c.outcome.in_(("ok", "partial")))
                           .order_by(runs_table.c.id.desc()).limit(1)).mappings().first()
        return None if row is None else _run_record(row)

    def last_slot(self, profile_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(slots_table.c.last_slot).where(slots_table.c.profile_id == profile_id)).scalar()

    @contextmanager
    def without_lock(self, profile_id: int) -> Iterator[tuple[sa.Connection, str | None]]:
        """What :meth:`run_lock` yields, without holding the lock (a dry run: it records no slot)."""
        with self.engine.begin() as conn:
            yield conn, conn.execute(sa.select(slots_table.c.last_slot).where(
                slots_table.c.profile_id == profile_id)).scalar()

    @contextmanager
    def run_lock(self, profile_id: int) -> Iterator[tuple[sa.Connection, str | None] | None]:
        """Hold the profile's run row for the run; yields ``(connection, last slot)``, or None when another
        run holds it.

        PostgreSQL and MariaDB: ``SELECT … FOR UPDATE SKIP LOCKED`` in a transaction kept open for the run,
        committed with what the run records (slot, watermarks, history): a sidecar killed mid-run releases it
        and records nothing.  SQLite (one sidecar per store) has no row locks: a lock in this process stands
        in, and a second process on the same file is kept from running the same slot by the slot check (its
        write waits for the first's transaction), not from running at the same time.
        """
        if self.engine.dialect.name == "sqlite":
            lock = _local_lock(self.state_url, profile_id)
            if not lock.acquire(blocking=False):
                yield None
                return
            try:
                with self.engine.begin() as conn:
                    last = conn.execute(sa.select(slots_table.c.last_slot).where(
                        slots_table.c.profile_id == profile_id)).scalar()
                with self.engine.begin() as conn:
                    yield conn, last
            finally:
                lock.release()
            return
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                row = conn.execute(sa.select(slots_table.c.last_slot).where(slots_table.c.profile_id == profile_id)
                                   .with_for_update(skip_locked=True)).first()
                if row is None:
                    transaction.rollback()
                    yield None
                    return
                yield conn, row.last_slot
                transaction.commit()
            except BaseException:
                transaction.rollback()
                raise

    @staticmethod
    def record_run(conn: sa.Connection, profile_id: int, record: Mapping[str, Any]) -> None:
        values = dict(record)
        for key in ("counts", "watermark_before", "watermark_after", "report", "error", "alert"):
            if key in values:
                values[key] = None if values[key] is None else json.dumps(values[key], sort_keys=True, default=str)
        conn.execute(runs_table.insert().values(profile_id=profile_id, **values))
        if values.get("slot"):
            conn.execute(slots_table.update().where(slots_table.c.profile_id == profile_id).values(last_slot=values["slot"]))


_LOCAL_LOCKS: dict[tuple[str, int], threading.Lock] = {}


def _local_lock(state_url: str, profile_id: int) -> threading.Lock:
    with _ENGINES_LOCK:
        return _LOCAL_LOCKS.setdefault((state_url, profile_id), threading.Lock())


def _run_record(row: Mapping[str, Any]) -> dict[str, Any]:
    def load(value: str | None) -> Any:
        return None if value is None else json.loads(value)

    return {"id": row["id"], "job_id": row["job_id"], "trigger": row["trigger"], "slot": row["slot"],
            "full": bool(row["full"]), "dry_run": bool(row["dry_run"]), "started_at": row["started_at"],
            "finished_at": row["finished_at"], "outcome": row["outcome"], "counts": load(row["counts"]),
            "watermark_before": load(row["watermark_before"]), "watermark_after": load(row["watermark_after"]),
            "report": load(row["report"]), "error": load(row["error"]), "alert": load(row["alert"])}


def check_name(name: str) -> str:
    if not re.fullmatch(NAME, name or ""):
        raise InvalidInput(f"{name!r} is not a sync profile name", hint="letters, digits, '-' and '_'")
    return name
