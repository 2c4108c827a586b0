"""Masking profiles: ``export --full --mask PROFILE`` writes a bundle without real people's data.

The recorded SQLite fixture (tests/fixtures/sqlite: admin@example.com "Admin User", editor@example.com
"Eddie Editor"; authors "Ada Lovelace", "Grace Hopper", …) is exported masked, imported into
PostgreSQL and served by real CairnCMS 1.0.0-beta.4: the real values are in neither the bundle's bytes
nor the target database, the kept user logs in, the others cannot with their old passwords.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from conftest import make_empty_instance, make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate import masking
from cairn_migrate.bundle.table_schema import reflect_tables
from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.masking import fakers

ADMIN = ("admin@example.com", "Admin-Pass-123")
EDITOR = ("editor@example.com", "Editor-Pass-123")
#: What the fixture holds of the editor (a masked user): none of it may leave the source.
EDITOR_VALUES = ("editor@example.com", "Eddie", "bYOh2Z3V+U5vc+Cb8LRF1w")  # the last: a piece of its argon2 hash
AUTHORS = ("Ada Lovelace", "Grace Hopper", "ada@example.com", "grace@example.com")
EMAIL = re.compile(r"^[a-z0-9][a-z0-9._-]*@[a-z0-9-]+(\.[a-z0-9-]+)+$")


def bundle_bytes(bundle: Path) -> bytes:
    """Every byte of a bundle directory (its manifest, rows, snapshots and file bytes)."""
    return b"\n".join(path.read_bytes() for path in sorted(bundle.rglob("*")) if path.is_file())


def jsonl(bundle: Path, table: str) -> list[list[Any]]:
    return [json.loads(line) for line in (bundle / "tables" / f"{table}.jsonl").read_text().splitlines() if line]


def columns(bundle: Path, table: str) -> list[str]:
    tables = json.loads((bundle / "schema" / "tables.json").read_text())
    return [c["name"] for t in tables if t["name"] == table for c in t["columns"]]


def rows(bundle: Path, table: str) -> list[dict[str, Any]]:
    names = columns(bundle, table)
    return [dict(zip(names, values)) for values in jsonl(bundle, table)]


def database_text(env: Path) -> str:
    """Every row of every table of an instance's database, as JSON text."""
    with Database.open(Instance.from_env_file(env, environ={})) as db:
        tables = reflect_tables(db.engine, db.table_names(), db.vendor)
        return "\n".join(json.dumps(dict(row), default=str) for table in tables
                         for row in db.stream_rows(table.name, columns=[c.name for c in table.columns]))


