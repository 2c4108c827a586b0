"""The reviewer's defects in scheduled syncs (issue 13, review 1), each proved on real instances.

Source and target are copies of the recorded CairnCMS SQLite instance (as in ``tests/test_sync.py``),
the runs are the real ``sync_run`` with its real ``content`` moves; PostgreSQL state stores are real
databases of the test server.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from instance_fixtures import CairnSqliteInstance, bearer
from test_sync import TOKEN, _activity, _profile, pair, sidecar  # noqa: F401 - fixtures

from cairn_migrate import operations
from cairn_migrate.cli import cli
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations import OpContext
from cairn_migrate.operations import sync as sync_module
from cairn_migrate.operations.sync_profiles import SyncStore, dispose
from cairn_migrate.service.app import get_state
from cairn_migrate.service.state import instance_scope
from cairn_migrate.testing import create_postgres_database, drop_postgres_database

Pair = tuple[CairnSqliteInstance, CairnSqliteInstance]


def _cli(state: Path, source: CairnSqliteInstance, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}", **(env or {})}).invoke(
        cli, ["--env", str(source.env_path), "sync", *args], catch_exceptions=False)
    try:
        return result.exit_code, json.loads(result.output)
    except ValueError:
        return result.exit_code, result.output


def _sql(instance: CairnSqliteInstance, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(f"sqlite:///{instance.db_path}")
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- D5
def test_skip_if_target_modified_reads_target_keys_through_the_id_map(pair: Pair, tmp_path: Path) -> None:
    """tags has integer keys: the target's own tags 1-5 stay, the source's arrive as 6-10 (the ID map).
    A target edit of a remapped row is honoured; an unrelated target row with the source's number is not a
    conflict."""
    source, target = pair
    state = tmp_path / "state.db"
    _sql(target, "UPDATE tags SET slug = 't-' || slug, name = 'T ' || name")  # the target's own five tags
    code, _ = _cli(state, source, "add", "tags", "--from", str(source.env_path), "--to", str(target.env_path),
                   "--collection", "tags", "--conflict", "skip-if-target-modified", "--json")
    assert code == 0
    code, first = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and first["counts"]["tags"]["tags"]["created"] == 5, first
    mapped = _sql(target, "SELECT id FROM tags WHERE slug = 'tutorial'")[0][0]
    assert mapped != 2

    # both sides edit the same logical row (source 2 = target `mapped`), each with its API's activity row
    _sql(source, "UPDATE tags SET color = '#SOURCE' WHERE id = 2")
    _activity(source, ("update", "tags", "2"))
    _sql(target, "UPDATE tags SET color = '#TARGET' WHERE id = :i", i=mapped)
    _activity(target, ("update", "tags", str(mapped)))
    code, report = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and report["conflicts"] == {"tags": ["2"]}, report
    assert report["steps"]["tags"]["conflicts_target"] == [str(mapped)]
    assert _sql(target, "SELECT color FROM tags WHERE id = :i", i=mapped) == [("#TARGET",)]
    code, history = _cli(state, source, "history", "tags")  # the text says what JSON does: the row left alone
    assert code == 0 and " ok, 1 conflict left alone " in history.splitlines()[0], history

    # the target edits its own tag 2 (never moved from the source); the source edits its tag 2 again
    _sql(target, "UPDATE tags SET color = '#OWN' WHERE id = 2")
    _activity(target, ("update", "tags", "2"))
    _sql(source, "UPDATE tags SET color = '#SOURCE-2' WHERE id = 2")
    _activity(source, ("update", "tags", "2"))
    code, report = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and report["conflicts"] == {} and report["steps"]["tags"]["conflicts"] == [], report
    assert _sql(target, "SELECT color FROM tags WHERE id = :i", i=mapped) == [("#SOURCE-2",)]
    assert _sql(target, "SELECT color FROM tags WHERE id = 2") == [("#OWN",)]


# --------------------------------------------------------------------------- W3, C2, S2 (token env)
def test_the_same_instance_is_refused_however_it_is_spelled(pair: Pair, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = pair
    state = tmp_path / "state.db"
    monkeypatch.chdir(source.folder.parent)
    spelled = f"./{source.folder.name}/../{source.folder.name}/.env"  # relative, not the same string
    code, out = _cli(state, source, "add", "self", "--from", str(source.env_path), "--to", spelled,
                     "--collection", "articles")
    assert code == 2 and "same instance" in out and str(source.db_path.resolve()) in out, out
    twin = tmp_path / "twin"  # another .env naming the source's database
    twin.mkdir()
    (twin / ".env").write_text(source.env_path.read_text())
    code, out = _cli(state, source, "add", "self", "--from", str(source.env_path), "--to", str(twin / ".env"),
                     "--collection", "articles")
    assert code == 2 and "same instance" in out, out
    code, added = _cli(state, source, "add", "ok", "--from", f"./{source.folder.name}/.env",
                       "--to", f"./{target.folder.name}/.env", "--collection", "articles", "--json")
    assert code == 0, added
    assert added["source"] == str(source.env_path.resolve()) and added["target"] == str(target.env_path.resolve())


def test_cli_add_warns_when_a_sidecar_would_refuse_the_paths(pair: Pair, tmp_path: Path) -> None:
    source, target = pair
    state = tmp_path / "state.db"
    args = ("--from", str(source.env_path), "--to", str(target.env_path), "--collection", "articles")
    code, added = _cli(state, source, "add", "a", *args, "--json", env={"CAIRN_MIGRATE_HTTP_PATHS": ""})
    assert code == 0 and len(added["warnings"]) == 2
    assert "outside CAIRN_MIGRATE_HTTP_PATHS" in added["warnings"][0] and "invalid" in added["warnings"][0]
    code, text = _cli(state, source, "add", "b", *args, env={"CAIRN_MIGRATE_HTTP_PATHS": str(source.folder)})
    assert code == 0 and text.count("warning: ") == 1 and "the target" in text, text
    code, added = _cli(state, source, "add", "c", *args, "--json",
                       env={"CAIRN_MIGRATE_HTTP_PATHS": str(tmp_path)})
    assert code == 0 and added["warnings"] == []


def test_target_token_env_names_only_cairn_migrate_token_variables(pair: Pair, tmp_path: Path) -> None:
    source, target = pair
    state = tmp_path / "state.db"
    args = ("--from", str(source.env_path), "--to", str(target.env_path), "--collection", "articles",
            "--promote-first")
    for name in ("HOME", "CAIRN_MIGRATE_STATE_URL", "AWS_SECRET_ACCESS_KEY"):
        code, out = _cli(state, source, "add", "p", *args, "--target-token-env", name)
        assert code == 2 and "CAIRN_MIGRATE_TOKEN_" in out, out
    code, added = _cli(state, source, "add", "p", *args, "--target-token-env", "CAIRN_MIGRATE_TOKEN_STAGING", "--json")
    assert code == 0 and added["target_token_env"] == "CAIRN_MIGRATE_TOKEN_STAGING"


def test_alert_webhook_under_an_instances_public_url(pair: Pair, tmp_path: Path) -> None:
    source, target = pair
    state = tmp_path / "state.db"
    text = re.sub(r"^PUBLIC_URL=.*$", "", target.env_path.read_text(), flags=re.MULTILINE)
    target.env_path.write_text(text + "\nPUBLIC_URL=https://cms.example.org/admin-base\n")
    args = ("--from", str(source.env_path), "--to", str(target.env_path), "--collection", "articles")
    for url in ("https://cms.example.org/admin-base/flows/trigger/1", "https://cms.example.org/admin-base"):
        assert _cli(state, source, "add", "w", *args, "--alert-webhook", url, "--json",
                    env={"CAIRN_MIGRATE_WEBHOOK_HOSTS": ""})[0] == 0
        assert _cli(state, source, "remove", "w")[0] == 0
    for url in ("https://cms.example.org/other/flows/trigger/1", "http://cms.example.org/admin-base/x",
                "https://cms.example.org:8443/admin-base/x", "https://cms.example.org.evil.test/admin-base/x",
                "http://127.0.0.1:5432/"):
        code, out = _cli(state, source, "add", "w", *args, "--alert-webhook", url, env={"CAIRN_MIGRATE_WEBHOOK_HOSTS": ""})
        assert code == 2 and "--alert-webhook: " in out, (url, out)  # the CLI names its option


# --------------------------------------------------------------------------- R2, R4
def test_the_state_engine_has_timeouts_and_keepalives_and_remove_never_waits(pair: Pair, pg_admin_url: str,
                                                                              tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from cairn_migrate.operations.sync_profiles import validate_profile
    from cairn_migrate.service.jobs import _state_engine

    source, _ = pair
    name = create_postgres_database(pg_admin_url, prefix="cm_syncfix")
    url = make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    try:
        engine = _state_engine(url)
        with engine.connect() as conn:
            given = conn.connection.dbapi_connection.info.get_parameters()
            server_side = conn.execute(sa.text("SHOW tcp_keepalives_idle")).scalar()
            over_tcp = conn.execute(sa.text("SELECT inet_client_addr() IS NOT NULL")).scalar()
        engine.dispose()
        assert given["keepalives"] == "1" and int(given["keepalives_idle"]) > 0 and int(given["connect_timeout"]) >= 2
        assert server_side == "30" or not over_tcp  # the server drops a dead lock holder (TCP sessions only)
        instance = Instance.from_env_file(source.env_path, environ={})
        store = SyncStore(url, instance_scope(instance))
        profile = store.add(validate_profile(_profile(pair, initial="from-now")))
        with store.run_lock(profile["id"]) as held:  # a run in progress (another sidecar's)
            assert held is not None
            started = time.monotonic()
            with pytest.raises(Exception) as refused:
                SyncStore(url, instance_scope(instance)).remove(profile["name"])
            assert time.monotonic() - started < 5
            assert getattr(refused.value, "http_status", None) == 409 and "running" in str(refused.value.message)
        assert store.remove(profile["name"])["name"] == profile["name"]
    finally:
        dispose(url)
        drop_postgres_database(pg_admin_url, name)


def test_delete_over_http_answers_409_while_a_run_holds_the_profile(sidecar: Any, pair: Pair) -> None:
    client, headers = sidecar.test_client(), bearer(TOKEN)
    assert client.post("/migrate/syncs", json=_profile(pair), headers=headers).status_code == 201
    state = get_state(sidecar)
    store = SyncStore(str(state.config["CAIRN_MIGRATE_STATE_URL"]), state.scope)
    profile = store.get("articles-nightly")
    with store.run_lock(profile["id"]) as held:
        assert held is not None
        answer = client.delete("/migrate/syncs/articles-nightly", headers=headers)
        assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "running"
    assert client.delete("/migrate/syncs/articles-nightly", headers=headers).status_code == 200


def test_a_dry_run_does_not_hold_the_run_lock(pair: Pair, pg_admin_url: str) -> None:
    """While a dry run is under way (held up reading the source), the scheduled run of the slot takes the lock."""
    from sqlalchemy.engine import make_url

    from cairn_migrate.operations.sync_profiles import validate_profile

    source, _ = pair
    name = create_postgres_database(pg_admin_url, prefix="cm_syncfix")
    url = make_url(pg_admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    blocker = sqlite3.connect(source.db_path, timeout=0, isolation_level=None)
    try:
        instance = Instance.from_env_file(source.env_path, environ={})
        store = SyncStore(url, instance_scope(instance))
        profile = store.add(validate_profile(_profile(pair, initial="from-now")))
        context = OpContext(instance=lambda: instance, state_url=url, open_instance=Instance.from_env_file)
        blocker.execute("BEGIN EXCLUSIVE")  # the source cannot be read until released
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(operations.run(
            "sync_run", context, {"name": profile["name"], "trigger": "manual", "dry_run": True})), daemon=True)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive()  # the dry run waits on the source
        with store.run_lock(profile["id"]) as held:
            assert held is not None, "the dry run holds the run lock"
        blocker.execute("ROLLBACK")
        thread.join(120)
        assert done and done[0][0]["dry_run"]
    finally:
        blocker.close()
        dispose(url)
        drop_postgres_database(pg_admin_url, name)


# --------------------------------------------------------------------------- W1, R1
def test_an_activity_row_committed_after_a_run_read_past_it_is_still_seen(pair: Pair, tmp_path: Path) -> None:
    """A transaction took activity id N, another took N+1 and committed, a run read up to N+1; then the
    first committed.  The run recorded N as missing, so the next run reads it."""
    source, target = pair
    state = tmp_path / "state.db"
    assert _cli(state, source, "add", "tags", "--from", str(source.env_path), "--to", str(target.env_path),
                "--collection", "tags", "--initial", "from-now", "--json")[0] == 0
    assert _cli(state, source, "run", "tags", "--json")[0] == 0
    mark = _sql(source, "SELECT MAX(id) FROM directus_activity")[0][0]
    now_ms = int(time.time() * 1000)
    _sql(source, "INSERT INTO directus_activity (id, action, timestamp, ip, collection, item) "
         "VALUES (:id, 'create', :ts, '127.0.0.1', 'articles', 'other')", id=mark + 2, ts=now_ms)
    code, second = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and second["watermark_after"]["tags"] == mark + 2
    assert [gap for gap, _ in second["activity_gaps"]] == [mark + 1]
    # the late transaction commits: id mark+1
    _sql(source, "UPDATE tags SET name = 'Late commit' WHERE id = 4")
    _sql(source, "INSERT INTO directus_activity (id, action, timestamp, ip, collection, item) "
         "VALUES (:id, 'update', :ts, '127.0.0.1', 'tags', '4')", id=mark + 1, ts=now_ms)
    code, third = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and third["steps"]["tags"]["changed"]["upsert"] == ["4"], third["steps"]["tags"]
    assert ("Late commit",) in _sql(target, "SELECT name FROM tags") and third["activity_gaps"] == []
    code, fourth = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and fourth["steps"]["tags"].get("skipped") == "no changes", fourth["steps"]["tags"]

    # a gap older than the lookback (CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS) is given up: the bound of the race
    _sql(source, "INSERT INTO directus_activity (id, action, timestamp, ip, collection, item) "
         "VALUES (:id, 'create', :ts, '127.0.0.1', 'articles', 'other')", id=mark + 5, ts=now_ms)
    code, fifth = _cli(state, source, "run", "tags", "--json")
    assert [gap for gap, _ in fifth["activity_gaps"]] == [mark + 3, mark + 4]
    time.sleep(1.1)
    code, sixth = _cli(state, source, "run", "tags", "--json", env={"CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS": "1"})
    assert code == 0 and sixth["activity_gaps"] == []


def test_target_modified_filters_dates_in_sql_and_key_lists_are_chunked(pair: Pair, tmp_path: Path) -> None:
    source, target = pair
    engine = sa.create_engine(f"sqlite:///{target.db_path}")
    keys = [k for (k,) in _sql(target, "SELECT id FROM articles ORDER BY id")]
    since = datetime.now(timezone.utc) - timedelta(seconds=5)

    assert sync_module.target_modified(engine, "articles", None, 0, since.isoformat()) == set()  # idle
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    _sql(target, "UPDATE articles SET date_updated = :ms WHERE id = :id", ms=int(later.timestamp() * 1000), id=keys[0])
    _sql(target, "UPDATE articles SET date_updated = :text WHERE id = :id",
         text=later.strftime("%Y-%m-%dT%H:%M:%S.000Z"), id=keys[1])
    _sql(target, "UPDATE articles SET date_updated = :ms WHERE id = :id",
         ms=int((since - timedelta(hours=2)).timestamp() * 1000), id=keys[2])
    assert sync_module.target_modified(engine, "articles", None, 0, since.isoformat()) == {str(keys[0]), str(keys[1])}
    compiled = str(sync_module._updated_after(engine, sa.column("date_updated"), since.replace(tzinfo=None)))
    assert "typeof" in compiled  # the date condition is the query's, not a scan filtered here
    engine.dispose()

    # 1,200 changed keys (more than SQLite's oldest limit of 999 bound parameters): content moves of at
    # most CHUNK keys each
    state = tmp_path / "state.db"
    assert _cli(state, source, "add", "arts", "--from", str(source.env_path), "--to", str(target.env_path),
                "--collection", "articles", "--initial", "from-now", "--json")[0] == 0
    assert _cli(state, source, "run", "arts", "--json")[0] == 0
    _activity(source, *[("update", "articles", f"00000000-0000-4000-8000-{i:012d}") for i in range(1200)])
    code, report = _cli(state, source, "run", "arts", "--json")
    step = report["steps"]["articles"]
    assert code == 0 and step["batches"] == 3 and len(step["params"]["filter"]["id"]["_in"]) == sync_module.CHUNK, step


# --------------------------------------------------------------------------- W2
def test_edits_of_related_rows_re_move_their_roots(pair: Pair, tmp_path: Path) -> None:
    """An edited translation (o2m child), junction row, and a file a root references: each re-moves its article."""
    source, target = pair
    for instance in pair:  # the files' bytes, as the recorded instance has them
        shutil.copytree(Path(__file__).parent / "fixtures" / "sqlite" / "uploads", instance.folder / "uploads",
                        dirs_exist_ok=True)
    state = tmp_path / "state.db"
    assert _cli(state, source, "add", "arts", "--from", str(source.env_path), "--to", str(target.env_path),
                "--collection", "articles", "--initial", "from-now", "--json")[0] == 0
    assert _cli(state, source, "run", "arts", "--json")[0] == 0
    article2, article1 = "2f499235-1d0a-4141-86b2-7643dd1c2dda", "343736c0-78a6-40dc-9988-5354d3c09f24"
    _sql(source, "UPDATE articles_translations SET title = 'Article 2, translated again' WHERE id = 3")
    cover = _sql(source, "SELECT cover_image FROM articles WHERE id = :a", a=article1)[0][0]
    assert cover
    users = [k for (k,) in _sql(source, "SELECT id FROM articles WHERE cover_image = :f OR attachment = :f", f=cover)]
    _sql(source, "UPDATE directus_files SET title = 'Cover, replaced' WHERE id = :f", f=cover)
    _activity(source, ("update", "articles_translations", "3"), ("update", "directus_files", cover),
              ("update", "articles_translations", "999999"))  # a child gone since: nothing to map
    code, report = _cli(state, source, "run", "arts", "--json")
    step = report["steps"]["articles"]
    assert code == 0 and report["status"] == "ok", json.dumps({k: v for k, v in step.items() if k != "report"})[:3000]
    assert set(step["changed"]["upsert"]) == {article2, *users}, step
    assert step["related"]["rows"] == {"articles_translations": 2, "directus_files": 1}
    assert _sql(target, "SELECT title FROM articles_translations WHERE articles_id = :a AND languages_code = 'en-US'",
                a=article2) == [("Article 2, translated again",)]
    assert _sql(target, "SELECT title FROM directus_files WHERE id = :f", f=cover) == [("Cover, replaced",)]
    code, idle = _cli(state, source, "run", "arts", "--json", env={"CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS": "0"})
    assert code == 0 and idle["steps"]["articles"].get("skipped") == "no changes"


def test_a_mirror_of_integer_keys_touches_the_mapped_target_rows_only(pair: Pair, tmp_path: Path) -> None:
    """tags (integer keys) in mirror mode: the source's tags are the target's 6-10; the target's own 1-5 (other
    slugs) are outside the profile's filter.  An update and a delete on the source reach the mapped rows; the
    target's own rows with the same numbers stay."""
    source, target = pair
    state = tmp_path / "state.db"
    _sql(target, "UPDATE tags SET slug = 'own-' || slug, name = 'Own ' || name, color = NULL")
    assert _sql(source, "SELECT COUNT(*) FROM tags WHERE color IS NULL") == [(0,)]
    code, _ = _cli(state, source, "add", "tags", "--from", str(source.env_path), "--to", str(target.env_path),
                   "--collection", "tags", "--filter", 'tags={"color": {"_nnull": true}}',
                   "--mode", "mirror", "--max-delete", "3", "--json")
    assert code == 0
    code, first = _cli(state, source, "run", "tags", "--json")
    assert code == 0, json.dumps(first)[:3000]
    mapped = dict(_sql(target, "SELECT slug, id FROM tags WHERE slug NOT LIKE 'own-%'"))
    slug2, slug3 = (_sql(source, "SELECT slug FROM tags WHERE id = :i", i=i)[0][0] for i in (2, 3))
    assert mapped[slug2] != 2 and mapped[slug3] != 3
    own = _sql(target, "SELECT id, name FROM tags WHERE slug LIKE 'own-%' ORDER BY id")
    assert [i for i, _ in own] == [1, 2, 3, 4, 5]

    _sql(source, "UPDATE tags SET color = '#UPDATED' WHERE id = 3")
    _sql(source, "DELETE FROM articles_tags WHERE tags_id = 2")
    _sql(source, "DELETE FROM tags WHERE id = 2")
    _activity(source, ("update", "tags", "3"), ("delete", "tags", "2"))
    code, report = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and report["status"] == "ok", report
    assert _sql(target, "SELECT color FROM tags WHERE id = :i", i=mapped[slug3]) == [("#UPDATED",)]
    assert _sql(target, "SELECT id FROM tags WHERE id = :i", i=mapped[slug2]) == []  # the mapped row is gone
    assert _sql(target, "SELECT id, name FROM tags WHERE slug LIKE 'own-%' ORDER BY id") == own  # untouched


def test_a_created_integer_key_never_deletes_the_targets_row_of_that_number(pair: Pair, tmp_path: Path) -> None:
    """The reviewer's repro: a mirror of tags; the target has its own tag 6, the source creates its tag 6."""
    source, target = pair
    state = tmp_path / "state.db"
    assert _cli(state, source, "add", "tags", "--from", str(source.env_path), "--to", str(target.env_path),
                "--collection", "tags", "--mode", "mirror", "--max-delete", "5", "--initial", "from-now",
                "--json")[0] == 0
    assert _cli(state, source, "run", "tags", "--json")[0] == 0
    _sql(target, "INSERT INTO tags (id, name, slug) VALUES (6, 'Target only', 'target-only')")
    _sql(source, "INSERT INTO tags (id, name, slug) VALUES (6, 'Fresh on source', 'fresh')")
    _activity(source, ("create", "tags", "6"))
    code, report = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and report["counts"]["tags"]["tags"]["deleted"] == 0, report
    assert _sql(target, "SELECT id, name FROM tags WHERE id > 5 ORDER BY id") == [(6, "Target only"),
                                                                                (7, "Fresh on source")]
