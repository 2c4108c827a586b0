"""``storage move|prune`` on real databases and real storage servers, including a killed move."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import make_instance
from storage_servers import azure_config, create_container, gcs_config, remove_container, require_storage_server, s3_config
from test_file_rows import env_keys, inst

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.errors import ConfigError
from cairn_migrate.operations.file_rows import check
from cairn_migrate.ledger.ledger import LedgerConflict, MigrationLedger
from cairn_migrate.ledger.scripts import BytesMissing, downgrade
from cairn_migrate.instance.storage import open_location
from cairn_migrate.operations.storage_move import OBJECTS, CopyLedger, move, prune

BUILDERS = {"s3": s3_config, "gcs": gcs_config, "azure": azure_config}
#: The object metadata that changes on every write of the same bytes (S3's ETag and GCS's etag are the
#: content MD5 and would not show a rewrite).
WRITE_STAMPS = {"s3": "LastModified", "gcs": "generation", "azure": "etag"}
REMOTES = [pytest.param(d, marks=getattr(pytest.mark, d)) for d in BUILDERS]


def remote_instance(vendor: str, driver: str, tmp_path: Path, request: pytest.FixtureRequest, *,
                    create: bool = True, **options: object) -> Path:
    """The ``vendor`` fixture with a second location ``remote`` on a fresh ``driver`` bucket."""
    require_storage_server(driver)
    config = BUILDERS[driver](name="remote", **options)
    extra = {"STORAGE_LOCATIONS": "local,remote", "STORAGE_REMOTE_DRIVER": driver, **env_keys(config)}
    env = make_instance(vendor, tmp_path / vendor, request, extra_env=extra)
    location = open_location(inst(env).location("remote"))
    if create:
        create_container(location)
        request.addfinalizer(lambda: remove_container(location))
    return env


def add_files(env: Path, count: int, size: int = 2048) -> None:
    """``count`` more file rows (copies of an existing row) with their bytes on ``local``."""
    root = Path(inst(env).location("local").options["root"])
    with Database.open(inst(env)) as db, db.engine.begin() as conn:
        for n in range(count):
            file_id = str(uuid.uuid4())
            data = hashlib.sha256(file_id.encode()).digest() * (size // 32)
            (root / f"{file_id}.bin").write_bytes(data)
            conn.execute(sa.text("INSERT INTO directus_files (id, storage, filename_disk, filename_download, type, filesize) "
                                 "VALUES (:id, 'local', :fd, :dl, 'application/octet-stream', :size)"),
                         {"id": file_id, "fd": f"{file_id}.bin", "dl": f"f{n}.bin", "size": len(data)})


def rows(env: Path) -> dict[str, tuple[str, str]]:
    with Database.open(inst(env)) as db:
        return {str(r["id"]): (r["storage"], r["filename_disk"])
                for r in db.stream_rows("directus_files", columns=["id", "storage", "filename_disk"])}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_moved(env: Path, report: dict, before: dict[str, tuple[str, str]]) -> None:
    local = open_location(inst(env).location("local"))
    remote = open_location(inst(env).location("remote"))
    after = rows(env)
    assert {s for s, _ in after.values()} == {"remote"}
    for file_id, (_storage, name) in before.items():
        assert sha(remote.read_bytes(after[file_id][1])) == sha(local.read_bytes(name))
    version = report["migration"]["version"]
    ledger = MigrationLedger(Database.open(inst(env)), inst(env).extensions_path)
    assert version in {r["version"] for r in ledger.recorded()}
    twin = ledger.files()[version]
    assert twin.name == f"{version}-move-files-local-to-remote.js"
    assert report["migration"]["name"] == "Move Files Local to Remote"
    ledger.db.close()


@pytest.mark.parametrize("driver", REMOTES)
def test_move_local_to_object_store_and_back(driver: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = remote_instance("sqlite", driver, tmp_path, request)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    before = rows(env)
    dry = move(inst(env), "local", "remote", dry_run=True, state_url=state)
    assert dry["plan"]["rows"] == 3 and rows(env) == before
    report = move(inst(env), "local", "remote", state_url=state)
    assert report["copied"] == 3 and report["switched"] == 3 and not report["failed"]
    assert_moved(env, report, before)
    kept = check(inst(env), state_url=state)
    assert kept["ok"]  # old bytes are kept on purpose until prune: by name, and the transform by its stem
    assert kept["ignored"]["kept_after_move"] == 4 and kept["ignored"]["transforms"] == 0
    downgrade(inst(env))
    assert rows(env) == before
    again = move(inst(env), "local", "remote", state_url=state)  # nothing is copied twice
    assert again["copied"] == 0 and again["skipped"] == 3 and again["switched"] == 3
    assert again["migration"]["version"] != report["migration"]["version"]
    pruned = prune(inst(env), yes=True, state_url=state)
    assert pruned["deleted"] == 3
    assert check(inst(env), state_url=state)["ok"]
    dry = CliRunner().invoke(cli, ["--env", str(env), "migrations", "down", "--dry-run"])
    assert dry.exit_code == 2, dry.output  # the dry run refuses what the real run refuses, as bad input
    error, fix = dry.output.splitlines()
    assert error.startswith("Error: 3 file(s) have no bytes on location 'local' (e.g. ")
    assert fix == "  fix: the bytes were pruned or deleted: move them back first (cairn-migrate storage move " \
                  "--from remote --to local), or restore them with files repair"
    with pytest.raises(BytesMissing, match="no bytes on location 'local'") as refused:
        downgrade(inst(env))  # the old bytes are gone: refusing beats breaking the rows
    assert refused.value.exit_code == 2 and refused.value.message == error.removeprefix("Error: ")
    assert {s for s, _ in rows(env).values()} == {"remote"}


@pytest.mark.parametrize("vendor", [pytest.param("postgres", marks=pytest.mark.postgres),
                                    pytest.param("mariadb", marks=pytest.mark.mariadb)])
@pytest.mark.s3
def test_move_on_server_databases_with_flat_layout(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = remote_instance(vendor, "s3", tmp_path, request)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with Database.open(inst(env)) as db, db.engine.begin() as conn:  # one legacy name that the layout fixes
        conn.execute(sa.text("UPDATE directus_files SET filename_disk = 'legacy/odd-name.txt' WHERE type = 'text/plain'"))
    root = Path(inst(env).location("local").options["root"])
    (root / "legacy").mkdir()
    txt = next(root.glob("*.txt"))
    txt.rename(root / "legacy" / "odd-name.txt")
    before = rows(env)
    report = move(inst(env), "local", "remote", layout="flat", state_url=state)
    assert report["switched"] == 3
    assert_moved(env, report, before)
    after = rows(env)
    assert all(name == f"{fid}{Path(name).suffix}" for fid, (_s, name) in after.items())
    downgrade(inst(env))
    assert rows(env) == before


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.progress import NullProgress
    from cairn_migrate.operations.storage_move import move

    class KillAfter(NullProgress):
        # A hard kill after N verified objects: no cleanup, no ledger flush.
        seen = 0
        def advance(self, items=0, bytes=0):
            KillAfter.seen += items
            if KillAfter.seen >= int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    move(Instance.from_env_file(sys.argv[1], environ={}), "local", "remote", workers=1, state_url=sys.argv[2],
         progress=KillAfter())
    """
)


