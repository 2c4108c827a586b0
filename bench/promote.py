"""Benchmark: ``promote`` of a generated 200-collection schema into a fresh CairnCMS on PostgreSQL.

Each generated collection ``bench_NNN`` has an integer key, a string, a text and an m2o to the
collection before it (a field and a relation), all copied from the recorded PostgreSQL fixture's
``authors`` and ``articles.author`` entries.  Side by side, each into its own fresh instance (the
recorded bootstrap, served by real CairnCMS 1.0.0-beta.4):
  * ours:   ``cairn-migrate promote --dry-run`` (the plan: CairnCMS's ``/schema/diff`` + our checks),
            then ``cairn-migrate promote`` (plan again, safety snapshot, ``/schema/apply``)
  * offline: ``cairn-migrate promote --engine db`` into the target's database while nothing serves it (our
            own diff and Alembic DDL: the way for a stopped instance or Directus 9/10)
  * native: ``cairncms schema apply --yes`` of the same snapshot file (no checks, no safety snapshot)

Usage: .venv/bin/python bench/promote.py [--collections 200]
Writes bench/results/promote.json and prints it.  Needs PostgreSQL and the CairnCMS build.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_instance import CAIRNCMS, free_port, server_env, start_server, stop_process  # noqa: E402

from cairn_migrate.bundle.config_snapshot import load_yaml  # noqa: E402
from cairn_migrate.bundle.schema_snapshot import write_schema_snapshot  # noqa: E402
from cairn_migrate.testing import (  # noqa: E402
    create_postgres_database,
    drop_postgres_database,
    instance_env,
    server_env as database_env,
    write_env,
)

FIXTURE = ROOT / "tests" / "fixtures" / "postgres"
CLI = str(Path(sys.executable).with_name("cairn-migrate"))
TOKEN = "bench-promote-admin-token-0123456789"


def generated_schema(count: int) -> dict[str, Any]:
    """``count`` collections of four fields each, every one after the first with an m2o to the one before."""
    fixture = load_yaml((FIXTURE / "schema-snapshot.yaml").read_text(encoding="utf-8"))
    field = {(f["collection"], f["field"]): f for f in fixture["fields"]}
    collection = next(c for c in fixture["collections"] if c["collection"] == "authors")
    relation = next(r for r in fixture["relations"] if (r["collection"], r["field"]) == ("articles", "author"))
    templates = [field[("authors", "id")], field[("authors", "name")], field[("authors", "bio")],
                 field[("articles", "author")]]
    schema: dict[str, Any] = {**{k: fixture[k] for k in ("version", "directus", "vendor")},
                              "collections": [], "fields": [], "relations": []}
    for n in range(count):
        name, previous = f"bench_{n:03d}", f"bench_{n - 1:03d}"
        entry = copy.deepcopy(collection)
        entry.update(collection=name, schema={"name": name})
        entry["meta"].update(collection=name, sort=n + 1, group=None)
        schema["collections"].append(entry)
        for template in templates[:4 if n else 3]:
            f = copy.deepcopy(template)
            column = "parent" if template["field"] == "author" else template["field"]
            f.update(collection=name, field=column)
            f["meta"].update(collection=name, field=column)
            f["schema"].update(name=column, table=name)
            if column == "parent":
                f["schema"].update(foreign_key_table=previous)
            schema["fields"].append(f)
        if n:
            r = copy.deepcopy(relation)
            r.update(collection=name, field="parent", related_collection=previous)
            r["meta"].update(many_collection=name, many_field="parent", one_collection=previous)
            r["schema"].update(table=name, column="parent", foreign_key_table=previous,
                               constraint_name=f"{name}_parent_foreign")
            schema["relations"].append(r)
    schema["fields"].sort(key=lambda f: (f["collection"], f["field"]))
    return schema


def fresh_instance(admin_url: str, folder: Path, start: bool = True) -> tuple[str, str, Any]:
    """A fresh CairnCMS (the recorded bootstrap in a new database), running unless not ``start``;
    (database, url, process)."""
    folder.mkdir(parents=True)
    name = create_postgres_database(admin_url, FIXTURE / "fresh.sql")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = write_env(folder / ".env", instance_env(FIXTURE, database_env(admin_url, name, "pg"),
                                                   {"HOST": "127.0.0.1", "PORT": port, "PUBLIC_URL": url,
                                                    "LOG_STYLE": "raw"}))
    engine = sa.create_engine(sa.engine.make_url(admin_url).set(database=name))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE directus_users SET token = :t WHERE email = 'admin@example.com'"), {"t": TOKEN})
    engine.dispose()
    (env.parent / "package.json").write_text('{"name": "bench-promote", "private": true}\n')
    return name, url, start_server(CAIRNCMS, env.parent, url, server_env(), folder / "cairncms.log") if start else None


def timed(command: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, **kwargs)
    return time.perf_counter() - start, done


def promote_timings(promote: list[str], env: dict[str, str]) -> dict[str, float]:
    """The dry run (the plan), the promote (plan again + apply) and a second promote (no changes), timed."""
    plan_s, planned = timed([*promote, "--dry-run"], env=env)
    assert planned.returncode == 1, planned.stdout + planned.stderr
    total_s, applied = timed(promote, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    again_s, again = timed(promote, env=env)
    assert again.stdout.splitlines()[-1] == "no changes", again.stdout
    return {"plan_seconds": round(plan_s, 2), "promote_seconds": round(total_s, 2),
            "apply_seconds": round(total_s - plan_s, 2), "second_promote_seconds": round(again_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", type=int, default=200)
    parser.add_argument("--admin-url", default=os.environ.get("CAIRN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    schema = generated_schema(args.collections)
    results: dict[str, Any] = {"collections": args.collections, "fields": len(schema["fields"]),
                               "relations": len(schema["relations"])}
    with tempfile.TemporaryDirectory(prefix="bench-promote-") as tmp:
        base = Path(tmp)
        write_schema_snapshot(schema, base / "src" / "schema.yaml")
        for mode in ("ours", "offline", "native"):
            name, url, server = fresh_instance(args.admin_url, base / mode, start=mode != "offline")
            try:
                if mode in ("ours", "offline"):
                    to = ["--to", url, "--to-token", TOKEN] if mode == "ours" else \
                        ["--to", str(base / mode / ".env"), "--engine", "db"]
                    results[mode] = promote_timings([CLI, "promote", "--from", str(base / "src"), *to, "--only", "schema"],
                                                    {**server_env(), "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{base / 'state.db'}"})
                else:
                    native_s, native = timed([str(ROOT / "scripts" / "cairncms"), "cli", str(base / mode), "schema",
                                              "apply", "--yes", str(base / "src" / "schema.yaml")],
                                             env={**server_env(), "LOG_LEVEL": "error"})
                    assert native.returncode == 0, native.stdout + native.stderr
                    results["native"] = {"schema_apply_seconds": round(native_s, 2)}
            finally:
                if server is not None:
                    stop_process(server)
                drop_postgres_database(args.admin_url, name)
    out = ROOT / "bench" / "results" / "promote.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
