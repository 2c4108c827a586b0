"""Full instance clone: export → import → verify on real databases, across vendors."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Collection
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from conftest import FIXTURES, make_empty_instance, make_instance

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.errors import ConfigError, MigrateError
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.restore import import_bundle
from cairn_migrate.bundle.table_schema import reflect_tables
from cairn_migrate.bundle.values import comparable, decoder
from cairn_migrate.operations.verify import verify_bundle


def instance(env: Path) -> Instance:
    return Instance.from_env_file(env, environ={})


def normalized_rows(env: Path, precision_vendor: str, *, skip: Collection[tuple[str, str]] = ()) -> dict[str, list[str]]:
    """Every table's rows, neutral and reduced to ``precision_vendor``'s precision, sorted (``skip``: ``(table, column)``s left out)."""
    inst = instance(env)
    with Database.open(inst) as db:
        tables = reflect_tables(db.engine, db.table_names(), db.vendor)
        result = {}
        for table in tables:
            names = [c.name for c in table.columns]
            rows = []
            for row in db.stream_rows(table.name, columns=names):
                values = {c.name: comparable(decoder(c.type)(row[c.name]), c.type, precision_vendor) for c in table.columns
                          if (table.name, c.name) not in skip}
                rows.append(json.dumps(values, sort_keys=True, default=str))
            result[table.name] = sorted(rows)
    return result


#: The one value a cross-vendor clone rewrites: CairnCMS marks timestamp fields ``cast-timestamp`` on SQLite only.
FIELD_FLAGS = ("directus_fields", "special")


def field_specials(env: Path) -> dict[str, set[str]]:
    """``collection.field`` → the flags in its ``directus_fields.special``."""
    with Database.open(instance(env)) as db:
        rows = db.stream_rows("directus_fields", columns=["collection", "field", "special"])
        return {f"{r['collection']}.{r['field']}": set(filter(None, (r["special"] or "").split(","))) for r in rows}


def native_specials(vendor: str) -> dict[str, set[str]]:
    """The same from ``cairncms schema snapshot`` of the recorded fixture: what CairnCMS itself wrote on ``vendor``."""
    snapshot = yaml.safe_load((FIXTURES / vendor / "schema-snapshot.yaml").read_text(encoding="utf-8"))
    return {f"{f['collection']}.{f['field']}": set(f["meta"].get("special") or []) for f in snapshot["fields"] if f.get("meta")}


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
        ("mariadb", "sqlite"),
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
    skip = [FIELD_FLAGS] if source != target else []
    assert normalized_rows(dst, precision, skip=skip) == normalized_rows(src, precision, skip=skip)
    # Every field carries the flags CairnCMS itself gives it on the target (timestamps: cast-timestamp on SQLite only).
    assert field_specials(dst) == native_specials(target)
    assert field_specials(src) == native_specials(source)
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
    assert next(t for t in report["tables"] if t["table"] == "articles")["columns"] == ["title"]
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


def test_export_overwrite_replaces_only_a_bundle(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``--overwrite`` replaces an existing bundle (a directory or an archive) and refuses anything else, untouched."""
    src = make_instance("sqlite", tmp_path / "src", request)
    runner = CliRunner()
    export = ["--env", str(src), "export", "--full", "--overwrite", "-o"]
    folder, archive = tmp_path / "folder", tmp_path / "data.tar"
    folder.mkdir()
    (folder / "precious.txt").write_text("not a bundle")
    archive.write_bytes(b"not a bundle either")
    for taken in (folder, archive, tmp_path / "src"):
        result = runner.invoke(cli, [*export, str(taken)])
        assert result.exit_code == 2, result.output
        assert f"Error: {taken} exists and is not a cairn-migrate bundle: --overwrite replaces only a bundle" in result.output
        assert "fix: choose another path (a new name inside that folder), or remove it yourself" in result.output
    assert (folder / "precious.txt").read_text() == "not a bundle" and archive.read_bytes() == b"not a bundle either"
    assert (tmp_path / "src" / ".env").is_file()
    for n, bundle in enumerate((tmp_path / "bundle", tmp_path / "bundle.tar.gz")):
        export_bundle(instance(src), bundle)
        with Database.open(instance(src)) as db, db.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO tags (name) VALUES ('written after the first export {n}')"))
        result = runner.invoke(cli, [*export, str(bundle)])
        assert result.exit_code == 0, result.output
        assert verify_bundle(instance(src), bundle)["ok"]  # the new bundle, holding the new row, in its place


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
    from cairn_migrate.instance.instance import Instance
    from cairn_migrate.progress import NullProgress
    from cairn_migrate.operations.restore import import_bundle

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
    skip = [FIELD_FLAGS] if source != target else []
    assert normalized_rows(dst, precision, skip=skip) == normalized_rows(src, precision, skip=skip)
    assert field_specials(dst) == native_specials(target)
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


