"""``promote --engine db`` (the offline schema engine) against real databases, then real CairnCMS and Directus.

The source is a snapshot directory holding the recorded SQLite fixture's ``schema-snapshot.yaml``; each
target is a fresh instance that is *not running* while it is promoted (SQLite and PostgreSQL: the
recorded ``fresh.sql``; MariaDB: ``cairncms bootstrap`` in a database of its own, see
``test_promote_cross_vendor.py`` for the collation trap of the recorded dump).  Afterwards real
CairnCMS is booted on the target and asked, through its own ``/schema/diff``, whether anything of the
source is still missing, and its items API writes an article with a tag (m2m) and a translation.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, make_instance
from live_instance import ADMIN_TOKEN, LiveInstance, Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.bundle.config_snapshot import load_yaml
from cairn_migrate.bundle.schema_snapshot import schema_snapshot, write_schema_snapshot
from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.promote import platform_version
from cairn_migrate.operations.promote_noise import drop_vendor_noise, is_empty
from cairn_migrate.operations.schema_diff import deep_diff, snapshot_diff
from cairn_migrate.testing import create_mariadb_database, drop_mariadb_database

TOKEN = "promote-offline-admin-token-0123456789"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAIRN_MIGRATE_STATE_URL", f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    return tmp_path / "state"


def sqlite_schema() -> dict[str, Any]:
    return load_yaml((FIXTURES / "sqlite" / "schema-snapshot.yaml").read_text(encoding="utf-8"))


def source_dir(folder: Path, schema: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_schema_snapshot(schema, folder / "schema.yaml")
    return folder


def promote(source: Path, to: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", to, *args])
    return result.exit_code, result.output


def fresh_target(vendor: str, folder: Path, port: int, request: pytest.FixtureRequest) -> Path:
    """A fresh CairnCMS instance on ``vendor`` that nothing serves yet; its ``.env`` sets where it would run."""
    url = f"http://127.0.0.1:{port}"
    if vendor == "mariadb":
        admin = request.getfixturevalue("mariadb_admin_url")
        request.getfixturevalue("cairncms")
        name = create_mariadb_database(admin)
        request.addfinalizer(lambda: drop_mariadb_database(admin, name))
        done = subprocess.run([str(SCRIPTS / "cairncms"), "bootstrap", str(folder), str(port), "mysql", name],
                              capture_output=True, text=True, timeout=600, env=server_env())
        assert done.returncode == 0, done.stdout + done.stderr
        env = folder / ".env"
    else:
        env = make_instance(vendor, folder, request, sql="fresh.sql",
                            extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
        (folder / "package.json").write_text('{"name": "promote-offline-target", "private": true}\n')
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    return env


def target_snapshot(env: Path) -> dict[str, Any]:
    with Database.open(Instance.from_env_file(env)) as db:
        return schema_snapshot(db, version="1.0.0-beta.4")


def call(url: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, **kwargs)


# --------------------------------------------------------------------------- the diff itself
def test_deep_diff_records_are_cairncms_records() -> None:
    """deep-diff's shapes: a whole new entry has no path; edits carry lhs/rhs; arrays A with index and item."""
    assert deep_diff(None, {"a": 1}) == [{"kind": "N", "rhs": {"a": 1}}]
    assert deep_diff({"a": 1}, None) == [{"kind": "D", "lhs": {"a": 1}}]
    assert deep_diff({"m": {"note": "x", "gone": 1}}, {"m": {"note": "y", "new": True}}) == [
        {"kind": "E", "path": ["m", "note"], "lhs": "x", "rhs": "y"},
        {"kind": "D", "path": ["m", "gone"], "lhs": 1},
        {"kind": "N", "path": ["m", "new"], "rhs": True}]
    assert deep_diff({"s": ["a"]}, {"s": ["a", "b"]}) == [{"kind": "A", "path": ["s"], "index": 1,
                                                         "item": {"kind": "N", "rhs": "b"}}]
    assert deep_diff({"v": None}, {"v": 0}) == [{"kind": "E", "path": ["v"], "lhs": None, "rhs": 0}]
    assert deep_diff({"v": 1}, {"v": True}) == [{"kind": "E", "path": ["v"], "lhs": 1, "rhs": True}]
    assert deep_diff({"v": [1]}, {"v": [1]}) is None


