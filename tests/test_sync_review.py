"""The reviewer's defects in scheduled syncs (issue 13, review 1), each proved on real instances.

Source and target are copies of the recorded CairnCMS SQLite instance (as in ``tests/test_sync.py``),
the runs are the real ``sync_run`` with its real ``content`` moves; PostgreSQL state stores are real
databases of the test server.
"""

from __future__ import annotations

import json
import re
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

    # the target edits its own tag 2 (never moved from the source); the source edits its tag 2 again
    _sql(target, "UPDATE tags SET color = '#OWN' WHERE id = 2")
    _activity(target, ("update", "tags", "2"))
    _sql(source, "UPDATE tags SET color = '#SOURCE-2' WHERE id = 2")
    _activity(source, ("update", "tags", "2"))
    code, report = _cli(state, source, "run", "tags", "--json")
    assert code == 0 and report["conflicts"] == {} and report["steps"]["tags"]["conflicts"] == [], report
    assert _sql(target, "SELECT color FROM tags WHERE id = :i", i=mapped) == [("#SOURCE-2",)]
    assert _sql(target, "SELECT color FROM tags WHERE id = 2") == [("#OWN",)]
