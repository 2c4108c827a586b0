"""Roles and permissions written as rows: CairnCMS's ``/config/apply`` without the API, for a database target.

``plan(db, config, destructive)`` and ``apply(db, config, destructive)`` take a ``CairnConfig`` payload
(reference §3.1, as :func:`~cairn_migrate.bundle.config_snapshot.config_snapshot` or
``read_config_directory`` give it) and return exactly what ``POST /config/apply[?dry_run=true]`` returns
(§3.4): ``{"roles": {"created": [keys], "updated": [keys], "deleted": [keys]},
"permissions": {"created": n, "updated": n, "deleted": n}}``.  The rules are CairnCMS's own
(``compute-config-plan.ts``, ``apply-config-plan.ts``, ``services/roles.ts``):

- the target's current config is its config snapshot; roles are matched by ``key``, permissions by
  (role key, collection, action), ``public`` is the sentinel role ``00000000-…``;
- a role is compared only on the fields present in the payload (an explicit ``null`` clears);
  permissions on ``permissions``, ``validation``, ``presets`` and ``fields``;
- roles the payload lacks are planned as deletes, and so are permissions the payload lacks of its roles
  and of ``public``; they are deleted only with ``destructive`` (a dry run reports them only then);
- validation before any write (the errors CairnCMS answers 400 with, ``Cannot delete the last admin role.``
  included, checked whenever a role delete is planned) raises :class:`InvalidInput` with ``errors``;
- deleting a role deletes its permissions and presets and suspends its users (``role`` set to NULL);
- everything is written in one transaction.

CairnCMS writes no activity or revision rows for a config apply (it runs without accountability), and
neither does this module.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..bundle.config_snapshot import PUBLIC_ROLE_ID, PUBLIC_ROLE_KEY, config_snapshot
from ..errors import InvalidInput

#: Role fields compared when present in the payload (``ip_access`` is compared with null for missing).
ROLE_FIELDS = ("name", "icon", "description", "admin_access", "app_access", "enforce_tfa")
PERMISSION_FIELDS = ("permissions", "validation", "presets", "fields")

_MISSING = object()


# --------------------------------------------------------------------------- rows, on any vendor
# Plain SQL with untyped parameters: PostgreSQL then reads a string as whatever its column is (uuid, json),
# as knex's writes are read; identifiers are quoted by the dialect (``key`` is reserved on MySQL).
def _q(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _where(conn: sa.Connection, where: Mapping[str, Any], params: dict[str, Any]) -> str:
    """``a = :w0 AND b IN (:w1, :w2)`` (a list value is an IN)."""
    parts = []
    for column, value in where.items():
        if isinstance(value, (list, tuple)):
            names = [f"w{len(params) + i}" for i in range(len(value))]
            params.update(zip(names, value))
            parts.append(f"{_q(conn, column)} IN ({', '.join(':' + n for n in names)})" if names else "1 = 0")
        else:
            name = f"w{len(params)}"
            params[name] = value
            parts.append(f"{_q(conn, column)} = :{name}")
    return " AND ".join(parts) or "1 = 1"


def insert_row(conn: sa.Connection, table: str, values: Mapping[str, Any], returning: str | None = None) -> Any:
    """Insert one row; with ``returning`` the new value of that column (a serial id)."""
    params = {f"v{i}": v for i, v in enumerate(values.values())}
    sql = (f"INSERT INTO {_q(conn, table)} ({', '.join(_q(conn, c) for c in values)}) "
           f"VALUES ({', '.join(':' + n for n in params)})")
    if returning and conn.dialect.name == "postgresql":
        return conn.execute(sa.text(sql + f" RETURNING {_q(conn, returning)}"), params).scalar_one()
    result = conn.execute(sa.text(sql), params)
    return result.lastrowid if returning else None


def update_rows(conn: sa.Connection, table: str, values: Mapping[str, Any], where: Mapping[str, Any]) -> int:
    params = {f"v{i}": v for i, v in enumerate(values.values())}
    sets = ", ".join(f"{_q(conn, c)} = :v{i}" for i, c in enumerate(values))
    return conn.execute(sa.text(f"UPDATE {_q(conn, table)} SET {sets} WHERE {_where(conn, where, params)}"),
                        params).rowcount


def delete_rows(conn: sa.Connection, table: str, where: Mapping[str, Any]) -> int:
    params: dict[str, Any] = {}
    return conn.execute(sa.text(f"DELETE FROM {_q(conn, table)} WHERE {_where(conn, where, params)}"), params).rowcount


def _same(a: Any, b: Any) -> bool:
    """lodash ``isEqual`` on JSON values: deep, key order ignored, ``true`` is not ``1``, missing is not null."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def normalize_role_key(text: str) -> str:
    """``normalizeRoleKey`` (packages/utils/shared/normalize-role-key.ts)."""
    text = re.sub(r"[\u0300-\u036f]", "", unicodedata.normalize("NFKD", text)).lower()
    text = re.sub(r"[^a-z0-9_\s]", "", text).strip()
    text = re.sub(r"_+", "_", re.sub(r"\s+", "_", text))
    return re.sub(r"^[0-9_]+", "", text)


