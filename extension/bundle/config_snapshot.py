"""Config-as-code: the CairnCMS ``CairnConfig`` payload (roles and permissions).

Reads ``directus_roles`` and ``directus_permissions`` straight from an
instance's database and produces exactly what ``cairncms config snapshot``
produces (reference §3.1), writes it in the CLI's directory layout and reads
such a directory back with the CLI's rules (§3.2).

The payload::

    {"manifest": {"version": 1, "resources": ["roles", "permissions"]},
     "roles": [ConfigRole, ...],            # sorted by key, no public sentinel
     "permissions": [ConfigPermissionSet]}  # sorted by role; "public" included

Values are normalised the way the CairnCMS services read them, whatever the
vendor: booleans are ``True``/``False`` (SQLite and MySQL store 0/1), UUIDs
are strings, JSON columns are parsed, CSV columns are lists.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ..instance.database import Database
from ..errors import MigrateError

log = logging.getLogger(__name__)

#: The id of the public sentinel role (reference §1.3, ``20260418A``).
PUBLIC_ROLE_ID = "00000000-0000-0000-0000-000000000000"
PUBLIC_ROLE_KEY = "public"
MANIFEST_FILE = "cairncms-config.yaml"
CONFIG_VERSION = 1
RESOURCES = ("roles", "permissions")


class SnapshotError(MigrateError):
    """The database cannot be snapshotted as it is (e.g. duplicate permission tuples)."""

    exit_code = 3
    http_status = 409
    code = "snapshot_failed"


class ConfigDirectoryError(SnapshotError):
    """A config directory breaks the CairnCMS reading rules (reference §3.2)."""

    exit_code = 2
    http_status = 422
    code = "invalid_config_directory"


# ---------------------------------------------------------------------------
# Value casts: what the CairnCMS payload service does on read
# ---------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A driver value as the JSON-ish value the Node driver would give (UUID → str, Decimal → number)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def cast_boolean(value: Any) -> Any:
    """``cast-boolean`` on read: 1/'1'/true → True, 0/'0'/false → False, null/'' → None."""
    if value is True or (not isinstance(value, bool) and value in (1, "1")):
        return True
    if value is False or (not isinstance(value, bool) and value in (0, "0")):
        return False
    if value is None or value == "":
        return None
    return value


def cast_json(value: Any) -> Any:
    """``cast-json`` on read: a string is parsed; an unparsable string stays a string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def cast_csv(value: Any) -> Any:
    """``cast-csv`` on read: a string is split on commas ('' → [])."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        return value
    if value == "":
        return []
    return value.split(",")


def _utf16_key(text: str) -> list[int]:
    """Sort key of JavaScript's default string order (UTF-16 code units)."""
    return list(text.encode("utf-16-be"))


def js_sorted_strings(values: Iterable[str]) -> list[str]:
    """``[...values].sort()`` of JavaScript (code-unit order)."""
    return sorted(values, key=_utf16_key)


def locale_key(text: str) -> tuple[Any, ...]:
    """An approximation of ``String.prototype.localeCompare`` (ICU root collation).

    Primary level: punctuation and symbols < digits < letters, letters compared
    without case and accents; then accents; then lower case before upper case.
    Exact for the ASCII identifiers CairnCMS keys and collection names use.
    """
    primary: list[tuple[int, str]] = []
    secondary: list[str] = []
    tertiary: list[int] = []
    for ch in text:
        decomposed = unicodedata.normalize("NFD", ch)
        base = decomposed[0]
        if base.isspace():
            cls = 0
        elif base.isdigit():
            cls = 2
        elif base.isalpha():
            cls = 3
        else:
            cls = 1
        primary.append((cls, base.casefold()))
        secondary.append(decomposed[1:])
        tertiary.append(1 if ch.isupper() else 0)
    return (primary, secondary, tertiary, _utf16_key(text))


# ---------------------------------------------------------------------------
# Snapshot
# ---------------------------------------------------------------------------
def _parse_json_column(field: str, perm_id: Any, value: Any) -> Any:
    """``cast-json`` then the snapshot's own ``parseJSON`` (unparsable → None + warning)."""
    value = cast_json(value)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            log.warning("Permission id=%s: failed to parse %s as JSON — treating as null.", perm_id, field)
            return None
    return None


def _parse_csv_column(value: Any) -> list[str] | None:
    value = cast_csv(value)
    if value is None:
        return None
    if isinstance(value, list):
        return js_sorted_strings(value)
    return None


