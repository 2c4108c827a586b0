"""Who is calling: CairnCMS static tokens and access tokens (JWT), the way CairnCMS checks them.

The sidecar has no users of its own.  It accepts the credentials the instance
accepts (reference §7): a static token looked up in ``directus_users.token``, or
an HS256 access token signed with the instance's ``SECRET``.  Only admins of
the instance may use ``/migrate/*``.  Both kinds are checked against the user's
row now, not only when they were issued: an access token of a user who was
suspended, deleted or lost admin access since is refused like their static
token.  Tokens are never logged or echoed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ..errors import Forbidden, InstanceUnreachable, Unauthorized
from ..instance.instance import Instance

log = logging.getLogger(__name__)

#: ``iss`` values treated as an access token; anything else is a static token.
JWT_ISSUERS = ("cairncms", "directus")
#: Claims ``verifyJWT`` requires besides ``exp``.
REQUIRED_CLAIMS = ("role", "app_access", "admin_access")

_ACTIVE_USER = (
    "SELECT u.id, u.role, r.admin_access FROM directus_users u "
    "LEFT JOIN directus_roles r ON r.id = u.role "
    "WHERE u.status = 'active' AND "
)
_STATIC_TOKEN_QUERY = sa.text(_ACTIVE_USER + "u.token = :t")
_USER_ID_QUERY = sa.text(_ACTIVE_USER + "u.id = :id")

#: An engine, or a function returning one (so a malformed or badly signed token never opens the database).
EngineSource = Engine | Callable[[], Engine]

_HINT = "send Authorization: Bearer <token> with an admin's static token or access token"


@dataclass(frozen=True)
class Caller:
    """An authenticated user of the instance.

    :ivar user_id: ``directus_users.id`` (``None`` for share sessions).
    :ivar role_id: the user's role, or ``None``.
    :ivar admin: whether the role has ``admin_access``.
    :ivar method: ``static`` or ``jwt``.
    """

    user_id: str | None
    role_id: str | None
    admin: bool
    method: str


def is_flag_set(value: Any) -> bool:
    """CairnCMS's ``value === true || value == 1``: SQLite gives ``1``/``0``, PostgreSQL booleans."""
    if value is True:
        return True
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return value == 1
    if isinstance(value, str):
        return value.strip() == "1"  # JavaScript's loose "1" == 1
    return False


def extract_token(authorization_header: str | None, access_token_query: str | None) -> str | None:
    """The bearer token from the header (which wins) or the ``access_token`` query parameter."""
    if authorization_header:
        scheme, _, value = authorization_header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if access_token_query and access_token_query.strip():
        return access_token_query.strip()
    return None


def _jwt_issuer(token: str) -> Any:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims.get("iss") if isinstance(claims, Mapping) else None


def _verify_jwt(instance: Instance, engine: EngineSource, token: str) -> Caller:
    """A valid access token of a user who is active now; admin only if both the token and the role say so."""
    secret = instance.secret
    if not secret:
        raise Unauthorized(
            "The instance has no SECRET, so its access tokens cannot be verified",
            hint="set SECRET in the instance's .env, or use a static token",
        )
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=list(JWT_ISSUERS),
            options={"require": ["exp", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The access token has expired", hint="log in again or use a static token") from None
    except jwt.PyJWTError:
        raise Unauthorized("The access token is not valid for this instance", hint=_HINT) from None
    missing = [name for name in REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise Unauthorized("The access token is missing required claims", hint=_HINT)
    try:  # CairnCMS user ids are UUIDs; share sessions carry none
        user_id = str(uuid.UUID(str(claims.get("id"))))
    except ValueError:
        raise Unauthorized("Invalid user credentials", hint=_HINT) from None
    caller = _lookup_user(engine, _USER_ID_QUERY, {"id": user_id}, "jwt")
    if not is_flag_set(claims.get("admin_access")):  # a token issued without admin access stays without
        return Caller(caller.user_id, caller.role_id, False, "jwt")
    return caller


def _lookup_user(engine: EngineSource, query: sa.TextClause, params: dict[str, str], method: str) -> Caller:
    """The active user ``query`` finds, with their role's admin flag.

    :raises Unauthorized: no such active user, or an instance without users yet.
    :raises InstanceUnreachable: the database did not answer.
    """
    if callable(engine):  # opened only once a token is worth looking up
        engine = engine()
    try:
        with engine.connect() as conn:
            row = conn.execute(query, params).first()
    except DBAPIError as exc:
        if not _has_users_table(engine):
            raise Unauthorized(
                "The instance's database has no users yet (no directus_users table), so no one can sign in",
                hint="import into an empty database with the CLI (cairn-migrate import), or bootstrap the instance",
            ) from exc
        raise InstanceUnreachable(
            "The instance's database did not answer the token lookup",
            hint="check that the instance's database is reachable",
        ) from exc
    if row is None:
        raise Unauthorized("Invalid user credentials", hint=_HINT)
    return Caller(
        user_id=None if row.id is None else str(row.id),
        role_id=None if row.role is None else str(row.role),
        admin=is_flag_set(row.admin_access),
        method=method,
    )


def _has_users_table(engine: Engine) -> bool:
    """Whether ``directus_users`` exists (``True`` when even that cannot be asked: then the database is the problem)."""
    try:
        return sa.inspect(engine).has_table("directus_users")
    except DBAPIError:
        return True


def identify(
    instance: Instance,
    engine: EngineSource,
    authorization_header: str | None,
    access_token_query: str | None = None,
) -> Caller:
    """Who the token belongs to, admin or not.

    :raises Unauthorized: no token, or one the instance does not accept.
    """
    token = extract_token(authorization_header, access_token_query)
    if token is None:
        raise Unauthorized("Authentication required", hint=_HINT)
    if _jwt_issuer(token) in JWT_ISSUERS:
        return _verify_jwt(instance, engine, token)
    return _lookup_user(engine, _STATIC_TOKEN_QUERY, {"t": token}, "static")


def authenticate(
    instance: Instance,
    engine: EngineSource,
    authorization_header: str | None,
    access_token_query: str | None = None,
) -> Caller:
    """The admin calling, or an error.

    :param instance: the instance whose users and ``SECRET`` decide.
    :param engine: an engine on the instance's database, or a function returning
        one, called only when a token's user must be looked up (never for a
        missing, expired or badly signed token).
    :raises Unauthorized: no, unknown or invalid token, or its user is not active (HTTP 401).
    :raises Forbidden: a valid token of a user who is not an admin (HTTP 403).
    """
    caller = identify(instance, engine, authorization_header, access_token_query)
    if not caller.admin:
        log.info("refused non-admin user %s (%s token)", caller.user_id, caller.method)
        raise Forbidden(
            "You don't have permission to access this: cairn-migrate needs an admin of the instance",
            hint="use a token of a user whose role has admin access",
        )
    return caller
