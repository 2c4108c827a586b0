"""Imports that cannot lose data: ``--resume`` continues only a recorded, unchanged, interrupted import,
and a target holding an interrupted import says so (``inspect``, ``verify``, ``/migrate/health``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_empty_instance, make_instance
from test_clone import normalized_rows

from cairn_migrate.bundle import import_marker, workdir
from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.errors import ConfigError, MigrateError
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.restore import import_bundle
from cairn_migrate.operations.verify import verify_bundle

ADDED = "added through the instance after the import"

#: Runs an import in a child process and SIGKILLs it at one step: no cleanup of any kind runs.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.progress import NullProgress
    from cairn_migrate.operations.restore import import_bundle

    WHEN = sys.argv[3]

    class KillAt(NullProgress):
        armed = False

        def log(self, message):
            if WHEN == "mid_table" and message.startswith("loading articles "):
                self.armed = True  # rows of articles are sent, not yet committed, at the next advance
            if WHEN == "before_constraints" and message.startswith("adding foreign keys"):
                os.kill(os.getpid(), signal.SIGKILL)
            if WHEN == "native_restore" and message.startswith("restoring the native"):
                os.kill(os.getpid(), signal.SIGKILL)

        def advance(self, items=0, bytes=0):
            if (self.armed and items) or (WHEN == "mid_files" and bytes):
                os.kill(os.getpid(), signal.SIGKILL)

    target = Instance.from_env_file(sys.argv[1], environ={})
    if WHEN == "after_native_restore":  # the dump is in the target, the import has not recorded it yet
        from cairn_migrate.bundle import native
        restore = native.restore

        def restore_then_die(config, member):
            restore(config, member)
            if config.url.database == target.database.url.database:
                os.kill(os.getpid(), signal.SIGKILL)

        native.restore = restore_then_die
    if WHEN == "replace_first_drop":  # --replace has dropped one old table
        from cairn_migrate.bundle.table_loader import TableLoader
        drop = TableLoader.drop

        def drop_then_die(self, name):
            drop(self, name)
            os.kill(os.getpid(), signal.SIGKILL)

        TableLoader.drop = drop_then_die
    import_bundle(target, Path(sys.argv[2]), progress=KillAt(), replace=WHEN.startswith("replace"))
    """
)


def instance(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def kill_import(dst: Path, bundle: Path, when: str, env: dict[str, str] | None = None) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLER, str(dst), str(bundle), when], check=False,
                            env={**os.environ, **(env or {})})
    assert killed.returncode == -9, f"the import was not killed at {when}"