# ---------------------------------------------------------------------------
# Type drift: SQLite → SQLite is exact; other targets say what they change
# ---------------------------------------------------------------------------


def stored_values(db_file: Path) -> dict[str, list[tuple[str, ...]]]:
    """Every table's rows as SQLite stores them: ``typeof()`` and ``quote()`` of every value, sorted."""
    conn = sqlite3.connect(db_file)
    try:
        result = {}
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')]
            select = ", ".join(f'typeof("{c}"), quote("{c}")' for c in columns)
            result[name] = sorted(conn.execute(f'SELECT {select} FROM "{name}"').fetchall())
        return result
    finally:
        conn.close()


def sqlite_instant_columns(db_file: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """Per ``datetime`` column of a CairnCMS SQLite file: (values with milliseconds, TEXT values), counted by SQLite."""
    conn = sqlite3.connect(db_file)
    try:
        result = {}
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            for row in conn.execute(f'PRAGMA table_info("{name}")').fetchall():
                if row[2].lower() == "datetime":
                    column = row[1]
                    result[(name, column)] = conn.execute(
                        f'SELECT COALESCE(SUM(typeof("{column}") = \'integer\' AND "{column}" % 1000 != 0), 0), '
                        f'COALESCE(SUM(typeof("{column}") = \'text\'), 0) FROM "{name}"'
                    ).fetchone()
        return result
    finally:
        conn.close()


def test_sqlite_to_sqlite_keeps_values_and_storage_classes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    # SQLite keeps what it is given: booleans other than 0/1 must come back as they were too.
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    conn.execute("UPDATE article_comments SET approved = 2 WHERE id = (SELECT min(id) FROM article_comments)")
    conn.execute("UPDATE article_comments SET approved = 'yes' WHERE id = (SELECT max(id) FROM article_comments)")
    conn.commit()
    conn.close()
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    manifest = export_bundle(instance(src), tmp_path / "bundle")
    assert manifest["format_version"] == 2 and manifest["sqlite_stored"] == ["boolean", "timestamp"]
    report = import_bundle(instance(dst), tmp_path / "bundle")
    assert report["plan"]["drift"] == []
    before, after = stored_values(tmp_path / "src" / "data.db"), stored_values(tmp_path / "dst" / "data.db")
    assert after == before
    # The fixture really mixes both storage classes (CairnCMS's defaults write TEXT, its app INTEGER ms).
    conn = sqlite3.connect(tmp_path / "dst" / "data.db")
    assert set(conn.execute("SELECT typeof(uploaded_on) || typeof(modified_on) FROM directus_files").fetchall()) == {("textinteger",)}
    assert {t for (t,) in conn.execute("SELECT typeof(timestamp) FROM directus_migrations")} == {"text"}
    assert sorted(conn.execute("SELECT quote(approved) FROM article_comments WHERE approved NOT IN (0, 1)")) == [("'yes'",), ("2",)]
    conn.close()
    verified = verify_bundle(instance(dst), tmp_path / "bundle")
    assert verified["ok"] and verified["drift"] == {"values": 0, "columns": []}
    # A storage class changed behind verify's back is a real difference, not drift.
    conn = sqlite3.connect(tmp_path / "dst" / "data.db")
    conn.execute("UPDATE directus_migrations SET timestamp = CAST(strftime('%s', timestamp) AS INTEGER) * 1000 WHERE version = '20260515A'")
    conn.commit()
    conn.close()
    changed = verify_bundle(instance(dst), tmp_path / "bundle")
    assert changed["tables_failed"] == ["directus_migrations"]
    failed = next(t for t in changed["tables"] if t["table"] == "directus_migrations")
    assert failed["columns"] == ["timestamp"]


def as_format_1(bundle: Path) -> None:
    """Rewrite a SQLite bundle the way format 1 wrote it: instants as ISO text, no storage classes."""
    import hashlib

    from cairn_migrate.bundle.table_schema import TableDef
    from cairn_migrate.bundle.values import decoder

    manifest = json.loads((bundle / "manifest.json").read_text())
    tables = {t["name"]: TableDef.from_dict(t) for t in json.loads((bundle / "schema" / "tables.json").read_text())}
    for name, entry in manifest["tables"].items():
        path = bundle / entry["member"]
        stamps = [i for i, c in enumerate(tables[name].columns) if c.type in ("timestamp", "boolean")]
        lines = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for i in stamps:
                row[i] = decoder(tables[name].columns[i].type)(row[i])
            lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        path.write_text("".join(f"{line}\n" for line in lines))
        data = path.read_bytes()
        manifest["members"][entry["member"]] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    del manifest["sqlite_stored"]
    manifest["format_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_format_1_bundle_still_imports_and_says_what_it_cannot_keep(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    export_bundle(instance(src), tmp_path / "bundle")
    as_format_1(tmp_path / "bundle")
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    report = import_bundle(instance(dst), tmp_path / "bundle")
    drift = {(d["table"], d["column"]): d["values"] for d in report["plan"]["drift"] if d["kind"] == "storage_class"}
    assert drift[("directus_migrations", "timestamp")] == 66 and drift[("directus_files", "uploaded_on")] == 3
    conn = sqlite3.connect(tmp_path / "dst" / "data.db")
    assert {t for (t,) in conn.execute("SELECT typeof(timestamp) FROM directus_migrations")} == {"integer"}
    conn.close()
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]


def test_sqlite_to_mariadb_reports_drift_and_verify_tells_it_apart(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = make_empty_instance("mariadb", tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    counted = sqlite_instant_columns(tmp_path / "src" / "data.db")
    expected = {(t, c, "timestamp_precision"): ms for (t, c), (ms, _) in counted.items() if ms}
    expected |= {(t, c, "storage_class"): text for (t, c), (_, text) in counted.items() if text}
    assert ("articles", "date_created", "timestamp_precision") in expected  # the fixture has milliseconds to lose
    # The fields whose cast-timestamp CairnCMS on MariaDB does not have: the import removes it.
    flagged = sum("cast-timestamp" in flags for flags in field_specials(src).values())
    assert flagged == 5
    expected[("directus_fields", "special", "timestamp_flag")] = flagged
    runner = CliRunner()
    dry = runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--dry-run", "--json"])
    assert dry.exit_code == 1, dry.output
    drift = json.loads(dry.output)["plan"]["drift"]
    assert {(d["table"], d["column"], d["kind"]): d["values"] for d in drift} == expected
    assert {d["effect"] for d in drift} == {"changed"}
    human = runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--dry-run"])
    precision_total = sum(v for (_, _, kind), v in expected.items() if kind == "timestamp_precision")
    assert f"type drift on mysql: {sum(expected.values()):,} values changed, 0 refused" in human.output
    assert "changed articles.date_created" in human.output
    assert "changed directus_fields.special" in human.output
    done = runner.invoke(cli, ["--env", str(dst), "import", str(bundle)])
    assert done.exit_code == 0, done.output
    report = verify_bundle(instance(dst), bundle)
    assert report["ok"], report["tables_failed"]
    # Only what MariaDB can be seen to have changed: the milliseconds (storage classes no longer exist there).
    precision_columns = sorted(f"{t}.{c}" for (t, c, kind) in expected if kind == "timestamp_precision")
    assert sorted(report["drift"]["columns"]) == sorted([*precision_columns, "directus_fields.special"])
    assert report["drift"]["values"] == precision_total + flagged
    fields = next(t for t in report["tables"] if t["table"] == "directus_fields")
    assert fields["drift"] == [{"column": "special", "values": flagged, "kinds": ["timestamp_flag"]}]
    assert field_specials(dst) == native_specials("mariadb")
    with Database.open(instance(dst)) as db, db.engine.connect() as conn:
        import sqlalchemy as sa

        only_flag = "SELECT special FROM directus_fields WHERE collection = 'articles' AND field = 'published_at'"
        assert conn.execute(sa.text(only_flag)).scalar() is None  # NULL, as CairnCMS keeps a field without flags
    verified = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle)])
    assert verified.exit_code == 0, verified.output
    assert f"VERIFIED with expected drift: {precision_total + flagged} values in columns " in verified.output
    assert "~ directus_fields.special  expected drift: 5 values (timestamp_flag)" in verified.output
    # A real difference is still one, even in a column that drifts.
    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        import sqlalchemy as sa

        conn.execute(sa.text("UPDATE articles SET date_created = date_created + INTERVAL 1 DAY ORDER BY id LIMIT 1"))
    assert verify_bundle(instance(dst), bundle)["tables_failed"] == ["articles"]
    # The rewritten flags are checked, not ignored: the source's flag back on MariaDB is a difference.
    with Database.open(instance(dst)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_fields SET special = 'cast-timestamp'"
                             " WHERE collection = 'articles' AND field = 'published_at'"))
    changed = verify_bundle(instance(dst), bundle)
    assert sorted(changed["tables_failed"]) == ["articles", "directus_fields"]
    assert next(t for t in changed["tables"] if t["table"] == "directus_fields")["columns"] == ["special"]