def _perm_key(role: str, perm: Mapping[str, Any]) -> tuple[str, str, str]:
    return role, perm["collection"], perm["action"]


# --------------------------------------------------------------------------- the plan (compute-config-plan.ts)
def compute_plan(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """CairnCMS's ``ConfigPlan`` of ``desired`` against ``current`` (both ``CairnConfig`` payloads)."""
    plan: dict[str, Any] = {"roles": {"create": [], "update": [], "delete": []},
                            "permissions": {"create": [], "update": [], "delete": []}}
    current_roles = {r["key"]: r for r in current.get("roles") or []}
    desired_keys = {r["key"] for r in desired.get("roles") or []}
    for role in desired.get("roles") or []:
        existing = current_roles.get(role["key"])
        if existing is None:
            plan["roles"]["create"].append(role)
            continue
        diff = {f: role[f] for f in ROLE_FIELDS if f in role and not _same(existing.get(f, _MISSING), role[f])}
        if "ip_access" in role and not _same(existing.get("ip_access"), role.get("ip_access")):
            diff["ip_access"] = role.get("ip_access")
        if diff:
            plan["roles"]["update"].append({"key": role["key"], "diff": diff})
    plan["roles"]["delete"] = [r["key"] for r in current.get("roles") or [] if r["key"] not in desired_keys]
    current_perms = {_perm_key(s["role"], p): p for s in current.get("permissions") or [] for p in s["permissions"]}
    wanted = set()
    for permission_set in desired.get("permissions") or []:
        for perm in permission_set["permissions"]:
            key = _perm_key(permission_set["role"], perm)
            wanted.add(key)
            existing = current_perms.get(key)
            if existing is None:
                plan["permissions"]["create"].append({"role": permission_set["role"], "permission": perm})
            elif any(not _same(existing.get(f, _MISSING), perm.get(f, _MISSING)) for f in PERMISSION_FIELDS):
                plan["permissions"]["update"].append({"role": permission_set["role"], "permission": perm})
    for permission_set in current.get("permissions") or []:
        if permission_set["role"] not in desired_keys and permission_set["role"] != PUBLIC_ROLE_KEY:
            continue
        for perm in permission_set["permissions"]:
            key = _perm_key(permission_set["role"], perm)
            if key not in wanted:
                plan["permissions"]["delete"].append({"role": key[0], "collection": key[1], "action": key[2]})
    return plan


def validate(plan: Mapping[str, Any], desired: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``validateConfigPlan``: the messages CairnCMS answers 400 with, in its order."""
    errors = []
    version = (desired.get("manifest") or {}).get("version")
    if version != 1:
        errors.append(f"Unsupported config version: {json.dumps(version)}. This engine supports version 1.")
    roles = desired.get("roles") or []
    errors += ['Role key "public" is reserved for public permissions.' for r in roles if r["key"] == PUBLIC_ROLE_KEY]
    desired_keys = {r["key"] for r in roles}
    current_admin = {r["key"]: bool(r.get("admin_access")) for r in current.get("roles") or []}
    for permission_set in desired.get("permissions") or []:
        role = permission_set["role"]
        if role != PUBLIC_ROLE_KEY and role not in desired_keys and role not in current_admin:
            errors.append(f'Permission set references role "{role}" which does not exist in config or database.')
    seen = set()
    for permission_set in desired.get("permissions") or []:
        for perm in permission_set["permissions"]:
            key = _perm_key(permission_set["role"], perm)
            if key in seen:
                errors.append(f'Duplicate permission: role="{key[0]}" collection="{key[1]}" action="{key[2]}".')
            seen.add(key)
    deleted = set(plan["roles"]["delete"])
    if deleted:
        admins = [k for k, admin in current_admin.items() if admin and k not in deleted]
        admins += [r["key"] for r in roles if r.get("admin_access") and r["key"] not in deleted]
        if not admins:
            errors.append("Cannot delete the last admin role.")
    return errors


def key_errors(config: Mapping[str, Any]) -> list[str]:
    """The role keys CairnCMS's ``RolesService`` refuses when it creates the role (after the schema went in, on
    the API path): a key is valid iff ``normalizeRoleKey(key) == key`` and not empty.  Checked in the plan."""
    errors = []
    for role in config.get("roles") or []:
        key = role["key"]
        if not key or normalize_role_key(key) != key:
            errors.append(f'Invalid role key "{key}": a key is lowercase letters, digits and "_", not starting with '
                          f'a digit or "_" (normalized: "{normalize_role_key(key)}").')
    return errors


def check(config: Any) -> list[str]:
    """What the plan refuses of a config before asking the target: its shape, then its role keys."""
    try:
        _check_shape(config)
    except InvalidInput as exc:
        return [exc.message]
    return key_errors(config)


def _checked_plan(db: Any, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    _check_shape(config)
    current = config_snapshot(db)
    planned = compute_plan(current, config)
    errors = key_errors(config) + validate(planned, config, current)
    if errors:
        raise InvalidInput("The target refuses the config: " + "; ".join(errors), details={"errors": errors},
                           hint="correct the source's roles and permissions (keep at least one admin role)")
    return planned, current


def _check_shape(config: Any) -> None:
    """``assertCairnConfigShape``: what CairnCMS answers 400 INVALID_PAYLOAD to."""
    problem = None
    if not isinstance(config, Mapping):
        problem = "the config must be an object with manifest, roles and permissions"
    elif not isinstance(config.get("manifest"), Mapping):
        problem = 'the config lacks the "manifest" object'
    elif not isinstance(config.get("roles"), list) or not isinstance(config.get("permissions"), list):
        problem = 'the config\'s "roles" and "permissions" must be arrays'
    elif any(not isinstance(r, Mapping) or not isinstance(r.get("key"), str) for r in config["roles"]):
        problem = 'every role needs a string "key"'
    elif any(not isinstance(s, Mapping) or not isinstance(s.get("role"), str)
             or not isinstance(s.get("permissions"), list)
             or any(not isinstance(p, Mapping) or not isinstance(p.get("collection"), str)
                    or not isinstance(p.get("action"), str) for p in s["permissions"])
             for s in config["permissions"]):
        problem = 'every permission set needs a string "role" and permissions with string "collection" and "action"'
    if problem:
        raise InvalidInput(f"Invalid config payload: {problem}", hint="pass a CairnConfig (cairncms config snapshot)")


def dry_run_result(planned: Mapping[str, Any], destructive: bool) -> dict[str, Any]:
    """``applyConfigPlan`` with ``dryRun``: deletes reported only when destructive."""
    deleted_roles = set(planned["roles"]["delete"])
    return {"roles": {"created": [r["key"] for r in planned["roles"]["create"]],
                      "updated": [u["key"] for u in planned["roles"]["update"]],
                      "deleted": list(planned["roles"]["delete"]) if destructive else []},
            "permissions": {"created": len(planned["permissions"]["create"]),
                            "updated": len(planned["permissions"]["update"]),
                            "deleted": len([d for d in planned["permissions"]["delete"] if d["role"] not in deleted_roles])
                            if destructive else 0}}


def permission_changes(current: Mapping[str, Any], planned: Mapping[str, Any]) -> dict[str, list[str]]:
    """The permissions a plan creates and updates by name, ``role/collection/action``, an update with what of it
    changes (``editor/articles/read (fields, permissions)``): CairnCMS's result gives only their counts."""
    current_perms = {_perm_key(s["role"], p): p for s in current.get("permissions") or [] for p in s["permissions"]}
    created = [f"{c['role']}/{c['permission']['collection']}/{c['permission']['action']}"
               for c in planned["permissions"]["create"]]
    updated = []
    for change in planned["permissions"]["update"]:
        perm = change["permission"]
        existing = current_perms.get(_perm_key(change["role"], perm), {})
        fields = [f for f in PERMISSION_FIELDS if not _same(existing.get(f, _MISSING), perm.get(f, _MISSING))]
        updated.append(f"{change['role']}/{perm['collection']}/{perm['action']} ({', '.join(fields)})")
    return {"created": created, "updated": updated}


def kept(planned: Mapping[str, Any]) -> dict[str, Any]:
    """What a plan deletes only with ``destructive``: role keys and ``role/collection/action`` of permissions
    (those of a deleted role go with it and are not listed apart)."""
    deleted_roles = set(planned["roles"]["delete"])
    return {"roles": list(planned["roles"]["delete"]),
            "permissions": [f"{d['role']}/{d['collection']}/{d['action']}" for d in planned["permissions"]["delete"]
                            if d["role"] not in deleted_roles]}


def plan(db: Any, config: Mapping[str, Any], destructive: bool = False) -> dict[str, Any]:
    """What ``POST /config/apply?dry_run=true[&destructive=true]`` answers for ``config`` on ``db`` (no writes)."""
    return dry_run_result(_checked_plan(db, config)[0], destructive)


# --------------------------------------------------------------------------- apply (apply-config-plan.ts)
def _csv(values: Any) -> Any:
    return ",".join(values) if isinstance(values, list) else values


def _json(value: Any) -> Any:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _role_values(role: Mapping[str, Any]) -> dict[str, Any]:
    """A role's columns as RolesService writes them (``ip_access`` is CSV)."""
    return {k: (_csv(v) if k == "ip_access" else v) for k, v in role.items()}


def _permission_values(perm: Mapping[str, Any]) -> dict[str, Any]:
    return {"permissions": _json(perm.get("permissions")), "validation": _json(perm.get("validation")),
            "presets": _json(perm.get("presets")), "fields": _csv(perm.get("fields"))}


def apply(db: Any, config: Mapping[str, Any], destructive: bool = False) -> dict[str, Any]:
    """Write ``config`` as rows in one transaction; the result ``POST /config/apply`` would answer."""
    planned = _checked_plan(db, config)[0]
    result = {"roles": {"created": [], "updated": [], "deleted": []},
              "permissions": {"created": 0, "updated": 0, "deleted": 0}}
    if not any(planned["roles"].values()) and not any(planned["permissions"].values()):
        return result
    with db.engine.begin() as conn:
        for role in planned["roles"]["create"]:
            if role["key"] == PUBLIC_ROLE_KEY or normalize_role_key(role["key"]) != role["key"] or not role["key"]:
                raise InvalidInput(f"The role key {role['key']!r} is not a valid CairnCMS role key",
                                   hint="use lowercase letters, digits and _ (not starting with a digit), not public")
            insert_row(conn, "directus_roles", {
                "id": str(uuid.uuid4()), "key": role["key"], "name": role["name"],
                "icon": role.get("icon") or "supervised_user_circle", "description": role.get("description"),
                "admin_access": bool(role["admin_access"]), "app_access": bool(role["app_access"]),
                "enforce_tfa": bool(role.get("enforce_tfa") or False), "ip_access": _csv(role.get("ip_access"))})
            result["roles"]["created"].append(role["key"])
        admins = {str(r.role_key) for r in conn.execute(sa.text(
            f"SELECT {_q(conn, 'key')} AS role_key FROM directus_roles WHERE admin_access = :t"), {"t": True})}
        for update in planned["roles"]["update"]:
            if update["diff"].get("admin_access") is False and not admins - {update["key"]}:
                raise InvalidInput("You can't delete the last admin role.",
                                   hint=f"keep admin_access on the role {update['key']}, or add another admin role")
            update_rows(conn, "directus_roles", _role_values(update["diff"]), {"key": update["key"]})
            result["roles"]["updated"].append(update["key"])
        role_ids = {str(row.role_key): str(row.id) for row in conn.execute(sa.text(
            f"SELECT {_q(conn, 'key')} AS role_key, id FROM directus_roles"))}
        role_ids.setdefault(PUBLIC_ROLE_KEY, PUBLIC_ROLE_ID)
        for step in planned["permissions"]["create"]:
            perm = step["permission"]
            insert_row(conn, "directus_permissions", {"role": role_ids[step["role"]], "collection": perm["collection"],
                                                      "action": perm["action"], **_permission_values(perm)})
            result["permissions"]["created"] += 1
        for step in planned["permissions"]["update"]:
            perm = step["permission"]
            update_rows(conn, "directus_permissions", _permission_values(perm), {
                "role": role_ids[step["role"]], "collection": perm["collection"], "action": perm["action"]})
            result["permissions"]["updated"] += 1
        if destructive:
            keys = [key for key in planned["roles"]["delete"] if key in role_ids]
            deleted = [role_ids[key] for key in keys]
            if deleted:  # RolesService.deleteMany: permissions, presets, users suspended, then the roles
                delete_rows(conn, "directus_permissions", {"role": deleted})
                delete_rows(conn, "directus_presets", {"role": deleted})
                update_rows(conn, "directus_users", {"status": "suspended", "role": None}, {"role": deleted})
                delete_rows(conn, "directus_roles", {"id": deleted})
            result["roles"]["deleted"] = keys
            for step in planned["permissions"]["delete"]:
                if step["role"] in planned["roles"]["delete"] or step["role"] not in role_ids:
                    continue
                if delete_rows(conn, "directus_permissions", {"role": role_ids[step["role"]],
                                                              "collection": step["collection"], "action": step["action"]}):
                    result["permissions"]["deleted"] += 1
    return result