def execute(env: Path, sql: str) -> None:
    with Database.open(instance(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text(sql))


def tag_names(env: Path) -> list[str]:
    with Database.open(instance(env)) as db, db.engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT name FROM tags")).scalars())


def structure(env: Path) -> dict[str, Any]:
    """What an import builds besides rows: foreign keys, indexes and (PostgreSQL) sequence positions."""
    with Database.open(instance(env)) as db:
        inspector = sa.inspect(db.engine)
        shape: dict[str, Any] = {}
        for name in db.table_names():
            foreign = sorted((tuple(fk["constrained_columns"]), fk["referred_table"]) for fk in inspector.get_foreign_keys(name))
            indexes = sorted((tuple(ix["column_names"]), bool(ix["unique"])) for ix in inspector.get_indexes(name))
            shape[name] = {"foreign_keys": foreign, "indexes": indexes}
        if db.vendor == "postgres":
            with db.engine.connect() as conn:
                shape["sequences"] = sorted(
                    (row[0], row[1]) for row in conn.execute(sa.text("SELECT sequencename, last_value FROM pg_sequences")))
    return shape


# -- a completed import: --resume refuses and keeps every row ---------------------------------

@pytest.mark.parametrize(("vendor", "native"), [
    ("postgres", False), ("postgres", True), ("mariadb", False), ("mariadb", True), ("sqlite", False), ("sqlite", True),
])
def test_resume_of_a_completed_import_is_refused_and_keeps_new_rows(
    vendor: str, native: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = make_instance(vendor, tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle, native=native)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    import_bundle(instance(dst), bundle)
    execute(dst, f"INSERT INTO tags (name) VALUES ('{ADDED}')")
    before = normalized_rows(dst, vendor)

    resumed = run("--env", dst, "import", bundle, "--resume")

    assert resumed.exit_code == 2, resumed.output
    assert "holds no interrupted import" in resumed.output and "fix:" in resumed.output
    again = run("--env", dst, "import", bundle)
    assert again.exit_code == 2 and "is not empty" in again.output
    assert ADDED in tag_names(dst)
    assert normalized_rows(dst, vendor) == before
    assert not list(tmp_path.glob("**/safety-bundles"))


# -- an interrupted import: reported incomplete, then resumed to the uninterrupted result -----

@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
@pytest.mark.parametrize("when", ["mid_table", "mid_files", "before_constraints"])
def test_killed_import_is_reported_incomplete_and_resumes_to_an_uninterrupted_result(
    vendor: str, when: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)

    kill_import(dst, bundle, when)

    inspected = run("--env", dst, "inspect", "--json", "--no-objects")
    assert inspected.exit_code == 1, inspected.output
    status = json.loads(inspected.stdout)["import"]
    assert status["state"] == "incomplete"
    assert status["step"] == {"mid_table": "tables", "mid_files": "files", "before_constraints": "constraints"}[when]
    assert "import BUNDLE --resume" in inspected.stderr
    verified = run("--env", dst, "verify", bundle)
    assert verified.exit_code == 1
    assert "INCOMPLETE IMPORT" in verified.stdout and "--resume" in verified.stderr
    plain = run("--env", dst, "import", bundle)
    assert plain.exit_code == 2 and "interrupted import" in plain.output

    report = import_bundle(instance(dst), bundle, resume=True)

    actions = {t["table"]: t["action"] for t in report["plan"]["tables"]}
    if when == "mid_table":
        # PostgreSQL rolled the uncommitted CREATE TABLE back; MariaDB and SQLite committed it (DDL), half-loaded.
        assert actions["directus_users"] == "skip"
        assert actions["articles"] == ("create" if vendor == "postgres" else "reload")
        assert actions["article_comments"] == "create"
    else:
        assert set(actions.values()) == {"skip"}
    assert verify_bundle(instance(dst), bundle)["ok"]
    assert run("--env", dst, "inspect", "--json").exit_code == 0
    with Database.open(instance(dst)) as db:
        assert import_marker.TABLE not in db.table_names()
    reference = make_empty_instance(vendor, tmp_path / "reference", request)
    import_bundle(instance(reference), bundle)
    assert normalized_rows(dst, vendor) == normalized_rows(reference, vendor)
    assert structure(dst) == structure(reference)
    execute(dst, f"INSERT INTO tags (name) VALUES ('{ADDED}')")  # sequences are set: no duplicate key


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_killed_native_restore_resumes(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance(vendor, tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle, native=True)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, bundle, "native_restore")
    assert run("--env", dst, "verify", bundle).exit_code == 1

    import_bundle(instance(dst), bundle, resume=True)

    assert verify_bundle(instance(dst), bundle)["ok"]
    assert normalized_rows(dst, vendor) == normalized_rows(src, vendor)


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_resume_refuses_a_target_changed_since_the_interruption(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, bundle, "before_constraints")
    execute(dst, f"INSERT INTO tags (id, name) VALUES (9999, '{ADDED}')")
    before = normalized_rows(dst, vendor)

    resumed = run("--env", dst, "import", bundle, "--resume")

    assert resumed.exit_code == 2, resumed.output
    assert "the target changed since the import was interrupted: tags (" in resumed.output
    assert normalized_rows(dst, vendor) == before
    with Database.open(instance(dst)) as db:
        assert import_marker.read(db).step == "constraints"  # still recorded as incomplete


@pytest.mark.parametrize("vendor", ["mariadb", "sqlite"])
def test_resume_refuses_rows_written_into_the_table_the_import_was_loading(
    vendor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """MariaDB and SQLite commit the CREATE TABLE of a half-loaded table: the instance may write into it."""
    src = make_instance("sqlite", tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, bundle, "mid_table")
    execute(dst, f"INSERT INTO articles (id, title, status) VALUES ('99999999-0000-4000-8000-000000000000', '{ADDED}', 'draft')")
    before = normalized_rows(dst, vendor)

    resumed = run("--env", dst, "import", bundle, "--resume")

    assert resumed.exit_code == 2, resumed.output
    assert "rows the interrupted import did not write appeared in tables it was writing: articles (1 rows)" in resumed.output
    assert "fix:" in resumed.output
    assert normalized_rows(dst, vendor) == before
    with Database.open(instance(dst)) as db:
        assert import_marker.read(db).current_table == "articles"  # still recorded as incomplete


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_resume_after_a_finished_native_restore_drops_only_the_bundles_own_rows(
    vendor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Killed once the dump is in the target (or an orphaned restore tool finished it): the target reads
    incomplete, a row the instance wrote since is never dropped, and the bundle's own rows are reloaded."""
    src = make_instance(vendor, tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle, native=True)
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, bundle, "after_native_restore")
    inspected = run("--env", dst, "inspect", "--json", "--no-objects")
    assert inspected.exit_code == 1, inspected.output
    assert json.loads(inspected.stdout)["import"]["step"] == "restore"
    execute(dst, f"INSERT INTO tags (name) VALUES ('{ADDED}')")

    refused = run("--env", dst, "import", bundle, "--resume")

    assert refused.exit_code == 2, refused.output
    assert "tags (" in refused.output and "fix:" in refused.output
    assert ADDED in tag_names(dst)
    execute(dst, f"DELETE FROM tags WHERE name = '{ADDED}'")  # the target is again what the restore left
    import_bundle(instance(dst), bundle, resume=True)
    assert verify_bundle(instance(dst), bundle)["ok"]
    assert normalized_rows(dst, vendor) == normalized_rows(src, vendor)


def _process_gone(pid: int) -> bool:
    """Ended (or a zombie nobody has reaped yet: it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_native_tools_die_with_a_killed_sidecar(tmp_path: Path) -> None:
    """A SIGKILLed sidecar must not leave pg_restore or mariadb writing into the target on their own."""
    import time

    pid_file = tmp_path / "tool.pid"
    sidecar = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from cairn_migrate.bundle import native
        native._run(["sh", "-c", "echo $$ > {pid_file}; exec sleep 60"], dict(os.environ))
    """)])
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    tool = int(pid_file.read_text())
    assert not _process_gone(tool)

    sidecar.kill()
    sidecar.wait()

    deadline = time.monotonic() + 5
    while not _process_gone(tool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(tool), "the native tool outlived the killed sidecar"


def test_killed_replace_is_reported_incomplete_and_resumes(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}"}
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", state["CAIRN_MIGRATE_STATE_URL"])
    src = make_instance("sqlite", tmp_path / "src", request)
    execute(src, "UPDATE tags SET name = name || ' (from the source)'")
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    dst = make_instance("sqlite", tmp_path / "dst", request)

    kill_import(dst, bundle, "replace_first_drop", env=state)

    inspected = run("--env", dst, "inspect", "--json", "--no-objects")
    assert inspected.exit_code == 1, inspected.output
    assert json.loads(inspected.stdout)["import"]["step"] == "replace"
    assert "import BUNDLE --resume" in inspected.stderr
    verified = run("--env", dst, "verify", bundle)
    assert verified.exit_code == 1
    assert "INCOMPLETE IMPORT" in verified.stdout and "--resume" in verified.stderr
    execute(dst, f"INSERT INTO tags (id, name) VALUES (9999, '{ADDED}')")  # the old target, written since
    refused = run("--env", dst, "import", bundle, "--resume")
    assert refused.exit_code == 2, refused.output
    assert "the target changed since the import was interrupted: tags (" in refused.output
    assert ADDED in tag_names(dst)
    execute(dst, "DELETE FROM tags WHERE id = 9999")

    resumed = run("--env", dst, "import", bundle, "--resume")

    assert resumed.exit_code == 0, resumed.output
    assert verify_bundle(instance(dst), bundle)["ok"]
    assert tag_names(dst) == tag_names(src)


def test_resume_refuses_another_bundle(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "one")
    execute(src, "UPDATE tags SET name = 'changed'")
    export_bundle(instance(src), tmp_path / "two")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    kill_import(dst, tmp_path / "one", "mid_table")
    with pytest.raises(ConfigError, match="is of another bundle"):
        import_bundle(instance(dst), tmp_path / "two", resume=True)
    import_bundle(instance(dst), tmp_path / "one", resume=True)
    assert verify_bundle(instance(dst), tmp_path / "one")["ok"]


def test_resume_of_an_empty_target_is_refused_and_writes_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    result = run("--env", dst, "import", tmp_path / "bundle", "--resume")
    assert result.exit_code == 2
    assert "holds no interrupted import" in result.output
    assert not (tmp_path / "dst" / "data.db").exists()
    assert not (tmp_path / "dst" / "uploads").exists()


def test_health_reports_an_incomplete_instance_without_secrets(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from cairn_migrate.service.app import create_app, get_state

    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    kill_import(dst, tmp_path / "bundle", "before_constraints")
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(dst), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
                      "CAIRN_MIGRATE_HEALTH_CACHE_SECONDS": 0})  # the resume's effect is seen at once
    try:
        response = app.test_client().get("/migrate/health")
        assert response.status_code == 200
        body = response.get_json()
        assert body["instance"]["state"] == "incomplete" and body["instance"]["step"] == "constraints"
        assert "--resume" in body["instance"]["fix"]
        text = response.get_data(as_text=True)
        inst = instance(dst)
        for secret in (inst.key, inst.secret, str(inst.database.url.database), "postgresql"):
            assert secret and secret not in text
        import_bundle(inst, tmp_path / "bundle", resume=True)
        assert app.test_client().get("/migrate/health").get_json()["instance"]["state"] == "complete"
    finally:
        get_state(app).close()


