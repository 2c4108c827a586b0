"""The OpenAPI 3 document of ``/migrate``, generated from the app's routes.

Every rule under ``/migrate`` in ``app.url_map`` becomes a path.  Each view
describes its operations in the YAML after ``---`` in its docstring (schemas
named by their marshmallow class); a view without one still gets a minimal
operation, so the document can never miss a route.  Views wrapped in
``admin_required`` get the bearer security requirement and 401/403 answers.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from apispec.yaml_utils import load_operations_from_docstring
from flask import Flask

from . import schemas

PREFIX = "/migrate"
_IGNORED_METHODS = {"HEAD", "OPTIONS"}
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-zA-Z_][a-zA-Z0-9_]*)(?:\([^>]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_PARAM_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}, "uuid": {"type": "string", "format": "uuid"}}

#: Schemas published as components (the names the docstrings use).
COMPONENT_SCHEMAS = (
    schemas.ErrorSchema,
    schemas.JobSchema,
    schemas.JobListSchema,
    schemas.HealthSchema,
    schemas.InspectSchema,
    schemas.InstanceEventSchema,
    schemas.InstanceEventsSchema,
)

_ERROR_RESPONSE = {"content": {"application/json": {"schema": "ErrorSchema"}}}


def _schema_name_resolver(schema: Any) -> str:
    name = resolve_schema_cls(schema).__name__
    if not isinstance(schema, (type, str)) and (schema.only or schema.exclude):
        name += "Partial"  # a distinct component, not a clash with the full schema
    return name


def openapi_path(rule: str) -> str:
    """``/migrate/jobs/<job_id>`` → ``/migrate/jobs/{job_id}``."""
    return _CONVERTER.sub(lambda m: "{" + m.group("name") + "}", rule)


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    return [
        {
            "in": "path",
            "name": m.group("name"),
            "required": True,
            "schema": dict(_PARAM_TYPES.get(m.group("conv") or "", {"type": "string"})),
        }
        for m in _CONVERTER.finditer(rule)
    ]


def build_spec(app: Flask) -> APISpec:
    """Build the document for ``app``'s ``/migrate`` routes."""
    try:
        release = version("cairn-migrate")
    except PackageNotFoundError:  # pragma: no cover
        release = "0+unknown"
    spec = APISpec(
        title="cairn-migrate",
        version=release,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name_resolver)],
        info={"description": "Migration sidecar for CairnCMS. Every route except /migrate/health needs an admin "
                             "(the instance hook's routes take its signature instead). A request field marked "
                             "x-server-path names a path on the sidecar's machine: it is refused (422) unless it "
                             "resolves inside a folder the sidecar's operator allows in CAIRN_MIGRATE_HTTP_PATHS."},
    )
    spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "An admin's static token (directus_users.token) or a CairnCMS access token (JWT).",
        },
    )
    spec.components.security_scheme(
        "hookSignature",
        {
            "type": "apiKey",
            "in": "header",
            "name": "X-Cairn-Migrate-Signature",
            "description": "HMAC-SHA256 by the instance's hook with the shared secret (docs/extension.md).",
        },
    )
    for schema in COMPONENT_SCHEMAS:
        spec.components.schema(schema.__name__, schema=schema)
    spec.components.response("Error", {"description": "The canonical error body.", **_ERROR_RESPONSE})

    rules = sorted(
        (r for r in app.url_map.iter_rules() if r.rule == PREFIX or r.rule.startswith(PREFIX + "/")),
        key=lambda r: r.rule,
    )
    paths: dict[str, dict[str, Any]] = {}
    for rule in rules:
        view = app.view_functions[rule.endpoint]
        documented = load_operations_from_docstring(view.__doc__ or "")
        summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else rule.endpoint
        operations = paths.setdefault(openapi_path(rule.rule), {})
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            operation = dict(documented.get(method.lower()) or {})
            operation.setdefault("summary", summary)
            operation.setdefault("operationId", f"{rule.endpoint}.{method.lower()}")
            responses = operation.setdefault("responses", {"200": {"description": "OK"}})
            if getattr(view, "signed_required", False):
                operation.setdefault("security", [{"hookSignature": []}])
                responses.setdefault("401", {"$ref": "#/components/responses/Error"})
            elif getattr(view, "admin_required", False):
                schemes: list[dict[str, list[str]]] = [{"bearerAuth": []}]
                if getattr(view, "signed_allowed", False):  # GET /migrate/freeze: the hook may sign instead
                    schemes.append({"hookSignature": []})
                operation.setdefault("security", schemes)
                responses.setdefault("401", {"$ref": "#/components/responses/Error"})
                responses.setdefault("403", {"$ref": "#/components/responses/Error"})
            else:
                operation.setdefault("security", [])
            responses.setdefault("default", {"$ref": "#/components/responses/Error"})
            operations[method.lower()] = operation
        parameters = _path_parameters(rule.rule)
        if parameters:
            operations["parameters"] = parameters
    for path, operations in paths.items():
        parameters = operations.pop("parameters", None)
        spec.path(path=path, operations=operations, parameters=parameters)
    return spec
