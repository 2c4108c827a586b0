"""The operations' parameters: one marshmallow schema per operation, declared once.

Every shell reads an operation's parameters from here (the CLI's options are checked against
them, ``POST /migrate/ops`` loads its body with them, docs and OpenAPI describe them).  They live
apart from the registry (:mod:`cairn_migrate.operations`) so that importing the registry, to build
the CLI or print its help, does not import marshmallow (~70 ms of every process's start-up on the
shared 2-core machine): :attr:`Operation.schema` imports this module the first time a schema is
needed (a command about to run, a listing of the operations).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from . import CONTENT_MODES, CONTENT_VIA, MASK_PROFILES, PROMOTE_KINDS
from .limits import DEFAULT_LIMIT, DEFAULT_WORKERS


_TYPES = {fields.Boolean: "boolean", fields.Integer: "integer", fields.List: "array", fields.Dict: "object",
          fields.Url: "string", fields.String: "string"}


def describe_params(schema: type[Schema]) -> list[dict[str, Any]]:
    """A schema's parameters: name, type, default, choices, description, secret, the CLI option giving it."""
    described = []
    for name, f in schema().fields.items():
        if f.dump_only:
            continue
        kind = next((label for cls, label in _TYPES.items() if isinstance(f, cls)), "string")
        entry: dict[str, Any] = {"name": f.data_key or name, "type": kind, "required": bool(f.required)}
        default = f.load_default
        if not f.required and not callable(default):
            entry["default"] = default
        elif callable(default):
            entry["default"] = default()
        choices = next((v.choices for v in f.validators if isinstance(v, validate.OneOf)), None)
        if choices:
            entry["choices"] = list(choices)
        for key in ("description", "secret", "cli"):
            if f.metadata.get(key) is not None:
                entry[key] = f.metadata[key]
        described.append(json.loads(json.dumps(entry, default=str)))
    return described


# --------------------------------------------------------------------------- parameter fields
def _secret(description: str, cli: str | None) -> fields.String:
    return fields.String(load_default=None, load_only=True, metadata={"description": description, "secret": True, "cli": cli})


def _key_file() -> fields.String:
    return fields.String(load_default=None, metadata={"description": "A key file on the machine running the operation.",
                                                      "cli": "--key-file", "host_path": True})


def _workers(description: str) -> fields.Integer:
    return fields.Integer(load_default=DEFAULT_WORKERS, validate=validate.Range(min=1, max=256),
                          metadata={"description": description, "cli": "--workers"})


class BundleRef(Schema):
    """A bundle: a server-side id (the sidecar) or a path on the machine running the operation."""

    bundle = fields.String(load_default=None, metadata={
        "description": "A bundle id from GET /migrate/bundles.", "cli": None})
    path = fields.String(load_default=None, metadata={
        "description": "A bundle path on the machine running the operation.", "cli": "BUNDLE", "host_path": True})
    passphrase = _secret("Decrypts an encrypted bundle (never stored).", "--passphrase-file")
    key_file = _key_file()
    storage_map = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict,
                              metadata={"description": "Files of location OLD go to the target's NEW.", "cli": "--storage-map"})


class InspectParams(Schema):
    check_objects = fields.Boolean(load_default=True, metadata={"description": "Check every file row's bytes.",
                                                                "cli": "--no-objects"})


