"""Request-body schemas of the ``/migrate`` routes (responses use ``cairn_migrate.service.schemas``)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from ..service.app import HTTP_PATHS, get_state
from ..service.service_jobs import BUNDLE_NAME

#: What every path field's description adds (OpenAPI, docs/http.md).
SERVER_PATH_NOTE = ("Refused (422) unless it resolves, symlinks resolved, inside a folder the sidecar's operator "
                    f"lists in {HTTP_PATHS} (none by default: use bundle ids and uploads).")
#: A bundle name: what a bundle id is (a file name up to its first dot).


class ServerPath(fields.String):
    """A path on the sidecar's machine: loaded only if the sidecar's operator allows its folder.

    An instance's admin is trusted for that instance only, never for the
    sidecar's host, so every request field that names a file or folder there is
    a ``ServerPath``: loading it resolves it (symlinks too) and refuses it with
    a 422 naming the field, the path and ``CAIRN_MIGRATE_HTTP_PATHS`` unless it
    lies in an allowed folder.  The OpenAPI document marks it ``x-server-path``.
    """

    def __init__(self, *, description: str, **kwargs: Any) -> None:
        metadata = {"description": f"{description} {SERVER_PATH_NOTE}", "x-server-path": True}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        return str(get_state().http_path(self.data_key or self.name, text))


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
    id = fields.String(metadata={"description": "The freeze's id: the export proves the instance's hook sees it."})
    reason = fields.String()
    since = fields.String()
    until = fields.String()
    stale = fields.Boolean()


class ExportRequestSchema(Schema):
    """``POST /migrate/export``: a full bundle, written server-side as ``<job id>.tar.gz[.enc]``."""

    full = fields.Boolean(load_default=True, validate=validate.Equal(True))
    freeze = fields.Boolean(load_default=False, metadata={
        "description": "Hold the instance's writes while capturing; the job fails (freeze_not_enforced) unless the "
                       "instance proves its hook holds them."})
    freeze_guarantee = fields.Boolean(load_default=True, metadata={
        "description": "false: when the instance cannot prove it holds writes, warn (in the result) and capture anyway."})
    instance_url = fields.Url(load_default=None, require_tld=False, metadata={
        "description": "Where the sidecar asks the instance for the freeze proof (default: its PUBLIC_URL)."})
    passphrase = fields.String(
        load_default=None, load_only=True, validate=validate.Length(min=8),
        metadata={"description": "Encrypt the bundle with this passphrase (never stored)."},
    )


class _BundleRefSchema(Schema):
    bundle = fields.String(load_default=None, metadata={"description": "A bundle id from GET /migrate/bundles."})
    path = ServerPath(load_default=None, description="A bundle path on the sidecar's machine.")
    passphrase = fields.String(load_default=None, load_only=True)
    storage_map = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class ImportRequestSchema(_BundleRefSchema):
    """``POST /migrate/import`` (JSON, or multipart with the bundle as the ``bundle`` file part)."""

    dry_run = fields.Boolean(load_default=False)
    replace = fields.Boolean(load_default=False)
    resume = fields.Boolean(load_default=False)
    safety_bundle = fields.String(
        load_default=None, validate=validate.Regexp(f"^{BUNDLE_NAME}$", error="a bundle name (letters, digits, '-', '_'), "
                                                                       "not a path"),
        metadata={"description": "With replace: the name of the safety bundle of the old target, a new bundle of this "
                                 "instance (<name>.tar.gz in its own bundle folder, downloadable as "
                                 "GET /migrate/bundles/<name>); default before-replace-<job id>. Not a path."})


class VerifyRequestSchema(_BundleRefSchema):
    """``POST /migrate/verify``."""

    url = fields.Url(load_default=None, require_tld=False)
    token = fields.String(load_default=None, load_only=True)


class BundleSchema(Schema):
    """A server-side bundle."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    size = fields.Integer(required=True)
    created_at = fields.String(required=True)
    encrypted = fields.Boolean(required=True)
    download = fields.String(required=True)


class BundleListSchema(Schema):
    bundles = fields.List(fields.Nested(BundleSchema), required=True)


class PlanSchema(Schema):
    """The dry-run answer of ``POST /migrate/import``: the plan, nothing applied."""

    plan = fields.Dict(required=True)
    applied = fields.Boolean(required=True)
    dry_run = fields.Boolean(required=True)


def _sync_profile_request_schema() -> type[Schema]:
    from marshmallow import ValidationError, pre_load

    from ..operations.sync_profiles import SyncProfileSchema, refuse_url

    class SyncProfileRequestSchema(SyncProfileSchema):
        """``POST /migrate/syncs`` (and, every field optional, ``PATCH /migrate/syncs/<name>``): a sync profile."""

        source = ServerPath(required=True, description="The source instance's .env file (URLs are refused: a "
                            "schedule is stored and never holds a token).")
        target = ServerPath(required=True, description="The target instance's .env file.")

        @pre_load
        def _no_urls(self, data: Any, **kwargs: Any) -> Any:
            """A URL is refused as such, before it is taken for a (relative) path."""
            if isinstance(data, dict):
                for field in ("source", "target"):
                    if isinstance(data.get(field), str):
                        try:
                            refuse_url(data[field])
                        except ValidationError as exc:
                            raise ValidationError(exc.messages, field) from None
            return data

    return SyncProfileRequestSchema


SyncProfileRequestSchema = _sync_profile_request_schema()
