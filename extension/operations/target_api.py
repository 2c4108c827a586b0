"""Before writing through a target's API: the token is an admin's there, and the API is the ``.env``'s instance.

A command that names its target by ``.env`` but writes through a URL (``content move --via api`` with
``--to-url`` or the ``.env``'s ``PUBLIC_URL``; ``promote`` with a ``.env`` and ``--to-token``) pairs two
things nothing ties together: a new operator's trial pointed ``--to-url`` at the *source* (with the
source's token), planned from the target's database and PATCHed the source, "applied", exit 0.  So
before any write:

- :func:`check_token` asks the API who the token is (``GET /users/me?fields=id,role.admin_access``, one
  cheap read, before the minutes of planning): a refused token, a non-admin, or a URL that does not
  serve CairnCMS's API stop here with the fix, instead of surfacing at the first write as a "partial"
  move that wrote nothing.
- :func:`prove_serves` commits a one-off nonce into the ``.env``'s database (a ``directus_presets``
  bookmark no one's, on a system collection the app does not list: ``cairn-migrate identity <nonce>``)
  and reads it back through the API with the token.  Only the API of that very database can answer it
  (a fresh nonce per run, so no cache answers either).  The row is deleted again in a ``finally``.

Both raise errors naming the URL, the ``.env``'s database and the fix; every call has the project's
timeouts, an overall deadline and a ceiling on the answer's size (:mod:`cairn_migrate.instance.bounded_http`).
"""

from __future__ import annotations

import secrets
from typing import Any

import requests
import sqlalchemy as sa

from ..errors import InstanceUnreachable, InvalidInput, RemoteRefused
from ..instance import bounded_http
from ..instance.timeouts import connect_timeout, hint as timeout_hint, read_timeout

#: the bookmark title of the proof row (the nonce follows it)
BOOKMARK = "cairn-migrate identity"
#: the proof row's collection: a system collection, so the admin app shows the bookmark nowhere
COLLECTION = "directus_presets"


def _get(url: str, token: str, path: str, params: dict[str, str], role: str) -> requests.Response:
    try:
        with bounded_http.session() as http:
            return bounded_http.request(http, "GET", url.rstrip("/") + path, params=params,
                                        headers={"Authorization": f"Bearer {token}"},
                                        timeout=(connect_timeout(), min(read_timeout(), 60.0)))
    except requests.RequestException as exc:
        raise InstanceUnreachable(f"The {role}'s API at {url} did not answer GET {path}: {exc}",
                                  hint=f"start the {role}, or check the URL; {timeout_hint('CAIRN_MIGRATE_CONNECT_TIMEOUT')}") from None


def _not_the_api(url: str, path: str, why: str, role: str, url_option: str) -> InvalidInput:
    return InvalidInput(f"{url} does not serve the CairnCMS API (GET {path} {why})",
                        hint=f"pass the {role}'s own root URL (its PUBLIC_URL, without /admin) with {url_option}")


def check_token(url: str, token: str, *, role: str = "target", url_option: str = "--to-url",
                token_option: str = "--to-token") -> str:
    """The id of the admin user ``token`` is on the API at ``url``; else an error naming the fix.

    :raises RemoteRefused: the token is refused (401/403) or is not an admin's (exit 2).
    :raises InvalidInput: ``url`` answers, but not as CairnCMS's API (404, or not its JSON).
    :raises InstanceUnreachable: nothing answers at ``url``, or it fails (5xx).
    """
    path = "/users/me"
    response = _get(url, token, path, {"fields": "id,role.admin_access"}, role)
    status = response.status_code
    if status in (401, 403):
        raise RemoteRefused(f"The {role}'s API at {url} refused the token (GET {path}: {status})",
                            hint=f"pass a static token of an admin of the {role} with {token_option} (and its "
                            f"own URL with {url_option})")
    if status == 404:
        raise _not_the_api(url, path, "answered 404", role, url_option)
    if status >= 400:
        raise InstanceUnreachable(f"The {role}'s API at {url} answered {status} to GET {path}",
                                  hint=f"check that the {role} is running and healthy, then run again")
    try:
        data = response.json()["data"]
        user, admin = data["id"], ((data.get("role") or {}).get("admin_access") is True)
    except (ValueError, KeyError, TypeError, AttributeError):
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise _not_the_api(url, path, f"answered {kind}, not the API's JSON", role, url_option) from None
    if not admin:
        raise RemoteRefused(f"The token {token_option} is not an admin's on the {role} {url} (user {user}: its role "
                            "has no admin access)", hint=f"pass a static token of an admin of the {role} with "
                            f"{token_option}")
    return str(user)


def prove_serves(instance: Any, url: str, token: str, *, role: str = "target", env_option: str = "--to",
                 url_option: str = "--to-url", token_option: str = "--to-token") -> None:
    """Refuse unless the API at ``url`` serves ``instance``'s database (a nonce written there, read back there).

    :raises InvalidInput: the API does not see the nonce (exit 2, HTTP 422), naming the URL, the ``.env``'s
        database and the fix.
    """
    from ..instance.database import Database

    nonce = f"{BOOKMARK} {secrets.token_hex(16)}"
    presets = sa.table("directus_presets", sa.column("bookmark"), sa.column("collection"), sa.column("user"),
                       sa.column("role"))
    with Database.open(instance) as db:
        try:
            with db.engine.begin() as conn:  # committed: the API reads through its own connections
                conn.execute(presets.insert().values(bookmark=nonce, collection=COLLECTION, user=None, role=None))
                row_id = conn.execute(sa.select(sa.column("id")).select_from(sa.table("directus_presets")).where(
                    sa.column("bookmark") == nonce)).scalar_one()
            # read back by the row's id, the nonce never sent: a server echoing the request cannot pass
            path = f"/presets/{int(row_id)}"
            response = _get(url, token, path, {"fields": "id,bookmark"}, role)
            if response.status_code == 401:
                raise RemoteRefused(f"The {role}'s API at {url} refused the token (GET {path}: 401)",
                                    hint=f"pass a static token of an admin of the {role} with {token_option}")
            if response.status_code == 404:
                raise _not_the_api(url, path, "answered 404", role, url_option)
            try:
                # 403: CairnCMS's answer to an admin for an item it does not have (the token was checked first)
                found = False if response.status_code == 403 else \
                    (response.json()["data"] or {}).get("bookmark") == nonce if response.status_code == 200 else None
            except (ValueError, KeyError, TypeError, AttributeError):
                raise _not_the_api(url, path, "did not answer the API's JSON", role, url_option) from None
            if found is None:
                raise InstanceUnreachable(f"The {role}'s API at {url} answered {response.status_code} to GET {path}",
                                          hint=f"check that the {role} is running and healthy, then run again")
            if not found:
                raise InvalidInput(
                    f"The API at {url} does not serve the {role} {env_option} {instance.label} (database "
                    f"{instance.database.display_url}): a row written there is not seen through that API, so "
                    "nothing was written", details={"url": url, "database": instance.database.display_url},
                    hint=f"pass the {role}'s own URL with {url_option} and its own admin token with {token_option}")
        finally:
            with db.engine.begin() as conn:
                conn.execute(presets.delete().where(presets.c.bookmark == nonce))


def check_target_api(instance: Any, url: str, token: str, *, prove: bool = True, **options: str) -> str:
    """:func:`check_token`, then (``prove``) :func:`prove_serves`: before any write through ``url`` for the
    instance whose ``.env`` names the target; returns the token's user id."""
    user = check_token(url, token, **{k: v for k, v in options.items() if k != "env_option"})
    if prove:
        prove_serves(instance, url, token, **options)
    return user