class ExportParams(Schema):
    full = fields.Boolean(load_default=True, validate=validate.Equal(True), metadata={
        "description": "Database, file bytes and config (the only kind yet).", "cli": "--full"})
    output = fields.String(load_default=None, metadata={
        "description": "Where to write the bundle (the sidecar names its server-side bundles itself).", "cli": "--output",
        "host_path": True})
    overwrite = fields.Boolean(load_default=False, metadata={"description": "Replace output if it is an existing bundle (anything else is refused).", "cli": "--overwrite"})
    encrypt = fields.Boolean(load_default=None, allow_none=True, metadata={
        "description": "Encrypt the archive (default: when a passphrase or key file is given).", "cli": "--encrypt"})
    passphrase = fields.String(load_default=None, load_only=True, validate=validate.Length(min=8), metadata={
        "description": "Encrypt the bundle with this passphrase (never stored).", "secret": True, "cli": "--passphrase-file"})
    key_file = _key_file()
    freeze = fields.Boolean(load_default=False, metadata={
        "description": "Hold the instance's writes while capturing; the instance must prove it.", "cli": "--freeze"})
    freeze_guarantee = fields.Boolean(load_default=True, metadata={
        "description": "false: when the instance cannot prove it holds writes, warn and capture anyway.",
        "cli": "--no-freeze-guarantee"})
    instance_url = fields.Url(load_default=None, require_tld=False, metadata={
        "description": "Where to ask the instance for the freeze proof (default: its PUBLIC_URL).", "cli": "--instance-url"})
    native = fields.Boolean(load_default=False, metadata={
        "description": "Fast path: the vendor's own dump.", "cli": "--native"})
    mask = fields.String(load_default=None, validate=validate.Length(min=1), metadata={
        "description": "Mask people's data with this profile: a built-in name (pii-basic) or a YAML profile's path "
        "on the machine running the export; every row is masked before it is written.", "cli": "--mask",
        "host_path": True, "or_name": MASK_PROFILES})
    mask_salt = fields.String(load_default=None, load_only=True, validate=validate.Length(min=1), metadata={
        "description": "The masking salt (never stored; default: derived from the profile and the instance's SECRET).",
        "secret": True, "cli": "--mask-salt"})
    mask_keep_users = fields.List(fields.Email(), load_default=list, metadata={
        "description": "Emails of users whose row is kept as is, so they can log in to the clone.",
        "cli": "--mask-keep-user"})

    @validates_schema
    def _mask_options(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        if data.get("mask") and data.get("native"):
            raise ValidationError("a native dump cannot be masked (the vendor's own dump holds the rows as they are): drop native to export masked rows", "mask")
        if not data.get("mask") and (data.get("mask_salt") or data.get("mask_keep_users")):
            raise ValidationError("mask_salt and mask_keep_users need mask: name a profile (e.g. pii-basic) or drop them", "mask")


class ImportParams(BundleRef):
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan.", "cli": "--dry-run"})
    replace = fields.Boolean(load_default=False, metadata={"description": "Overwrite a non-empty target.", "cli": "--replace"})
    resume = fields.Boolean(load_default=False, metadata={"description": "Finish an interrupted import.", "cli": "--resume"})
    safety_bundle = fields.String(load_default=None, metadata={
        "description": "With replace: where the safety bundle of the old target goes (over HTTP: a name among the "
        "instance's own bundles).", "cli": "--safety-bundle", "host_path": True})


class VerifyParams(BundleRef):
    url = fields.Url(load_default=None, require_tld=False, metadata={"description": "Also check the running target.",
                                                                     "cli": "--url"})
    token = _secret("An admin token for the live checks.", "--token")
    login = _secret("EMAIL:PASSWORD of a known user to log in as in the live checks.", "--login")


class FilesCheckParams(Schema):
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=0, max=100000),
                           metadata={"description": "Examples kept per problem kind.", "cli": "--limit"})
    workers = _workers("Concurrent HEAD requests.")


class FilesRepairParams(Schema):
    dry_run = fields.Boolean(load_default=True, metadata={"description": "Only the plan (the default).",
                                                          "cli": "--yes"})
    bundle = fields.String(load_default=None, metadata={"description": "A bundle id to re-fetch bytes from.", "cli": None})
    path = fields.String(load_default=None, metadata={"description": "A bundle path to re-fetch bytes from.",
                                                      "cli": "--from-bundle", "host_path": True})
    passphrase = _secret("For an encrypted bundle.", "--passphrase-file")
    from_locations = fields.List(fields.String(), load_default=list, metadata={
        "description": "Re-fetch from these other locations of the instance.", "cli": "--from-location"})
    from_env = fields.String(load_default=None, metadata={
        "description": "Re-fetch from the instance of this .env file.", "cli": "--from-env", "host_path": True})
    orphans = fields.String(load_default="quarantine", validate=validate.OneOf(["quarantine", "delete", "keep"]),
                            metadata={"cli": "--orphans"})
    clear_references = fields.Boolean(load_default=True, metadata={
        "description": "Clear references to missing files.", "cli": "--keep-references"})


class StorageMoveParams(Schema):
    from_ = fields.String(required=True, data_key="from", metadata={"description": "The location the rows are on now.",
                                                                     "cli": "--from"})
    to = fields.String(required=True, metadata={"description": "The location to move them to.", "cli": "--to"})
    filters = fields.List(fields.String(), load_default=list, metadata={"description": "KEY=GLOB, AND-ed", "cli": "--filter"})
    layout = fields.String(load_default="keep", validate=validate.OneOf(["keep", "flat"]), metadata={"cli": "--layout"})
    workers = _workers("Parallel copies.")
    version = fields.String(load_default=None, metadata={"description": "Record the switch under this migration version.",
                                                         "cli": "--version"})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan.", "cli": "--dry-run"})