def test_sqlite_mariadb_sqlite_round_trip_shows_its_losses(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    middle = make_empty_instance("mariadb", tmp_path / "middle", request)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    first = import_bundle(instance(middle), _exported(src, tmp_path / "bundle-1"))
    assert ("articles", "date_created", "timestamp_precision") in {(d["table"], d["column"], d["kind"]) for d in first["plan"]["drift"]}
    second = import_bundle(instance(dst), _exported(middle, tmp_path / "bundle-2"))
    # Whole seconds fit in epoch milliseconds; the fields get back the cast-timestamp CairnCMS on SQLite gives them;
    # every instant is stored as INTEGER epoch ms, also where the SQLite source held TEXT: the plan says so.
    drift = {(d["table"], d["column"], d["kind"]): d["values"] for d in second["plan"]["drift"]}
    assert drift.pop(("directus_fields", "special", "timestamp_flag")) == 5
    source_file = tmp_path / "src" / "data.db"
    counted = _non_null_values(source_file, sqlite_instant_columns(source_file))
    assert drift == {(t, c, "storage_class"): count for (t, c), count in counted.items() if count}
    assert drift[("directus_migrations", "timestamp", "storage_class")] == 66
    assert drift[("directus_files", "uploaded_on", "storage_class")] == 3
    assert field_specials(dst) == field_specials(src)
    conn = sqlite3.connect(tmp_path / "dst" / "data.db")
    assert conn.execute("SELECT date_created FROM articles WHERE date_created % 1000 != 0").fetchall() == []
    for table, column, _ in drift:  # as predicted: INTEGER, every one
        assert conn.execute(f'SELECT DISTINCT typeof("{column}") FROM "{table}" WHERE "{column}" IS NOT NULL').fetchall() \
            == [("integer",)], (table, column)
    conn.close()
    # Against the original bundle, the SQLite copy is not the SQLite source: verify says where.
    report = verify_bundle(instance(dst), tmp_path / "bundle-1")
    counted = sqlite_instant_columns(tmp_path / "src" / "data.db")
    lost = {t for (t, _), (ms, text) in counted.items() if ms or text}
    assert set(report["tables_failed"]) == lost
    migrations = next(t for t in report["tables"] if t["table"] == "directus_migrations")
    assert migrations["columns"] == ["timestamp"]  # same instants, TEXT became INTEGER
    articles = next(t for t in report["tables"] if t["table"] == "articles")
    assert articles["problem"] == "content differs" and articles["columns"] == ["date_created"]  # milliseconds lost


def _non_null_values(db_file: Path, columns: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Per ``(table, column)``: its non-null values, counted by SQLite."""
    conn = sqlite3.connect(db_file)
    try:
        return {(t, c): conn.execute(f'SELECT COUNT("{c}") FROM "{t}"').fetchone()[0] for t, c in columns}
    finally:
        conn.close()


def test_native_sqlite_bundle_reports_every_kind_like_a_rows_bundle(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A TEXT instant with milliseconds loses both its fraction and its storage class on MariaDB: two kinds, one
    column, whether the bundle carries rows or the SQLite file itself."""
    src = make_instance("sqlite", tmp_path / "src", request)
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    with conn:
        conn.execute("UPDATE directus_files SET uploaded_on = '2026-11-25 18:08:16.123' "
                     "WHERE rowid = (SELECT MIN(rowid) FROM directus_files)")
    conn.close()
    dst = make_empty_instance("mariadb", tmp_path / "dst", request)
    plans = {}
    for native in (False, True):
        bundle = tmp_path / f"bundle-{native}"
        export_bundle(instance(src), bundle, native=native)
        dry = CliRunner().invoke(cli, ["--env", str(dst), "import", str(bundle), "--dry-run", "--json"])
        assert dry.exit_code == 1, dry.output
        plans[native] = {(d["table"], d["column"], d["kind"]): d["values"] for d in json.loads(dry.output)["plan"]["drift"]}
    assert plans[True] == plans[False]
    assert plans[True][("directus_files", "uploaded_on", "storage_class")] == 3
    assert plans[True][("directus_files", "uploaded_on", "timestamp_precision")] == 1
    assert plans[True][("directus_migrations", "timestamp", "storage_class")] == 66


def _exported(env: Path, bundle: Path) -> Path:
    export_bundle(instance(env), bundle)
    return bundle


def test_values_the_target_refuses_stop_the_import_before_any_write(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SQLite does not enforce varchar(n); PostgreSQL does: the plan says so and nothing is written."""
    src = make_instance("sqlite", tmp_path / "src", request)
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    conn.execute("UPDATE tags SET name = printf('%.300c', 'x') WHERE id IN (SELECT id FROM tags ORDER BY id LIMIT 2)")
    conn.execute("UPDATE articles SET word_count = 'many' WHERE rowid = (SELECT min(rowid) FROM articles)")
    conn.commit()
    conn.close()
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    runner = CliRunner()
    dry = runner.invoke(cli, ["--env", str(dst), "import", str(tmp_path / "bundle"), "--dry-run", "--json"])
    refused = [d for d in json.loads(dry.output)["plan"]["drift"] if d["effect"] == "refused"]
    assert sorted((d["table"], d["column"], d["kind"], d["values"]) for d in refused) == [
        ("articles", "word_count", "unreadable", 1), ("tags", "name", "string_length", 2)]
    result = runner.invoke(cli, ["--env", str(dst), "import", str(tmp_path / "bundle")])
    assert result.exit_code == 2, result.output
    assert "3 values of the bundle would be refused by postgres: " in result.output
    assert "tags.name (2 string_length)" in result.output and "articles.word_count (1 unreadable)" in result.output
    with Database.open(instance(dst)) as db:
        assert db.table_names() == []


def test_sqlite_booleans_other_than_0_1_are_reported_on_postgres(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    conn.execute("UPDATE article_comments SET approved = 2 WHERE id = (SELECT min(id) FROM article_comments)")
    conn.execute("UPDATE article_comments SET approved = 'yes' WHERE id = (SELECT max(id) FROM article_comments)")
    conn.commit()
    conn.close()
    export_bundle(instance(src), tmp_path / "bundle")
    dst = make_empty_instance("postgres", tmp_path / "dst", request)
    report = import_bundle(instance(dst), tmp_path / "bundle")
    drift = {(d["table"], d["column"], d["kind"]): d["values"] for d in report["plan"]["drift"]}
    assert drift[("article_comments", "approved", "boolean_value")] == 2
    with Database.open(instance(dst)) as db, db.engine.connect() as conn:
        import sqlalchemy as sa

        approved = conn.execute(sa.text("SELECT approved FROM article_comments WHERE id IN "
                                        "((SELECT min(id) FROM article_comments), (SELECT max(id) FROM article_comments))")).scalars()
        assert list(approved) == [True, True]
    assert verify_bundle(instance(dst), tmp_path / "bundle")["ok"]


def _without(env: Path, *names: str) -> dict[str, str]:
    """Delete ``names`` from the ``.env`` at ``env``; returns the deleted lines' values (to prove none is printed)."""
    lines = env.read_text().splitlines()
    removed = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines if line.split("=", 1)[0] in names}
    env.write_text("\n".join(line for line in lines if line.split("=", 1)[0] not in names) + "\n")
    return removed


def test_a_target_env_without_key_or_secret_is_reported(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """CairnCMS refuses to start without KEY and SECRET: import warns, verify and inspect exit 1, naming them only."""
    src = make_instance("sqlite", tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(instance(src), bundle)
    dst = make_empty_instance("sqlite", tmp_path / "dst", request)
    values = _without(dst, "KEY", "SECRET")
    assert sorted(values) == ["KEY", "SECRET"]
    runner = CliRunner()
    expected = (f"the target's .env does not set KEY, SECRET (CairnCMS does not start without KEY and SECRET); fix: "
                f"set KEY as recorded in the bundle's manifest.json (env.values) and SECRET from the source's .env in {dst}")
    outputs = []
    for args, code in ((["import", str(bundle), "--dry-run"], 1), (["import", str(bundle)], 0)):
        result = runner.invoke(cli, ["--env", str(dst), *args])
        assert result.exit_code == code, result.output
        assert f"  warning: {expected}" in result.output.splitlines()
        outputs.append(result.output)
    plan = json.loads(runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--dry-run", "--replace", "--json"]).output)["plan"]
    assert expected in plan["warnings"]
    verified = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle), "--json"])
    assert verified.exit_code == 1
    report = json.loads(verified.output)
    assert report["ok"] is False and report["tables_failed"] == [] and report["files"]["ok"] == 3  # only the .env
    assert report["env"]["missing"] == report["env"]["required"] == ["KEY", "SECRET"]
    text = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle)])
    assert text.exit_code == 1 and f"! env: {expected}" in text.output.splitlines()
    inspected = runner.invoke(cli, ["--env", str(dst), "inspect"])
    assert inspected.exit_code == 1
    assert (f"WARNING: the .env sets no KEY and no SECRET: CairnCMS does not start without KEY and SECRET; fix: set KEY "
            f"and SECRET in {dst} (a clone keeps its source's; new ones: cairncms security key:generate / "
            "secret:generate)") in inspected.output.splitlines()
    outputs += [verified.output, text.output, inspected.output]
    lines = [line for output in outputs for line in output.splitlines() if "does not set" in line or "sets no" in line]
    assert len(lines) == 4 and not [line for line in lines if values["KEY"] in line]  # names, never values
    assert values["KEY"] not in json.dumps(report["env"])
    assert not [output for output in outputs if values["SECRET"] in output]
    # SECRET alone is enough to fail; with both set everything passes again.
    dst.write_text(dst.read_text() + f"KEY={values['KEY']}\n")
    again = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle), "--json"])
    assert again.exit_code == 1 and json.loads(again.output)["env"]["required"] == ["SECRET"]
    assert runner.invoke(cli, ["--env", str(dst), "inspect"]).exit_code == 1
    dst.write_text(dst.read_text() + f"SECRET={values['SECRET']}\n")
    assert runner.invoke(cli, ["--env", str(dst), "verify", str(bundle)]).exit_code == 0
    assert runner.invoke(cli, ["--env", str(dst), "inspect"]).exit_code == 0


