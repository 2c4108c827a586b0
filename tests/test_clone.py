"""Full instance clone: export → import → verify on real databases, across vendors."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_empty_instance, make_instance

from cairn_migrate.cli import cli
from cairn_migrate.database import Database
from cairn_migrate.errors import ConfigError, MigrateError
from cairn_migrate.export import export_bundle
from cairn_migrate.instance import Instance
from cairn_migrate.restore import import_bundle
from cairn_migrate.table_schema import reflect_tables
from cairn_migrate.values import comparable, decoder
from cairn_migrate.verify import verify_bundle


def instance(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


def normalized_rows(env: Path, precision_vendor: str) -> dict[str, list[str]]:
    """Every table's rows, neutral and reduced to ``precision_vendor``'s precision, sorted."""
    inst = instance(env)
    with Database.open(inst) as db:
        tables = reflect_tables(db.engine, db.table_names(), db.vendor)
        result = {}
        for table in tables:
            names = [c.name for c in table.columns]
            rows = []
            for row in db.stream_rows(table.name, columns=names):
                values = {c.name: comparable(decoder(c.type)(row[c.name]), c.type, precision_vendor) for c in table.columns}
                rows.append(json.dumps(values, sort_keys=True, default=str))
            result[table.name] = sorted(rows)
    return result


def clone(src_env: Path, dst_env: Path, bundle: Path) -> dict:
    export_bundle(instance(src_env), bundle)
    report = import_bundle(instance(dst_env), bundle)
    assert report["applied"]
    verified = verify_bundle(instance(dst_env), bundle)
    assert verified["ok"], verified["tables_failed"] or verified["files"]
    return verified


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("sqlite", "postgres"),
        ("sqlite", "mariadb"),
        ("sqlite", "sqlite"),
        ("postgres", "sqlite"),
        ("mariadb", "postgres"),
        ("postgres", "mariadb"),
    ],
)
def test_clone_across_vendors(source: str, target: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance(source, tmp_path / "src", request)
    dst = make_empty_instance(target, tmp_path / "dst", request)
    report = clone(src, dst, tmp_path / "bundle")
    assert report["tables_ok"] == 27
    assert report["files"]["ok"] == 3
    # The target really is a CairnCMS instance of the same release, with the same rows.
    with Database.open(instance(dst)) as db:
        assert db.platform().version == "1.0.0-beta.4"
        assert len(db.system_tables()) == 20
    precision = "mysql" if "mariadb" in (source, target) else ("sqlite" if "sqlite" in (source, target) else "postgres")
    assert normalized_rows(dst, precision) == normalized_rows(src, precision)
    # The bytes sit where CairnCMS will look for them: <root>/<filename_disk>.
    uploads = tmp_path / "dst" / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == sorted(
        p.name for p in (tmp_path / "src" / "uploads").iterdir() if "__" not in p.name
    )


def test_round_trip_sqlite_postgres_mariadb_sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The fixture cloned to PostgreSQL, then to MariaDB, then back to SQLite: same rows and bytes."""
    chain = [make_instance("sqlite", tmp_path / "0", request)]
    for step, vendor in enumerate(("postgres", "mariadb", "sqlite"), start=1):
        chain.append(make_empty_instance(vendor, tmp_path / str(step), request))
        clone(chain[-2], chain[-1], tmp_path / f"bundle-{step}.tar.gz")
    assert normalized_rows(chain[-1], "mysql") == normalized_rows(chain[0], "mysql")
    # Back on SQLite, instants are written the way CairnCMS's app writes them: epoch milliseconds.
    conn = sqlite3.connect(tmp_path / "3" / "data.db")
    uploaded_on = conn.execute("SELECT typeof(uploaded_on) FROM directus_files").fetchall()
    conn.close()
    assert {t for (t,) in uploaded_on} == {"integer"}