def test_health_answers_unknown_when_the_database_cannot_be_read(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from cairn_migrate.service.app import create_app, get_state

    dst = make_empty_instance("sqlite", tmp_path / "dst", request)  # its data.db does not exist
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(dst), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"})
    try:
        response = app.test_client().get("/migrate/health")
        assert response.status_code == 200
        assert response.get_json()["instance"] == {"state": "unknown", "step": None, "started_at": None, "fix": None}
        assert "data.db" not in response.get_data(as_text=True)
    finally:
        get_state(app).close()


# -- cleaning up: scratch folders of dead processes, and a failed import into an empty SQLite target --

def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_stale_extractions_of_killed_imports_are_removed_by_the_next_run(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    archive = tmp_path / "bundle.tar"
    export_bundle(instance(src), archive)
    scratch_base = tmp_path / "tmp"
    scratch_base.mkdir()
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    kill_import(dst, archive, "mid_table", env={"TMPDIR": str(scratch_base)})
    root = scratch_base / workdir.PARENT
    left = list(root.iterdir())
    assert len(left) == 1 and list(left[0].glob("*/bundle/manifest.json"))  # what a SIGKILL leaves
    alive = root / f"{os.getpid()}-{workdir._start_time(os.getpid())}-running"
    alive.mkdir()
    reused = root / f"{os.getpid()}-1-pid-reused"  # this pid, but a process that started at another time
    reused.mkdir()
    users = scratch_base / "cairn-migrate-20261201"  # the user's own folder with a bundle in it: not ours
    shutil.copytree(tmp_path / "src" / "uploads", users)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_base))

    import_bundle(instance(dst), archive, resume=True)

    assert sorted(root.iterdir()) == [alive]  # the dead runs' folders are gone, a live one's kept
    assert sorted(scratch_base.iterdir()) == sorted([root, users])
    assert sorted(p.name for p in users.iterdir()) == sorted(p.name for p in (tmp_path / "src" / "uploads").iterdir())
    assert verify_bundle(instance(dst), archive)["ok"]
    assert sorted(root.iterdir()) == [alive]