class StoragePruneParams(Schema):
    from_ = fields.String(load_default=None, data_key="from", metadata={"description": "Only moves out of this location.",
                                                                         "cli": "--from"})
    dry_run = fields.Boolean(load_default=True, metadata={"description": "Only the plan (the default).", "cli": "--yes"})


class MigrationsListParams(Schema):
    pass


class MigrationStepParams(Schema):
    version = fields.String(load_default=None, metadata={"description": "Up to (or this) migration version.",
                                                         "cli": "VERSION"})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan.", "cli": "--dry-run"})


class InstallExtensionParams(Schema):
    sidecar_url = fields.String(load_default=None, metadata={
        "description": "Where the instance reaches the sidecar.", "cli": "--sidecar-url"})
    uninstall = fields.Boolean(load_default=False, metadata={"description": "Remove what install wrote.",
                                                             "cli": "--uninstall"})
    module_bar = fields.Boolean(load_default=True, metadata={"description": "Add the module to the module bar.",
                                                             "cli": "--no-module-bar"})


class PromoteParams(Schema):
    from_ = fields.String(required=True, data_key="from", metadata={
        "description": "The source: a running instance's URL (with from_token), an instance's .env, a bundle "
        "(a directory, .tar or .tar.gz written by export), or a snapshot directory (schema.yaml + config/).", "cli": "--from", "host_path": True, "or_url": True})
    from_token = _secret("An admin token of the source, when it is a URL.", "--from-token")
    to = fields.String(required=True, metadata={
        "description": "The target: a running CairnCMS's URL, or its .env (reached at its PUBLIC_URL with to_token, "
        "else its database).", "cli": "--to",
        "host_path": True, "or_url": True})
    to_token = _secret("An admin token of the target.", "--to-token")
    engine = fields.String(load_default="auto", validate=validate.OneOf(("auto", "api", "db")), metadata={
        "description": "How the target is changed: api (its /schema and /config endpoints), db (the offline engine: "
        "its database, from its .env; schema only on Directus), auto (a URL, or a .env with a to_token: api; a .env without: db).",
        "cli": "--engine"})
    only = fields.List(fields.String(validate=validate.OneOf(PROMOTE_KINDS)), load_default=list,
                       metadata={"description": "Promote only these parts (default: all of them).", "cli": "--only"})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan.", "cli": "--dry-run"})
    allow_data_loss = fields.Boolean(load_default=False, metadata={
        "description": "Drop tables and columns that hold rows.", "cli": "--allow-data-loss"})
    force = fields.Boolean(load_default=False, metadata={
        "description": "Promote across vendors or versions.", "cli": "--force"})
    include_secrets = fields.Boolean(load_default=False, metadata={
        "description": "Copy secrets in flow operations' options (tokens, passwords, auth headers).",
        "cli": "--include-secrets"})
    destructive = fields.Boolean(load_default=False, metadata={
        "description": "Delete what the source lacks: the target's other roles and permissions (as CairnCMS's "
        "config apply --destructive: a role's permissions and presets go with it, its users are suspended; the last "
        "admin role never), flows, operations, dashboards, panels, role/global presets and translation strings. "
        "Without it they are kept and listed as kept (target only).", "cli": "--destructive"})
    allow_suspend_admins = fields.Boolean(load_default=False, metadata={
        "description": "With destructive: delete roles that hold users with admin access (they are suspended, as "
        "CairnCMS does); without it such a plan is refused. The user of to_token is never suspended: a role holding "
        "it is always refused.", "cli": "--allow-suspend-admins"})
    exclude_settings = fields.List(fields.String(), load_default=list, metadata={
        "description": "Settings (directus_settings fields) to leave as the target has them, e.g. project_url; by "
        "default every non-secret setting is copied (project_url and project_name are named in the plan).",
        "cli": "--exclude-setting"})
    restore_users = fields.Boolean(load_default=False, metadata={
        "description": "With a promote safety snapshot as the source: give the users it lists (those a destructive "
        "promote suspended) back their role and status.", "cli": "--restore-users"})


