"""The hook's side of the sidecar: signed ``POST /migrate/events``, ``GET /migrate/events``, signed freeze reads."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from instance_fixtures import CairnSqliteInstance, bearer

from cairn_migrate.errors import ConfigError, FreezeNotEnforced, Unauthorized
from cairn_migrate.service.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, config_path, sign, verify

SECRET = "shared-secret-for-tests-0123456789abcdef"


@pytest.fixture
def installed(cairn_instance: CairnSqliteInstance) -> str:
    """The extension's config file as install-extension writes it (only the secret matters here)."""
    from cairn_migrate.instance.instance import Instance

    path = config_path(Instance.from_env_file(cairn_instance.env_path, environ={}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sidecar_url": "http://127.0.0.1:1", "secret": SECRET}))
    return SECRET


def _post(client: Any, body: dict[str, Any], secret: str | None = SECRET, **overrides: Any) -> Any:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers.update(sign(secret, "POST", "/migrate/events", data))
    headers.update(overrides)
    return client.post("/migrate/events", data=data, headers=headers)


def test_signed_event_is_recorded_and_listed(client: Any, installed: str, admin_token: str) -> None:
    event = {"event": "files.upload", "collection": "directus_files", "keys": ["abc"], "file": {"filesize": 3}}
    response = _post(client, event)
    assert response.status_code == 202, response.get_json()
    listed = client.get("/migrate/events", headers=bearer(admin_token)).get_json()["data"]
    assert listed[0]["event"] == "files.upload" and listed[0]["keys"] == ["abc"] and listed[0]["file"] == {"filesize": 3}


@pytest.mark.parametrize(
    "secret, overrides",
    [
        (None, {}),
        ("another-secret-entirely-0123456789", {}),
        (SECRET, {TIMESTAMP_HEADER: str(int(time.time()) - 3600)}),
        (SECRET, {SIGNATURE_HEADER: "sha256=" + "0" * 64}),
    ],
    ids=["unsigned", "wrong-secret", "stale", "forged"],
)
def test_bad_signatures_are_refused(client: Any, installed: str, secret: str | None, overrides: dict[str, str]) -> None:
    response = _post(client, {"event": "items.create"}, secret, **overrides)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_signed_routes_refuse_every_token(client: Any, installed: str, admin_token: str, editor_token: str) -> None:
    for headers in ({}, bearer(admin_token), bearer(editor_token)):
        assert client.post("/migrate/events", json={"event": "x"}, headers=headers).status_code == 401


def test_not_installed_means_no_signed_requests(client: Any) -> None:
    response = _post(client, {"event": "items.create"})
    assert response.status_code == 401
    assert "install-extension" in response.get_json()["error"]["hint"]


def test_event_body_is_validated(client: Any, installed: str) -> None:
    assert _post(client, {"no": "event"}).status_code == 422


def test_events_list_is_for_admins(client: Any, editor_token: str) -> None:
    assert client.get("/migrate/events").status_code == 401
    assert client.get("/migrate/events", headers=bearer(editor_token)).status_code == 403


def test_hook_reads_the_freeze_with_a_signature(client: Any, installed: str, admin_token: str) -> None:
    headers = sign(SECRET, "GET", "/migrate/freeze", b"")
    assert client.get("/migrate/freeze", headers=headers).get_json() == {"active": False}
    client.post("/migrate/freeze", json={"reason": "capture"}, headers=bearer(admin_token))
    state = client.get("/migrate/freeze", headers=sign(SECRET, "GET", "/migrate/freeze", b"")).get_json()
    assert state["active"] is True and state["reason"] == "capture"
    assert len(state["id"]) == 32  # what the hook checks an export's freeze proof against
    # A bad signature is not a fallback to "anonymous": it is refused.
    assert client.get("/migrate/freeze", headers=sign("wrong-secret-0123456789", "GET", "/migrate/freeze", b"")).status_code == 401
    # Signing POST /freeze does not let the hook start one.
    data = b'{"reason": "x"}'
    forged = client.post("/migrate/freeze", data=data, headers={"Content-Type": "application/json",
                                                                  **sign(SECRET, "POST", "/migrate/freeze", data)})
    assert forged.status_code == 401


def test_signature_matches_the_javascript_scheme() -> None:
    # Pinned against admin_module/api/sidecar.js signedHeaders(): HMAC-SHA256 of "ts\nMETHOD\npath\n" + body.
    headers = sign("k", "post", "/migrate/events", b"{}", timestamp=1700000000)
    assert headers == {
        TIMESTAMP_HEADER: "1700000000",
        SIGNATURE_HEADER: "sha256=" + __import__("hmac").new(b"k", b"1700000000\nPOST\n/migrate/events\n{}", "sha256").hexdigest(),
    }
    verify("k", "POST", "/migrate/events", b"{}", headers, now=1700000100)
    with pytest.raises(Unauthorized):
        verify("k", "POST", "/migrate/events", b"{} ", headers, now=1700000100)


# --- the freeze record (extension/operations/freeze.py) and the export's refusal without a proof ----------------

#: The instance these freeze records belong to (any 32-hex scope will do here).
SCOPE = "f" * 32


def test_each_freeze_has_its_own_id_and_is_cleared_only_by_it(state_url: str) -> None:
    import datetime as dt

    from cairn_migrate.operations.freeze import clear_freeze, freeze_state, renew_freeze, set_freeze

    first = set_freeze(state_url, "one", dt.timedelta(seconds=60), scope=SCOPE)
    assert freeze_state(state_url, scope=SCOPE)["id"] == first["id"]
    clear_freeze(state_url, "someone-elses-freeze", scope=SCOPE)
    assert freeze_state(state_url, scope=SCOPE)["active"] is True
    assert renew_freeze(state_url, "someone-elses-freeze", dt.timedelta(seconds=60)) is False
    with pytest.raises(ConfigError, match="Another freeze is active"):
        set_freeze(state_url, "two", scope=SCOPE, replace=False)
    clear_freeze(state_url, first["id"], scope=SCOPE)
    assert freeze_state(state_url, scope=SCOPE) == {"active": False}


def test_a_freeze_expires_unless_renewed(state_url: str) -> None:
    import datetime as dt

    from cairn_migrate.operations.freeze import freeze_state, renew_freeze, set_freeze

    held = set_freeze(state_url, "short", dt.timedelta(seconds=1), scope=SCOPE)
    assert renew_freeze(state_url, held["id"], dt.timedelta(seconds=2)) is True
    time.sleep(1.2)
    assert freeze_state(state_url, scope=SCOPE)["active"] is True
    time.sleep(1.0)
    state = freeze_state(state_url, scope=SCOPE)
    assert state["active"] is False and state["stale"] is True


def test_a_state_store_from_before_scoped_freezes_still_works(state_url: str) -> None:
    import sqlalchemy as sa

    from cairn_migrate.operations.freeze import freeze_state, set_freeze
    from cairn_migrate.service.jobs import _state_engine

    engine = _state_engine(state_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE cm_freeze (id INTEGER PRIMARY KEY, reason TEXT NOT NULL, since VARCHAR(40) NOT NULL,"
                             " until VARCHAR(40) NOT NULL, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL)"))
    engine.dispose()
    assert freeze_state(state_url, scope=SCOPE) == {"active": False}
    assert set_freeze(state_url, "after the upgrade", scope=SCOPE)["id"] == freeze_state(state_url, scope=SCOPE)["id"]
    engine = _state_engine(state_url)
    with engine.connect() as conn:  # the old unscoped table is left alone, read by no one
        assert conn.execute(sa.text("SELECT count(*) FROM cm_freeze")).scalar() == 0
    engine.dispose()


def test_frozen_lifts_the_freeze_when_the_proof_or_the_capture_fails(state_url: str) -> None:
    from cairn_migrate.operations.freeze import freeze_state, frozen

    def no_proof(state: dict[str, Any]) -> dict[str, Any]:
        assert freeze_state(state_url, scope=SCOPE)["id"] == state["id"]  # set before the proof is asked for
        raise FreezeNotEnforced("no hook")

    with pytest.raises(FreezeNotEnforced), frozen(state_url, scope=SCOPE, enabled=True, reason="x", prove=no_proof):
        raise AssertionError("the capture must not start without a proof")
    assert freeze_state(state_url, scope=SCOPE) == {"active": False}
    with pytest.raises(RuntimeError), frozen(state_url, scope=SCOPE, enabled=True, reason="x") as held:
        assert held is not None and freeze_state(state_url, scope=SCOPE)["id"] == held["id"]
        raise RuntimeError("capture failed")
    assert freeze_state(state_url, scope=SCOPE) == {"active": False} and "lifted_at" in held


def test_freeze_export_without_the_extension_writes_nothing(cairn_instance: CairnSqliteInstance, state_url: str,
                                                              tmp_path: Any) -> None:
    from cairn_migrate.operations.export import export_bundle
    from cairn_migrate.operations.freeze import freeze_state
    from cairn_migrate.instance.instance import Instance

    instance = Instance.from_env_file(cairn_instance.env_path, environ={})
    with pytest.raises(FreezeNotEnforced) as refused:
        export_bundle(instance, tmp_path / "bundle", freeze=True, state_url=state_url, instance_url="http://127.0.0.1:9")
    assert refused.value.exit_code == 2 and "install-extension" in refused.value.hint
    assert not (tmp_path / "bundle").exists()
    assert freeze_state(state_url, scope=SCOPE) == {"active": False}


def test_a_batch_of_events_is_recorded_in_order(client: Any, installed: str, admin_token: str) -> None:
    batch = {"events": [{"event": "items.create", "collection": "articles", "keys": [1, 2, 3], "newer": "x"},
                        {"event": "items.update", "collection": "articles", "keys": [2]}]}
    response = _post(client, batch)
    assert response.status_code == 202, response.get_json()
    assert len(response.get_json()["ids"]) == 2
    listed = client.get("/migrate/events?limit=2", headers=bearer(admin_token)).get_json()["data"]
    assert [(e["event"], e["keys"]) for e in listed] == [("items.update", [2]), ("items.create", [1, 2, 3])]
    assert "newer" not in listed[1]  # a field a newer hook sends is left out of the feed, not refused


def test_a_body_with_neither_an_event_nor_events_is_refused(client: Any, installed: str) -> None:
    response = _post(client, {"collection": "articles"})
    assert response.status_code == 422
    assert "'events'" in str(response.get_json())


@pytest.mark.parametrize("events", [[], "items.create", [{"event": "items.create"}] * 201,
                                    [{"event": "items.create"}, {"keys": [1]}],
                                    [{"event": "items.create"}, {"event": "items.update", "collection": 5}]],
                         ids=["empty", "not-a-list", "too-many", "one-without-a-name", "a-collection-not-text"])
def test_a_bad_batch_is_refused_whole(client: Any, installed: str, admin_token: str, events: Any) -> None:
    before = client.get("/migrate/events?limit=500", headers=bearer(admin_token)).get_json()["data"]
    response = _post(client, {"events": events})
    assert response.status_code == 422, response.get_json()
    after = client.get("/migrate/events?limit=500", headers=bearer(admin_token)).get_json()["data"]
    assert after == before  # nothing of it recorded
