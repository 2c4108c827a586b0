"""A cloned instance boots in real CairnCMS 1.0.0-beta.4 and serves the source's data over HTTP.

For each vendor pair of ``test_clone.py``: ``export --full`` the recorded fixture instance, ``import``
it into an empty target, start CairnCMS on the target's ``.env`` and check, over HTTP, that it answers,
that the source's users log in with the source's passwords, that every user collection serves the
source's rows and instants (with their zone), that every file serves the source's bytes and that
CairnCMS reads every field with the type a native instance has.  One CairnCMS boot per pair (``running_clone`` is module-scoped).
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
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from conftest import FIXTURES, make_empty_instance, make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.bundle.table_schema import reflect_tables
from cairn_migrate.bundle.values import comparable, decoder

#: The fixtures' users and passwords (tests/fixtures/README-cairncms.md, seed.mjs): the target must
#: accept the source's password hashes.
SOURCE_ADMIN = ("admin@example.com", "Admin-Pass-123")
SOURCE_EDITOR = ("editor@example.com", "Editor-Pass-123")
#: User collection → fields compared with the source: keys, text, integers, booleans, JSON, foreign keys.
#: (Decimals and instants are left out: the API prints them per vendor, reference §7; instants: INSTANTS.)
COLLECTIONS = {
    "articles": ("id", "status", "title", "slug", "word_count", "featured", "seo", "author", "cover_image", "attachment"),
    "authors": ("id", "name", "email"),
    "tags": ("id", "name", "slug", "color"),
    "languages": ("code", "name", "direction"),
    "article_comments": ("id", "author_name", "text", "approved", "article"),
    "articles_tags": ("id", "articles_id", "tags_id"),
    "articles_translations": ("id", "articles_id", "languages_code", "title", "summary"),
}
#: User collection → its timestamp fields (every one in the fixtures), compared as instants.
INSTANTS = {"articles": ("id", "published_at", "date_created", "date_updated"), "authors": ("id", "date_created"),
            "article_comments": ("id", "date_created")}
#: The test's vendor names → the project's (``comparable`` reduces an instant to what the vendor stores).
VENDORS = {"sqlite": "sqlite", "postgres": "postgres", "mariadb": "mysql"}
#: Rows per user collection in the seeded fixtures (tests/fixtures/README-cairncms.md).
ROWS = {"articles": 21, "authors": 4, "tags": 5, "languages": 3, "article_comments": 15, "articles_tags": 40,
        "articles_translations": 40}
PAIRS = [("sqlite", "postgres"), ("sqlite", "mariadb"), ("sqlite", "sqlite"),
         ("postgres", "sqlite"), ("mariadb", "sqlite"), ("mariadb", "postgres"), ("postgres", "mariadb")]
PAIR_IDS = [f"{s}-to-{t}" for s, t in PAIRS]


def source_rows(env: Path, collection: str, fields: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """The source's rows of ``collection`` as the API shows them (primary key → compared fields)."""
    with Database.open(Instance.from_env_file(env, environ={})) as db:
        (table,) = reflect_tables(db.engine, [collection], db.vendor)
        types = {c.name: c.type for c in table.columns}
        fields = fields or COLLECTIONS[collection]
        rows = {}
        for row in db.stream_rows(collection, columns=list(fields)):
            values = {name: decoder(types[name])(row[name]) for name in fields}
            if values.get("seo") is not None:
                values["seo"] = json.loads(values["seo"])  # the API parses JSON columns
            rows[str(values[fields[0]])] = values
    return rows


def tables_off_the_database_collation(env: Path) -> list[str]:
    """MariaDB tables whose collation differs from the database default: what CairnCMS warns about at
    boot (``validateDatabaseCharset`` in ``api/src/database/index.ts``), and what can make joins with
    tables it creates later fail ("Illegal mix of collations")."""
    with Database.open(Instance.from_env_file(env, environ={})) as db, db.engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_collation <> @@collation_database ORDER BY table_name"
        )).scalars())


def login(url: str, email: str, password: str) -> str:
    """An access token from ``POST /auth/login``."""
    response = requests.post(f"{url}/auth/login", json={"email": email, "password": password}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["access_token"])