def config_snapshot(db: Database) -> dict[str, Any]:
    """The ``CairnConfig`` payload of ``db``, as ``cairncms config snapshot`` makes it (reference §3.1).

    :raises SnapshotError: two permissions share (role, collection, action), or
        the system tables are missing.
    """
    names = set(db.table_names())
    missing = [t for t in ("directus_roles", "directus_permissions") if t not in names]
    if missing:
        raise SnapshotError(
            f"The database has no {', '.join(missing)} table: it is not a CairnCMS instance",
            hint="bootstrap the instance first",
        )

    role_key_by_id: dict[str, str] = {}
    roles: list[dict[str, Any]] = []
    for row in db.stream_rows("directus_roles"):
        role = {k: plain(v) for k, v in row.items()}
        role_id = str(role["id"])
        role_key_by_id[role_id] = role.get("key")
        if role_id == PUBLIC_ROLE_ID:
            continue
        config_role: dict[str, Any] = {
            "key": role.get("key"),
            "name": role.get("name"),
            "admin_access": cast_boolean(role.get("admin_access")),
            "app_access": cast_boolean(role.get("app_access")),
        }
        if role.get("icon") is not None:
            config_role["icon"] = role["icon"]
        if role.get("description") is not None:
            config_role["description"] = role["description"]
        enforce_tfa = cast_boolean(role.get("enforce_tfa"))
        if enforce_tfa is not None:
            config_role["enforce_tfa"] = enforce_tfa
        ip_access = cast_csv(role.get("ip_access"))
        if ip_access is not None:
            config_role["ip_access"] = js_sorted_strings(ip_access) if isinstance(ip_access, list) else None
        roles.append(config_role)

    by_role: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, str]] = set()
    orphaned = 0
    order = ["id"] if "id" in db.columns("directus_permissions") else None
    for row in db.stream_rows("directus_permissions", order_by=order):
        perm = {k: plain(v) for k, v in row.items()}
        role_id = None if perm.get("role") is None else str(perm["role"])
        role_key = role_key_by_id.get(role_id) if role_id is not None else None
        if not role_key:
            orphaned += 1
            log.warning("Permission id=%s references non-existent role %s — skipped in snapshot.", perm.get("id"), role_id)
            continue
        collection, action = perm.get("collection"), perm.get("action")
        identity = (role_key, collection, action)
        if identity in seen:
            raise SnapshotError(
                f'Duplicate permission found: role="{role_key}" collection="{collection}" action="{action}"',
                hint="resolve the duplicates in the admin app or the database, then snapshot again",
                details={"role": role_key, "collection": collection, "action": action},
            )
        seen.add(identity)
        by_role.setdefault(role_key, []).append(
            {
                "collection": collection,
                "action": action,
                "permissions": _parse_json_column("permissions", perm.get("id"), perm.get("permissions")),
                "validation": _parse_json_column("validation", perm.get("id"), perm.get("validation")),
                "presets": _parse_json_column("presets", perm.get("id"), perm.get("presets")),
                "fields": _parse_csv_column(perm.get("fields")),
            }
        )
    if orphaned:
        log.warning(
            "Skipped %d orphaned permission(s) referencing non-existent roles; clean them up in the database "
            "before relying on this snapshot as authoritative.",
            orphaned,
        )

    permissions = [
        {"role": key, "permissions": sorted(perms, key=lambda p: (locale_key(p["collection"]), locale_key(p["action"])))}
        for key, perms in by_role.items()
    ]
    permissions.sort(key=lambda s: locale_key(s["role"]))
    roles.sort(key=lambda r: locale_key(r["key"]))
    return {
        "manifest": {"version": CONFIG_VERSION, "resources": list(RESOURCES)},
        "roles": roles,
        "permissions": permissions,
    }


