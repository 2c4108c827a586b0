"""Import and verify of bundles whose manifest or file index points outside the bundle (issue 9, item 2).

Each case is a real export of the recorded SQLite instance, altered the way an attacker would (the
manifest is rewritten with matching member checksums, so the container checks pass), then imported
by the real CLI into an empty target.  Before the rules in ``bundle.check_references`` these cases
loaded rows and bytes from the sidecar host's disk with exit 0.  Now each must exit 2 with one line,
write nothing, and leave the host file where it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, make_empty_instance
from instance_fixtures import admin_token, app, bearer, cairn_instance, client, state_url  # noqa: F401 - fixtures

from cairn_migrate.bundle.bundle import pack
from cairn_migrate.cli import cli
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.instance.instance import Instance
from cairn_migrate.testing import build_sqlite_instance

HOST_BYTES = b"secret bytes of the sidecar host\n"


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One neutral export of the recorded SQLite instance, shared (read-only) by every case."""
    root = tmp_path_factory.mktemp("source")
    env = build_sqlite_instance(FIXTURES / "sqlite", root / "instance")
    export_bundle(Instance.from_env_file(env, environ={}), root / "bundle")
    return root / "bundle"


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_bytes())


def save(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def member_entry(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def rewrite_index(root: Path, change: Callable[[list], list]) -> None:
    """Change the first file-index entry and fix the index's checksum in the manifest, as an attacker can."""
    manifest = manifest_of(root)
    index = root / manifest["files"]["member"]
    entries = [json.loads(line) for line in index.read_bytes().splitlines() if line.strip()]
    entries[0] = change(entries[0])
    data = b"".join(json.dumps(e).encode() + b"\n" for e in entries)
    index.write_bytes(data)
    manifest["members"][manifest["files"]["member"]] = member_entry(data)
    save(root, manifest)


def table_member_absolute(root: Path, host: Path) -> None:
    """``tables.authors.member`` is an absolute path to a host file holding valid rows."""
    manifest = manifest_of(root)
    member = manifest["tables"]["authors"]["member"]
    host.write_bytes((root / member).read_bytes())
    (root / member).unlink()
    del manifest["members"][member]
    manifest["tables"]["authors"]["member"] = str(host)
    save(root, manifest)


def table_member_traversal(root: Path, host: Path) -> None:
    """The same, as ``../`` relative to the bundle."""
    table_member_absolute(root, host)
    manifest = manifest_of(root)
    manifest["tables"]["authors"]["member"] = os.path.relpath(host, root)
    save(root, manifest)


def index_traversal(root: Path, host: Path) -> None:
    """A file-index ``filename_disk`` of ``../../x`` reaching a host file, with its true size and sha256."""
    host.write_bytes(HOST_BYTES)
    name = os.path.relpath(host, root / "files" / "local")
    rewrite_index(root, lambda e: [e[0], e[1], name, len(HOST_BYTES), hashlib.sha256(HOST_BYTES).hexdigest()])


def index_absolute(root: Path, host: Path) -> None:
    """A file-index ``filename_disk`` that is an absolute host path."""
    host.write_bytes(HOST_BYTES)
    rewrite_index(root, lambda e: [e[0], e[1], str(host), len(HOST_BYTES), hashlib.sha256(HOST_BYTES).hexdigest()])


def index_absolute_wrong_sha(root: Path, host: Path) -> None:
    """The same with a wrong sha256: with --resume the host file used to stay in uploads/."""
    host.write_bytes(HOST_BYTES)
    rewrite_index(root, lambda e: [e[0], e[1], str(host), len(HOST_BYTES), "0" * 64])


def load_order_unknown_table(root: Path, host: Path) -> None:
    manifest = manifest_of(root)
    manifest["load_order"].append("no_such_table")
    save(root, manifest)


def string_default_on_integer(root: Path, host: Path) -> None:
    manifest = manifest_of(root)
    tables = json.loads((root / "schema/tables.json").read_bytes())
    settings = next(t for t in tables if t["name"] == "directus_settings")
    next(c for c in settings["columns"] if c["name"] == "auth_login_attempts")["default"] = {"value": "abc"}
    data = json.dumps(tables).encode()
    (root / "schema/tables.json").write_bytes(data)
    manifest["members"]["schema/tables.json"] = member_entry(data)
    save(root, manifest)


CASES = {
    "table_member_absolute": (table_member_absolute, [], "tables.authors.member points outside the bundle"),
    "table_member_traversal": (table_member_traversal, [], "tables.authors.member points outside the bundle"),
    "index_traversal": (index_traversal, [], "not a CairnCMS filename_disk"),
    "index_absolute": (index_absolute, [], "not a CairnCMS filename_disk"),
    "index_absolute_wrong_sha_resume": (index_absolute_wrong_sha, ["--resume"], "not a CairnCMS filename_disk"),
    "load_order_unknown_table": (load_order_unknown_table, [], "load_order names table(s) 'no_such_table'"),
    "string_default_on_integer": (string_default_on_integer, [],
                                  "directus_settings.auth_login_attempts is integer but its default is 'abc'"),
}


def tampered(good: Path, tmp_path: Path, case: str) -> tuple[Path, Path]:
    bundle, host = tmp_path / "bundle", tmp_path / "host" / "secret.jsonl"
    shutil.copytree(good, bundle)
    host.parent.mkdir()
    CASES[case][0](bundle, host)
    return bundle, host


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error_line(output: str, words: str) -> None:
    lines = output.strip().splitlines()
    assert lines[0].startswith("Error: ") and words in lines[0], output
    assert len(lines) == 2 and lines[1].startswith("  fix: "), output


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_refuses_and_writes_nothing(case: str, good_bundle: Path, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    bundle, host = tampered(good_bundle, tmp_path, case)
    host_before = host.read_bytes() if host.exists() else None
    target = make_empty_instance("sqlite", tmp_path / "target", request)
    before = files_under(target.parent)
    result = CliRunner().invoke(cli, ["--env", str(target), "import", str(bundle), *CASES[case][1]])
    assert result.exit_code == 2, result.output
    one_error_line(result.output, CASES[case][2])
    assert files_under(target.parent) == before  # no database file, no uploads folder, nothing else
    assert (host.read_bytes() if host.exists() else None) == host_before


@pytest.mark.parametrize("case", ["table_member_absolute", "index_absolute", "index_traversal"])
def test_verify_refuses_instead_of_verifying(case: str, good_bundle: Path, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    """A correct clone of the good bundle; the tampered one must not come out VERIFIED (exit 0)."""
    target = make_empty_instance("sqlite", tmp_path / "target", request)
    runner = CliRunner()
    assert runner.invoke(cli, ["--env", str(target), "import", str(good_bundle)]).exit_code == 0
    assert runner.invoke(cli, ["--env", str(target), "verify", str(good_bundle)]).exit_code == 0
    bundle, _host = tampered(good_bundle, tmp_path, case)
    result = runner.invoke(cli, ["--env", str(target), "verify", str(bundle)])
    assert result.exit_code == 2, result.output
    one_error_line(result.output, CASES[case][2])


def test_http_upload_of_a_bundle_reading_the_host_fails_the_job(client: Any, cairn_instance: Any, admin_token: str,
                                                                good_bundle: Path, tmp_path: Path) -> None:
    """Any instance admin can upload a bundle: one naming a host file must fail, even with ``replace``."""
    bundle, host = tampered(good_bundle, tmp_path, "index_absolute")
    archive = pack(bundle, tmp_path / "evil.tar.gz").read_bytes()
    before = files_under(cairn_instance.folder)
    headers = bearer(admin_token)
    upload = {"bundle": (io.BytesIO(archive), "evil.tar.gz"), "replace": "true"}
    started = client.post("/migrate/import", data=upload, headers=headers, content_type="multipart/form-data")
    assert started.status_code == 202, started.get_json()
    deadline = time.monotonic() + 60
    while (job := client.get(started.headers["Location"], headers=headers).get_json())["state"] not in (
            "succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "bad_bundle" and "not a CairnCMS filename_disk" in job["error"]["message"]
    assert "\n" not in job["error"]["message"]
    assert files_under(cairn_instance.folder) == before  # no safety bundle, no dropped tables, no host bytes
    assert host.read_bytes() == HOST_BYTES
