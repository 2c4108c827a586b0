"""``inspect`` on the recorded instances of every vendor, with the bytes on every storage kind."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_instance
from instance_fixtures import bearer

from cairn_migrate.cli import cli
from cairn_migrate.instance.storage import upload_tree

USER_ROWS = {"article_comments": 15, "articles": 21, "articles_tags": 40, "articles_translations": 40,
             "authors": 4, "languages": 3, "tags": 5}


def run_inspect(env: Path, *extra: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(cli, ["--env", str(env), "inspect", "--json", *extra])
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return result.exit_code, report, result.output


def location_env(name: str, options: dict[str, Any], driver: str) -> dict[str, object]:
    """``STORAGE_<NAME>_*`` settings for a location (camelCase option → UPPER_SNAKE env)."""
    env: dict[str, object] = {f"STORAGE_{name.upper()}_DRIVER": driver}
    for key, value in options.items():
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", key).upper()
        env[f"STORAGE_{name.upper()}_{snake}"] = str(value).lower() if isinstance(value, bool) else value
    return env


@pytest.mark.parametrize("vendor", ["sqlite", "postgres", "mariadb"])
def test_inspect_each_vendor(vendor: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = make_instance(vendor, tmp_path / vendor, request)
    code, report, output = run_inspect(env)
    assert code == 0, output
    assert report["database"]["vendor"] == {"sqlite": "sqlite", "postgres": "postgres", "mariadb": "mysql"}[vendor]
    assert report["platform"]["product"] == "cairncms"
    assert report["platform"]["version"] == "1.0.0-beta.4"
    assert report["instance"]["key"] == "c1a1f0e2-7a55-4d3c-9b7e-0a9d1f2e3c4b"
    assert report["tables"]["system_count"] == 20
    assert report["tables"]["user"] == USER_ROWS
    assert report["tables"]["system"]["directus_migrations"] == 66
    [local] = report["storage"]
    assert (local["name"], local["reachable"], local["file_rows"], local["present"], local["missing"]) == ("local", True, 3, 3, 0)
    assert "cairn-pass" not in output and "test-secret" not in output


@pytest.mark.mariadb
def test_mariadb_root_with_an_empty_password(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """CairnCMS requires DB_PASSWORD to be present, not non-empty: a dev MariaDB root without a password
    (the test server's root has none) is a valid instance."""
    env = make_instance("mariadb", tmp_path / "root", request, extra_env={"DB_USER": "root", "DB_PASSWORD": ""})
    assert "\nDB_USER=root\n" in env.read_text() and "\nDB_PASSWORD=\n" in env.read_text()
    code, report, output = run_inspect(env)
    assert code == 0, output
    assert report["tables"]["user"] == USER_ROWS


@pytest.mark.parametrize("driver", ["s3", "gcs", "azure"])
def test_inspect_with_bytes_on_remote_storage(driver: str, tmp_path: Path, request: pytest.FixtureRequest,
                                              make_location: Any, fixtures_dir: Path) -> None:
    """The location keeps its name (``local``, as the rows say) but lives on S3, GCS or Azure."""
    location = make_location(driver, name="local", root="/uploads/")
    upload_tree(fixtures_dir / "sqlite" / "uploads", location)
    env = make_instance("sqlite", tmp_path / "inst", request,
                        extra_env=location_env("local", dict(location.config.options), driver))
    code, report, output = run_inspect(env)
    assert code == 0, output
    [local] = report["storage"]
    assert (local["driver"], local["file_rows"], local["present"], local["missing"]) == (driver, 3, 3, 0)
    # One object gone: reported by name, exit 1.
    name = sorted(n for n, _ in location.list() if "__" not in n)[0]
    location.delete(name)
    code, report, _ = run_inspect(env)
    assert code == 1
    assert report["storage"][0]["missing_files"] == [name] and report["ok"] is False


def write_env(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("env_text", "exit_code", "fragment"),
    [
        ("DB_CLIENT=oracle9\n", 2, "DB_CLIENT='oracle9' is not a database client"),
        ("DB_CLIENT=sqlite3\nDB_FILENAME=missing.db\n", 2, "DB_FILENAME points at"),
        ("DB_CLIENT=pg\nDB_HOST=127.0.0.1\nDB_PORT=1\nDB_DATABASE=x\nDB_USER=u\n", 3, "does not answer"),
        ("DB_CLIENT=sqlite3\nDB_FILENAME=x.db\nSTORAGE_LOCAL_DRIVER=ftp\n", 2, "STORAGE_LOCAL_DRIVER='ftp'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, env_text: str, exit_code: int, fragment: str) -> None:
    env = write_env(tmp_path / ".env", env_text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["--env", str(env), "inspect"])
    assert result.exit_code == exit_code
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error:") == 1 and "fix:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unreadable_env(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--env", str(tmp_path / "nope.env"), "inspect"])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "--env" in result.output


@pytest.mark.parametrize("problem", ["bucket", "credentials"])
def test_missing_bucket_and_bad_credentials(problem: str, tmp_path: Path, request: pytest.FixtureRequest,
                                            make_location: Any) -> None:
    location = make_location("s3", name="local", create=problem != "bucket")
    options = dict(location.config.options)
    if problem == "credentials":
        options["secret"] = "not-the-secret"
    env = make_instance("sqlite", tmp_path / "inst", request, extra_env=location_env("local", options, "s3"))
    code, report, output = run_inspect(env)
    assert code == 2, output  # a configuration to fix, as storage move says for the same error
    message = report["storage"][0]["error"]["message"]
    setting = "STORAGE_LOCAL_BUCKET" if problem == "bucket" else "STORAGE_LOCAL_KEY"
    assert setting in message
    assert "not-the-secret" not in output


def test_inspect_as_a_job_over_http(client: Any, admin_token: str) -> None:
    started = client.post("/migrate/inspect", json={"check_objects": True}, headers=bearer(admin_token))
    assert started.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(started.headers["Location"], headers=bearer(admin_token)).get_json()
        if job["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    assert job["result"]["tables"]["user"] == USER_ROWS
    assert job["progress"]["items_total"] == 3
