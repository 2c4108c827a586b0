"""Request-body schemas of the ``/migrate`` routes (responses use ``cairn_migrate.schemas``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class InspectRequestSchema(Schema):
    """``POST /migrate/inspect``."""

    check_objects = fields.Boolean(load_default=True, metadata={"description": "Check every file row's bytes."})


class FreezeRequestSchema(Schema):
    """``POST /migrate/freeze``."""

    reason = fields.String(load_default="held by an admin", validate=validate.Length(max=500))
    ttl_seconds = fields.Integer(load_default=7200, validate=validate.Range(min=1, max=7 * 24 * 3600))


class FreezeSchema(Schema):
    """The freeze state the instance's hook asks for before writes."""

    active = fields.Boolean(required=True)
    reason = fields.String()
    since = fields.String()
    until = fields.String()
    stale = fields.Boolean()
