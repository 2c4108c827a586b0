"""Authentication against a real CairnCMS SQLite database, and the admin matrix of every route."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from instance_fixtures import (  # noqa: F401 - fixtures
    ADMIN_EMAIL,
    ADMIN_ID,
    ADMIN_ROLE,
    EDITOR_EMAIL,
    EDITOR_ROLE,
    CairnSqliteInstance,
    admin_token,
    app,
    bearer,
    cairn_instance,
    client,
    editor_token,
    state_url,
)

from cairn_migrate.service.auth import Caller, authenticate, extract_token, identify, is_flag_set
from cairn_migrate.instance.database import open_engine
from cairn_migrate.errors import Forbidden, Unauthorized
from cairn_migrate.instance.instance import Instance

HEALTH = "/migrate/health"
DUMMY = {"int": "1", "float": "1.0", "uuid": "00000000-0000-0000-0000-000000000000"}


# -- authenticate(), directly --------------------------------------------------------------


@pytest.fixture
def instance(cairn_instance: CairnSqliteInstance) -> Instance:
    return Instance.from_env_file(cairn_instance.env_path, environ={})


@pytest.fixture
def engine(instance: Instance) -> Iterator[Any]:
    engine = open_engine(instance)
    yield engine
    engine.dispose()


def test_static_admin_token(instance: Instance, engine: Any, admin_token: str) -> None:
    caller = authenticate(instance, engine, f"Bearer {admin_token}", None)
    assert caller == Caller(user_id=ADMIN_ID, role_id=ADMIN_ROLE, admin=True, method="static")


def test_static_token_in_query(instance: Instance, engine: Any, admin_token: str) -> None:
    assert authenticate(instance, engine, None, admin_token).method == "static"


def test_header_wins_over_query(instance: Instance, engine: Any, admin_token: str, editor_token: str) -> None:
    with pytest.raises(Forbidden):
        authenticate(instance, engine, f"Bearer {editor_token}", admin_token)
    assert authenticate(instance, engine, f"Bearer {admin_token}", editor_token).admin


def test_engine_may_be_a_factory_called_only_for_a_user_lookup(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, admin_token: str
) -> None:
    calls = []

    def factory() -> Any:
        calls.append(1)
        return engine

    with pytest.raises(Unauthorized):  # a badly signed token never opens the database
        authenticate(instance, factory, f"Bearer {cairn_instance.make_jwt(expires_in=-60)}")
    assert calls == []
    assert authenticate(instance, factory, f"Bearer {cairn_instance.make_jwt()}").method == "jwt"
    assert calls == [1]
    assert authenticate(instance, factory, f"Bearer {admin_token}").method == "static"
    assert calls == [1, 1]


def test_editor_is_forbidden(instance: Instance, engine: Any, editor_token: str) -> None:
    caller = identify(instance, engine, f"Bearer {editor_token}")
    assert caller.role_id == EDITOR_ROLE and not caller.admin
    with pytest.raises(Forbidden) as info:
        authenticate(instance, engine, f"Bearer {editor_token}")
    assert info.value.http_status == 403
    assert editor_token not in str(info.value)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc"])
def test_no_token(instance: Instance, engine: Any, header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticate(instance, engine, header, None)
    assert info.value.http_status == 401


def test_unknown_static_token(instance: Instance, engine: Any, admin_token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticate(instance, engine, "Bearer not-a-token-anyone-has", None)
    assert "not-a-token-anyone-has" not in str(info.value)


def test_suspended_admin(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, admin_token: str
) -> None:
    cairn_instance.set_status(ADMIN_EMAIL, "suspended")
    with pytest.raises(Unauthorized):
        authenticate(instance, engine, f"Bearer {admin_token}", None)


def test_user_without_role_is_forbidden(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, editor_token: str
) -> None:
    cairn_instance.execute("UPDATE directus_users SET role = NULL WHERE email = ?", (EDITOR_EMAIL,))
    with pytest.raises(Forbidden):
        authenticate(instance, engine, f"Bearer {editor_token}", None)


@pytest.mark.parametrize("admin_access", [1, True])
def test_jwt_admin(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, admin_access: Any
) -> None:
    token = cairn_instance.make_jwt(admin_access=admin_access)
    assert authenticate(instance, engine, f"Bearer {token}") == Caller(ADMIN_ID, ADMIN_ROLE, True, "jwt")


@pytest.mark.parametrize("status", ["suspended", "archived", "invited"])
def test_jwt_of_an_inactive_admin_is_refused(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, status: str
) -> None:
    token = cairn_instance.make_jwt()
    cairn_instance.set_status(ADMIN_EMAIL, status)
    with pytest.raises(Unauthorized) as info:
        authenticate(instance, engine, f"Bearer {token}")
    assert info.value.http_status == 401 and token not in str(info.value)


def test_jwt_of_a_deleted_user_is_refused(instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance) -> None:
    token = cairn_instance.make_jwt()
    cairn_instance.execute("DELETE FROM directus_users WHERE email = ?", (ADMIN_EMAIL,))
    with pytest.raises(Unauthorized):
        authenticate(instance, engine, f"Bearer {token}")


@pytest.mark.parametrize("user_id", [None, "not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_jwt_of_an_unknown_user_is_refused(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, user_id: str | None
) -> None:
    with pytest.raises(Unauthorized):
        authenticate(instance, engine, f"Bearer {cairn_instance.make_jwt(user_id=user_id)}")


def test_jwt_of_an_admin_demoted_since_is_forbidden(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance
) -> None:
    token = cairn_instance.make_jwt()  # issued while the user was an admin
    cairn_instance.execute("UPDATE directus_users SET role = ? WHERE email = ?", (EDITOR_ROLE, ADMIN_EMAIL))
    caller = identify(instance, engine, f"Bearer {token}")
    assert caller == Caller(ADMIN_ID, EDITOR_ROLE, False, "jwt")
    with pytest.raises(Forbidden):
        authenticate(instance, engine, f"Bearer {token}")


def test_jwt_without_admin_access_stays_without(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance
) -> None:
    """The token's own claim still counts: an admin's token issued without admin access gets none."""
    with pytest.raises(Forbidden):
        authenticate(instance, engine, f"Bearer {cairn_instance.make_jwt(admin_access=0)}")


def test_jwt_directus_issuer_is_accepted(instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance) -> None:
    token = cairn_instance.make_jwt(issuer="directus")
    assert authenticate(instance, engine, f"Bearer {token}").method == "jwt"


@pytest.mark.parametrize("admin_access", [0, False, None, "true", 2])
def test_jwt_not_admin(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, admin_access: Any
) -> None:
    token = cairn_instance.make_jwt(admin_access=admin_access, role=EDITOR_ROLE)
    with pytest.raises(Forbidden):
        authenticate(instance, engine, f"Bearer {token}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expires_in": -60},
        {"secret": "another-secret-that-is-long-enough-0123456789"},
        {"issuer": "someone-else"},
        {"issuer": None},
        {"drop": ("exp",)},
        {"drop": ("admin_access",)},
        {"drop": ("role",)},
        {"drop": ("app_access",)},
    ],
    ids=["expired", "other-secret", "wrong-issuer", "no-issuer", "no-exp", "no-admin_access", "no-role", "no-app"],
)
def test_jwt_rejected(
    instance: Instance, engine: Any, cairn_instance: CairnSqliteInstance, kwargs: dict[str, Any]
) -> None:
    token = cairn_instance.make_jwt(**kwargs)
    with pytest.raises(Unauthorized) as info:
        authenticate(instance, engine, f"Bearer {token}")
    assert token not in str(info.value)


def test_unsigned_jwt_rejected(instance: Instance, engine: Any) -> None:
    import jwt

    token = jwt.encode(
        {"iss": "cairncms", "role": ADMIN_ROLE, "app_access": 1, "admin_access": 1, "exp": 4_000_000_000},
        key=None,
        algorithm="none",
    )
    with pytest.raises(Unauthorized):
        authenticate(instance, engine, f"Bearer {token}")


def test_jwt_without_instance_secret(cairn_instance: CairnSqliteInstance, engine: Any) -> None:
    env_path = cairn_instance.env_path
    env_path.write_text(re.sub(r"^SECRET=.*\n", "", env_path.read_text(), flags=re.MULTILINE))
    instance = Instance.from_env_file(env_path, environ={})
    assert instance.secret is None
    with pytest.raises(Unauthorized) as info:
        authenticate(instance, engine, f"Bearer {cairn_instance.make_jwt()}")
    assert info.value.hint and "SECRET" in info.value.hint


def test_flags_and_extraction() -> None:
    assert is_flag_set(1) and is_flag_set(True) and is_flag_set("1")
    assert not any(is_flag_set(v) for v in (0, False, None, "true", 2, "0"))
    assert extract_token("bearer abc", "q") == "abc"
    assert extract_token(None, "q") == "q"
    assert extract_token("Token abc", None) is None


# -- every /migrate route, over HTTP ------------------------------------------------------


def migrate_routes(app: Any, records: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(method, url) of every /migrate route but health, with dummy path values (or ``records[name]``)."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/migrate") or rule.rule == HEALTH:
            continue
        # Routes only the instance's hook calls (HMAC-signed, no token accepted, e.g. POST /migrate/events)
        # answer 401 to every token; tests/test_events.py checks them.
        if getattr(app.view_functions[rule.endpoint], "signed_required", False):
            continue
        values = {
            name: DUMMY.get(type(conv).__name__.replace("Converter", "").lower(), "dummy-id")
            for name, conv in rule._converters.items()
        }
        url = rule.rule
        if records is not None:
            missing = set(values) - set(records)
            assert not missing, f"{rule.rule}: name the record that {sorted(missing)} should be"
            values = {name: records[name] for name in values}
        for name, value in values.items():
            url = re.sub(rf"<(?:[^>:]+:)?{name}>", value, url)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


def _statuses(client: Any, routes: list[tuple[str, str]], **kwargs: Any) -> dict[tuple[str, str], int]:
    return {(method, url): client.open(url, method=method, **kwargs).status_code for method, url in routes}


def test_matrix_covers_the_known_routes(app: Any) -> None:
    routes = migrate_routes(app)
    assert ("GET", "/migrate/jobs") in routes
    assert ("GET", "/migrate/jobs/dummy-id") in routes
    assert ("POST", "/migrate/jobs/dummy-id/cancel") in routes
    assert ("GET", "/migrate/openapi.json") in routes


def test_anonymous_gets_401_everywhere(app: Any, client: Any) -> None:
    statuses = _statuses(client, migrate_routes(app))
    assert statuses and set(statuses.values()) == {401}, statuses


def test_non_admin_gets_403_everywhere(app: Any, client: Any, editor_token: str) -> None:
    statuses = _statuses(client, migrate_routes(app), headers=bearer(editor_token))
    assert set(statuses.values()) == {403}, statuses


def test_non_admin_jwt_gets_403_everywhere(app: Any, client: Any, cairn_instance: CairnSqliteInstance) -> None:
    token = cairn_instance.make_jwt(admin_access=0, role=EDITOR_ROLE)
    statuses = _statuses(client, migrate_routes(app), headers=bearer(token))
    assert set(statuses.values()) == {403}, statuses


def test_admin_static_token_is_let_in_everywhere(app: Any, client: Any, admin_token: str) -> None:
    answers = {(method, url): client.open(url, method=method, headers=bearer(admin_token))
               for method, url in migrate_routes(app)}
    statuses = {route: answer.status_code for route, answer in answers.items()}
    assert not {401, 403} & set(statuses.values()), statuses
    assert not {s for s in statuses.values() if s >= 500}, statuses
    # The empty-bodied POSTs did what an admin's request does: jobs started, the hold set, dry runs answered,
    # bodies that name nothing refused.
    admin_posts = {
        "/migrate/export": 202, "/migrate/inspect": 202, "/migrate/files/check": 202, "/migrate/freeze": 200,
        "/migrate/files/repair": 200, "/migrate/storage/prune": 200, "/migrate/migrations/up": 200,
        "/migrate/migrations/down": 200, "/migrate/import": 422, "/migrate/verify": 422, "/migrate/storage/move": 422,
        "/migrate/jobs/dummy-id/cancel": 404,
    }
    assert {url: statuses[("POST", url)] for url in admin_posts} == admin_posts
    jobs = client.get("/migrate/jobs", headers=bearer(admin_token)).get_json()["jobs"]
    assert sorted(job["kind"] for job in jobs) == ["export", "files_check", "inspect"]
    assert {job["id"] for job in jobs} == {answers[("POST", url)].get_json()["id"]
                                          for url in ("/migrate/export", "/migrate/inspect", "/migrate/files/check")}
    held = answers[("POST", "/migrate/freeze")].get_json()
    assert held["active"] is True and held["reason"] == "held by an admin"
    assert answers[("DELETE", "/migrate/freeze")].get_json()["active"] is False
    assert answers[("POST", "/migrate/files/repair")].get_json()["dry_run"] is True
    assert answers[("POST", "/migrate/migrations/down")].get_json()["reverted"] == []  # none applied: nothing to do
    assert answers[("POST", "/migrate/import")].get_json()["error"]["code"] == "invalid_input"


def test_admin_static_token_in_query_is_let_in(app: Any, client: Any, admin_token: str) -> None:
    statuses = _statuses(client, migrate_routes(app), query_string={"access_token": admin_token})
    assert not {401, 403} & set(statuses.values()), statuses


def test_suspended_admin_gets_401_everywhere(
    app: Any, client: Any, cairn_instance: CairnSqliteInstance, admin_token: str
) -> None:
    cairn_instance.set_status(ADMIN_EMAIL, "suspended")
    statuses = _statuses(client, migrate_routes(app), headers=bearer(admin_token))
    assert set(statuses.values()) == {401}, statuses


@pytest.mark.parametrize("admin_access", [1, True])
def test_admin_jwt_is_let_in_everywhere(
    app: Any, client: Any, cairn_instance: CairnSqliteInstance, admin_access: Any
) -> None:
    token = cairn_instance.make_jwt(admin_access=admin_access)
    statuses = _statuses(client, migrate_routes(app), headers=bearer(token))
    assert not {401, 403} & set(statuses.values()), statuses


def test_suspended_admin_jwt_gets_401_everywhere(app: Any, client: Any, cairn_instance: CairnSqliteInstance) -> None:
    token = cairn_instance.make_jwt()
    cairn_instance.set_status(ADMIN_EMAIL, "suspended")
    statuses = _statuses(client, migrate_routes(app), headers=bearer(token))
    assert set(statuses.values()) == {401}, statuses


def test_deleted_admin_jwt_gets_401_everywhere(app: Any, client: Any, cairn_instance: CairnSqliteInstance) -> None:
    token = cairn_instance.make_jwt()
    cairn_instance.execute("DELETE FROM directus_users WHERE email = ?", (ADMIN_EMAIL,))
    statuses = _statuses(client, migrate_routes(app), headers=bearer(token))
    assert set(statuses.values()) == {401}, statuses


@pytest.mark.parametrize(
    "kwargs",
    [{"expires_in": -60}, {"secret": "another-secret-that-is-long-enough-0123456789"}, {"issuer": "someone-else"}],
    ids=["expired", "other-secret", "wrong-issuer"],
)
def test_bad_jwt_gets_401_everywhere(
    app: Any, client: Any, cairn_instance: CairnSqliteInstance, kwargs: dict[str, Any]
) -> None:
    token = cairn_instance.make_jwt(**kwargs)
    statuses = _statuses(client, migrate_routes(app), headers=bearer(token))
    assert set(statuses.values()) == {401}, statuses


def test_health_is_open_and_says_nothing_secret(
    client: Any, cairn_instance: CairnSqliteInstance, admin_token: str
) -> None:
    for headers in ({}, bearer(admin_token), bearer("garbage")):
        response = client.get(HEALTH, headers=headers)
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "ok" and body["service"] == "cairn-migrate" and body["version"]
        text = response.get_data(as_text=True)
        for secret in (cairn_instance.key, cairn_instance.secret, str(cairn_instance.db_path), "sqlite:", "data.db"):
            assert secret not in text


def test_real_access_token_of_a_suspended_admin_is_refused(live_instance: Any) -> None:
    """A real login's access token, on the running instance: let in, then refused once the user is suspended.

    A second admin is created for this (the session's admin is shared with other tests) and deleted after.
    """
    import uuid

    role = live_instance.request("GET", "/users/me").json()["data"]["role"]
    email, password = f"second-admin-{uuid.uuid4().hex[:8]}@example.com", "a-long-password-0123"
    created = live_instance.request("POST", "/users", json={"email": email, "password": password, "role": role})
    assert created.status_code == 200, created.text
    user_id = created.json()["data"]["id"]
    try:
        login = live_instance.request("POST", "/auth/login", token=None, json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        auth = bearer(login.json()["data"]["access_token"])
        assert live_instance.sidecar_request("GET", "/migrate/jobs", headers=auth).status_code == 200
        suspended = live_instance.request("PATCH", f"/users/{user_id}", json={"status": "suspended"})
        assert suspended.status_code == 200, suspended.text
        refused = live_instance.sidecar_request("GET", "/migrate/jobs", headers=auth)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    finally:
        live_instance.request("DELETE", f"/users/{user_id}")


# -- the error body --------------------------------------------------------------------------


def _assert_error_shape(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"ok", "error", "status"}
    assert body["ok"] is False and body["status"] == status
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "hint", "details"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_error_body_401(client: Any) -> None:
    response = client.get("/migrate/jobs")
    body = _assert_error_shape(response, 401, "unauthorized")
    assert body["error"]["hint"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_error_body_403(client: Any, editor_token: str) -> None:
    _assert_error_shape(client.get("/migrate/jobs", headers=bearer(editor_token)), 403, "forbidden")


def test_error_body_never_echoes_the_token(client: Any) -> None:
    token = "secret-looking-token-value-42"
    response = client.get("/migrate/jobs", headers=bearer(token))
    assert token not in response.get_data(as_text=True)


def test_error_body_404_and_405_in_migrate(client: Any) -> None:
    _assert_error_shape(client.get("/migrate/no-such-route"), 404, "not_found")
    response = client.delete("/migrate/health")
    _assert_error_shape(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_404_outside_migrate_is_left_alone(client: Any) -> None:
    response = client.get("/elsewhere")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_access_token_in_the_query_is_not_a_job_filter(app: Any, client: Any, admin_token: str) -> None:
    response = client.get("/migrate/jobs", query_string={"access_token": admin_token, "limit": 5})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"jobs": [], "count": 0}
    # other unknown parameters are still refused
    response = client.get("/migrate/jobs", query_string={"access_token": admin_token, "bogus": 1})
    assert response.status_code == 422


def test_error_body_422(client: Any, admin_token: str) -> None:
    body = _assert_error_shape(
        client.get("/migrate/jobs?limit=0&state=bogus", headers=bearer(admin_token)), 422, "invalid_input"
    )
    assert set(body["error"]["details"]) == {"limit", "state"}


def test_error_body_500_has_no_traceback(
    app: Any, client: Any, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cairn_migrate.service.app import get_state

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(get_state(app).store, "get", boom)
    response = client.get("/migrate/jobs/abc", headers=bearer(admin_token))
    _assert_error_shape(response, 500, "internal")
    assert "must not leak" not in response.get_data(as_text=True)


def test_error_body_when_instance_db_is_missing(
    client: Any, cairn_instance: CairnSqliteInstance, admin_token: str
) -> None:
    cairn_instance.db_path.unlink()
    response = client.get("/migrate/jobs", headers=bearer(admin_token))
    body = _assert_error_shape(response, 422, "config_error")
    assert "DB_FILENAME" in body["error"]["hint"]