def _bundle_with_duplicate_row(bundle: Path) -> None:
    """Re-sign a bundle whose tags table holds one row twice: the load fails on the primary key."""
    from cairn_migrate.bundle.bundle import sha256_file

    member = bundle / "tables" / "tags.jsonl"
    lines = member.read_bytes().splitlines(keepends=True)
    member.write_bytes(b"".join(lines + lines[:1]))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["members"]["tables/tags.jsonl"] = {"size": member.stat().st_size, "sha256": sha256_file(member)}
    manifest["tables"]["tags"]["rows"] += 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_failed_import_into_a_new_sqlite_target_leaves_nothing_behind(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    _bundle_with_duplicate_row(tmp_path / "bundle")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)

    result = run("--env", dst, "import", tmp_path / "bundle")

    assert result.exit_code == 3, result.output
    assert "the target was left as it was" in result.output
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [".env"]


def test_failed_import_into_an_existing_empty_database_drops_the_marker(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    _bundle_with_duplicate_row(tmp_path / "bundle")
    dst = make_empty_instance("mariadb", tmp_path / "dst", request)
    with pytest.raises(MigrateError):
        import_bundle(instance(dst), tmp_path / "bundle")
    with Database.open(instance(dst)) as db:
        assert db.table_names() == []


def test_import_killed_before_its_marker_row_resumes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The marker table is created, then its row written: a kill in between leaves a marker without a row."""
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    with Database.open(instance(dst)) as db:
        import_marker._marker.create(db.engine)
    inspected = run("--env", dst, "inspect", "--json", "--no-objects")  # exit 3: no uploads folder yet, either
    assert json.loads(inspected.stdout)["import"]["step"] == "tables" and "--resume" in inspected.stderr
    import_bundle(instance(dst), tmp_path / "bundle", resume=True)
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]


def test_replace_over_an_interrupted_import_keeps_a_restorable_safety_bundle(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    kill_import(dst, tmp_path / "bundle", "before_constraints")

    report = import_bundle(instance(dst), tmp_path / "bundle", replace=True)

    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]
    safety = Path(report["safety_bundle"])
    manifest = json.loads((safety / "manifest.json").read_text())
    assert import_marker.TABLE not in manifest["load_order"]
    assert manifest["incomplete"]["step"] == "constraints" and manifest["incomplete"]["state"] == "incomplete"
    again = make_empty_instance("postgres", tmp_path / "again", request)
    report = import_bundle(instance(again), safety)
    assert ("this bundle captured an incomplete target (an import interrupted at step constraints): the import restores "
            "that incomplete state") in report["plan"]["warnings"]
    assert verify_bundle(instance(again), safety)["ok"]


@pytest.mark.parametrize(("vendor", "native"), [("sqlite", False), ("sqlite", True), ("postgres", True),
                                                ("mariadb", True)])
def test_export_of_an_incomplete_target_is_refused(
    vendor: str, native: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A bundle of a half-imported target would later pass as complete: refused, naming the resume."""
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, tmp_path / "bundle", "mid_table")
    out = tmp_path / "out"

    result = run("--env", dst, "export", "--full", "-o", out, *(["--native"] if native else []))

    assert result.exit_code == 2, result.output
    assert "holds an unfinished import (step tables, " in result.output
    assert f"fix: finish the import first: {import_marker.RESUME_FIX}" in result.output
    assert not out.exists()


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_a_native_capture_of_an_incomplete_target_never_holds_the_marker(
    vendor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Even where an interrupted target is captured on purpose (the safety bundle), its native dump lacks the marker."""
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    kill_import(dst, tmp_path / "bundle", "before_constraints")
    out = tmp_path / "native"

    manifest = export_bundle(instance(dst), out, native=True, capture_incomplete=True)

    assert import_marker.TABLE not in manifest["native"]["checksums"] and manifest["incomplete"]["step"] == "constraints"
    again = make_empty_instance(vendor, tmp_path / "again", request)
    import_bundle(instance(again), out)
    with Database.open(instance(again)) as db:
        assert import_marker.TABLE not in db.table_names()
        assert import_marker.read(db) is None


@pytest.mark.parametrize("vendor", ["postgres", "mariadb", "sqlite"])
def test_replace_refuses_a_target_written_while_its_safety_bundle_was_written(
    vendor: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row written after the safety bundle's snapshot would be in neither: refused before any DROP, nothing lost."""
    from cairn_migrate.operations import export

    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_instance(vendor, tmp_path / "dst", request)
    safety = tmp_path / "safety"
    capture = export.export_bundle

    def capture_then_write(*args: Any, **kwargs: Any) -> dict[str, Any]:
        manifest = capture(*args, **kwargs)
        execute(dst, f"INSERT INTO tags (name) VALUES ('{ADDED}')")  # the instance's writers go on meanwhile
        return manifest

    monkeypatch.setattr(export, "export_bundle", capture_then_write)

    result = run("--env", dst, "import", tmp_path / "bundle", "--replace", "--safety-bundle", safety)

    assert result.exit_code == 2, result.output
    assert "Error: the target changed while its safety bundle was written (tags (" in result.output
    assert "); nothing was dropped" in result.output
    assert "fix: stop its writers (export --freeze holds them) and run again" in result.output
    assert ADDED in tag_names(dst)
    with Database.open(instance(dst)) as db:
        assert import_marker.TABLE not in db.table_names()
        assert "directus_collections" in db.table_names()
    assert run("--env", dst, "inspect", "--json", "--no-objects").exit_code == 0
    monkeypatch.setattr(export, "export_bundle", capture)
    again = run("--env", dst, "import", tmp_path / "bundle", "--replace", "--safety-bundle", tmp_path / "safety2")
    assert again.exit_code == 0, again.output
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]