def test_a_deleted_collection_takes_its_fields_and_relations_out_of_the_diff() -> None:
    schema = sqlite_schema()
    after = copy.deepcopy(schema)
    after["collections"] = [c for c in after["collections"] if c["collection"] != "article_comments"]
    after["fields"] = [f for f in after["fields"] if f["collection"] != "article_comments"]
    after["relations"] = [r for r in after["relations"] if r["collection"] != "article_comments"]
    diff = snapshot_diff(schema, after)
    assert [(c["collection"], c["diff"][0]["kind"]) for c in diff["collections"]] == [("article_comments", "D")]
    assert diff["fields"] == [] and diff["relations"] == []


# --------------------------------------------------------------------------- the fixture into fresh targets
@pytest.mark.parametrize("vendor", ["sqlite", "postgres", "mariadb"])
def test_the_fixture_schema_goes_offline_into_a_fresh_target_and_cairncms_serves_it(
        vendor: str, cairncms: Platform, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    port = free_port()
    env = fresh_target(vendor, tmp_path / "dst", port, request)
    schema = sqlite_schema()
    source = source_dir(tmp_path / "src", schema)
    force = () if vendor == "sqlite" else ("--force",)

    if vendor != "sqlite":  # another vendor: refused like the API path, until forced
        code, output = promote(source, str(env), "--only", "schema", "--engine", "db")
        assert code == 2 and "refused: the source's vendor sqlite differs" in output, output
    code, output = promote(source, str(env), "--only", "schema", "--dry-run", "--json", *force)
    plan = json.loads(output)
    assert (code, plan["engine"], plan["applied"], plan["schema"]["hash"]) == (1, "db", False, None), output
    assert "+ collection articles" in plan["schema"]["steps"] and target_snapshot(env)["collections"] == []

    code, output = promote(source, str(env), "--only", "schema", *force)  # auto: a .env without a token
    assert code == 0, output
    assert output.splitlines()[0].endswith("(schema) through its database"), output
    assert "+ relation articles_tags.tags_id" in output and output.splitlines()[-1] == "applied", output
    safety = Path(next(line for line in output.splitlines() if line.startswith("safety snapshot")).split(": ", 1)[1])
    assert load_yaml((safety / "schema.yaml").read_text())["collections"] == []
    assert (safety / "config" / "roles" / "administrator.yaml").is_file()

    code, output = promote(source, str(env), "--only", "schema", *force)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output

    url = f"http://127.0.0.1:{port}"
    server = start_server(cairncms, env.parent, url, server_env(), tmp_path / "cairncms.log")
    try:
        answer = call(url, "POST", "/schema/diff?force", json=schema)
        assert answer.status_code in (200, 204), answer.text
        if answer.status_code == 200:  # only across vendors: what is only each vendor's spelling of the same type
            assert vendor != "sqlite", answer.text
            left, _ = drop_vendor_noise(answer.json()["data"]["diff"], schema)
            assert is_empty(left), left
        if vendor == "sqlite":  # the diff computed here is CairnCMS's own, record for record
            changed = small_schema(copy.deepcopy(schema))
            fields = {(f["collection"], f["field"]): f for f in changed["fields"]}
            fields[("tags", "color")]["schema"]["max_length"] = 120
            fields[("authors", "bio")]["meta"]["note"] = "Who wrote it"
            fields[("articles", "keywords")]["meta"]["special"].append("m2o")
            changed["fields"].remove(fields[("articles", "word_count")])
            changed["collections"] = [c for c in changed["collections"] if c["collection"] != "article_comments"]
            answer = call(url, "POST", "/schema/diff", json=changed)
            assert answer.status_code == 200, answer.text
            assert snapshot_diff(target_snapshot(env), changed) == answer.json()["data"]["diff"]
        for collection in {c["collection"] for c in schema["collections"]}:
            assert call(url, "GET", f"/items/{collection}").status_code == 200, collection
        tag = call(url, "POST", "/items/tags", json={"name": "Offline", "slug": "offline"}).json()["data"]["id"]
        assert call(url, "POST", "/items/languages", json={"code": "en", "name": "English"}).status_code == 200
        created = call(url, "POST", "/items/articles", json={
            "title": "Written offline", "slug": "written-offline", "tags": [{"tags_id": tag}],
            "translations": [{"languages_code": "en", "title": "Offline, translated"}]})
        assert created.status_code == 200, created.text
        article = created.json()["data"]["id"]
        read = call(url, "GET", f"/items/articles/{article}?fields=title,tags.tags_id.name,translations.title")
        assert read.json()["data"] == {"title": "Written offline", "tags": [{"tags_id": {"name": "Offline"}}],
                                       "translations": [{"title": "Offline, translated"}]}
    finally:
        stop_process(server)


@pytest.mark.parametrize("vendor", ["sqlite", "postgres"])
def test_a_column_drop_with_data_is_refused_until_allowed(vendor: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    env = fresh_target(vendor, tmp_path / "dst", free_port(), request)
    force = () if vendor == "sqlite" else ("--force",)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", *force)[0] == 0
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        for n, color in enumerate(["red", "blue", None]):
            conn.execute(sa.text("INSERT INTO tags (name, slug, color) VALUES (:n, :s, :c)"),
                         {"n": f"t{n}", "s": f"t{n}", "c": color})
    schema = sqlite_schema()
    schema["fields"] = [f for f in schema["fields"] if (f["collection"], f["field"]) != ("tags", "color")]
    source = source_dir(tmp_path / "src", schema)

    from cairn_migrate.operations.promote import DbTarget

    assert DbTarget(env, Instance.from_env_file(env)).count("tags", "*") == 3  # a dropped table: COUNT(*)
    code, output = promote(source, str(env), "--only", "schema", *force)
    assert code == 2, output
    assert "refused: the schema diff drops tags.color (2 rows)" in output
    assert "color" in {f["field"] for f in target_snapshot(env)["fields"] if f["collection"] == "tags"}

    code, output = promote(source, str(env), "--only", "schema", "--allow-data-loss", *force)
    assert code == 0 and "- field tags.color" in output, output
    after = target_snapshot(env)
    assert "color" not in {f["field"] for f in after["fields"] if f["collection"] == "tags"}
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM tags ORDER BY name")).scalars().all() == ["t0", "t1", "t2"]
    # the rebuilt SQLite table keeps its key's AUTOINCREMENT, unique index and the relations onto it
    tags_id = next(f for f in after["fields"] if (f["collection"], f["field"]) == ("tags", "id"))
    assert tags_id["schema"]["has_auto_increment"] and tags_id["schema"]["is_primary_key"]
    assert next(f for f in after["fields"] if (f["collection"], f["field"]) == ("tags", "slug"))["schema"]["is_unique"]
    assert promote(source, str(env), "--only", "schema", *force)[1].splitlines()[-1] == "no changes"


@pytest.mark.parametrize("vendor", ["postgres", "mariadb"])
def test_the_whole_structure_goes_offline_across_vendors_and_cairncms_serves_it(
        vendor: str, cairncms: Platform, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Issue 11's first Done-when, offline: the SQLite fixture's schema, roles, permissions, flows, dashboards,
    presets, settings and translation strings into a fresh PostgreSQL/MariaDB target that is not running."""
    from test_promote_cross_vendor import Target as CliTarget, cairncms_cli
    from test_promote_extras_live import TRANSLATIONS, source_with_extras

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = fresh_target(vendor, tmp_path / "dst", port, request)
    source = source_with_extras(tmp_path / "src", request, CliTarget(vendor, url, env, env.parent))  # type: ignore[arg-type]

    code, output = promote(source, str(env), "--force", "--dry-run")
    assert code == 1 and "+ collection articles" in output and "Ping (webhook)" in output, output
    code, output = promote(source, str(env), "--force")
    assert (code, output.splitlines()[-1]) == (0, "applied"), output
    code, output = promote(source, str(env), "--force")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output

    with Database.open(Instance.from_env_file(source)) as db:
        config_dir = tmp_path / "source-config"
        from cairn_migrate.bundle.config_snapshot import config_snapshot, write_config_directory

        write_config_directory(config_snapshot(db), config_dir)
    checked = cairncms_cli(CliTarget(vendor, url, env, env.parent), "config", "apply", str(config_dir), "--dry-run")  # type: ignore[arg-type]
    assert checked.returncode == 0, checked.stdout + checked.stderr

    server = start_server(cairncms, env.parent, url, server_env(), tmp_path / "cairncms.log")
    try:
        answer = call(url, "POST", "/schema/diff?force", json=sqlite_schema())
        if answer.status_code == 200:
            left, _ = drop_vendor_noise(answer.json()["data"]["diff"], sqlite_schema())
            assert is_empty(left), left
        roles = {r["key"]: r for r in call(url, "GET", "/roles").json()["data"]}
        assert {"administrator", "editor"} <= set(roles)
        permissions = call(url, "GET", f"/permissions?filter[role][_eq]={roles['editor']['id']}&limit=-1").json()["data"]
        assert {(p["collection"], p["action"]) for p in permissions} >= {("articles", "read"), ("articles", "create")}
        flows = {f["name"]: f for f in call(url, "GET", "/flows?limit=-1").json()["data"]}
        ran = call(url, "GET", f"/flows/trigger/{flows['Ping']['id']}?word=offline")
        assert ran.status_code == 200 and ran.json()["shape"] == {"shaped": "offline"}, ran.text
        dashboards = call(url, "GET", "/dashboards?limit=-1").json()["data"]
        assert "Editorial" in {d["name"] for d in dashboards}
        presets = call(url, "GET", "/presets?limit=-1").json()["data"]
        assert (roles["editor"]["id"], "articles") in {(p["role"], p["collection"]) for p in presets}
        assert call(url, "GET", "/settings").json()["data"]["translation_strings"] == TRANSLATIONS
        created = call(url, "POST", "/items/authors", json={"name": "Offline", "email": "offline@example.com"})
        assert created.status_code == 200, created.text
    finally:
        stop_process(server)


def test_an_offline_url_is_refused_and_directus_takes_only_a_schema(
        directus_instance: LiveInstance, tmp_path: Path) -> None:
    source = source_dir(tmp_path / "src", sqlite_schema())
    code, output = promote(source, "http://127.0.0.1:9", "--engine", "db", "--only", "schema")
    assert code == 2 and "pass the target's .env as --to" in output, output
    (source / "config").mkdir()
    code, output = promote(source, str(directus_instance.folder / ".env"), "--engine", "db", "--only", "config")
    assert code == 2 and "is not CairnCMS: the offline engine writes only its schema" in output, output


# --------------------------------------------------------------------------- Directus 9.22.4
def _renamed(entry: dict[str, Any], collection: str, **changes: Any) -> dict[str, Any]:
    entry = copy.deepcopy(entry)
    entry["collection"] = collection
    if entry.get("meta"):
        if "collection" in entry["meta"]:
            entry["meta"]["collection"] = collection
        if "many_collection" in entry["meta"]:
            entry["meta"]["many_collection"] = collection
    if entry.get("schema") and "table" in entry["schema"]:
        entry["schema"]["table"] = collection
    if entry.get("schema") and "name" in entry["schema"] and "table" not in entry["schema"]:
        entry["schema"]["name"] = collection
    for key, value in changes.items():
        entry[key] = value
    return entry


def small_schema(base: dict[str, Any]) -> dict[str, Any]:
    """``base`` plus ``writers`` (id, name) and ``essays`` (id, title, writer: an m2o onto writers)."""
    fixture = sqlite_schema()
    fields = {(f["collection"], f["field"]): f for f in fixture["fields"]}
    collections = {c["collection"]: c for c in fixture["collections"]}
    schema = copy.deepcopy(base)
    schema["collections"] += [_renamed(collections["authors"], "writers"), _renamed(collections["tags"], "essays")]
    for collection in schema["collections"][-2:]:
        collection["meta"].update(sort_field=None, archive_field=None, display_template=None)
    schema["fields"] += [_renamed(fields[("authors", "id")], "writers"), _renamed(fields[("authors", "name")], "writers"),
                         _renamed(fields[("tags", "id")], "essays"), _renamed(fields[("tags", "name")], "essays")]
    writer = _renamed(fields[("articles", "author")], "essays", field="writer")
    writer["meta"]["field"], writer["schema"]["name"] = "writer", "writer"
    writer["schema"]["foreign_key_table"] = "writers"
    schema["fields"].append(writer)
    relation = next(r for r in fixture["relations"] if (r["collection"], r["field"]) == ("articles", "author"))
    relation = _renamed(relation, "essays", field="writer", related_collection="writers")
    relation["meta"].update(many_field="writer", one_collection="writers")
    relation["schema"].update(column="writer", foreign_key_table="writers")
    schema["relations"].append(relation)
    for key, names in (("collections", ("collection",)), ("fields", ("collection", "field")),
                       ("relations", ("collection", "field"))):
        schema[key].sort(key=lambda e: tuple(e[n] for n in names))
    return schema


def test_directus_9_gets_a_schema_through_its_database_and_its_url_says_how(
        directus_instance: LiveInstance, tmp_path: Path) -> None:
    env = directus_instance.folder / ".env"
    with Database.open(Instance.from_env_file(env)) as db:
        platform = db.platform()
        base = schema_snapshot(db, version=platform_version(db, env))
    assert platform.product == "directus"
    source = source_dir(tmp_path / "src", small_schema(base))

    code, output = promote(source, directus_instance.url, "--to-token", ADMIN_TOKEN, "--only", "schema")
    assert code == 2, output
    assert "has no /schema/" in output and "--engine db" in output, output

    code, output = promote(source, str(env), "--engine", "db", "--only", "schema")
    assert code == 0, output
    assert "+ collection essays" in output and "+ relation essays.writer" in output
    assert "config" not in {p.name for p in Path(output.split("safety snapshot of the target: ")[1].split("\n")[0]).iterdir()}
    assert directus_instance.request("POST", "/utils/cache/clear").status_code in (200, 204)
    assert directus_instance.request("GET", "/items/essays").status_code == 200
    listed = directus_instance.request("GET", "/fields/essays").json()["data"]
    assert {f["field"] for f in listed} == {"id", "name", "writer"}
    created = directus_instance.request("POST", "/items/writers", json={"name": "Ada"})
    assert created.status_code == 200, created.text
    writer = created.json()["data"]["id"]
    essay = directus_instance.request("POST", "/items/essays", json={"name": "On engines", "writer": writer})
    assert essay.status_code == 200, essay.text
    read = directus_instance.request("GET", f"/items/essays/{essay.json()['data']['id']}?fields=writer.name")
    assert read.json()["data"] == {"writer": {"name": "Ada"}}
    code, output = promote(source, str(env), "--engine", "db", "--only", "schema")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output
    with sqlite3.connect(directus_instance.folder / "data.db") as conn:
        assert conn.execute("SELECT count(*) FROM directus_relations WHERE many_collection = 'essays'").fetchone() == (1,)


@pytest.mark.parametrize("vendor", ["sqlite", "postgres"])
def test_a_failing_step_is_partial_on_sqlite_and_rolls_everything_back_on_postgres(
        vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A new collection goes first, then a field the engine cannot create (a geometry column) stops the apply:
    SQLite keeps the collection and says so (partial, exit 4); PostgreSQL's one transaction keeps nothing."""
    env = fresh_target(vendor, tmp_path / "dst", free_port(), request)
    force = () if vendor == "sqlite" else ("--force",)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", *force)[0] == 0
    schema = small_schema(sqlite_schema())
    shape = copy.deepcopy(next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("tags", "color")))
    shape.update(field="shape", type="geometry.Point")
    shape["meta"]["field"], shape["schema"]["name"] = "shape", "shape"
    schema["fields"].append(shape)
    schema["fields"].sort(key=lambda f: (f["collection"], f["field"]))
    source = source_dir(tmp_path / "src", schema)

    result = CliRunner().invoke(cli, ["promote", "--from", str(source), "--to", str(env), "--only", "schema", "--json",
                                      *force])
    collections = {c["collection"] for c in target_snapshot(env)["collections"]}
    if vendor == "sqlite":
        assert result.exit_code == 4, result.output
        report = json.loads(result.output)
        assert report["applied"] and report["failed"]["code"] == "partial_apply"
        assert report["schema"]["applied_steps"][:2] == ["+ collection essays", "+ collection writers"]
        assert "'+ field tags.shape'" in report["failed"]["message"]
        assert {"essays", "writers"} <= collections
    else:
        assert result.exit_code == 2 and "cannot create a column of type 'geometry.Point'" in result.output
        assert not {"essays", "writers"} & collections


def changed_schema() -> dict[str, Any]:
    """The fixture, changed the ways a dev instance changes: a longer column, a note, another on_delete, a
    collection gone (with its o2m), a folder holding ``authors``, and a table without any metadata row."""
    schema = sqlite_schema()
    fields = {(f["collection"], f["field"]): f for f in schema["fields"]}
    fields[("tags", "color")]["schema"]["max_length"] = 120
    fields[("authors", "bio")]["meta"]["note"] = "Who wrote it"
    fields[("authors", "date_created")]["meta"]["special"].append("date-updated")  # an array record (A)
    author = next(r for r in schema["relations"] if (r["collection"], r["field"]) == ("articles", "author"))
    author["schema"]["on_delete"] = "CASCADE"
    schema["collections"] = [c for c in schema["collections"] if c["collection"] != "article_comments"]
    schema["fields"] = [f for f in schema["fields"] if f["collection"] != "article_comments"
                        and (f["collection"], f["field"]) != ("articles", "comments")]
    schema["relations"] = [r for r in schema["relations"] if r["collection"] != "article_comments"]
    authors = next(c for c in schema["collections"] if c["collection"] == "authors")
    schema["collections"].append({"collection": "library", "meta": {**copy.deepcopy(authors["meta"]),
                                  "collection": "library", "sort_field": None, "note": "A folder"}})
    authors["meta"]["group"] = "library"
    schema["collections"].append({"collection": "legacy_log", "meta": None, "schema": {"name": "legacy_log"}})
    for name in ("id", "name"):
        schema["fields"].append({**copy.deepcopy(fields[("authors", name)]), "collection": "legacy_log", "meta": None})
        schema["fields"][-1]["schema"]["table"] = "legacy_log"
    schema["collections"].sort(key=lambda c: c["collection"])
    schema["fields"].sort(key=lambda f: (f["collection"], f["field"]))
    return schema


@pytest.mark.parametrize("vendor", ["sqlite", "postgres", "mariadb"])
def test_updates_deletes_a_folder_and_a_meta_null_table(vendor: str, cairncms: Platform, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    port = free_port()
    env = fresh_target(vendor, tmp_path / "dst", port, request)
    force = () if vendor == "sqlite" else ("--force",)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", *force)[0] == 0
    source = source_dir(tmp_path / "src", changed_schema())
    code, output = promote(source, str(env), "--only", "schema", *force)
    assert code == 0, output
    for step in ("+ collection library", "+ collection legacy_log", "- collection article_comments",
                 "~ collection authors (meta.group)", "~ field tags.color (schema.max_length)",
                 "~ field authors.date_created (meta.special)",
                 "- field articles.comments", "~ relation articles.author (schema.on_delete)"):
        assert f"  {step}" in output.splitlines(), output
    code, output = promote(source, str(env), "--only", "schema", *force)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output

    after = target_snapshot(env)
    fields = {(f["collection"], f["field"]): f for f in after["fields"]}
    assert fields[("tags", "color")]["schema"]["max_length"] == 120
    assert next(r for r in after["relations"] if r["field"] == "author")["schema"]["on_delete"] == "CASCADE"
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        rows = set(conn.execute(sa.text("SELECT collection FROM directus_collections")).scalars())
        relations = set(conn.execute(sa.text("SELECT many_collection FROM directus_relations")).scalars())
    assert "legacy_log" in tables and "legacy_log" not in rows  # meta: null: a table, no row
    assert "library" in rows and "library" not in tables  # a folder: a row, no table
    assert "article_comments" not in tables | rows | relations

    url = f"http://127.0.0.1:{port}"
    server = start_server(cairncms, env.parent, url, server_env(), tmp_path / "cairncms.log")
    try:  # CairnCMS itself finds nothing of the changed source missing (beyond each vendor's spelling)
        answer = call(url, "POST", "/schema/diff?force", json=changed_schema())
        assert answer.status_code in (200, 204), answer.text
        if answer.status_code == 200:
            assert vendor != "sqlite", answer.text
            left, _ = drop_vendor_noise(answer.json()["data"]["diff"], changed_schema())
            assert is_empty(left), left
    finally:
        stop_process(server)


def test_a_target_changed_since_the_plan_is_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The offline twin of CairnCMS's stale hash: the diff was planned against another snapshot."""
    from cairn_migrate.errors import InvalidInput
    from cairn_migrate.operations.promote import DbTarget

    env = fresh_target("sqlite", tmp_path / "dst", free_port(), request)
    target = DbTarget(env, Instance.from_env_file(env))
    target.planned = target.schema_snapshot()
    diff = snapshot_diff(target.planned, sqlite_schema())
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE made_meanwhile (id integer primary key)"))
    with pytest.raises(InvalidInput, match="changed since the plan"):
        target.apply(diff)
    assert "articles" not in {c["collection"] for c in target.schema_snapshot()["collections"]}


@pytest.mark.parametrize("vendor", ["sqlite", "mariadb"])
def test_a_new_m2o_on_an_existing_collection(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A field and its relation added to collections that exist: SQLite rebuilds the table for the foreign key,
    MariaDB makes the m2o ``int unsigned`` like its key."""
    env = fresh_target(vendor, tmp_path / "dst", free_port(), request)
    force = () if vendor == "sqlite" else ("--force",)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", *force)[0] == 0
    schema = sqlite_schema()
    author = next(f for f in schema["fields"] if (f["collection"], f["field"]) == ("articles", "author"))
    favourite = copy.deepcopy(author)
    favourite.update(collection="tags", field="favourite_of")
    favourite["meta"].update(collection="tags", field="favourite_of")
    favourite["schema"].update(name="favourite_of", table="tags")
    schema["fields"].append(favourite)
    relation = copy.deepcopy(next(r for r in schema["relations"] if (r["collection"], r["field"]) == ("articles", "author")))
    relation.update(collection="tags", field="favourite_of")
    relation["meta"].update(many_collection="tags", many_field="favourite_of")
    relation["schema"].update(table="tags", column="favourite_of")
    schema["relations"].append(relation)
    schema["fields"].sort(key=lambda f: (f["collection"], f["field"]))
    schema["relations"].sort(key=lambda r: (r["collection"], r["field"]))
    source = source_dir(tmp_path / "src", schema)
    code, output = promote(source, str(env), "--only", "schema", *force)
    assert code == 0 and "  + relation tags.favourite_of" in output.splitlines(), output
    code, output = promote(source, str(env), "--only", "schema", *force)
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output
    after = next(r for r in target_snapshot(env)["relations"] if r["field"] == "favourite_of")
    assert (after["schema"]["foreign_key_table"], after["schema"]["on_delete"]) == ("authors", "SET NULL")


def _field(schema: dict[str, Any], collection: str, field: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if (f["collection"], f["field"]) == (collection, field))


@pytest.mark.parametrize("vendor", ["sqlite", "postgres"])
def test_a_narrower_column_or_another_type_of_a_populated_one_is_data_loss(vendor: str, tmp_path: Path,
                                                                           request: pytest.FixtureRequest) -> None:
    """Trial items 1 and 7: a shorter max_length counts the longer values (characters), another type every
    non-null value; both refused (exit 2) before any write, naming the count, until --allow-data-loss."""
    env = fresh_target(vendor, tmp_path / "dst", free_port(), request)
    force = () if vendor == "sqlite" else ("--force",)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", *force)[0] == 0
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        for n, color in enumerate(["red", "blué", "violet", None]):
            conn.execute(sa.text("INSERT INTO tags (name, slug, color) VALUES (:n, :s, :c)"),
                         {"n": f"t{n}", "s": f"t{n}", "c": color})
    before = target_snapshot(env)
    schema = sqlite_schema()
    _field(schema, "tags", "color")["schema"]["max_length"] = 4
    code, output = promote(source_dir(tmp_path / "short", schema), str(env), "--only", "schema", *force)
    assert code == 2, output
    assert "refused: the schema diff changes tags.color (max_length 255 -> 4): 1 row would not fit" in output, output
    assert target_snapshot(env) == before
    code, plan = promote(source_dir(tmp_path / "short", schema), str(env), "--only", "schema", "--json", "--dry-run",
                         "--allow-data-loss", *force)
    assert code == 1 and json.loads(plan)["refused"] == [], plan

    schema = sqlite_schema()
    _field(schema, "tags", "color").update(type="integer")
    _field(schema, "tags", "color")["schema"].update(data_type="integer", max_length=None, numeric_precision=None)
    code, output = promote(source_dir(tmp_path / "typed", schema), str(env), "--only", "schema", *force)
    assert code == 2, output
    assert "changes tags.color (type string -> integer): 3 rows would not fit" in output, output
    assert target_snapshot(env) == before


def test_another_vendor_is_refused_with_the_whole_diff_shown(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Trial item 6: without --force the plan still shows every schema change (not "no changes"), refused."""
    env = fresh_target("postgres", tmp_path / "dst", free_port(), request)
    code, output = promote(source_dir(tmp_path / "src", sqlite_schema()), str(env), "--only", "schema", "--json")
    plan = json.loads(output)
    assert code == 2 and [r["code"] for r in plan["refused"]] == ["mismatch"], output
    assert plan["schema"]["changes"] and "+ collection articles" in plan["schema"]["steps"], output
    assert target_snapshot(env)["collections"] == []


def test_directus_system_tables_are_never_diffed_and_its_release_is_named(
        directus_instance: LiveInstance, tmp_path: Path) -> None:
    """Trial item 8: a CairnCMS source (no ``directus_webhooks``) onto Directus 9.22.4's database: no
    ``- collection directus_webhooks``, and the plan names Directus's release from the package its folder installs."""
    from live_instance import CACHE

    env = directus_instance.folder / ".env"
    modules = directus_instance.folder / "node_modules"
    if not modules.exists():  # a Directus project's layout: the package beside its .env
        modules.symlink_to(CACHE / "directus-9.22.4" / "node_modules")
    with Database.open(Instance.from_env_file(env)) as db:
        base = schema_snapshot(db, version="9")
    assert "directus_webhooks" in {c["collection"] for c in base["collections"]}  # what our reader sees of it
    schema = small_schema(base)
    schema.update(collections=[c for c in schema["collections"] if not c["collection"].startswith("directus_")])
    code, output = promote(source_dir(tmp_path / "src", schema), str(env), "--engine", "db", "--only", "schema",
                           "--dry-run", "--json")
    plan = json.loads(output)
    assert not any("directus_" in step for step in plan["schema"]["steps"]), output
    assert plan["schema"]["mismatch"]["directus"]["target"] == "9.22.4", output


def test_a_failing_type_conversion_on_mariadb_stops_before_any_drop(tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    """Trial item 7: MariaDB does not roll DDL back, so the changes of existing columns go first: a value the new
    type refuses stops the apply (failed, exit 3: nothing applied) while the column the same diff drops is still
    there."""
    env = fresh_target("mariadb", tmp_path / "dst", free_port(), request)
    assert promote(source_dir(tmp_path / "base", sqlite_schema()), str(env), "--only", "schema", "--force")[0] == 0
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tags (name, slug, color) VALUES ('t', 't', 'not a number')"))
        conn.execute(sa.text("INSERT INTO authors (name, bio) VALUES ('a', 'kept')"))
    schema = sqlite_schema()
    _field(schema, "tags", "color").update(type="integer")
    _field(schema, "tags", "color")["schema"].update(data_type="integer", max_length=None)
    schema["fields"] = [f for f in schema["fields"] if (f["collection"], f["field"]) != ("authors", "bio")]
    code, output = promote(source_dir(tmp_path / "src", schema), str(env), "--only", "schema", "--force",
                           "--allow-data-loss")
    assert code == 3, output  # nothing was applied: failed, not partial
    assert "The offline apply stopped at '~ field tags.color'" in output, output
    with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT bio FROM authors")).scalars().all() == ["kept"]


def _add_subtitle(env: Path) -> None:
    """The one change a dev makes on the source: ``articles.subtitle`` (a column and its ``directus_fields`` row)."""
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE articles ADD COLUMN subtitle varchar(255)"))
        conn.execute(sa.text("INSERT INTO directus_fields (collection, field, interface, width) "
                             "VALUES ('articles', 'subtitle', 'input', 'full')"))


def test_uuid_keys_are_the_same_field_from_postgresql_to_mariadb(tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    """Operator trial: the PostgreSQL fixture (plus one new field) promoted onto the MariaDB fixture.  A uuid
    foreign key is ``uuid`` on PostgreSQL and ``string char(36)`` on MariaDB (CairnCMS types a ``char(36)``
    without the ``uuid`` special as a string there): the same field, so neither a type change, nor data loss,
    nor "not applied".  The dry run lists only the new field; the promote applies it; a second says no changes."""
    source = make_instance("postgres", tmp_path / "src", request)
    _add_subtitle(source)
    target = make_instance("mariadb", tmp_path / "dst", request)
    code, output = promote(source, str(target), "--engine", "db", "--only", "schema", "--force", "--dry-run",
                           "--json")
    plan = json.loads(output)
    assert code == 1, output
    assert plan["schema"]["steps"] == ["+ field articles.subtitle"], output
    assert (plan["schema"]["data_loss"], plan["refused"]) == ([], []), output
    code, output = promote(source, str(target), "--engine", "db", "--only", "schema", "--force")
    assert code == 0, output
    assert "not applied" not in output, output
    code, output = promote(source, str(target), "--engine", "db", "--only", "schema", "--force")
    assert (code, output.splitlines()[-1]) == (0, "no changes"), output


def test_the_registry_names_promotes_kinds_without_importing_promote() -> None:
    """operations/__init__.py spells promote's kinds itself (importing promote there cost every process's
    start-up); the two lists must stay the same."""
    from cairn_migrate.operations import PROMOTE_KINDS
    from cairn_migrate.operations.promote import KINDS

    assert PROMOTE_KINDS == KINDS