def test_verify_detects_changed_rows_and_bytes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    clone(src, dst, tmp_path / "bundle")
    conn = sqlite3.connect(tmp_path / "dst" / "data.db")
    conn.execute("UPDATE articles SET title = title || '!' WHERE rowid = (SELECT min(rowid) FROM articles)")
    conn.execute("DELETE FROM tags WHERE id = (SELECT max(id) FROM tags)")
    conn.commit()
    conn.close()
    victim = next((tmp_path / "dst" / "uploads").iterdir())
    victim.write_bytes(victim.read_bytes() + b"tampered")
    report = verify_bundle(instance(dst), tmp_path / "bundle")
    assert not report["ok"]
    problems = {t["table"]: t["problem"] for t in report["tables"] if not t["ok"]}
    assert problems == {"articles": "content differs", "tags": "row count differs"}
    assert [m["filename_disk"] for m in report["files"]["mismatched"]] == [victim.name]
    result = CliRunner().invoke(cli, ["--env", str(dst), "verify", str(tmp_path / "bundle")])
    assert result.exit_code == 1
    assert "* articles  content differs" in result.output


def test_verify_url_that_does_not_answer_is_a_failure(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    clone(src, dst, tmp_path / "bundle")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = CliRunner().invoke(cli, ["--env", str(dst), "verify", str(tmp_path / "bundle"), "--url", url])
    assert result.exit_code == 3, result.output  # the check could not run: not "differences found" (1)
    assert f"Error: The instance at {url} did not answer GET /server/ping (ConnectionError)" in result.output
    assert "fix: check --url" in result.output and "DIFFERENCES" not in result.output.upper()


@pytest.mark.parametrize("name", ["b.zip", "clone.enc", "b.tar.bz2"])
def test_export_refuses_an_unknown_bundle_suffix(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cli, ["--env", str(src), "export", "--full", "-o", str(out / name)])
    assert result.exit_code == 2, result.output
    assert f"Error: {name!r} is not a bundle name cairn-migrate knows" in result.output
    assert "fix: name a directory bundle without a suffix, or an archive .tar, .tar.gz or .tar.gz.enc" in result.output
    assert list(out.iterdir()) == []  # neither a directory nor a file appeared


def test_cli_encrypted_clone(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    bundle = tmp_path / "clone.tar.gz.enc"
    runner = CliRunner()
    out = runner.invoke(cli, ["--env", str(src), "export", "--full", "-o", str(bundle), "--encrypt", "--passphrase-file", str(secret)])
    assert out.exit_code == 0, out.output
    assert b"argon2" not in bundle.read_bytes()
    denied = runner.invoke(cli, ["--env", str(dst), "import", str(bundle)])
    assert denied.exit_code == 2
    assert "encrypted" in denied.output
    assert not (tmp_path / "dst" / "data.db").exists()
    dry = runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--dry-run", "--passphrase-file", str(secret)])
    assert dry.exit_code == 1, dry.output  # a non-empty plan
    assert "(dry run: nothing was changed)" in dry.output
    assert not (tmp_path / "dst" / "data.db").exists()
    done = runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--passphrase-file", str(secret)])
    assert done.exit_code == 0, done.output
    verified = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle), "--passphrase-file", str(secret), "--json"])
    assert verified.exit_code == 0
    assert json.loads(verified.output)["ok"] is True


def test_manifest_describes_the_source(tmp_path: Path, sqlite_instance: Path) -> None:
    manifest = export_bundle(instance(sqlite_instance), tmp_path / "bundle")
    assert manifest["source"]["key"] == "c1a1f0e2-7a55-4d3c-9b7e-0a9d1f2e3c4b"
    assert manifest["source"]["platform"]["latest_migration"] == "20260515A"
    assert manifest["storage_locations_used"] == ["local"]
    assert manifest["tables"]["articles"]["rows"] == 21
    assert manifest["files"]["count"] == 3 and manifest["files"]["missing"] == []
    assert "SECRET" in manifest["env"]["secret_names"]
    assert "test-secret" not in (tmp_path / "bundle" / "manifest.json").read_text()
    assert manifest["contains_secrets"]["password_hashes"] is True
    assert (tmp_path / "bundle" / "snapshot" / "schema-snapshot.yaml").exists()
    assert (tmp_path / "bundle" / "snapshot" / "config" / "roles" / "editor.yaml").exists()