def test_killed_archive_export_leaves_no_staging_copy_beside_the_output(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging folder of an (encrypted) archive lives in the swept scratch space, never beside ``-o``."""
    src = make_instance("sqlite", tmp_path / "src", request)
    scratch_base = tmp_path / "tmp"
    scratch_base.mkdir()
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        from cairn_migrate.operations import export
        from cairn_migrate.instance.instance import Instance

        def pack_then_die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        export.pack = pack_then_die  # killed while the staged plaintext bundle is complete
        export.export_bundle(Instance.from_env_file(sys.argv[1], environ={}), Path(sys.argv[2]), passphrase="pass phrase")
    """), str(src), str(out / "a.tar.gz.enc")], env={**os.environ, "TMPDIR": str(scratch_base)}, check=False)
    assert killed.returncode == -9
    assert list(out.iterdir()) == []
    left = list((scratch_base / workdir.PARENT).iterdir())
    assert len(left) == 1 and (left[0] / "bundle" / "manifest.json").exists()

    monkeypatch.setattr(tempfile, "tempdir", str(scratch_base))

    export_bundle(instance(src), out / "b.tar.gz")  # the next run sweeps the killed one's staging

    assert list((scratch_base / workdir.PARENT).iterdir()) == []
    assert [p.name for p in out.iterdir()] == ["b.tar.gz"]