def api_rows(session: requests.Session, url: str, collection: str, fields: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    fields = fields or COLLECTIONS[collection]
    response = session.get(f"{url}/items/{collection}", params={"limit": -1, "fields": ",".join(fields)}, timeout=30)
    assert response.status_code == 200, response.text
    key = fields[0]
    return {str(row[key]): row for row in response.json()["data"]}


@dataclass
class RunningClone:
    source_vendor: str
    source_env: Path
    target_env: Path
    target_vendor: str
    url: str


@pytest.fixture(scope="module")
def running_clone(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningClone]:
    """The source exported (``export --full``) and imported into an empty target, CairnCMS running on
    the target; module-scoped, so the tests of one vendor pair share one boot."""
    source, target = request.param
    base = tmp_path_factory.mktemp(f"{source}-to-{target}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    src = make_instance(source, base / "src", request)
    dst = make_empty_instance(target, base / "dst", request,
                              extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    runner = CliRunner()
    exported = runner.invoke(cli, ["--env", str(src), "export", "--full", "-o", str(base / "bundle")])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(cli, ["--env", str(dst), "import", str(base / "bundle")])
    assert imported.exit_code == 0, imported.output
    # CairnCMS reads .env from its working directory and wants package.json beside it.
    (dst.parent / "package.json").write_text('{"name": "clone", "private": true}\n')
    server = start_server(cairncms, dst.parent, url, server_env(), base / "cairncms.log")
    try:
        yield RunningClone(source_vendor=source, source_env=src, target_env=dst, target_vendor=target, url=url)
    finally:
        stop_process(server)


@pytest.mark.parametrize("running_clone", PAIRS, ids=PAIR_IDS, indirect=True, scope="module")
def test_clone_boots_in_cairncms_and_serves_the_source(running_clone: RunningClone) -> None:
    url, src = running_clone.url, running_clone.source_env
    session = requests.Session()
    assert session.get(f"{url}/server/ping", timeout=10).text == "pong"
    login(url, *SOURCE_EDITOR)
    session.headers["Authorization"] = f"Bearer {login(url, *SOURCE_ADMIN)}"
    me = session.get(f"{url}/users/me", params={"fields": "email,role.admin_access"}, timeout=30).json()["data"]
    assert me == {"email": SOURCE_ADMIN[0], "role": {"admin_access": True}}
    for collection, count in ROWS.items():
        served = api_rows(session, url, collection)
        assert len(served) == count, collection
        assert served == source_rows(src, collection), collection
    files = session.get(f"{url}/files", params={"limit": -1, "fields": "id,filename_disk"}, timeout=30).json()["data"]
    assert len(files) == 3
    for file in files:
        asset = session.get(f"{url}/assets/{file['id']}", timeout=30)
        assert asset.status_code == 200, asset.text
        assert asset.content == (src.parent / "uploads" / file["filename_disk"]).read_bytes(), file
    if running_clone.target_vendor == "mariadb":
        assert tables_off_the_database_collation(running_clone.target_env) == []


def vendor_independent_field_types() -> dict[str, str]:
    """``collection.field`` → type, for the user fields that CairnCMS reads with the same type on every
    vendor (``cairncms schema snapshot`` of the three recorded fixtures, the same seeded content).

    The rest are the vendor's own: uuid foreign keys are ``uuid`` on PostgreSQL but ``string`` (char(36))
    elsewhere, and a decimal is a ``float`` on SQLite.
    """
    per_vendor = []
    for vendor in ("sqlite", "postgres", "mariadb"):
        snapshot = yaml.safe_load((FIXTURES / vendor / "schema-snapshot.yaml").read_text(encoding="utf-8"))
        per_vendor.append({f"{f['collection']}.{f['field']}": f["type"] for f in snapshot["fields"] if f["collection"] in COLLECTIONS})
    first = per_vendor[0]
    return {name: kind for name, kind in first.items() if all(types.get(name) == kind for types in per_vendor)}


@pytest.mark.parametrize("running_clone", PAIRS, ids=PAIR_IDS, indirect=True, scope="module")
def test_clone_fields_keep_their_types(running_clone: RunningClone) -> None:
    """The clone's CairnCMS reads every user field with the type a native instance on any vendor has."""
    token = login(running_clone.url, *SOURCE_ADMIN)
    response = requests.get(f"{running_clone.url}/fields", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    expected = vendor_independent_field_types()
    assert len(expected) == 44  # of 49 user fields
    served = {f"{f['collection']}.{f['field']}": f["type"] for f in response.json()["data"]}
    assert {name: served.get(name) for name in expected} == expected


@pytest.mark.parametrize("running_clone", PAIRS, ids=PAIR_IDS, indirect=True, scope="module")
def test_clone_serves_the_source_instants(running_clone: RunningClone) -> None:
    """Every timestamp field is served with its zone and as the source's instant (at the precision the
    target stores: MariaDB keeps whole seconds, SQLite milliseconds)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {login(running_clone.url, *SOURCE_ADMIN)}"
    vendor = VENDORS[running_clone.target_vendor]
    for collection, fields in INSTANTS.items():
        served = api_rows(session, running_clone.url, collection, fields)
        source = source_rows(running_clone.source_env, collection, fields)
        assert served.keys() == source.keys(), collection
        for key, row in served.items():
            for name in fields[1:]:
                value, expected = row[name], source[key][name]
                if expected is None:
                    assert value is None, (collection, key, name)
                    continue
                assert re.search(r"(Z|[+-]\d\d:\d\d)$", value), (collection, key, name, value)
                assert comparable(value, "timestamp", vendor) == comparable(expected, "timestamp", vendor), (collection, key, name)