def test_missing_bytes_are_reported_in_the_manifest(tmp_path: Path, sqlite_instance: Path) -> None:
    victim = sorted((sqlite_instance.parent / "uploads").glob("*.txt"))[0]
    victim.unlink()
    manifest = export_bundle(instance(sqlite_instance), tmp_path / "bundle")
    assert manifest["files"]["count"] == 2
    assert [m["filename_disk"] for m in manifest["files"]["missing"]] == [victim.name]


def test_non_empty_target_is_refused_untouched(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    busy = make_instance("postgres", tmp_path / "busy", request)
    before = normalized_rows(busy, "postgres")
    result = CliRunner().invoke(cli, ["--env", str(busy), "import", str(tmp_path / "bundle")])
    assert result.exit_code == 2
    assert "is not empty (27 tables)" in result.output and "--replace" in result.output
    assert normalized_rows(busy, "postgres") == before


def test_replace_writes_a_safety_bundle_first(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    src = make_instance("sqlite", tmp_path / "src", request)
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    conn.execute("UPDATE tags SET name = 'changed on the source'")
    conn.commit()
    conn.close()
    export_bundle(instance(src), tmp_path / "bundle")
    target = make_instance("mariadb", tmp_path / "target", request)
    report = import_bundle(instance(target), tmp_path / "bundle", replace=True)
    safety = Path(report["safety_bundle"])
    assert safety.is_dir() and (safety / "manifest.json").exists()
    assert json.loads((safety / "manifest.json").read_text())["source"]["vendor"] == "mysql"
    assert verify_bundle(instance(target), tmp_path / "bundle")["ok"]
    # The safety bundle restores the old target exactly.
    again = make_empty_instance("sqlite", tmp_path / "restored", request)
    import_bundle(instance(again), safety)
    assert verify_bundle(instance(again), safety)["ok"]


def test_replace_writes_the_safety_bundle_where_asked(tmp_path: Path, request: pytest.FixtureRequest,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    target = make_instance("sqlite", tmp_path / "target", request)
    before = normalized_rows(target, "sqlite")
    runner = CliRunner()
    base = ["--env", str(target), "import", str(tmp_path / "bundle")]
    taken = tmp_path / "taken"
    taken.mkdir()
    refusals = {
        ("--safety-bundle", str(tmp_path / "old.tar.gz")): "--safety-bundle applies only with --replace",
        ("--replace", "--safety-bundle", str(tmp_path / "old.zip")): "'old.zip' is not a bundle name",
        ("--replace", "--safety-bundle", str(tmp_path / "old.tar.gz.enc")): "would be written unencrypted",
        ("--replace", "--safety-bundle", str(taken)): f"the safety bundle {taken} already exists",
    }
    for options, message in refusals.items():
        result = runner.invoke(cli, [*base, *options])
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    assert normalized_rows(target, "sqlite") == before and not (tmp_path / "state" / "safety-bundles").exists()
    asked = tmp_path / "keep" / "old-target.tar.gz"
    result = runner.invoke(cli, [*base, "--replace", "--safety-bundle", str(asked)])
    assert result.exit_code == 0, result.output
    assert f"safety bundle of the old target: {asked}" in result.output
    assert asked.is_file() and not (tmp_path / "state" / "safety-bundles").exists()
    restored = make_empty_instance("sqlite", tmp_path / "restored", request)
    import_bundle(instance(restored), asked)
    assert normalized_rows(restored, "sqlite") == before


def test_unconfigured_location_stops_before_any_write(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance(
        "sqlite", tmp_path / "dst", request,
        extra_env={"STORAGE_LOCATIONS": "media", "STORAGE_MEDIA_DRIVER": "local", "STORAGE_MEDIA_ROOT": "./media"},
    )
    with pytest.raises(ConfigError) as info:
        import_bundle(instance(dst), tmp_path / "bundle")
    assert "location(s) local, which the target does not configure" in info.value.message
    assert "--storage-map" in (info.value.hint or "")
    assert not (tmp_path / "dst" / "data.db").exists()
    assert not (tmp_path / "dst" / "media").exists()
    report = import_bundle(instance(dst), tmp_path / "bundle", storage_map={"local": "media"})
    assert report["files"]["copied"] == 3
    with Database.open(instance(dst)) as db, db.engine.connect() as conn:
        import sqlalchemy as sa

        assert set(conn.execute(sa.text("SELECT DISTINCT storage FROM directus_files")).scalars()) == {"media"}
    assert verify_bundle(instance(dst), tmp_path / "bundle", storage_map={"local": "media"})["ok"]


def test_corrupt_bundle_leaves_the_target_untouched(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    member = tmp_path / "bundle" / "tables" / "articles.jsonl"
    member.write_bytes(member.read_bytes().replace(b"a", b"b", 1))
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    with pytest.raises(MigrateError, match="articles.jsonl"):
        import_bundle(instance(dst), tmp_path / "bundle")
    with Database.open(instance(dst)) as db:
        assert db.table_names() == []


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cairn_migrate.instance import Instance
    from cairn_migrate.progress import NullProgress
    from cairn_migrate.restore import import_bundle

    class KillOn(NullProgress):
        # Dies the moment the import starts on this table: a hard kill, no cleanup.
        def log(self, message):
            if message.startswith("loading " + sys.argv[3] + " "):
                os.kill(os.getpid(), signal.SIGKILL)

    import_bundle(Instance.from_env_file(sys.argv[1], environ={}), Path(sys.argv[2]), progress=KillOn())
    """
)


@pytest.mark.parametrize("vendor", ["postgres", "sqlite"])
def test_import_killed_midway_resumes_to_the_same_result(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance(vendor, tmp_path / "dst", request)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(dst), str(tmp_path / "bundle"), "articles"], check=False)
    assert killed.returncode == -9
    with Database.open(instance(dst)) as db:
        loaded = set(db.table_names())
    assert "directus_users" in loaded and "article_comments" not in loaded
    with pytest.raises(ConfigError, match="not empty"):
        import_bundle(instance(dst), tmp_path / "bundle")
    report = import_bundle(instance(dst), tmp_path / "bundle", resume=True)
    skipped = [t["table"] for t in report["plan"]["tables"] if t["action"] == "skip"]
    assert "directus_users" in skipped and "articles" not in skipped
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]
    reference = make_empty_instance(vendor, tmp_path / "reference", request)
    import_bundle(instance(reference), tmp_path / "bundle")
    assert normalized_rows(dst, vendor) == normalized_rows(reference, vendor)


@pytest.mark.parametrize(
    ("source", "target"),
    [("postgres", "postgres"), ("mariadb", "mariadb"), ("sqlite", "sqlite"), ("sqlite", "postgres")],
)
def test_fast_path_with_native_tools(source: str, target: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``--native``: the vendor's own dump inside the same manifest, restored and verified."""
    src = make_instance(source, tmp_path / "src", request)
    dst = make_empty_instance(target, tmp_path / "dst", request)
    manifest = export_bundle(instance(src), tmp_path / "bundle", native=True)
    assert manifest["data"] == "native" and manifest["native"]["member"].startswith("database/")
    assert not (tmp_path / "bundle" / "tables").exists()
    report = import_bundle(instance(dst), tmp_path / "bundle")
    if source == target:
        assert "fast path" in " ".join(report["plan"]["warnings"])
    verified = verify_bundle(instance(dst), tmp_path / "bundle")
    assert verified["ok"], verified["tables_failed"]
    precision = "sqlite" if "sqlite" in (source, target) else ("mysql" if source == "mariadb" else "postgres")
    assert normalized_rows(dst, precision) == normalized_rows(src, precision)
    # verify notices a changed row on the fast path too
    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        import sqlalchemy as sa

        conn.execute(sa.text("UPDATE tags SET name = 'changed' WHERE id = (SELECT max(id) FROM (SELECT id FROM tags) t)"))
    assert verify_bundle(instance(dst), tmp_path / "bundle")["tables_failed"] == ["tags"]


def test_native_postgres_bundle_refuses_another_vendor(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("postgres", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle", native=True)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    with pytest.raises(ConfigError, match="native postgres dump; it cannot be restored on sqlite"):
        import_bundle(instance(dst), tmp_path / "bundle")
    assert not (tmp_path / "dst" / "data.db").exists()
