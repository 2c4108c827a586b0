"""``--create-users``: the users a move references that the target lacks (by email), created there.

By default a reference to a user without a twin on the target (by email) becomes NULL and the user
is listed.  With ``--create-users`` such a user is created on the target instead, so authorship
(``user_created``, ``uploaded_by``) survives, and nobody gains access by it:

- **no password, no token, no 2FA secret, no external identity**: nobody can log in as them;
- **status ``suspended``**, not ``invited``: an invited user becomes active by accepting an invite
  token, a JWT that only carries the email and is signed with ``SECRET``; a target that shares its
  source's ``SECRET`` (a clone, a staging copy) would accept an invite link issued by the source.
  ``suspended`` needs a target admin to act (set the status, then invite or set a password);
- **the role matched by its key** (CairnCMS's cross-instance identity of a role; the name on an
  instance whose roles have no ``key``), never a role with ``admin_access``: a role without a twin,
  or an administrator one, is left NULL and listed, so the activating admin decides;
- the user's id is kept unless the target already uses it (then a new uuid v4);
- only names, email, title, description, location and language are copied (masked with the move's
  profile when it masks ``directus_users``; the email is then the fake the match used).

The move's sink writes them: a row in the target's transaction (``--via db``), or ``POST /users``
(``--via api``: CairnCMS's own checks and ``users.create`` hooks run).  On the API path the columns the
server sets itself (``user_created``, a file's ``uploaded_by``) name the token's user whatever the move
sends, so a created user keeps only the references held in ordinary user fields there.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from . import keys
from .closure import USERS
from .plan import Users

ROLES = "directus_roles"
STATUS = "suspended"
COPIED = ("first_name", "last_name", "email", "title", "description", "location", "language")


def _role_twins(src: Database, dst: Database, src_conn: sa.Connection, dst_conn: sa.Connection,
                role_ids: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Source role id → target role id (by key, else name; never an admin role), and source role id → why not."""
    if not role_ids:
        return {}, {}
    ident = "key" if "key" in src.table(ROLES).c and "key" in dst.table(ROLES).c else "name"
    source = {str(r[0]).lower(): r[1] for r in src_conn.execute(
        sa.select(sa.column("id"), sa.column(ident)).select_from(sa.table(ROLES)).where(
            keys.in_(src, ROLES, "id", sorted(role_ids))))}
    twins: dict[str, str] = {}
    missing: dict[str, str] = {}
    names = sorted({v for v in source.values() if v is not None})
    target = {r[1]: (str(r[0]).lower(), bool(r[2])) for r in dst_conn.execute(
        sa.select(sa.column("id"), sa.column(ident), sa.column("admin_access")).select_from(sa.table(ROLES)).where(
            sa.column(ident).in_(names)))} if names else {}
    for rid, value in source.items():
        if value in target and not target[value][1]:
            twins[rid] = target[value][0]
        else:
            missing[rid] = (f"role {value!r} is an administrator role on the target (never granted by a move)"
                            if value in target else f"role {value!r} ({ident}) is not on the target")
    return twins, missing


def create_missing(src: Database, dst: Database, users: Users, src_conn: sa.Connection, dst_conn: sa.Connection, *,
                   mask: Any = None, sink: Any = None) -> dict[str, Any]:
    """Create (or without a ``sink`` plan) the unmatched users; ``users`` then maps them to their new ids.

    :param sink: the move's writer (:meth:`~cairn_migrate.content.sink_db.DbSink.create_user`: a row in the
        target's transaction; :meth:`~cairn_migrate.content.sink_api.ApiSink.create_user`: ``POST /users``, answered
        before the walk writes the rows that name the user); None in a plan.
    :returns: the report's ``users.created`` entries: ``{email, role, note}`` per user.
    """
    from ..masking import mask_row

    if not users.sources:
        return {"created": []}
    src_columns = set(src.table(USERS).c.keys())
    dst_columns = set(dst.table(USERS).c.keys())
    copied = [c for c in COPIED if c in src_columns and c in dst_columns]
    ids = sorted(set(users.sources.values()))
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        query = sa.select(sa.column("id"), sa.column("role"), *[sa.column(c) for c in copied]).select_from(
            sa.table(USERS)).where(keys.in_(src, USERS, "id", ids[start:start + 500]))
        for raw in src_conn.execute(query).mappings():
            rows[str(raw["id"]).lower()] = dict(raw)
    twins, missing = _role_twins(src, dst, src_conn, dst_conn,
                                 {str(r["role"]).lower() for r in rows.values() if r.get("role")})
    taken = {str(v).lower() for v in dst_conn.execute(sa.select(sa.column("id")).select_from(sa.table(USERS)).where(
        keys.in_(dst, USERS, "id", ids))).scalars()} if ids else set()
    created = []
    for email, uid in sorted(users.sources.items()):
        row = rows.get(uid)
        if row is None:
            continue
        values = {c: row.get(c) for c in copied}
        if mask is not None:
            values = mask_row(mask, USERS, values) or values
        values["email"] = email  # what the match used (the profile's fake under masking), lower case
        role = str(row["role"]).lower() if row.get("role") else None
        new_id = uid if uid not in taken else str(uuid.uuid4())
        entry = {"email": email, "role": twins.get(role or ""), "status": STATUS}
        if role and role not in twins:
            entry["note"] = missing.get(role, "")
        if sink is not None:
            sink.create_user({"id": new_id, "status": STATUS, "role": entry["role"], "provider": "default", **values})
        users.mapping[uid] = new_id
        users.unmatched.remove(email)
        users.created.append(email)
        created.append(entry)
    return {"created": created}
