"""``promote``'s extras against real CairnCMS 1.0.0-beta.4: flows, dashboards, presets, settings, translations.

The source is the recorded SQLite fixture (its ``.env``: rows read from its database), which already
holds two flows, the "Editorial" dashboard with three panels, a role bookmark and a global preset, and
settings; the test adds a webhook flow with two chained operations (the first sends a token header),
a role preset, a user bookmark and translation strings.  The target is a fresh CairnCMS on PostgreSQL
(the module fixture of ``test_promote_live``), written only through its API.  Schema is left out
(``--only``): SQLite → PostgreSQL needs ``--force``, which is not what these tests are about.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_instance
from test_promote_live import TOKEN, Target, target  # noqa: F401  (target: the module's running CairnCMS)

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance

ONLY = ("--only", "config", "--only", "flows", "--only", "dashboards", "--only", "presets", "--only", "settings",
        "--only", "translations")
SECRET = "s3cret-header-value"
TRANSLATIONS = [{"key": "greeting", "translations": {"en-US": "Hello", "de-DE": "Hallo"}}]


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One state store (and so one ID map) for the whole test."""
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def execute(env: Path, sql: str, **params: Any) -> None:
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def source_with_extras(folder: Path, request: pytest.FixtureRequest, target: Target) -> Path:
    """The SQLite fixture plus a webhook flow (transform → request with a token header), presets, translations."""
    env = make_instance("sqlite", folder, request)
    flow, shape, fetch = (str(uuid.uuid4()) for _ in range(3))
    execute(env, "INSERT INTO directus_flows (id, name, icon, status, trigger, accountability, options, operation) "
            "VALUES (:id, 'Ping', 'bolt', 'active', 'webhook', 'all', :options, :op)", id=flow, op=shape,
            options=json.dumps({"method": "GET", "async": False, "return": "$all"}))
    execute(env, "INSERT INTO directus_operations (id, name, key, type, position_x, position_y, options, flow) "
            "VALUES (:id, 'Fetch', 'fetch', 'request', 37, 1, :options, :flow)", id=fetch, flow=flow,
            options=json.dumps({"method": "GET", "url": target.url + "/server/ping",
                                "headers": [{"header": "X-Api-Token", "value": SECRET}]}))
    execute(env, "INSERT INTO directus_operations (id, name, key, type, position_x, position_y, options, resolve, flow) "
            "VALUES (:id, 'Shape', 'shape', 'transform', 19, 1, :options, :resolve, :flow)", id=shape, resolve=fetch,
            flow=flow, options=json.dumps({"json": {"shaped": "{{$trigger.query.word}}"}}))
    editor = "(SELECT id FROM directus_roles WHERE key = 'editor')"
    execute(env, f"INSERT INTO directus_presets (role, collection, layout) VALUES ({editor}, 'articles', 'tabular')")
    execute(env, "INSERT INTO directus_presets (bookmark, \"user\", collection, layout) "
            "VALUES ('mine', (SELECT id FROM directus_users LIMIT 1), 'articles', 'tabular')")
    execute(env, "UPDATE directus_settings SET translation_strings = :t", t=json.dumps(TRANSLATIONS))
    return env


def promote(source: Path, target: Target, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", target.url, "--to-token", TOKEN,
                                      *ONLY, *args])
    return result.exit_code, result.output


def promote_json(source: Path, target: Target, *args: str) -> tuple[int, dict[str, Any]]:
    code, output = promote(source, target, "--json", *args)
    assert code in {0, 1}, output
    return code, json.loads(output)


