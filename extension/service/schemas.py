"""Marshmallow schemas of what the sidecar answers: jobs, errors, health, reports.

The HTTP API, ``--format json`` and the admin UI render the same records with
these schemas, and :mod:`cairn_migrate.service.openapi` publishes them as components.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, post_dump, validate, validates_schema

from .jobs import JOB_STATES

#: The largest page ``GET /migrate/jobs`` returns.
MAX_JOB_LIST_LIMIT = 500


class ErrorDetailSchema(Schema):
    """One error: ``MigrateError.to_dict()``."""

    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True)
    hint = fields.String(metadata={"description": "how to fix it"})
    details = fields.Raw(metadata={"description": "JSON data for machine readers"})


class ErrorSchema(Schema):
    """The canonical error body of every ``/migrate`` route."""

    ok = fields.Boolean(required=True, dump_default=False)
    error = fields.Nested(ErrorDetailSchema, required=True)
    status = fields.Integer(required=True, metadata={"description": "the HTTP status, repeated"})


class ProgressSchema(Schema):
    """Counters of a running job (totals are ``null`` until known)."""

    items_done = fields.Integer(required=True)
    items_total = fields.Integer(allow_none=True)
    bytes_done = fields.Integer(required=True)
    bytes_total = fields.Integer(allow_none=True)
    rate_items_per_s = fields.Float(allow_none=True)
    rate_bytes_per_s = fields.Float(allow_none=True)


class LogLineSchema(Schema):
    at = fields.String(required=True, metadata={"description": "UTC ISO 8601"})
    message = fields.String(required=True)


class JobSchema(Schema):
    """A job record: state, progress, timings, log and the report or error."""

    id = fields.String(required=True)
    kind = fields.String(required=True)
    params = fields.Dict(required=True)
    state = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    progress = fields.Nested(ProgressSchema, required=True)
    created_at = fields.String(required=True, metadata={"description": "UTC ISO 8601"})
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    cancel_requested = fields.Boolean()
    result = fields.Dict(allow_none=True, metadata={"description": "the job's report, once succeeded"})
    error = fields.Nested(ErrorDetailSchema, allow_none=True)
    log = fields.List(fields.Nested(LogLineSchema), metadata={"description": "the last log lines"})


class JobListSchema(Schema):
    """A page of jobs, newest first (without their logs)."""

    jobs = fields.List(fields.Nested(JobSchema(exclude=("log",))), required=True)
    count = fields.Integer(required=True)


class JobQuerySchema(Schema):
    """The query string of ``GET /migrate/jobs``."""

    state = fields.String(validate=validate.OneOf(JOB_STATES))
    kind = fields.String(validate=validate.Length(min=1, max=100))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_JOB_LIST_LIMIT))


class HealthInstanceSchema(Schema):
    """Whether the instance's database is complete: an interrupted import leaves it incomplete."""

    state = fields.String(required=True, validate=validate.OneOf(["complete", "incomplete", "unknown"]),
                          metadata={"description": "unknown: the database could not be read"})
    step = fields.String(allow_none=True, metadata={"description": "the step the interrupted import reached"})
    started_at = fields.String(allow_none=True)
    fix = fields.String(allow_none=True, metadata={"description": "how to finish the import"})


class HealthSchema(Schema):
    """``GET /migrate/health``: open, and never anything secret."""

    status = fields.String(required=True)
    service = fields.String(required=True)
    version = fields.String(required=True)
    instance = fields.Nested(HealthInstanceSchema, required=True)


class InstanceEventSchema(Schema):
    """A change the instance's hook reports (``POST /migrate/events``): kept in memory as a recent-activity feed.

    The route loads the body with this schema, so what the OpenAPI document publishes is what is checked."""

    class Meta:
        unknown = EXCLUDE  # a newer hook may send more: kept out of the feed, not refused

    event = fields.String(required=True, validate=validate.Length(min=1), metadata={
        "description": "items.create, items.update, items.delete or files.upload"})
    at = fields.String(allow_none=True, metadata={"description": "when the instance saw it (ISO 8601)"})
    collection = fields.String(allow_none=True)
    keys = fields.List(fields.Raw(), metadata={"description": "the changed items' keys (up to 100 kept)"})
    user = fields.String(allow_none=True, metadata={"description": "the user who wrote, when known"})
    file = fields.Dict(allow_none=True, metadata={"description": "an upload's storage, names, type and size"})


#: The most events one ``POST /migrate/events`` may carry (the hook sends at most 100 at a time).
MAX_EVENT_BATCH = 200


class InstanceEventsSchema(InstanceEventSchema):
    """The body of ``POST /migrate/events``: one event (as hooks installed before batching send), or ``events``."""

    event = fields.String(validate=validate.Length(min=1), metadata={
        "description": "one event's name (or send 'events')"})
    events = fields.List(fields.Nested(InstanceEventSchema), validate=validate.Length(min=1, max=MAX_EVENT_BATCH),
                         metadata={"description": f"up to {MAX_EVENT_BATCH} events, recorded in order "
                                                  "(all checked first)"})

    @validates_schema
    def _one_or_many(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "event" not in data and "events" not in data:
            raise ValidationError("send one event (an 'event' name) or 'events', a list of them")


class HttpPathsSchema(Schema):
    """``GET /migrate/paths``: where an admin may name files on the sidecar's machine (CAIRN_MIGRATE_HTTP_PATHS)."""

    allowed = fields.List(fields.String(), required=True, metadata={
        "description": "The folders (resolved) inside which request fields may name paths; empty: none."})
    env = fields.String(required=True, allow_none=True, metadata={
        "description": "The .env of this sidecar's instance, when it lies inside an allowed folder (else null)."})
    env_outside = fields.Boolean(required=True, metadata={
        "description": "true: this instance's .env is not inside an allowed folder, so it cannot be named over HTTP."})


class InspectSchema(Schema):
    """Placeholder for the inspect report: any JSON object passes through unchanged."""

    class Meta:
        unknown = INCLUDE

    @post_dump(pass_original=True)
    def _pass_through(self, data: dict[str, Any], original: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(original)


class SyncRunRequestSchema(Schema):
    """``POST /migrate/syncs/<name>/run``: a real run (a job) or its plan (answered at once)."""

    full = fields.Boolean(load_default=False, metadata={
        "description": "Re-scan every row the profile's filters select instead of the changes since the watermark."})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan: nothing written."})


class SyncListSchema(Schema):
    """``GET /migrate/syncs``: the instance's sync profiles, each with ``next_run`` and its last run."""

    syncs = fields.List(fields.Dict(), required=True)
    count = fields.Integer(required=True)


class SyncHistoryQuerySchema(Schema):
    """``GET /migrate/syncs/<name>/history`` query."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_JOB_LIST_LIMIT))


class SyncHistorySchema(Schema):
    """A profile's runs, newest first: job id, trigger, slot, outcome, counts, watermarks before/after, report."""

    name = fields.String(required=True)
    runs = fields.List(fields.Dict(), required=True)
    count = fields.Integer(required=True)