# ---------------------------------------------------------------------------
# YAML like js-yaml
# ---------------------------------------------------------------------------
class _JsYamlDumper(yaml.SafeDumper):
    """Block sequences indented inside mappings, as js-yaml writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false), like js-yaml's default schema."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def dump_yaml(data: Any, *, sort_keys: bool = True) -> str:
    """js-yaml ``dump(data, {indent: 2, sortKeys, lineWidth: -1, noRefs: true})``."""
    return yaml.dump(
        data,
        Dumper=_JsYamlDumper,
        sort_keys=sort_keys,
        indent=2,
        width=float("inf"),
        allow_unicode=True,
        default_flow_style=False,
    )


def load_yaml(text: str) -> Any:
    """Parse YAML as js-yaml ``load`` does (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


# ---------------------------------------------------------------------------
# Directory layout
# ---------------------------------------------------------------------------
def write_config_directory(config: Mapping[str, Any], dest: Path | str) -> list[Path]:
    """Write ``config`` in the ``cairncms config snapshot`` layout (reference §3.2).

    ``cairncms-config.yaml``, ``roles/<key>.yaml``, ``permissions/<role>.yaml``;
    stale ``*.yaml`` files in ``roles/`` and ``permissions/`` are deleted.
    Returns the files written.
    """
    dest = Path(dest)
    roles_dir, permissions_dir = dest / "roles", dest / "permissions"
    roles_dir.mkdir(parents=True, exist_ok=True)
    permissions_dir.mkdir(parents=True, exist_ok=True)
    written = [dest / MANIFEST_FILE]
    written[0].write_text(dump_yaml(config["manifest"]), encoding="utf-8")

    role_files: set[str] = set()
    for role in sorted(config.get("roles") or [], key=lambda r: locale_key(r["key"])):
        filename = f"{role['key']}.yaml"
        role_files.add(filename)
        normalized = dict(role)
        if normalized.get("ip_access"):
            normalized["ip_access"] = js_sorted_strings(normalized["ip_access"])
        path = roles_dir / filename
        path.write_text(dump_yaml(normalized), encoding="utf-8")
        written.append(path)

    permission_files: set[str] = set()
    for permission_set in sorted(config.get("permissions") or [], key=lambda s: locale_key(s["role"])):
        filename = f"{permission_set['role']}.yaml"
        permission_files.add(filename)
        perms = sorted(
            permission_set.get("permissions") or [],
            key=lambda p: (locale_key(p["collection"]), locale_key(p["action"])),
        )
        body = {
            "role": permission_set["role"],
            "permissions": [
                {**p, "fields": js_sorted_strings(p["fields"]) if p.get("fields") is not None else None} for p in perms
            ],
        }
        path = permissions_dir / filename
        path.write_text(dump_yaml(body), encoding="utf-8")
        written.append(path)

    for folder, keep in ((roles_dir, role_files), (permissions_dir, permission_files)):
        for entry in folder.iterdir():
            if entry.name.endswith(".yaml") and entry.name not in keep and entry.is_file():
                entry.unlink()
    return written


_ENV_VAR = re.compile(r"^\{\{([A-Z_][A-Z0-9_]*)\}\}$")


def _interpolate(value: Any, field: str, environ: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    match = _ENV_VAR.match(value)
    if not match:
        return value
    name = match.group(1)
    if name not in environ:
        log.warning('Unresolved env var {{%s}} in field "%s" — leaving as literal.', name, field)
        return value
    return environ[name]


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


def _load_file(path: Path) -> Any:
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigDirectoryError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from exc


def read_config_directory(path: Path | str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a config directory with the ``cairncms config apply`` rules (reference §3.2).

    Role ``name``/``description`` of exactly ``{{VAR}}`` are replaced from
    ``environ`` (default ``os.environ``); an unknown variable stays literal.

    :raises ConfigDirectoryError: no manifest, version ≠ 1, no ``resources``
        list, ``roles/public.yaml``, a filename that is not the key/role, or a
        permission file of a non-public role without a role file.
    """
    root = Path(path)
    environ = os.environ if environ is None else environ
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ConfigDirectoryError(
            f"Config manifest not found at {manifest_path}",
            hint="is this a config directory written by 'cairncms config snapshot'?",
        )
    manifest = _load_file(manifest_path)
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version != CONFIG_VERSION:
        shown = "missing" if version is None else version
        raise ConfigDirectoryError(
            f"Unsupported config version: {shown}", hint=f"this engine supports version {CONFIG_VERSION}"
        )
    resources = manifest.get("resources")
    if not isinstance(resources, list):
        raise ConfigDirectoryError('Config manifest must declare a "resources" array')

    roles: list[dict[str, Any]] = []
    permissions: list[dict[str, Any]] = []
    if "roles" in resources:
        for file in _yaml_files(root / "roles"):
            role = _load_file(file)
            if not isinstance(role, dict) or not role.get("key"):
                raise ConfigDirectoryError(f'Invalid role file: {file.name} — missing "key" field')
            if role["key"] == PUBLIC_ROLE_KEY:
                raise ConfigDirectoryError(
                    'Role key "public" is reserved for public permissions',
                    hint="remove roles/public.yaml; public permissions belong in permissions/public.yaml only",
                )
            expected = f"{role['key']}.yaml"
            if file.name != expected:
                raise ConfigDirectoryError(
                    f'Role file "{file.name}" contains key "{role["key"]}" — filename must match key ("{expected}")'
                )
            role = dict(role)
            for field in ("name", "description"):
                if field in role:
                    role[field] = _interpolate(role[field], field, environ)
            roles.append(role)
    if "permissions" in resources:
        role_keys = {r["key"] for r in roles}
        for file in _yaml_files(root / "permissions"):
            permission_set = _load_file(file)
            if not isinstance(permission_set, dict) or not permission_set.get("role"):
                raise ConfigDirectoryError(f'Invalid permission file: {file.name} — missing "role" field')
            if not isinstance(permission_set.get("permissions"), list):
                raise ConfigDirectoryError(f'Invalid permission file: {file.name} — "permissions" must be an array')
            expected = f"{permission_set['role']}.yaml"
            if file.name != expected:
                raise ConfigDirectoryError(
                    f'Permission file "{file.name}" contains role "{permission_set["role"]}" — '
                    f'filename must match role ("{expected}")'
                )
            if permission_set["role"] != PUBLIC_ROLE_KEY and permission_set["role"] not in role_keys:
                raise ConfigDirectoryError(
                    f'Permission file "{file.name}" references role "{permission_set["role"]}" '
                    "which has no matching file in roles/"
                )
            permissions.append(permission_set)
    return {"manifest": manifest, "roles": roles, "permissions": permissions}