@pytest.mark.parametrize("driver", REMOTES)
def test_interrupted_move_resumes_without_copying_twice(driver: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = remote_instance("sqlite", driver, tmp_path, request)
    add_files(env, 40)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    before = rows(env)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(env), state, "20"], check=False)
    assert killed.returncode == -9
    assert rows(env) == before  # nothing switched: the bytes of the rest are not verified yet
    remote = open_location(inst(env).location("remote"))
    present = {name: remote.fs.info(remote.path_for(name)) for name, _ in remote.list()}
    assert len(present) == 20
    stamp = WRITE_STAMPS[driver]
    assert all(info.get(stamp) for info in present.values()), stamp
    if driver == "s3":
        time.sleep(1.1)  # LastModified has whole seconds: a rewrite after this would show
    report = move(inst(env), "local", "remote", state_url=state)
    assert report["copied"] == 43 - 20 and report["adopted"] + report["skipped"] == 20
    assert report["switched"] == 43
    for name, info in present.items():  # the objects copied before the kill were not written again
        assert remote.fs.info(remote.path_for(name))[stamp] == info[stamp], name
    ledger = CopyLedger(state)
    with ledger.engine.connect() as conn:
        copies = [r.copies for r in conn.execute(sa.select(OBJECTS.c.copies))]
    ledger.close()
    assert len(copies) == 43 and max(copies) <= 1 and sum(copies) == 23
    assert_moved(env, report, before)