class _FilterField(fields.Field):
    """A Directus-style filter: a JSON object, or its text (the CLI's ``--filter``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, (dict, str)):
            raise ValidationError("a JSON object (or its text)")
        from ..content.filter import check_shape

        check_shape(value)  # InvalidInput (its own message and fix): no collection could take it, so no job starts
        return value


class ContentMoveParams(Schema):
    from_ = fields.String(required=True, data_key="from", metadata={
        "description": "The source: a running instance's URL (with from_token: read through its API, keyset "
        "paging), an instance's .env, or an export --full bundle (a folder, .tar or .tar.gz).",
        "cli": "--from", "host_path": True, "or_url": True})
    from_token = _secret("An admin token of the source, when it is a URL.", "--from-token")
    to = fields.String(required=True, metadata={
        "description": "The target instance's .env (read through its database; via api, written through its API), "
        "or with via api a running target's URL (read through its API too, with to_token).",
        "cli": "--to", "host_path": True, "or_url": True})
    collections = fields.List(fields.String(), required=True, validate=validate.Length(min=1), metadata={
        "description": "The collections to move (their related rows follow).", "cli": "--collection"})
    filter = _FilterField(load_default=None, allow_none=True, metadata={
        "description": "Which rows of the collections (a Directus-style filter, JSON).", "cli": "--filter"})
    depth = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0), metadata={
        "description": "How many relation levels to follow (default: all).", "cli": "--depth"})
    mode = fields.String(load_default="merge", validate=validate.OneOf(CONTENT_MODES), metadata={
        "description": "merge (create or update), skip-existing (create only), mirror (also delete).",
        "cli": "--mode"})
    max_delete = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0), metadata={
        "description": "The most target rows mirror may delete (mirror needs it).", "cli": "--max-delete"})
    via = fields.String(load_default="db", validate=validate.OneOf(CONTENT_VIA), metadata={
        "description": "db: write the target's database (one transaction); api: write through the target's API "
        "(its validation, permissions, hooks and flows run; batches, retries; a failure leaves a partial move "
        "that a re-run resumes).", "cli": "--via"})
    to_url = fields.String(load_default=None, allow_none=True, metadata={
        "description": "via api: the running target's URL (default: the PUBLIC_URL of its .env).", "cli": "--to-url"})
    to_token = _secret("via api: an admin token of the target.", "--to-token")
    concurrency = fields.Integer(load_default=4, validate=validate.Range(min=1, max=32), metadata={
        "description": "via api: requests in flight at once.", "cli": "--concurrency"})
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=5000), metadata={
        "description": "via api: rows per request.", "cli": "--batch-size"})
    dry_run = fields.Boolean(load_default=False, metadata={"description": "Only the plan.", "cli": "--dry-run"})
    rewrite_urls = fields.Boolean(load_default=True, metadata={
        "description": "Rewrite the source's PUBLIC_URL and asset URLs (file ids remapped) in text, rich text, "
        "markdown and JSON values to the target's; their files move too.", "cli": "--no-rewrite-urls"})
    mask = fields.String(load_default=None, validate=validate.Length(min=1), metadata={
        "description": "Mask people's data with this profile before the rows are written: a built-in name "
        "(pii-basic) or a YAML profile's path on the machine running the move (the same fakes as export --mask "
        "for the same salt).", "cli": "--mask", "host_path": True, "or_name": MASK_PROFILES})
    mask_salt = fields.String(load_default=None, load_only=True, validate=validate.Length(min=1), metadata={
        "description": "The masking salt (never stored; default: derived from the profile and the source's SECRET).",
        "secret": True, "cli": "--mask-salt"})
    transform = fields.String(load_default=None, validate=validate.Length(min=1), metadata={
        "description": "module:function called as f(collection, row, context) -> row or None (leave the row out); "
        "runs on the machine running the move, so over HTTP only what CAIRN_MIGRATE_TRANSFORMS lists.",
        "cli": "--transform", "code": True})
    create_users = fields.Boolean(load_default=False, metadata={
        "description": "Create referenced users the target lacks (by email): suspended, no password, the role "
        "matched by key (never an administrator role); otherwise their references become NULL.",
        "cli": "--create-users"})

    @validates_schema
    def _mask_options(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        if not data.get("mask") and data.get("mask_salt"):
            raise ValidationError("mask_salt needs mask: name a profile (e.g. pii-basic) or drop it", "mask")


class SyncRunParams(Schema):
    name = fields.String(required=True, metadata={"description": "The sync profile to run.", "cli": "NAME"})
    full = fields.Boolean(load_default=False, metadata={
        "description": "Re-scan every row the profile's filters select (finds drift the change feed missed), "
        "instead of the keys changed since the watermark.", "cli": "--full"})
    dry_run = fields.Boolean(load_default=False, metadata={
        "description": "Only the plan: nothing written, no watermark advanced.", "cli": "--dry-run"})
    trigger = fields.String(load_default="manual", validate=validate.OneOf(["manual", "schedule", "cli"]), metadata={
        "description": "Who started the run (the scheduler says schedule).", "cli": None})
    slot = fields.String(load_default=None, allow_none=True, metadata={
        "description": "The due slot a scheduled run is for (ISO time); a slot that has run is skipped.", "cli": None})
