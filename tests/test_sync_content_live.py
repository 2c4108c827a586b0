"""Syncs that move content: two real CairnCMS instances, edits through their APIs, the next run.

Needs the ``content`` operation (built on its own branch): until it is registered this module
skips as a whole; it runs once ``content`` is merged.

The source is the recorded SQLite instance and the target the recorded PostgreSQL instance (the
same rows, ``articles`` keyed by uuid), each served by real CairnCMS 1.0.0-beta.4, so every edit
writes the instance's own ``directus_activity`` rows.  In order, on one pair: a from-now start,
creates and updates reach the target, a delete reaches it in mirror mode, an article edited on
both sides follows skip-if-target-modified (the target's edit stays), target-wins never
overwrites, a paused profile does nothing, an article created with an uploaded image arrives with the
image's bytes (served by the target), and tags (integer keys) arrive renumbered and follow their updates
and deletes through the ID map, the target's own tag untouched.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, make_instance
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.cli import cli
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "sync-content-admin-token-0123456789"


@dataclass
class Cms:
    env: Path
    url: str

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                                **kwargs)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with Database.open(Instance.from_env_file(self.env)) as db, db.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def title(self, key: str) -> str | None:
        found = self.rows("SELECT title FROM articles WHERE id = :id", id=key)
        return found[0][0] if found else None


@dataclass
class Pair:
    source: Cms
    target: Cms
    state: Path

    def sync(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}"}).invoke(
            cli, ["--env", str(self.source.env), "sync", *args], catch_exceptions=False)
        try:
            return result.exit_code, json.loads(result.output)
        except ValueError:
            raise AssertionError(result.output) from None


def _serve(cairncms: Platform, env: Path, url: str, log: Path) -> Any:
    with Database.open(Instance.from_env_file(env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    (env.parent / "package.json").write_text('{"name": "sync-instance", "private": true}\n')
    return start_server(cairncms, env.parent, url, server_env(), log)


@pytest.fixture(scope="module")
def pair(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("sync-content")
    servers = []
    try:
        cms = []
        for role in ("src", "dst"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            extra = {"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"}
            env = (build_sqlite_instance(FIXTURES / "sqlite", base / role, extra_env=extra) if role == "src"
                   else make_instance("postgres", base / role, request, extra_env=extra))
            servers.append(_serve(cairncms, env, url, base / f"{role}.log"))
            cms.append(Cms(env, url))
        yield Pair(cms[0], cms[1], base / "state.db")
    finally:
        for server in servers:
            stop_process(server)


def _create(cms: Cms, title: str) -> str:
    key = str(uuid.uuid4())
    response = cms.call("POST", "/items/articles", json={"id": key, "title": title, "slug": f"sync-{key[:8]}"})
    assert response.status_code == 200, response.text
    return key


def test_creates_updates_and_deletes_reach_the_target(pair: Pair) -> None:
    code, added = pair.sync("add", "mirror", "--from", str(pair.source.env), "--to", str(pair.target.env),
                            "--collection", "articles", "--filter", 'articles={"slug": {"_contains": "sync-"}}',
                            "--mode", "mirror", "--max-delete", "5",
                            "--conflict", "skip-if-target-modified", "--initial", "from-now", "--json")
    assert code == 0, added
    code, first = pair.sync("run", "mirror", "--json")
    assert code == 0 and first["status"] == "ok", first

    kept, gone = _create(pair.source, "sync kept"), _create(pair.source, "sync gone")
    code, report = pair.sync("run", "mirror", "--json")
    assert code == 0 and report["status"] == "ok", report
    assert sorted(report["steps"]["articles"]["changed"]["upsert"]) == sorted([kept, gone])
    assert pair.target.title(kept) == "sync kept" and pair.target.title(gone) == "sync gone"
    assert report["watermark_after"]["articles"] > report["watermark_before"]["articles"]

    assert pair.source.call("PATCH", f"/items/articles/{kept}", json={"title": "sync kept, edited"}).status_code == 200
    assert pair.source.call("DELETE", f"/items/articles/{gone}").status_code == 204
    code, report = pair.sync("run", "mirror", "--json")
    assert code == 0 and report["status"] == "ok", report
    assert report["steps"]["articles"]["changed"] == {"upsert": [kept], "delete": [gone], "delete_ignored": []}
    assert pair.target.title(kept) == "sync kept, edited" and pair.target.title(gone) is None

    code, idle = pair.sync("run", "mirror", "--json")
    assert code == 0 and idle["steps"]["articles"]["skipped"] == "no changes"


def test_an_edit_on_the_target_follows_the_conflict_policy(pair: Pair) -> None:
    both = _create(pair.source, "sync both sides")
    assert pair.sync("run", "mirror", "--json")[0] == 0
    assert pair.target.title(both) == "sync both sides"
    assert pair.target.call("PATCH", f"/items/articles/{both}", json={"title": "edited on the target"}).status_code == 200
    assert pair.source.call("PATCH", f"/items/articles/{both}", json={"title": "edited on the source"}).status_code == 200
    code, report = pair.sync("run", "mirror", "--json")
    assert code == 0, report
    assert report["conflicts"] == {"articles": [both]}
    assert pair.target.title(both) == "edited on the target"

    code, _ = pair.sync("add", "target-wins", "--from", str(pair.source.env), "--to", str(pair.target.env),
                        "--collection", "articles", "--conflict", "target-wins", "--initial", "from-now", "--json")
    assert code == 0 and pair.sync("run", "target-wins", "--json")[0] == 0
    fresh = _create(pair.source, "sync target-wins new")
    assert pair.source.call("PATCH", f"/items/articles/{both}", json={"title": "source again"}).status_code == 200
    code, report = pair.sync("run", "target-wins", "--json")
    assert code == 0 and report["mode"] == "skip-existing", report
    assert pair.target.title(fresh) == "sync target-wins new"  # created
    assert pair.target.title(both) == "edited on the target"  # never overwritten


def test_a_paused_profile_does_nothing_and_a_full_run_finds_drift(pair: Pair) -> None:
    assert pair.sync("pause", "mirror", "--json")[0] == 0
    later = _create(pair.source, "sync while paused")
    refused = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{pair.state}"}).invoke(
        cli, ["--env", str(pair.source.env), "sync", "run", "mirror"])
    assert refused.exit_code == 2 and "paused" in refused.output
    assert pair.target.title(later) is None
    assert pair.sync("resume", "mirror", "--json")[0] == 0
    code, report = pair.sync("run", "mirror", "--json")
    assert code == 0 and pair.target.title(later) == "sync while paused"  # the feed named the create
    # A row written behind CairnCMS's back (no activity) is found by a full re-scan only (of the rows the
    # profile's filter selects: the recorded instances hold the same articles under other uuids).
    with Database.open(Instance.from_env_file(pair.source.env)) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET title = 'drifted again' WHERE id = :id"), {"id": later})
    code, report = pair.sync("run", "mirror", "--json")
    assert pair.target.title(later) == "sync while paused"  # no activity, no change seen
    code, report = pair.sync("run", "mirror", "--full", "--json")
    assert code == 0 and report["steps"]["articles"]["rescan"], report["steps"]["articles"]
    assert pair.target.title(later) == "drifted again"


def test_an_article_with_an_image_reaches_the_target_with_its_bytes(pair: Pair) -> None:
    png = (FIXTURES / "sqlite" / "uploads").glob("*.png").__next__().read_bytes()
    uploaded = pair.source.call("POST", "/files", files={"file": ("sync-cover.png", png, "image/png")},
                                data={"title": "sync cover"})
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["data"]["id"]
    key = str(uuid.uuid4())
    created = pair.source.call("POST", "/items/articles", json={"id": key, "title": "sync with an image",
                                                               "slug": f"sync-{key[:8]}", "cover_image": file_id})
    assert created.status_code == 200, created.text
    code, report = pair.sync("run", "mirror", "--json")
    assert code == 0 and key in report["steps"]["articles"]["changed"]["upsert"], report
    assert pair.target.rows("SELECT cover_image FROM articles WHERE id = :id", id=key)[0][0] in (file_id, uuid.UUID(file_id))
    served = pair.target.call("GET", f"/assets/{file_id}")
    assert served.status_code == 200 and served.content == png  # the bytes, served by the target's CairnCMS


def test_an_integer_keyed_collection_syncs_with_remapped_keys(pair: Pair) -> None:
    """tags: the target creates its own tag first, so the source's next tag gets another number there."""
    own = pair.target.call("POST", "/items/tags", json={"name": "target own", "slug": "target-own", "color": "#000"})
    assert own.status_code == 200, own.text
    own_id = own.json()["data"]["id"]
    code, added = pair.sync("add", "tags", "--from", str(pair.source.env), "--to", str(pair.target.env),
                            "--collection", "tags", "--filter", 'tags={"slug": {"_contains": "sync-"}}',
                            "--mode", "mirror", "--max-delete", "2", "--initial", "from-now", "--json")
    assert code == 0, added
    assert pair.sync("run", "tags", "--json")[0] == 0
    made = pair.source.call("POST", "/items/tags", json={"name": "sync tag", "slug": "sync-tag", "color": "#111"})
    assert made.status_code == 200, made.text
    source_id = made.json()["data"]["id"]
    code, report = pair.sync("run", "tags", "--json")
    assert code == 0 and report["steps"]["tags"]["changed"]["upsert"] == [str(source_id)], report
    target_rows = pair.target.rows("SELECT id, name, color FROM tags WHERE slug = 'sync-tag'")
    assert len(target_rows) == 1 and target_rows[0][1:] == ("sync tag", "#111")
    target_id = target_rows[0][0]
    assert target_id != source_id and target_id > own_id  # remapped

    assert pair.source.call("PATCH", f"/items/tags/{source_id}", json={"color": "#222"}).status_code == 200
    code, report = pair.sync("run", "tags", "--json")
    assert code == 0, report
    assert pair.target.rows("SELECT id, color FROM tags WHERE slug = 'sync-tag'") == [(target_id, "#222")]

    assert pair.source.call("DELETE", f"/items/tags/{source_id}").status_code == 204
    code, report = pair.sync("run", "tags", "--json")
    assert code == 0 and report["steps"]["tags"]["changed"]["delete"] == [str(source_id)], report
    assert pair.target.rows("SELECT id FROM tags WHERE id = :id", id=target_id) == []
    assert pair.target.rows("SELECT name FROM tags WHERE id = :id", id=own_id) == [("target own",)]
    if source_id == own_id:  # the source's number is the target's own tag: never touched
        assert pair.target.rows("SELECT slug FROM tags WHERE id = :id", id=source_id) == [("target-own",)]
