"""``content move`` over the direct database path, on real servers and real CairnCMS 1.0.0-beta.4.

The source is the recorded SQLite instance; the target the recorded PostgreSQL instance, populated
and made different (its articles, authors and tags renamed), so every integer key of the moved
authors, tags, junction rows, translations and comments collides with a target row.  Published
articles move with their authors, tags (m2m), translations, comments (o2m), files (bytes
included) and folder; CairnCMS booted once on the target serves them.  The tests run in order
on one pair of instances: dry run, move, what CairnCMS serves, a second run, depth, mirror.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import FIXTURES, make_instance, query
from live_instance import Platform, free_port, server_env, start_server, stop_process

from cairn_migrate.cli import cli
from cairn_migrate.content.filter import compile_filter, parse
from cairn_migrate.errors import InvalidInput
from cairn_migrate.instance.database import Database
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "content-move-admin-token-0123456789"
PUBLISHED = '{"status": {"_eq": "published"}}'


@dataclass
class Pair:
    source: Path
    target: Path
    url: str
    state: Path

    def move(self, *args: str, source: Path | None = None) -> tuple[int, dict[str, Any] | str]:
        env = {"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}"}
        result = CliRunner(env=env).invoke(cli, ["content", "move", "--from", str(source or self.source), "--to",
                                                 str(self.target), *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        if "--json" in args:
            return result.exit_code, json.loads(result.output)
        return result.exit_code, result.output

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.url + path, params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["data"] if response.headers.get("content-type", "").startswith("application/json") \
            else response.content



@pytest.fixture(scope="module")
def pair(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("content-move")
    source = build_sqlite_instance(FIXTURES / "sqlite", base / "src")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    target = make_instance("postgres", base / "dst", request,
                           extra_env={"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url, "LOG_STYLE": "raw"})
    (target.parent / "package.json").write_text('{"name": "content-target", "private": true}\n')
    # Different rows under the same integer keys: the target's own authors, tags and articles.
    query(target, "UPDATE articles SET slug = 'pg-' || slug, title = 'PG ' || title")
    query(target, "UPDATE authors SET email = 'pg-' || email, name = 'PG ' || name")
    query(target, "UPDATE tags SET slug = 'pg-' || slug, name = 'PG ' || name")
    query(target, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    server = start_server(cairncms, target.parent, url, server_env(), base / "cairncms.log")
    try:
        yield Pair(source, target, url, base / "state" / "state.db")
    finally:
        stop_process(server)


def published_slugs(env: Path) -> list[str]:
    return sorted(r.slug for r in query(env, "SELECT slug FROM articles WHERE status = 'published'"))


def test_a_dry_run_plans_every_related_collection_and_writes_nothing(pair: Pair) -> None:
    before = query(pair.target, "SELECT count(*) FROM articles")[0][0]
    code, report = pair.move("--collection", "articles", "--filter", PUBLISHED, "--dry-run", "--json")
    assert code == 1 and isinstance(report, dict)
    plan = report["plan"]
    assert plan["articles"]["created"] == len(published_slugs(pair.source)) == 10
    for name in ("authors", "tags", "articles_tags", "articles_translations", "article_comments", "directus_files",
                 "directus_folders"):
        assert plan[name]["created"] > 0, name
    assert plan["languages"]["unchanged"] == 2  # string keys, the same rows on both sides
    assert report["files"]["copy"] == 3 and report["files"]["bytes"] == 248 + 73 + 594
    assert report["users"] == {"matched": 1, "unmatched": []}
    assert query(pair.target, "SELECT count(*) FROM articles")[0][0] == before


def test_the_move_remaps_integer_keys_without_collision(pair: Pair) -> None:
    target_authors = {r.id: r.name for r in query(pair.target, "SELECT id, name FROM authors")}
    code, output = pair.move("--collection", "articles", "--filter", PUBLISHED)
    assert code == 0, output
    assert "applied" in str(output)
    # The target's own rows are untouched; the moved ones got new ids.
    for key, name in target_authors.items():
        assert query(pair.target, "SELECT name FROM authors WHERE id = :i", i=key)[0][0] == name
    moved = query(pair.target, "SELECT a.slug, au.name AS author, au.id AS author_id FROM articles a "
                               "JOIN authors au ON au.id = a.author WHERE a.slug NOT LIKE 'pg-%'")
    source = {r.slug: r.name for r in query(pair.source, "SELECT a.slug, au.name FROM articles a JOIN authors au "
                                                         "ON au.id = a.author WHERE a.status = 'published'")}
    assert {r.slug: r.author for r in moved} == source
    assert all(r.author_id > max(target_authors) for r in moved)
    links = query(pair.target, "SELECT a.slug, t.name FROM articles_tags j JOIN articles a ON a.id = j.articles_id "
                               "JOIN tags t ON t.id = j.tags_id WHERE a.slug NOT LIKE 'pg-%'")
    source_links = query(pair.source, "SELECT a.slug, t.name FROM articles_tags j JOIN articles a ON a.id = j.articles_id "
                                      "JOIN tags t ON t.id = j.tags_id WHERE a.status = 'published'")
    assert sorted(map(tuple, links)) == sorted(map(tuple, source_links))
    users = query(pair.target, "SELECT DISTINCT u.email FROM articles a JOIN directus_users u ON u.id = a.user_created "
                               "WHERE a.slug NOT LIKE 'pg-%'")
    assert [u.email for u in users] == ["admin@example.com"]  # the target's own admin, matched by email


def test_cairncms_serves_the_moved_items_and_their_bytes(pair: Pair) -> None:
    article = pair.get("/items/articles", **{"filter[slug][_eq]": "article-1", "fields": "*,tags.*,translations.*"})[0]
    source_id = query(pair.source, "SELECT id FROM articles WHERE slug = 'article-1'")[0][0]
    assert article["id"] == source_id  # uuid keys are kept
    assert len(article["translations"]) == 2 and len(article["tags"]) == 2
    tags = pair.get("/items/articles", **{"filter[slug][_eq]": "article-1", "fields": "tags.tags_id.name,author.name,"
                                          "comments.text,translations.languages_code.code"})[0]
    source_tags = query(pair.source, "SELECT t.name FROM articles_tags j JOIN tags t ON t.id = j.tags_id "
                                     "WHERE j.articles_id = :a", a=source_id)
    assert sorted(t["tags_id"]["name"] for t in tags["tags"]) == sorted(r.name for r in source_tags)
    assert tags["author"]["name"] == "Grace Hopper"
    assert len(tags["comments"]) == query(pair.source, "SELECT count(*) FROM article_comments WHERE article = :a",
                                          a=source_id)[0][0]
    assert sorted(t["languages_code"]["code"] for t in tags["translations"]) == ["de-DE", "en-US"]
    for file_id, name in query(pair.source, "SELECT id, filename_disk FROM directus_files"):
        assert pair.get(f"/assets/{file_id}") == (FIXTURES / "sqlite" / "uploads" / name).read_bytes()


def test_a_second_run_changes_nothing(pair: Pair) -> None:
    counts = {t: query(pair.target, f"SELECT count(*) FROM {t}")[0][0]
              for t in ("articles", "authors", "tags", "articles_tags", "articles_translations", "article_comments")}
    code, report = pair.move("--collection", "articles", "--filter", PUBLISHED, "--json")
    assert code == 0 and isinstance(report, dict)
    assert not report["changes"]
    assert all(c["created"] == c["updated"] == c["deleted"] == 0 for c in report["plan"].values())
    assert report["files"]["copy"] == 0
    assert pair.move("--collection", "articles", "--filter", PUBLISHED, "--dry-run")[0] == 0
    assert counts == {t: query(pair.target, f"SELECT count(*) FROM {t}")[0][0] for t in counts}


def test_depth_zero_moves_only_the_rows_and_nulls_what_the_target_lacks(pair: Pair) -> None:
    query(pair.source, "INSERT INTO authors (name, email) VALUES ('Edsger Dijkstra', 'edsger@example.com')")
    author = query(pair.source, "SELECT id FROM authors WHERE email = 'edsger@example.com'")[0][0]
    known = query(pair.source, "SELECT author FROM articles WHERE slug = 'article-1'")[0][0]
    query(pair.source, "INSERT INTO articles (id, status, title, slug, author) VALUES "
                       "('0f0f0f0f-0000-4000-8000-000000000001', 'published', 'Shallow', 'shallow', :a), "
                       "('0f0f0f0f-0000-4000-8000-000000000002', 'published', 'Known', 'known', :k)", a=author, k=known)
    filter_ = '{"slug": {"_in": ["shallow", "known"]}}'
    code, report = pair.move("--collection", "articles", "--filter", filter_, "--depth", "0", "--json")
    assert code == 0 and isinstance(report, dict)
    assert set(report["plan"]) == {"articles"} and report["plan"]["articles"]["created"] == 2
    assert report["nulled"] == {"articles.author": 1}
    rows = {r.slug: r.name for r in query(pair.target, "SELECT a.slug, au.name FROM articles a LEFT JOIN authors au "
                                                       "ON au.id = a.author WHERE a.slug IN ('shallow', 'known')")}
    # beyond the depth: the author the target lacks is NULL; the one moved before is found through the ID map
    assert rows == {"shallow": None, "known": "Grace Hopper"}


def test_mirror_deletes_only_what_the_source_dropped_and_refuses_above_max_delete(pair: Pair) -> None:
    slugs = published_slugs(pair.source)
    mirror = json.dumps({"status": {"_eq": "published"}, "slug": {"_in": slugs}})
    code, _ = pair.move("--collection", "articles", "--filter", mirror)  # the rows mirror may later delete are ours
    assert code in (0, 1), _
    dropped_comment = query(pair.source, "SELECT c.id, c.text FROM article_comments c JOIN articles a ON a.id = c.article "
                                         "WHERE a.slug = 'article-1' ORDER BY c.id")[0]
    query(pair.source, "DELETE FROM article_comments WHERE id = :i", i=dropped_comment.id)
    query(pair.source, "UPDATE articles SET status = 'draft' WHERE slug = 'article-4'")
    before = query(pair.target, "SELECT count(*) FROM articles")[0][0]

    code, output = pair.move("--collection", "articles", "--filter", mirror, "--mode", "mirror")
    assert code == 2 and "needs consent" in str(output), output
    code, report = pair.move("--collection", "articles", "--filter", mirror, "--mode", "mirror", "--max-delete", "1",
                             "--json")
    assert code == 2 and isinstance(report, dict)
    assert "more than --max-delete 1" in report["refused"][0]["message"]
    assert report["plan"]["articles"]["deleted"] == 1 and report["plan"]["article_comments"]["deleted"] == 1
    # the article's two translations go with it (ON DELETE CASCADE on the target): counted against --max-delete
    assert report["cascaded"] == {"articles_translations": 2}
    assert "mirror would delete 4 target rows (2 of them by ON DELETE CASCADE" in report["refused"][0]["message"]
    assert query(pair.target, "SELECT count(*) FROM articles")[0][0] == before  # refused: nothing deleted

    code, report = pair.move("--collection", "articles", "--filter", mirror, "--mode", "mirror", "--max-delete", "4",
                             "--json")
    assert code == 0 and isinstance(report, dict), (report["refused"], report.get("cascaded"))
    assert query(pair.target, "SELECT count(*) FROM articles")[0][0] == before - 1
    assert not query(pair.target, "SELECT id FROM articles WHERE slug = 'article-4'")
    comments = {r.slug: r.text for r in query(pair.target, "SELECT a.slug, c.text FROM article_comments c "
                                                         "JOIN articles a ON a.id = c.article")}
    assert "article-1" not in comments  # its one comment, dropped on the source
    assert comments["article-5"] == query(pair.source, "SELECT c.text FROM article_comments c JOIN articles a "
                                                       "ON a.id = c.article WHERE a.slug = 'article-5'")[0][0]
    assert len(published_slugs(pair.target)) >= 10  # the target's own (pg-) articles are still there


def test_a_schema_mismatch_is_refused_naming_the_field(pair: Pair, tmp_path: Path) -> None:
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    query(source, "ALTER TABLE authors ADD COLUMN website varchar(255) NULL")
    query(source, "INSERT INTO directus_fields (collection, field, interface) VALUES ('authors', 'website', 'input')")
    before = query(pair.target, "SELECT count(*) FROM articles")[0][0]
    code, output = pair.move("--collection", "articles", "--filter", PUBLISHED, source=source)
    assert code == 2
    assert "authors.website: only on the source" in str(output) and "cairn-migrate promote" in str(output)
    assert query(pair.target, "SELECT count(*) FROM articles")[0][0] == before


def test_via_api_needs_a_token_and_via_db_the_targets_env(pair: Pair) -> None:
    code, output = pair.move("--collection", "articles", "--via", "api")
    assert code == 2 and "needs an admin token" in str(output) and "--to-token" in str(output)
    # a target named by URL is read and written through its API only (tests/test_content_api_source.py): --via db
    # writes its database, which a URL does not name
    result = CliRunner().invoke(cli, ["content", "move", "--from", str(pair.source), "--to", pair.url,
                                      "--collection", "articles", "--to-token", TOKEN])
    assert result.exit_code == 2 and "is a URL, not an instance's .env" in result.output and "--via api" in result.output


def test_filters_compile_to_conditions_and_refuse_unknown_fields(tmp_path: Path) -> None:
    env = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    columns = ["id", "status", "slug", "word_count", "cover_image", "featured"]

    def count(spec: str) -> int:
        condition = compile_filter(parse(spec), "articles", columns)
        with Database.open(Instance.from_env_file(env)) as db, db.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table("articles")).where(condition)).scalar_one())

    assert count('{"status": {"_eq": "published"}}') == 10
    assert count('{"status": {"_neq": "published"}}') == 11
    assert count('{"status": {"_in": ["draft", "archived"]}}') == 11
    assert count('{"status": {"_nin": ["draft", "archived"]}}') == 10
    assert count('{"cover_image": {"_null": true}}') == 6
    assert count('{"cover_image": {"_nnull": true}}') == 15
    assert count('{"word_count": {"_gt": 200}}') == 6 and count('{"word_count": {"_gte": 198}}') == 7
    assert count('{"word_count": {"_lt": 114}}') == 1 and count('{"word_count": {"_lte": 114}}') == 2
    assert count('{"slug": {"_contains": "article-1"}}') == 11
    assert count('{"_or": [{"slug": {"_eq": "article-1"}}, {"_and": [{"featured": {"_eq": true}}, '
                 '{"status": {"_eq": "draft"}}]}]}') == 2
    for bad, message in (('{"nope": {"_eq": 1}}', "no field 'nope'"), ('{"slug": {"_like": "x"}}', "unsupported"),
                         ('[1]', "JSON object"), ('{"_or": {}}', "non-empty list")):
        with pytest.raises(InvalidInput, match=message):
            compile_filter(parse(bad), "articles", columns)


def test_a_relational_filter_says_related_fields_are_not_supported_and_what_to_do() -> None:
    """Operator trial: ``{"author": {"name": {"_eq": "x"}}}`` (Directus's filter on a related collection's field)
    was reported as "unsupported operator name"; it names the related field and the two ways that work."""
    with pytest.raises(InvalidInput) as caught:
        compile_filter(parse('{"author": {"name": {"_eq": "x"}}}'), "articles", ["id", "author"])
    assert "author.name is a field of the related collection" in caught.value.message
    assert "filters on related collections' fields are not supported" in caught.value.message
    assert "filter on the foreign key" in (caught.value.hint or "")
    assert "move from the related collection" in (caught.value.hint or "")


# --------------------------------------------------------------------------- other targets and shapes
def _move(source: Path, target: Path, state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"}).invoke(
        cli, ["content", "move", "--from", str(source), "--to", str(target), "--json", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.output)


_BLOCKS = (
    "CREATE TABLE articles_blocks (id integer PRIMARY KEY AUTOINCREMENT NOT NULL, articles_id char(36) NULL, "
    "item varchar(255) NULL, collection varchar(255) NULL)",
    "INSERT INTO directus_relations (many_collection, many_field, one_collection, one_field, one_allowed_collections, "
    "one_collection_field, junction_field) VALUES ('articles_blocks', 'item', NULL, NULL, 'tags,authors', 'collection', "
    "'articles_id')",
    "INSERT INTO directus_relations (many_collection, many_field, one_collection, one_field, junction_field) "
    "VALUES ('articles_blocks', 'articles_id', 'articles', 'blocks', 'item')",
    "INSERT INTO directus_fields (collection, field, special, interface) VALUES ('articles', 'blocks', 'm2a', "
    "'list-m2a')",
)


def test_many_to_any_items_follow_with_their_keys_remapped_on_a_sqlite_target(tmp_path: Path) -> None:
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst")
    for env in (source, target):
        for statement in _BLOCKS:
            query(env, statement)
    query(target, "INSERT INTO tags (name, slug) VALUES ('Target only', 'target-only')")  # takes the next id
    query(source, "INSERT INTO tags (name, slug) VALUES ('Fresh', 'fresh')")
    fresh = query(source, "SELECT id FROM tags WHERE slug = 'fresh'")[0][0]
    article = query(source, "SELECT id FROM articles WHERE slug = 'article-1'")[0][0]
    query(source, "INSERT INTO articles_blocks (articles_id, item, collection) VALUES (:a, :t, 'tags'), (:a, '3', 'authors')",
          a=article, t=str(fresh))
    state = tmp_path / "state.db"
    one = '{"slug": {"_eq": "article-1"}}'
    code, report = _move(source, target, state, "--collection", "articles", "--filter", one)
    assert code == 0, report
    assert report["plan"]["articles_blocks"]["created"] == 2 and report["plan"]["tags"]["created"] == 1
    assert report["plan"]["articles"]["unchanged"] == 1  # the same uuid row on both sides
    # The target is a clone: authors are found by their unique email, junction rows by the pair they link.
    # The comment (no unique column) is the clone's row with every column equal: adopted, not duplicated.
    assert report["matched_on_target"] == {"authors": 2, "tags": 2, "articles_tags": 2, "articles_translations": 2,
                                           "article_comments": 1}
    assert report["plan"]["articles_tags"]["unchanged"] == report["plan"]["articles_translations"]["unchanged"] == 2
    new_tag = query(target, "SELECT id FROM tags WHERE slug = 'fresh'")[0][0]
    assert new_tag != fresh
    blocks = query(target, "SELECT collection, item FROM articles_blocks WHERE articles_id = :a", a=article)
    assert sorted(map(tuple, blocks)) == [("authors", "3"), ("tags", str(new_tag))]
    assert _move(source, target, state, "--collection", "articles", "--filter", one)[1]["changes"] is False

    query(source, "UPDATE articles SET title = 'Changed on the source' WHERE id = :a", a=article)
    code, report = _move(source, target, state, "--collection", "articles", "--filter", one, "--mode", "skip-existing")
    assert code == 0 and report["plan"]["articles"]["skipped"] == 1
    assert report["changed_fields"]["articles"] == {"title": 1}  # the plan says why, in JSON and in text
    assert query(target, "SELECT title FROM articles WHERE id = :a", a=article)[0][0] != "Changed on the source"
    code, report = _move(source, target, state, "--collection", "articles", "--filter", one)
    assert code == 0 and report["plan"]["articles"]["updated"] == 1
    assert report["changed_fields"]["articles"] == {"title": 1}
    assert query(target, "SELECT title FROM articles WHERE id = :a", a=article)[0][0] == "Changed on the source"


@pytest.mark.mariadb
def test_a_move_onto_a_populated_mariadb_target_converges(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = make_instance("mariadb", tmp_path / "dst", request)
    query(target, "UPDATE articles SET slug = CONCAT('my-', slug)")
    query(target, "UPDATE authors SET email = CONCAT('my-', email), name = CONCAT('My ', name)")
    query(target, "UPDATE tags SET slug = CONCAT('my-', slug), name = CONCAT('My ', name)")
    state = tmp_path / "state.db"
    code, report = _move(source, target, state, "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["applied"], report
    moved = query(target, "SELECT a.slug, au.name, a.published_at, a.featured, a.seo FROM articles a "
                          "JOIN authors au ON au.id = a.author WHERE a.slug NOT LIKE 'my-%'")
    expected = query(source, "SELECT a.slug, au.name FROM articles a JOIN authors au ON au.id = a.author "
                             "WHERE a.status = 'published'")
    assert sorted((r.slug, r.name) for r in moved) == sorted(map(tuple, expected))
    assert all(r.published_at is not None and json.loads(r.seo)["title"].startswith("SEO") for r in moved)
    for _, name in query(source, "SELECT id, filename_disk FROM directus_files"):
        assert (target.parent / "uploads" / name).read_bytes() == (FIXTURES / "sqlite" / "uploads" / name).read_bytes()
    code, report = _move(source, target, state, "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["changes"] is False, report["plan"]


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    """The target refuses a comment half-way: nothing of the run stays, the ID map records nothing, exit 3."""
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst")
    query(target, "DELETE FROM articles")
    query(target, "CREATE TRIGGER no_comments BEFORE INSERT ON article_comments BEGIN SELECT RAISE(ABORT, 'closed'); END")
    counts = {t: query(target, f"SELECT count(*) FROM {t}")[0][0] for t in ("articles", "authors", "tags", "articles_tags")}
    state = tmp_path / "state.db"
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{state}"}).invoke(
        cli, ["content", "move", "--from", str(source), "--to", str(target), "--collection", "articles",
              "--filter", PUBLISHED])
    assert result.exit_code == 3 and "refused a write to article_comments" in result.output, result.output
    assert "rolled back" in result.output
    assert counts == {t: query(target, f"SELECT count(*) FROM {t}")[0][0] for t in counts}
    with sa.create_engine(f"sqlite:///{state}").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cm_content_id_map")).scalar_one() == 0


@pytest.mark.s3
def test_files_move_between_storages_of_different_drivers(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A local source, a target whose only location is S3 (SeaweedFS): the rows name the target's location and
    the bytes land in its bucket, checked by size and SHA-256."""
    from storage_servers import create_container, remove_container, require_storage_server, s3_config
    from test_file_rows import env_keys

    from cairn_migrate.instance.storage import open_location

    require_storage_server("s3")
    config = s3_config(name="remote")
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst", extra_env={
        "STORAGE_LOCATIONS": "remote", "STORAGE_REMOTE_DRIVER": "s3", **env_keys(config)})
    location = open_location(Instance.from_env_file(target).location("remote"))
    create_container(location)
    request.addfinalizer(lambda: remove_container(location))
    query(target, "DELETE FROM articles")
    query(target, "DELETE FROM directus_files")
    code, report = _move(source, target, tmp_path / "state.db", "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["files"] == {"copy": 3, "bytes": 915, "storage": {"local": "remote"}}, report
    for file_id, name, storage in query(target, "SELECT id, filename_disk, storage FROM directus_files"):
        assert storage == "remote"
        assert location.read_bytes(name) == (FIXTURES / "sqlite" / "uploads" / name).read_bytes()
    code, report = _move(source, target, tmp_path / "state.db", "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["changes"] is False and report["files"]["copy"] == 0


def test_post_migrate_ops_plans_at_once_and_runs_the_move_as_a_job(tmp_path: Path) -> None:
    from cairn_migrate.service.app import HTTP_PATHS, create_app, get_state

    allowed = tmp_path / "allowed"
    source = build_sqlite_instance(FIXTURES / "sqlite", allowed / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", allowed / "dst")
    query(target, "DELETE FROM articles")
    query(target, "UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'", t=TOKEN)
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(target), "CAIRN_MIGRATE_SCHEDULER": False,
                      "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}", HTTP_PATHS: str(allowed),
                      "CAIRN_MIGRATE_PEERS": str(source)})  # the source: a peer the sidecar's operator trusts
    try:
        client, headers = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
        params = {"from": str(source), "to": str(target), "collections": ["articles"],
                  "filter": {"status": {"_eq": "published"}}}
        planned = client.post("/migrate/ops", json={"op": "content", "params": {**params, "dry_run": True}},
                              headers=headers)
        assert planned.status_code == 200, planned.get_json()
        assert planned.get_json()["outcome"] == "differences"
        assert planned.get_json()["report"]["plan"]["articles"]["created"] == 10
        assert query(target, "SELECT count(*) FROM articles")[0][0] == 0
        started = client.post("/migrate/ops", json={"op": "content", "params": params}, headers=headers)
        assert started.status_code == 202, started.get_json()
        job = get_state(app).runner.wait(started.get_json()["id"], timeout=120)
        assert job["state"] == "succeeded", job
        assert query(target, "SELECT count(*) FROM articles")[0][0] == 10
        outside = client.post("/migrate/ops", json={"op": "content", "params": {**params, "from": str(tmp_path / "x.env"),
                                                                                "dry_run": True}}, headers=headers)
        assert outside.status_code == 422  # a path outside CAIRN_MIGRATE_HTTP_PATHS
        jobs = len(client.get("/migrate/jobs", headers=headers).get_json()["jobs"])
        for bad, named in (({"filter": "{bad"}, "is not JSON"),
                           ({"filter": {"status": {"_like": "x"}}}, "unsupported operator _like"),
                           ({"collections": ["artcles"]}, "artcles is not a user collection of the source (its collections: "
                            "article_comments, articles,"),
                           ({"filter": {"colour": {"_eq": "x"}}}, "colour")):
            refused = client.post("/migrate/ops", json={"op": "content", "params": {**params, **bad}},
                                  headers=headers)  # an apply: refused at once, not a job that can only fail
            assert refused.status_code == 422 and named in refused.get_json()["error"]["message"], refused.get_json()
        assert len(client.get("/migrate/jobs", headers=headers).get_json()["jobs"]) == jobs
    finally:
        get_state(app).close()


def test_users_are_matched_by_email_and_required_references_beyond_the_depth_are_refused(tmp_path: Path) -> None:
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst")
    for env in (source, target):
        query(env, "CREATE TABLE reviews (id integer PRIMARY KEY AUTOINCREMENT NOT NULL, "
                   "article char(36) NOT NULL REFERENCES articles (id), verdict varchar(255) NULL)")
        query(env, "INSERT INTO directus_relations (many_collection, many_field, one_collection) "
                   "VALUES ('reviews', 'article', 'articles')")
    query(target, "UPDATE directus_users SET email = 'someone-else@example.com' WHERE email = 'editor@example.com'")
    editor = query(source, "SELECT id FROM directus_users WHERE email = 'editor@example.com'")[0][0]
    query(source, "UPDATE articles SET user_created = :e WHERE slug = 'article-2'", e=editor)
    state = tmp_path / "state.db"
    code, report = _move(source, target, state, "--collection", "articles", "--filter", '{"slug": {"_eq": "article-2"}}')
    assert code == 0 and report["users"] == {"matched": 1, "unmatched": ["editor@example.com"]}, report  # the admin (files)
    assert report["nulled"] == {"articles.user_created": 1}
    assert query(target, "SELECT user_created FROM articles WHERE slug = 'article-2'")[0][0] is None

    query(source, "INSERT INTO articles (id, status, title, slug) VALUES ('0f0f0f0f-0000-4000-8000-0000000000aa', "
                  "'draft', 'Only on the source', 'only-source')")
    query(source, "INSERT INTO reviews (article, verdict) VALUES ('0f0f0f0f-0000-4000-8000-0000000000aa', 'good')")
    code, report = _move(source, target, state, "--collection", "reviews", "--depth", "0")
    assert code == 2
    assert report["refused"][0]["message"] == ("reviews.article is required and names articles row "
                                               "0f0f0f0f-0000-4000-8000-0000000000aa, which the target lacks")
    assert query(target, "SELECT count(*) FROM reviews")[0][0] == 0
    code, report = _move(source, target, state, "--collection", "reviews", "--depth", "1")
    assert code == 0 and report["plan"]["articles"]["created"] == 1 and report["plan"]["reviews"]["created"] == 1


def test_nested_folders_arrive_parents_first_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    """A self-reference (``directus_folders.parent``) whose parent sorts after its child: set after the rows."""
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "src")
    target = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "dst")
    parent, child = "ffffffff-0000-4000-8000-000000000001", "00000000-aaaa-4000-8000-000000000002"
    query(source, "INSERT INTO directus_folders (id, name, parent) VALUES (:p, 'Outer', NULL), (:c, 'Inner', :p)",
          p=parent, c=child)
    query(source, "UPDATE directus_files SET folder = :c", c=child)
    query(target, "DELETE FROM articles")
    query(target, "DELETE FROM directus_files")
    query(target, "DELETE FROM directus_folders")
    state = tmp_path / "state.db"
    code, report = _move(source, target, state, "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["plan"]["directus_folders"]["created"] == 2, report
    assert query(target, "SELECT parent FROM directus_folders WHERE id = :c", c=child)[0][0] == parent
    assert {r[0] for r in query(target, "SELECT folder FROM directus_files")} == {child}
    code, report = _move(source, target, state, "--collection", "articles", "--filter", PUBLISHED)
    assert code == 0 and report["changes"] is False, report["plan"]


def test_the_text_plan_names_the_fields_that_differ() -> None:
    """The trial's "authors: 4 to update" did not say why: the text plan lists the differing fields, most often first."""
    from cairn_migrate.cli.content import render_content

    report = {"collections": ["articles"], "from": "a", "to": "b", "via": "db", "mode": "merge", "depth": None,
              "plan": {"authors": {"created": 0, "updated": 4, "unchanged": 1, "skipped": 0, "deleted": 0}},
              "changed_fields": {"authors": {"date_created": 4, "bio": 1}},
              "files": {"copy": 0, "bytes": 0, "storage": {}}, "users": {"matched": 0, "unmatched": []},
              "nulled": {}, "refused": [], "changes": True, "applied": False}
    text = render_content(report)
    assert "  authors: 0 to create, 4 to update" in text
    assert "    fields that differ: date_created (4), bio (1)" in text