def test_killed_repair_from_an_archive_leaves_its_extraction_to_the_sweep(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    archive = tmp_path / "bundle.tar"
    export_bundle(instance(src), archive)
    scratch_base = tmp_path / "tmp"
    scratch_base.mkdir()
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        from cairn_migrate.operations import file_rows
        from cairn_migrate.instance.instance import Instance

        def scan_then_die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        file_rows.scan_instance = scan_then_die  # the archive is unpacked, the repair starts
        file_rows.repair(Instance.from_env_file(sys.argv[1], environ={}), bundle=Path(sys.argv[2]))
    """), str(src), str(archive)], env={**os.environ, "TMPDIR": str(scratch_base)}, check=False)
    assert killed.returncode == -9
    left = list((scratch_base / workdir.PARENT).iterdir())
    assert len(left) == 1 and list(left[0].glob("*/bundle/manifest.json"))
    assert sorted(p.name for p in scratch_base.iterdir()) == [workdir.PARENT]

    assert workdir.sweep_stale(scratch_base) == left


def test_ctrl_c_during_an_import_exits_3_and_names_the_resume(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A real SIGINT, sent by the import to itself while it writes the files: not click's "Aborted!" with exit 1."""
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    interrupted = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        from cairn_migrate import cli
        from cairn_migrate.operations import restore

        restore_files = restore._restore_files

        def interrupt_then_restore(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return restore_files(*args, **kwargs)

        restore._restore_files = interrupt_then_restore
        sys.argv = ["cairn-migrate", *sys.argv[1:]]
        cli.main()
    """), "--env", str(dst), "import", str(tmp_path / "bundle")], capture_output=True, text=True, check=False)

    assert interrupted.returncode == 3, interrupted.stderr
    lines = interrupted.stderr.strip().splitlines()
    assert lines[0].startswith("Error: interrupted: the import into ") and lines[0].endswith(" is incomplete")
    assert lines[1] == f"  fix: {import_marker.RESUME_FIX}"
    assert run("--env", dst, "inspect", "--json", "--no-objects").exit_code == 1
    import_bundle(instance(dst), tmp_path / "bundle", resume=True)
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]


def test_ctrl_c_outside_an_import_exits_3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    interrupted = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        from cairn_migrate import api, cli

        def interrupted(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)

        api.inspect = interrupted  # the operator presses Ctrl-C while the instance is inspected
        sys.argv = ["cairn-migrate", *sys.argv[1:]]
        cli.main()
    """), "--env", str(src), "inspect"], capture_output=True, text=True, check=False)
    assert interrupted.returncode == 3, interrupted.stderr
    assert interrupted.stderr.strip().splitlines() == ["Error: interrupted"]
