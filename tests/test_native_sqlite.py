"""A native SQLite bundle: its database file is untrusted on import, and an untouched clone verifies by its pages.

The import checks the bundle's SQLite file (a scratch copy of it) before any of it reaches the target:
``PRAGMA quick_check``, no trigger or view (CairnCMS creates none; one would run inside the target), every
table the manifest lists.  It ends with a page copy of that database over the target, so ``verify`` proves
a target nobody wrote to since by one digest of each file, and falls back to comparing rows after any write.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import make_empty_instance, make_instance

from cairn_migrate.bundle.bundle import BundleError
from cairn_migrate.bundle.native import pages_digest
from cairn_migrate.instance.instance import Instance
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.operations.restore import import_bundle
from cairn_migrate.operations.verify import verify_bundle


def _clone(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    src = make_instance("sqlite", tmp_path / "src", request)
    bundle = tmp_path / "bundle"
    export_bundle(Instance.from_env_file(src), bundle, native=True)
    return bundle, make_empty_instance("sqlite", tmp_path / "dst", request)


def _tamper(bundle: Path, sql: str) -> None:
    """Change the bundle's SQLite file and reseal its manifest entry, as someone handing over a bundle could."""
    member = bundle / "database" / "sqlite.db"
    conn = sqlite3.connect(member)
    with conn:
        conn.executescript(sql)
    conn.close()
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = member.read_bytes()
    manifest["members"]["database/sqlite.db"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_an_untouched_native_clone_verifies_by_its_pages_and_a_write_falls_back_to_rows(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bundle, dst = _clone(tmp_path, request)
    target = Instance.from_env_file(dst)
    import_bundle(target, bundle)
    database = Path(target.database.url.database or "")
    assert pages_digest(database) == pages_digest(bundle / "database" / "sqlite.db")  # the marker went with a page copy

    report = verify_bundle(target, bundle)
    assert report["ok"]
    assert {t["compared"] for t in report["tables"]} == {"file"}
    assert all(t["rows"] == t["expected_rows"] for t in report["tables"])

    conn = sqlite3.connect(database)
    with conn:
        conn.execute("UPDATE directus_settings SET project_name = 'changed after the import'")
    conn.close()
    report = verify_bundle(target, bundle)
    assert not report["ok"]
    assert [t["table"] for t in report["tables"] if not t["ok"]] == ["directus_settings"]
    assert "file" not in {t.get("compared") for t in report["tables"]}


@pytest.mark.parametrize("sql, problem", [
    ("CREATE TRIGGER sneaky AFTER INSERT ON directus_activity BEGIN DELETE FROM directus_users; END;",
     "trigger 'sneaky'"),
    ("CREATE VIEW everyone AS SELECT email FROM directus_users;", "view 'everyone'"),
    ("DROP TABLE directus_presets;", "lacks the manifest's table(s) directus_presets"),
], ids=["trigger", "view", "missing-table"])
def test_an_untrusted_sqlite_file_is_refused_before_the_target_is_touched(
        sql: str, problem: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bundle, dst = _clone(tmp_path, request)
    _tamper(bundle, sql)
    target = Instance.from_env_file(dst)
    with pytest.raises(BundleError, match=re.escape(problem)) as caught:
        import_bundle(target, bundle)
    assert caught.value.rule == "bad_sqlite" and caught.value.exit_code == 2
    assert not Path(target.database.url.database or "").exists()  # the new file the import made is gone again


def test_a_damaged_sqlite_file_is_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bundle, dst = _clone(tmp_path, request)
    member = bundle / "database" / "sqlite.db"
    data = bytearray(member.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    data[page * 3 + 8: page * 4] = bytes(len(data[page * 3 + 8: page * 4]))  # a b-tree page's cells zeroed
    member.write_bytes(bytes(data))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["members"]["database/sqlite.db"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        import_bundle(Instance.from_env_file(dst), bundle)
    assert caught.value.rule == "bad_sqlite"
