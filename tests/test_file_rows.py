"""``files check`` / ``files repair`` on real databases and real storage servers."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_instance
from instance_fixtures import FIXTURES, bearer
from storage_servers import azure_config, create_container, gcs_config, remove_container, s3_config

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.operations.file_rows import QUARANTINE_PREFIX, check, repair
from cairn_migrate.instance.instance import Instance
from cairn_migrate.instance.storage import open_location, upload_tree



def files_of(env: Path) -> dict[str, dict]:
    """The fixture's three files by extension (ids differ per vendor)."""
    with Database.open(inst(env)) as db:
        rows = list(db.stream_rows("directus_files", columns=["id", "filename_disk", "filesize"]))
    return {r["filename_disk"].rsplit(".", 1)[1]: {"id": str(r["id"]), "name": r["filename_disk"],
                                                    "size": int(r["filesize"])} for r in rows}


def inst(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


def damage(location, files: dict[str, dict]) -> None:  # noqa: ANN001 - a Location
    """The Done-when fixture: one object deleted, one orphan added, one file truncated."""
    location.delete(files["txt"]["name"])
    location.write_bytes("stray-orphan.bin", b"nobody's")
    data = location.read_bytes(files["pdf"]["name"])
    location.write_bytes(files["pdf"]["name"], data[:100])
    location.write_bytes("health-AbC12", b"probe")


def assert_exactly_three(report: dict, files: dict[str, dict]) -> None:
    counts = report["counts"]
    assert counts == {"missing": 1, "size_mismatch": 1, "no_filename_disk": 0, "unconfigured_location": 0,
                      "orphan": 1, "dangling_reference": 0}, report["problems"]
    assert report["problems"]["missing"][0]["id"] == files["txt"]["id"]
    pdf = files["pdf"]
    assert report["problems"]["size_mismatch"][0] == {"id": pdf["id"], "storage": report["problems"]["size_mismatch"][0]["storage"],
                                                      "filename_disk": pdf["name"], "filesize": pdf["size"], "actual_size": 100}
    assert report["problems"]["orphan"][0]["name"] == "stray-orphan.bin"
    assert report["ignored"]["transforms"] == 1 and report["ignored"]["health_probes"] == 1
    assert not report["ok"]


def test_check_reports_exactly_the_three_problems(vendor_instance: tuple[str, Path], tmp_path: Path) -> None:
    _vendor, env = vendor_instance
    clean = check(inst(env), state_url=f"sqlite:///{tmp_path / 'state.db'}")
    assert clean["ok"] and clean["rows"] == 3 and clean["objects"] == {"local": 4}
    assert clean["ignored"]["transforms"] == 1
    files = files_of(env)
    damage(open_location(inst(env).location("local")), files)
    assert_exactly_three(check(inst(env), state_url=f"sqlite:///{tmp_path / 'state.db'}"), files)


def _object_store_instance(driver: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, object]:
    """The SQLite fixture whose three files live on ``driver`` (rows switched to it, bytes uploaded)."""
    from storage_servers import require_storage_server

    require_storage_server(driver)
    config = {"s3": s3_config, "gcs": gcs_config, "azure": azure_config}[driver](name="remote")
    env_extra = {"STORAGE_LOCATIONS": "local,remote", "STORAGE_REMOTE_DRIVER": driver}
    env_extra.update(env_keys(config))
    env = make_instance("sqlite", tmp_path / "inst", request, extra_env=env_extra)
    location = open_location(inst(env).location("remote"))
    create_container(location)
    request.addfinalizer(lambda: remove_container(location))
    upload_tree(tmp_path / "inst" / "uploads", location)
    with Database.open(inst(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_files SET storage = 'remote'"))
    return env, location


def env_keys(config) -> dict[str, object]:  # noqa: ANN001 - a LocationConfig
    """``STORAGE_<NAME>_*`` keys for a LocationConfig built by tests/storage_servers.py."""
    import re

    prefix = f"STORAGE_{config.name.upper()}_"
    return {prefix + re.sub(r"([a-z])([A-Z])", r"\1_\2", k).upper(): v for k, v in config.options.items()}


@pytest.mark.parametrize("driver", [pytest.param(d, marks=getattr(pytest.mark, d)) for d in ("s3", "gcs", "azure")])
def test_check_on_object_stores(driver: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, location = _object_store_instance(driver, tmp_path, request)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    report = check(inst(env), state_url=state)
    # the local folder still holds the old copies (and the thumbnail): orphans there, nothing wrong remotely
    assert report["counts"]["orphan"] == 4 and {o["storage"] for o in report["problems"]["orphan"]} == {"local"}
    for path in (tmp_path / "inst" / "uploads").iterdir():
        path.unlink()
    assert check(inst(env), state_url=state)["ok"]
    files = files_of(env)
    damage(location, files)
    assert_exactly_three(check(inst(env), state_url=state), files)


def test_row_level_problems_and_dangling_references(sqlite_instance: Path, tmp_path: Path) -> None:
    ghost = str(uuid.uuid4())
    with Database.open(inst(sqlite_instance)) as db, db.engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        conn.execute(sa.text("UPDATE articles SET cover_image = :g WHERE id = (SELECT min(id) FROM articles)"), {"g": ghost})
        conn.execute(sa.text("UPDATE directus_settings SET project_logo = :g"), {"g": ghost})
        conn.execute(sa.text("UPDATE directus_users SET avatar = :g WHERE email = 'editor@example.com'"), {"g": ghost})
        conn.execute(sa.text("UPDATE directus_files SET filename_disk = NULL WHERE type = 'text/plain'"))
        conn.execute(sa.text("UPDATE directus_files SET storage = 'gone' WHERE type = 'application/pdf'"))
    report = check(inst(sqlite_instance), state_url=f"sqlite:///{tmp_path / 'state.db'}")
    assert report["counts"]["no_filename_disk"] == 1 and report["counts"]["unconfigured_location"] == 1
    refs = {(r["table"], r["column"]) for r in report["problems"]["dangling_reference"]}
    assert refs == {("articles", "cover_image"), ("directus_settings", "project_logo"), ("directus_users", "avatar")}
    assert {r["file_id"] for r in report["problems"]["dangling_reference"]} == {ghost}
    # the two files whose rows no longer name them are orphans now
    assert {o["name"].rsplit(".", 1)[1] for o in report["problems"]["orphan"]} == {"txt", "pdf"}


def test_cli_exit_codes_and_json(sqlite_instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    runner = CliRunner()
    ok = runner.invoke(cli, ["--env", str(sqlite_instance), "files", "check"])
    assert ok.exit_code == 0, ok.output
    files = files_of(sqlite_instance)
    damage(open_location(inst(sqlite_instance).location("local")), files)
    bad = runner.invoke(cli, ["--env", str(sqlite_instance), "files", "check", "--json"])
    assert bad.exit_code == 1
    assert_exactly_three(json.loads(bad.output), files)
    text = runner.invoke(cli, ["--env", str(sqlite_instance), "files", "check"])
    assert text.exit_code == 1 and "stray-orphan.bin" in text.output and "missing: 1" in text.output


def test_repair_from_bundle(sqlite_instance: Path, tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    export_bundle(inst(sqlite_instance), tmp_path / "bundle")
    location = open_location(inst(sqlite_instance).location("local"))
    files = files_of(sqlite_instance)
    damage(location, files)
    with Database.open(inst(sqlite_instance)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET avatar = :g WHERE email = 'editor@example.com'"),
                     {"g": str(uuid.uuid4())})
    plan = repair(inst(sqlite_instance), bundle=tmp_path / "bundle", state_url=state)
    assert plan["dry_run"] and plan["planned"] == 4 and plan["unresolved_count"] == 0
    assert {p["action"] for p in plan["plan"]} == {"refetch", "quarantine", "clear_reference"}
    assert not check(inst(sqlite_instance), state_url=state)["ok"]  # the dry run changed nothing
    done = repair(inst(sqlite_instance), bundle=tmp_path / "bundle", yes=True, state_url=state)
    assert done["done"] == {"refetched": 2, "quarantined": 1, "deleted": 0, "references_cleared": 1}
    after = check(inst(sqlite_instance), state_url=state)
    assert after["ok"], after["problems"]
    assert after["ignored"]["quarantined"] == 1
    assert any(n.startswith(QUARANTINE_PREFIX + "/") for n, _ in location.list(QUARANTINE_PREFIX))
    assert len(location.read_bytes(files["pdf"]["name"])) == files["pdf"]["size"]


def test_repair_from_another_location_and_delete_orphans(sqlite_instance: Path, tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    backup = tmp_path / "backup"
    import shutil

    shutil.copytree(tmp_path / "sqlite" / "uploads", backup)
    env_text = sqlite_instance.read_text() + f"STORAGE_LOCATIONS=local,backup\nSTORAGE_BACKUP_DRIVER=local\nSTORAGE_BACKUP_ROOT={backup}\n"
    sqlite_instance.write_text(env_text.replace("STORAGE_LOCATIONS=local\n", ""))
    damage(open_location(inst(sqlite_instance).location("local")), files_of(sqlite_instance))
    done = repair(inst(sqlite_instance), from_locations=["backup"], orphans="delete", yes=True, state_url=state)
    assert done["done"]["refetched"] == 2 and done["done"]["deleted"] == 1
    report = check(inst(sqlite_instance), state_url=state)
    # the backup location's copies are orphans of that location (no rows there); "local" is clean
    assert {o["storage"] for o in report["problems"]["orphan"]} == {"backup"}
    assert report["counts"]["missing"] == report["counts"]["size_mismatch"] == 0


def test_http_check_is_a_job(app, client, admin_token: str, editor_token: str) -> None:  # noqa: ANN001
    from cairn_migrate.service.app import get_state

    uploads = shutil.copytree(FIXTURES / "uploads", Path(get_state(app).instance().location("local").options["root"]),
                              dirs_exist_ok=True)
    gone = next(uploads.glob("*.pdf"))
    gone.unlink()
    denied = client.post("/migrate/files/check", json={}, headers=bearer(editor_token))
    assert denied.status_code == 403
    started = client.post("/migrate/files/check", json={}, headers=bearer(admin_token))
    assert started.status_code == 202, started.get_json()
    job = get_state(app).runner.wait(started.get_json()["id"], timeout=60)
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["rows"] == 3 and result["ok"] is False
    assert {kind: n for kind, n in result["counts"].items() if n} == {"missing": 1}
    assert [m["filename_disk"] for m in result["problems"]["missing"]] == [gone.name]
    plan = client.post("/migrate/files/repair", json={}, headers=bearer(admin_token))
    assert plan.status_code == 200 and plan.get_json()["dry_run"] is True
    planned = plan.get_json()  # no bundle and no other location: nothing can bring the bytes back
    assert planned["planned"] == 0 and set(planned["done"].values()) == {0}
    assert [(u["filename_disk"], u["reason"]) for u in planned["unresolved"]] == [(gone.name, "no source has these bytes")]
    listed = client.get("/migrate/migrations", headers=bearer(admin_token))
    assert listed.status_code == 200 and listed.get_json()["migrations"] == []