def test_extras_reach_the_target_by_natural_keys_and_a_flow_runs(target: Target, tmp_path: Path,  # noqa: F811
                                                                  request: pytest.FixtureRequest) -> None:
    source = source_with_extras(tmp_path / "src", request, target)
    code, plan = promote_json(source, target, "--dry-run")
    assert code == 1
    extras = plan["extras"]
    assert "Ping (webhook)" in extras["flows"]["create"]
    assert extras["operations"]["secrets_left_out"] == ["Ping/fetch options.headers[X-Api-Token]"]
    assert sorted(extras["presets"]["create"]) == ["global authors", "role editor articles"]  # no bookmarks
    assert extras["panels"]["counts"]["create"] == 3
    assert extras["translations"]["create"] == ["greeting"]

    code, output = promote(source, target)
    assert code == 0, output
    assert "secret not copied (--include-secrets copies it): Ping/fetch options.headers[X-Api-Token]" in output

    flow = next(f for f in target.get("/flows?limit=-1") if f["name"] == "Ping")
    ops = {o["key"]: o for o in target.get(f"/operations?filter[flow][_eq]={flow['id']}")}
    assert flow["operation"] == ops["shape"]["id"] and ops["shape"]["resolve"] == ops["fetch"]["id"]
    assert ops["fetch"]["options"]["headers"] == []
    ran = requests.get(f"{target.url}/flows/trigger/{flow['id']}?word=moved",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ran.status_code == 200, ran.text
    keyed = ran.json()  # return: $all, the data of every operation that ran, by key
    assert keyed["shape"] == {"shaped": "moved"} and "fetch" in keyed, ran.text  # the first op ran, then its resolve

    dashboard = next(d for d in target.get("/dashboards?limit=-1") if d["name"] == "Editorial")
    panels = target.get(f"/panels?filter[dashboard][_eq]={dashboard['id']}")
    assert sorted(p["name"] for p in panels) == ["Published articles", "Readme", "Words over time"]
    presets = target.get("/presets?limit=-1")
    assert not [p for p in presets if p["user"] or p["bookmark"]]
    editor = next(r["id"] for r in target.get("/roles") if r["key"] == "editor")
    assert {(p["role"], p["collection"]) for p in presets} == {(editor, "articles"), (None, "authors")}
    settings = target.get("/settings")
    assert (settings["project_name"], settings["project_color"]) == ("Cairn Fixture", "#6644FF")
    assert settings["translation_strings"] == TRANSLATIONS

    code, output = promote(source, target)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output

    # A panel renamed on the source updates the row it was written to (the ID map), never a second panel.
    readme = next(p["id"] for p in panels if p["name"] == "Readme")
    execute(source, "UPDATE directus_panels SET name = 'Read me' WHERE name = 'Readme'")
    code, plan = promote_json(source, target, "--dry-run")
    assert (code, plan["extras"]["panels"]["update"], plan["extras"]["panels"]["create"]) == (
        1, ["Editorial/Read me (name)"], [])
    assert promote(source, target)[0] == 0
    panels = {p["id"]: p["name"] for p in target.get(f"/panels?filter[dashboard][_eq]={dashboard['id']}")}
    assert len(panels) == 3 and panels[readme] == "Read me"

    # The secret header is copied only when asked.
    code, plan = promote_json(source, target, "--dry-run", "--include-secrets")
    assert plan["extras"]["operations"]["update"] == ["Ping/fetch (options)"]
    assert promote(source, target, "--include-secrets")[0] == 0
    fetch = target.get(f"/operations/{ops['fetch']['id']}")
    assert fetch["options"]["headers"] == [{"header": "X-Api-Token", "value": SECRET}]
    code, output = promote(source, target)  # without it again: the target keeps the secret it has
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output

    # A chain changed on the source (the transform no longer resolves to the request) is an update of the link.
    execute(source, "UPDATE directus_operations SET resolve = NULL WHERE key = 'shape'")
    code, plan = promote_json(source, target, "--dry-run")
    assert (code, plan["extras"]["operations"]["update"]) == (1, ["Ping/shape (resolve)"])
    assert promote(source, target)[0] == 0
    assert target.get(f"/operations/{ops['shape']['id']}")["resolve"] is None
    assert promote(source, target)[1].splitlines()[-1] == "no changes"