def test_a_missing_setting_of_a_used_location_is_listed_unless_remapped(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Settings other than KEY and SECRET are reported, not failed; a remapped location's are not the target's to set."""
    src = make_instance("sqlite", tmp_path / "src", request,
                        extra_env={"STORAGE_LOCATIONS": "media", "STORAGE_MEDIA_DRIVER": "local", "STORAGE_MEDIA_ROOT": "./uploads"})
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    conn.execute("UPDATE directus_files SET storage = 'media'")
    conn.commit()
    conn.close()
    bundle = tmp_path / "bundle"
    manifest = export_bundle(instance(src), bundle)
    assert manifest["env"]["values"]["STORAGE_MEDIA_DRIVER"] == "local" and "STORAGE_MEDIA_ROOT" in manifest["env"]["secret_names"]
    remapped = make_empty_instance("sqlite", tmp_path / "remapped", request)  # configures local only
    plan = import_bundle(instance(remapped), bundle, dry_run=True, storage_map={"media": "local"})["plan"]
    assert not [w for w in plan["warnings"] if "does not set" in w], plan["warnings"]
    dst = make_empty_instance("sqlite", tmp_path / "dst", request,
                              extra_env={"STORAGE_LOCATIONS": "media", "STORAGE_MEDIA_DRIVER": "local"})
    report = import_bundle(instance(dst), bundle)
    assert (f"the target's .env does not set STORAGE_MEDIA_ROOT (the bundle's source sets them); fix: set "
            f"STORAGE_MEDIA_ROOT from the source's .env in {dst}") in report["plan"]["warnings"]
    verified = verify_bundle(instance(dst), bundle)
    assert verified["ok"] is True  # the files are where this target's CairnCMS looks for them
    assert verified["env"] == {"missing": ["STORAGE_MEDIA_ROOT"], "required": [],
                               "fix": f"set STORAGE_MEDIA_ROOT from the source's .env in {dst}"}
