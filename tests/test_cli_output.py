"""The text the CLI prints where a new user's trial found it unclear: what --replace does, an empty
database, a table the target does not have (real SQLite instances from the recorded fixtures)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_empty_instance, make_instance

from cairn_migrate.cli import cli


def _empty_sqlite(dest: Path, request: pytest.FixtureRequest) -> Path:
    """An instance whose SQLite database exists and holds no table."""
    env = make_empty_instance("sqlite", dest, request)
    sqlite3.connect(dest / "data.db").close()
    return env


def _tables(db_file: Path) -> list[str]:
    conn = sqlite3.connect(db_file)
    try:
        return [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    finally:
        conn.close()


def test_replace_dry_run_says_the_safety_bundle_and_the_drop_come_first(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = make_instance("sqlite", tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    runner = CliRunner()
    assert runner.invoke(cli, ["--env", str(src), "export", "--full", "-o", str(bundle)]).exit_code == 0
    existing = len(_tables(tmp_path / "dst" / "data.db"))
    result = runner.invoke(cli, ["--env", str(dst), "import", str(bundle), "--replace", "--dry-run"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    step = lines.index(f"  would first write a safety bundle of the target, then drop its {existing} existing tables")
    assert lines[step + 1].startswith("  would create ")  # and only then create them anew


def test_inspect_of_an_empty_database_says_so(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = _empty_sqlite(tmp_path / "empty", request)
    result = CliRunner().invoke(cli, ["--env", str(env), "inspect", "--no-objects"])
    assert "  platform    empty database (no CairnCMS tables)" in result.output.splitlines(), result.output
    assert "None" not in result.output


def test_verify_of_a_target_without_the_tables_names_the_expected_rows(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = make_instance("sqlite", tmp_path / "src", request)
    dst = _empty_sqlite(tmp_path / "dst", request)
    bundle = tmp_path / "bundle"
    runner = CliRunner()
    assert runner.invoke(cli, ["--env", str(src), "export", "--full", "-o", str(bundle)]).exit_code == 0
    result = runner.invoke(cli, ["--env", str(dst), "verify", str(bundle)])
    assert result.exit_code == 1, result.output
    conn = sqlite3.connect(tmp_path / "src" / "data.db")
    articles = conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    conn.close()
    assert f"* articles  table missing on the target ({articles} rows expected)" in result.output.splitlines()
    assert "None" not in result.output