def export(env: Path, output: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--env", str(env), "export", "--full", "-o", str(output), *args])


# ------------------------------------------------------------------------ fake values, no database
def test_fakes_are_deterministic_valid_and_unique() -> None:
    key = b"k" * 32
    emails = {fakers.email(fakers.digest(key, f"person{i}@corp.test")) for i in range(5000)}
    assert len(emails) == 5000 and all(EMAIL.match(e) for e in emails)
    seed = fakers.digest(key, "Ada Lovelace")
    assert fakers.name(seed) == fakers.name(fakers.digest(key, "Ada Lovelace"))
    assert fakers.name(seed) != fakers.name(fakers.digest(b"other-salt" * 4, "Ada Lovelace"))
    assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", fakers.name(seed))
    assert re.fullmatch(r"\+1 555 \d{3} \d{4}", fakers.phone(seed))
    original = "Compiler pioneer, rear admiral and teacher."
    fake = fakers.text(seed, original)
    assert len(original) - 10 <= len(fake) <= len(original) and fake != original and fake.endswith(".")
    # Pinned: a change of the derivation is a new fakers.VERSION, never a silent change of every fake.
    assert fakers.email(fakers.digest(b"pinned", "editor@example.com")) == PINNED_EMAIL


PINNED_EMAIL = "leon.barros.7cbb029ee8ce1ee9@example.com"


def test_mask_row_for_other_row_movers() -> None:
    """The per-row entry point (content moves call it): the same value gives the same fake in any collection."""
    profile = masking.parse({"extends": "pii-basic", "collections": {"authors": {"name": "name", "email": "email"}}},
                            origin="test", default_name="t")
    mp = masking.bind(profile, salt="s3cret")
    author = masking.mask_row(mp, "authors", {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"})
    user = masking.mask_row(mp, "directus_users", {"email": "ada@example.com", "status": "active"})
    assert author is not None and user is not None
    assert author["id"] == 1 and author["name"] != "Ada Lovelace" and author["email"] == user["email"] != "ada@example.com"
    assert user["status"] == "active" and masking.mask_row(mp, "directus_sessions", {"token": "x"}) is None
    revision = masking.mask_row(mp, "directus_revisions", {"collection": "authors",
                                                           "data": '{"name":"Ada Lovelace","sort":1}'})
    assert revision is not None and json.loads(revision["data"]) == {"name": author["name"], "sort": 1}


# ------------------------------------------------------------------------ export of the fixture
def test_masked_bundle_holds_no_real_person(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    result = export(src, tmp_path / "bundle", "--mask", "pii-basic")
    assert result.exit_code == 0, result.output
    assert "masked with pii-basic" in result.output
    data = bundle_bytes(tmp_path / "bundle")
    for value in (*EDITOR_VALUES, "admin@example.com", "$argon2"):
        assert value.encode() not in data, value
    users = rows(tmp_path / "bundle", "directus_users")
    assert len(users) == 2 and all(u["password"] is None and u["token"] is None for u in users)
    assert all(EMAIL.match(u["email"]) for u in users) and len({u["email"] for u in users}) == 2
    assert rows(tmp_path / "bundle", "directus_sessions") == []
    assert all(a["ip"] is None and a["user_agent"] is None for a in rows(tmp_path / "bundle", "directus_activity"))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["masked"]["name"] == "pii-basic" and manifest["masked"]["origin"] == "built-in"
    assert manifest["masked"]["salt"] == "derived from the profile and the instance's SECRET"
    assert manifest["contains_secrets"]["password_hashes"] is False
    assert "test-secret" not in json.dumps(manifest)


def test_masking_is_the_same_across_exports_and_changes_with_the_salt(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    for name, args in (("one", ()), ("two", ()), ("salted", ("--mask-salt", "another salt"))):
        assert export(src, tmp_path / name, "--mask", "pii-basic", *args).exit_code == 0
    one, two, salted = (rows(tmp_path / n, "directus_users") for n in ("one", "two", "salted"))
    assert one == two
    assert [u["email"] for u in one] != [u["email"] for u in salted]
    assert jsonl(tmp_path / "one", "directus_revisions") == jsonl(tmp_path / "two", "directus_revisions")
    manifest = json.loads((tmp_path / "salted" / "manifest.json").read_text())
    assert manifest["masked"]["salt"] == "given" and "another salt" not in (tmp_path / "salted" / "manifest.json").read_text()


def test_custom_profile_masks_a_user_collection_consistently(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    profile = tmp_path / "authors.yaml"
    profile.write_text("name: authors-too\nextends: pii-basic\ncollections:\n  authors:\n    name: name\n"
                       "    email: email\n    bio: text\n")
    result = export(src, tmp_path / "bundle", "--mask", str(profile), "--mask-salt", "team salt")
    assert result.exit_code == 0, result.output
    data = bundle_bytes(tmp_path / "bundle")
    for value in (*AUTHORS, *EDITOR_VALUES):
        assert value.encode() not in data, value
    authors = {a["id"]: a for a in rows(tmp_path / "bundle", "authors")}
    assert len(authors) == 4 and all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", a["name"]) for a in authors.values())
    # Each row and each revision's old value got the fake the per-row API gives that value (same value, same fake).
    with Database.open(Instance.from_env_file(src, environ={})) as db:
        mp = masking.prepare(profile, reflect_tables(db.engine, db.table_names(), db.vendor), salt="team salt")
        source_authors = list(db.stream_rows("authors", columns=["id", "name", "email"]))
        source_revisions = {r["id"]: r for r in db.stream_rows("directus_revisions", columns=["id", "collection", "data"])}
    for author in source_authors:
        fake = masking.mask_row(mp, "authors", dict(author))
        assert fake is not None and authors[author["id"]]["name"] == fake["name"] != author["name"]
        assert authors[author["id"]]["email"] == fake["email"]
    checked = 0
    for revision in rows(tmp_path / "bundle", "directus_revisions"):
        old = json.loads(source_revisions[revision["id"]]["data"] or "null")
        if revision["collection"] == "authors" and isinstance(old, dict) and "name" in old:
            assert json.loads(revision["data"])["name"] == masking.mask_row(mp, "authors", {"name": old["name"]})["name"]
            checked += 1
    assert checked >= 4
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["masked"]["name"] == "authors-too" and manifest["masked"]["extends"] == "pii-basic"
    assert manifest["masked"]["collections"]["authors"] == {"name": "name", "email": "email", "bio": "text"}


BAD_PROFILES = {
    "unknown masker": ("collections:\n  authors:\n    name: fullname\n", "collections.authors.name: unknown masker 'fullname'"),
    "unknown key": ("collection:\n  authors:\n    name: name\n", "collection: Unknown field"),
    "no collections": ("name: x\n", "collections: Missing data"),
    "bad extends": ("extends: pii-max\ncollections:\n  authors:\n    name: name\n", "extends: not a built-in profile"),
    "not a mapping": ("collections:\n  authors: [name]\n", "collections.authors: must be `drop` or a mapping"),
    "no such collection": ("collections:\n  writers:\n    name: name\n", "collection 'writers' does not exist"),
    "no such field": ("collections:\n  authors:\n    nom: name\n", "field authors.nom does not exist"),
    "text on a number": ("collections:\n  authors:\n    rating: text\n", "column: masker 'text' writes text"),
    "null on NOT NULL": ("collections:\n  directus_activity:\n    action: 'null'\n", "directus_activity.action is NOT NULL"),
    "not YAML": ("collections: [\n", "is not readable YAML"),
}


@pytest.mark.parametrize("case", BAD_PROFILES, ids=list(BAD_PROFILES))
def test_a_bad_profile_is_refused_naming_the_key(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    text, expected = BAD_PROFILES[case]
    (tmp_path / "bad.yaml").write_text(text)
    result = export(src, tmp_path / "bundle", "--mask", str(tmp_path / "bad.yaml"))
    assert result.exit_code == 2, result.output
    assert expected in result.output and "fix: " in result.output, result.output
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("args, expected", [
    (("--mask", "pii-basic", "--native"), "native dump cannot be masked"),
    (("--mask", "pii-nope"), "no masking profile 'pii-nope'"),
    (("--mask", "pii-basic", "--mask-keep-user", "nobody@example.com"), "nobody@example.com: no such user"),
    (("--mask-salt", "s"), "need --mask"),
], ids=["native", "unknown-profile", "unknown-kept-user", "salt-without-mask"])
def test_conflicting_mask_options_are_refused(args: tuple[str, ...], expected: str, tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    result = export(src, tmp_path / "bundle", *args)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "bundle").exists()


def test_http_refuses_a_masked_native_export_at_once(tmp_path: Path) -> None:
    from instance_fixtures import ADMIN_EMAIL, restore_sqlite_instance

    from cairn_migrate.service.app import create_app, get_state

    inst = restore_sqlite_instance(tmp_path / "instance")
    inst.set_token(ADMIN_EMAIL, "admin-static-token-0123456789")
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(inst.env_path), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"})
    try:
        response = app.test_client().post(
            "/migrate/ops", json={"op": "export", "params": {"mask": "pii-basic", "native": True}},
            headers={"Authorization": "Bearer admin-static-token-0123456789"})
        assert response.status_code == 422, response.get_json()
        assert "cannot be masked" in json.dumps(response.get_json())
        assert get_state(app).store.list() == []
    finally:
        get_state(app).close()


# ------------------------------------------------------------------------ a masked clone in CairnCMS
@dataclass
class MaskedClone:
    bundle: Path
    target_env: Path
    url: str


@pytest.fixture(scope="module")
def masked_clone(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[MaskedClone]:
    """The SQLite fixture exported with pii-basic keeping the admin, imported into PostgreSQL, CairnCMS on it."""
    base = tmp_path_factory.mktemp("masked")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    src = make_instance("sqlite", base / "src", request)
    dst = make_empty_instance("postgres", base / "dst", request,
                              extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    runner = CliRunner()
    exported = export(src, base / "bundle", "--mask", "pii-basic", "--mask-keep-user", ADMIN[0].upper())
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(cli, ["--env", str(dst), "import", str(base / "bundle")])
    assert imported.exit_code == 0, imported.output
    verified = runner.invoke(cli, ["--env", str(dst), "verify", str(base / "bundle")])
    assert verified.exit_code == 0, verified.output
    (dst.parent / "package.json").write_text('{"name": "masked-clone", "private": true}\n')
    server = start_server(cairncms, dst.parent, url, server_env(), base / "cairncms.log")
    try:
        yield MaskedClone(base / "bundle", dst, url)
    finally:
        stop_process(server)


def test_masked_clone_holds_no_real_person_but_the_kept_user(masked_clone: MaskedClone) -> None:
    data, stored = bundle_bytes(masked_clone.bundle), database_text(masked_clone.target_env)
    for value in EDITOR_VALUES:
        assert value.encode() not in data, value
        assert value not in stored, value
    with Database.open(Instance.from_env_file(masked_clone.target_env, environ={})) as db:
        users = list(db.stream_rows("directus_users", columns=["email", "first_name", "password"]))
    emails = [u["email"] for u in users]
    assert len(emails) == 2 and len(set(emails)) == 2 and all(EMAIL.match(e) for e in emails)
    assert ADMIN[0] in emails  # kept as it was
    masked = next(u for u in users if u["email"] != ADMIN[0])
    assert masked["password"] is None and masked["first_name"] in fakers.FIRST_NAMES


def test_kept_user_logs_in_and_the_others_cannot(masked_clone: MaskedClone) -> None:
    url = masked_clone.url
    response = requests.post(f"{url}/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    assert response.status_code == 200, response.text
    token = response.json()["data"]["access_token"]
    users = requests.get(f"{url}/users", params={"fields": "email,first_name"}, timeout=30,
                         headers={"Authorization": f"Bearer {token}"}).json()["data"]
    fake = next(u["email"] for u in users if u["email"] != ADMIN[0])
    assert fake != EDITOR[0] and fake.endswith("@example.com")
    for email in (EDITOR[0], fake):
        refused = requests.post(f"{url}/auth/login", json={"email": email, "password": EDITOR[1]}, timeout=30)
        assert refused.status_code == 401, (email, refused.text)


def test_the_registry_knows_every_built_in_profile_by_name() -> None:
    """``mask`` is a host path unless it names a built-in profile: the registry's list (kept apart so the
    registry imports no masking code) must be the masking package's."""
    from cairn_migrate import operations

    assert operations.MASK_PROFILES == masking.BUILTIN_NAMES
