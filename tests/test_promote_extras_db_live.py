"""``promote``'s extras written offline (``DbWriter``) into a fresh target's database, then served by real CairnCMS.

The source is the recorded SQLite fixture plus a webhook flow (transform → request), a role preset, a user
bookmark and translation strings (``test_promote_extras_live.source_with_extras``).  The target is the recorded
fresh bootstrap on PostgreSQL, MariaDB or SQLite (the MariaDB database made with the dump's own collation, so the
target is the recorded dump and not a re-bootstrap).  Roles and permissions go in first as rows
(``config_rows``), the extras as rows with the same plan the API path uses; then CairnCMS 1.0.0-beta.4 starts
on that database and must serve the flows (the webhook flow runs), the dashboard with its panels, the presets
and the translation strings.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from conftest import make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process
from test_promote_extras_live import TRANSLATIONS, source_with_extras

from cairn_migrate.bundle.config_snapshot import config_snapshot
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations import config_rows
from cairn_migrate.operations.promote_extras import (EXTRA_KINDS, DbWriter, IdMap, apply_extras, has_changes,
                                                     plan_extras, rows_of_database)

TOKEN = "extras-db-target-admin-token-0123456"


@dataclass
class Url:
    url: str


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_extras_written_as_rows_are_served_by_cairncms(vendor: str, cairncms: Platform, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    source = source_with_extras(tmp_path / "src", request, Url(url))  # type: ignore[arg-type]
    target = make_instance(vendor, tmp_path / "dst", request, sql="fresh.sql",
                           extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    (target.parent / "package.json").write_text('{"name": "extras-db-target", "private": true}\n')
    if vendor == "mariadb":
        with Database.open(Instance.from_env_file(target)) as db, db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT @@collation_database")).scalar() == "utf8mb4_general_ci"
    with Database.open(Instance.from_env_file(source)) as src_db:
        config, src = config_snapshot(src_db), rows_of_database(src_db)
    idmap = IdMap(f"sqlite:///{tmp_path / 'state.db'}", ("source", "target"))
    with Database.open(Instance.from_env_file(target)) as db:
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
        assert config_rows.apply(db, config)["roles"]["created"] == ["editor"]
        writer = DbWriter(db)
        dst = writer.rows()
        report, kinds = plan_extras(src, dst, list(EXTRA_KINDS), idmap, include_secrets=False)
        assert "Ping (webhook)" in report["flows"]["create"] and report["panels"]["counts"]["create"] == 3
        apply_extras(writer, src, dst, kinds, idmap)
        again = writer.rows()
        assert not has_changes(plan_extras(src, again, list(EXTRA_KINDS), idmap, include_secrets=False)[1])

        # A flow (with two linked operations) and a global preset only the target has: kept, unless destructive.
        flow = writer.create("flows", {"name": "Target only", "trigger": "manual", "status": "active", "options": {}})
        second = writer.create("operations", {"name": "B", "key": "b", "type": "log", "position_x": 37,
                                              "position_y": 1, "flow": flow, "options": {"message": "b"}})
        first = writer.create("operations", {"name": "A", "key": "a", "type": "log", "position_x": 19, "position_y": 1,
                                             "flow": flow, "options": {"message": "a"}, "resolve": second})
        writer.update("flows", flow, {"operation": first})
        writer.create("presets", {"collection": "tags", "layout": "cards"})
        report, kinds = plan_extras(src, writer.rows(), list(EXTRA_KINDS), idmap, include_secrets=False)
        assert (report["flows"]["kept"], report["presets"]["kept"]) == (["Target only (manual)"], ["global tags"])
        assert not has_changes(kinds)
        dst = writer.rows()
        report, kinds = plan_extras(src, dst, list(EXTRA_KINDS), idmap, include_secrets=False, destructive=True)
        assert (report["flows"]["delete"], report["presets"]["delete"]) == (["Target only (manual)"], ["global tags"])
        apply_extras(writer, src, dst, kinds, idmap)
        left = writer.rows()
        assert "Target only" not in {f["name"] for f in left["flows"]}
        assert not [o for o in left["operations"] if o["flow"] == flow]  # gone with their flow (FK cascade)
        assert "tags" not in {p["collection"] for p in left["presets"]}

    server = start_server(cairncms, target.parent, url, server_env(), tmp_path / "cairncms.log")
    try:
        def get(path: str) -> object:
            response = requests.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            assert response.status_code == 200, response.text
            return response.json()["data"]

        flows = {f["name"]: f for f in get("/flows?limit=-1")}  # type: ignore[union-attr]
        assert {"Ping", "Log new articles", "Manual: archive article"} <= set(flows)
        ran = requests.get(f"{url}/flows/trigger/{flows['Ping']['id']}?word=offline",
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ran.status_code == 200, ran.text
        assert ran.json()["shape"] == {"shaped": "offline"} and "fetch" in ran.json(), ran.text
        dashboard = next(d for d in get("/dashboards?limit=-1") if d["name"] == "Editorial")  # type: ignore[union-attr]
        panels = get(f"/panels?filter[dashboard][_eq]={dashboard['id']}")
        assert sorted(p["name"] for p in panels) == ["Published articles", "Readme", "Words over time"]  # type: ignore[union-attr]
        now = dt.datetime.now(dt.timezone.utc)
        for panel in panels:  # type: ignore[union-attr]
            created = dt.datetime.fromisoformat(panel["date_created"].replace("Z", "+00:00"))
            created = created if created.tzinfo else created.replace(tzinfo=dt.timezone.utc)
            assert abs((now - created).total_seconds()) < 3600, panel["date_created"]  # as CairnCMS stamps it
        editor = next(r["id"] for r in get("/roles") if r["key"] == "editor")  # type: ignore[union-attr]
        presets = get("/presets?limit=-1")
        assert {(p["role"], p["collection"]) for p in presets} == {(editor, "articles"), (None, "authors")}  # type: ignore[union-attr]
        settings = get("/settings")
        assert settings["translation_strings"] == TRANSLATIONS and settings["project_name"] == "Cairn Fixture"  # type: ignore[index]
    finally:
        stop_process(server)