@pytest.mark.s3
def test_bad_targets_are_clear_errors_and_switch_nothing(tmp_path: Path, request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    runner = CliRunner()
    missing = remote_instance("sqlite", "s3", tmp_path / "a", request, create=False)
    before = rows(missing)
    result = runner.invoke(cli, ["--env", str(missing), "storage", "move", "--from", "local", "--to", "remote"])
    assert result.exit_code == 2 and "STORAGE_REMOTE_BUCKET" in result.output and "does not exist" in result.output
    unknown = runner.invoke(cli, ["--env", str(missing), "storage", "move", "--from", "local", "--to", "nowhere"])
    assert unknown.exit_code == 2 and "not configured" in unknown.output
    wrong = remote_instance("sqlite", "s3", tmp_path / "b", request)
    text = wrong.read_text()
    wrong.write_text("\n".join("STORAGE_REMOTE_SECRET=not-the-secret" if line.startswith("STORAGE_REMOTE_SECRET=")
                               else line for line in text.splitlines()) + "\n")
    wrong_before = rows(wrong)
    result = runner.invoke(cli, ["--env", str(wrong), "storage", "move", "--from", "local", "--to", "remote"])
    assert result.exit_code == 2 and "STORAGE_REMOTE_SECRET" in result.output, result.output
    assert rows(missing) == before and rows(wrong) == wrong_before and {s for s, _ in wrong_before.values()} == {"local"}
    # a version another migration already uses: refused before any row switches
    good = remote_instance("sqlite", "s3", tmp_path / "c", request)
    with pytest.raises(LedgerConflict, match="20210519A"):
        move(inst(good), "local", "remote", version="20210519A", state_url=f"sqlite:///{tmp_path / 'state.db'}")
    assert {s for s, _ in rows(good).values()} == {"local"}
    with pytest.raises(ConfigError):
        move(inst(good), "local", "remote", version="2021-05", state_url=f"sqlite:///{tmp_path / 'state.db'}")
    ok = runner.invoke(cli, ["--env", str(good), "storage", "move", "--from", "local", "--to", "remote", "--json"])
    assert ok.exit_code == 0, ok.output
    listed = runner.invoke(cli, ["--env", str(good), "migrations", "list"])
    assert "applied" in listed.output and "Move Files Local to Remote" in listed.output
    down = runner.invoke(cli, ["--env", str(good), "migrations", "down"])
    assert down.exit_code == 0 and {s for s, _ in rows(good).values()} == {"local"}


def test_prune_from_an_unknown_location_is_refused_like_move(sqlite_instance: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``storage prune --from nosuch`` is bad input (exit 2), not a quiet "would delete 0"."""
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    for extra in ([], ["--yes"]):
        result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "storage", "prune", "--from", "nosuch", *extra])
        assert result.exit_code == 2, result.output
        assert "Storage location 'nosuch' is not configured" in result.output


@pytest.mark.s3
@pytest.mark.parametrize("server_checks", [True, "streamed", False], ids=["checksummed", "streamed-put", "read-back"])
def test_move_to_s3_large_objects_and_both_verifications(server_checks: bool | str, tmp_path: Path,
                                                        request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Large objects: checksummed multipart, one streamed PUT (the lean client), or copied and read back."""
    from cairn_migrate.instance import storage
    from cairn_migrate.operations import storage_move

    if server_checks is True:  # multipart for every large object
        monkeypatch.setattr(storage_move, "LEAN_PUT_MAX", storage_move.SMALL)
    if not server_checks:  # an S3 service that ignores checksums: every copy is read back
        monkeypatch.setattr(storage, "s3_verifies_checksums", lambda location: False)
        monkeypatch.setattr(storage, "s3_put_verified", None)  # never used then
    monkeypatch.setattr(storage_move, "PARTS_IN_FLIGHT", storage.PART)  # the smallest budget: 2 parts
    env = remote_instance("sqlite", "s3", tmp_path, request)
    add_files(env, 5)
    add_files(env, 2, size=storage.PART + storage_move.SMALL)  # multipart, 2 parts each
    state = f"sqlite:///{tmp_path / 'state.db'}"
    before = rows(env)
    report = move(inst(env), "local", "remote", workers=3, state_url=state)
    assert report["copied"] == 10 and report["switched"] == 10 and not report["failed"]
    assert_moved(env, report, before)
    remote = open_location(inst(env).location("remote"))
    assert not [n for n, _ in remote.list() if "probe" in n]
    ledger = CopyLedger(state)
    with ledger.engine.connect() as conn:
        shas = {r.src_name: r.sha256 for r in conn.execute(sa.select(OBJECTS.c.src_name, OBJECTS.c.sha256))}
    ledger.close()
    local = open_location(inst(env).location("local"))
    assert all(shas[name] == sha(local.read_bytes(name)) for _, name in before.values())


@pytest.mark.parametrize("driver", [*REMOTES, pytest.param("s3-botocore", marks=pytest.mark.s3)])
def test_corrupted_copy_is_not_switched(driver: str, tmp_path: Path, request: pytest.FixtureRequest,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every copy path refuses bytes that changed on the way: S3's lean client, S3 through aiobotocore, GCS, Azure."""
    from cairn_migrate.instance import s3_lean, storage

    if driver == "s3-botocore":
        monkeypatch.setenv(s3_lean.LEAN_ENV, "0")
        driver = "s3"
    env = remote_instance("sqlite", driver, tmp_path, request)
    add_files(env, 4)
    bad = sorted(n for _, n in rows(env).values())[0]
    real_put, real_pipe, real_lean_put = storage.s3_put_verified, storage.apipe, s3_lean.LeanS3.put
    lean_puts: list[str] = []

    async def corrupt_put(location, name, data, digest):  # the bytes change on the way; the service must notice
        return await real_put(location, name, data[:-1] + b"!" if name == bad else data, digest)

    async def corrupt_pipe(location, name, data):  # a target that stores other bytes than it was sent
        await real_pipe(location, name, data[:-1] + b"!" if name == bad else data)

    def corrupt_lean_put(self, key, data, digest):  # the same on the lean client's way
        lean_puts.append(key)
        return real_lean_put(self, key, data[:-1] + b"!" if key.endswith(bad) else data, digest)

    monkeypatch.setattr(storage, "s3_put_verified", corrupt_put)
    monkeypatch.setattr(storage, "apipe", corrupt_pipe)
    monkeypatch.setattr(s3_lean.LeanS3, "put", corrupt_lean_put)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    before = rows(env)
    report = move(inst(env), "local", "remote", state_url=state)
    assert [f["src_name"] for f in report["failed"]] == [bad]
    assert report["switched"] == len(before) - 1
    after = rows(env)
    assert [i for i in before if after[i][0] == "local"] == [i for i in before if before[i][1] == bad]
    # the lean client carried the S3 copies unless it was turned off; never the others
    assert bool(lean_puts) == (driver == "s3" and os.environ.get(s3_lean.LEAN_ENV) != "0")


@pytest.mark.s3
def test_move_in_worker_processes_interrupted_then_resumed(tmp_path: Path, request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies in worker processes, results recorded by the move's process only; a stop mid-move resumes cleanly."""
    from cairn_migrate.instance import storage
    from cairn_migrate.operations import storage_move
    from cairn_migrate.progress import NullProgress

    monkeypatch.setattr(storage_move, "PROCESS_MIN", 1)  # the process path even for a few objects
    monkeypatch.setattr(storage_move, "PROCESS_BATCH", 7)
    env = remote_instance("sqlite", "s3", tmp_path, request)
    add_files(env, 30)
    add_files(env, 1, size=storage.PART + storage_move.SMALL)  # goes to the large-object worker
    state = f"sqlite:///{tmp_path / 'state.db'}"
    before = rows(env)
    total = len(before)

    class StopAfter(NullProgress):
        seen = 0

        def advance(self, items: int = 0, bytes: int = 0) -> None:
            StopAfter.seen += items
            if StopAfter.seen >= 10:
                raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        move(inst(env), "local", "remote", workers=4, processes=2, state_url=state, progress=StopAfter())
    assert rows(env) == before  # nothing switched
    remote = open_location(inst(env).location("remote"))
    present = {name: remote.fs.info(remote.path_for(name)) for name, _ in remote.list()}
    assert 10 <= len(present) <= total
    report = move(inst(env), "local", "remote", workers=4, processes=2, state_url=state)
    assert not report["failed"] and report["switched"] == total
    assert report["copied"] == total - len(present) and report["adopted"] + report["skipped"] == len(present)
    for name, info in present.items():  # objects copied before the stop were not written again
        assert remote.fs.info(remote.path_for(name)).get("ETag") == info.get("ETag")
    ledger = CopyLedger(state)
    with ledger.engine.connect() as conn:
        entries = list(conn.execute(sa.select(OBJECTS.c.src_name, OBJECTS.c.sha256, OBJECTS.c.copies)))
    ledger.close()
    local = open_location(inst(env).location("local"))
    assert len(entries) == total and max(e.copies for e in entries) <= 1
    assert all(e.sha256 == sha(local.read_bytes(e.src_name)) for e in entries)
    assert_moved(env, report, before)
