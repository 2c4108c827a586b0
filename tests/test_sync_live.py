"""The change feed of a real CairnCMS: articles created, updated and deleted through its API.

The source is ``live_instance`` (real CairnCMS 1.0.0-beta.4 on SQLite): its own
``directus_activity`` rows give the changed keys.  The target's database is gone, so
every content step fails (with or without the ``content`` operation): the watermark must
advance on the idle runs that succeed, and stay where it is when the step fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from live_instance import ADMIN_EMAIL, ADMIN_PASSWORD, LiveInstance

from cairn_migrate.cli import cli


def test_the_feed_of_real_cairncms_gives_the_changed_keys(live_instance: LiveInstance, tmp_path: Path) -> None:
    env = live_instance.folder / ".env"
    broken = tmp_path / "target" / ".env"
    broken.parent.mkdir()
    broken.write_text(re.sub(r"^DB_FILENAME=.*$", f"DB_FILENAME={tmp_path / 'target' / 'gone.db'}", env.read_text(),
                             flags=re.MULTILINE))
    runner = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"})

    def sync(*args: str) -> tuple[int, dict[str, Any]]:
        result = runner.invoke(cli, ["--env", str(env), "sync", *args], catch_exceptions=False)
        try:
            return result.exit_code, json.loads(result.output)
        except ValueError:
            raise AssertionError(result.output) from None

    for name, mode in (("merge", ["--mode", "merge"]), ("mirror", ["--mode", "mirror", "--max-delete", "10"])):
        assert sync("add", name, "--from", str(env), "--to", str(broken), "--collection", "articles",
                    "--initial", "from-now", *mode, "--json")[0] == 0
        code, first = sync("run", name, "--json")
        assert code == 0 and first["status"] == "ok", first
    start = first["watermark_after"]["articles"]

    # A login writes activity of another collection: an idle run succeeds and moves the watermark past it.
    login = live_instance.request("POST", "/auth/login", token=None, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text
    code, idle = sync("run", "merge", "--json")
    assert code == 0 and idle["status"] == "ok" and idle["steps"]["articles"]["skipped"] == "no changes"
    assert idle["watermark_after"]["articles"] > start
    moved = idle["watermark_after"]["articles"]

    ids = []
    for title in ("kept", "gone", "new"):
        created = live_instance.request("POST", "/items/articles", json={"title": f"sync {title}"})
        assert created.status_code == 200, created.text
        ids.append(str(created.json()["data"]["id"]))
    kept, gone, new = ids
    assert live_instance.request("PATCH", f"/items/articles/{kept}", json={"title": "sync kept, edited"}).status_code == 200
    assert live_instance.request("DELETE", f"/items/articles/{gone}").status_code == 204

    code, merged = sync("run", "merge", "--json")
    step = merged["steps"]["articles"]
    assert sorted(step["changed"]["upsert"]) == sorted([kept, new]) and step["changed"]["delete"] == []
    assert step["changed"]["delete_ignored"] == [gone]  # deletes propagate only in mirror mode
    assert sorted(step["params"]["filter"]["id"]["_in"]) == sorted([int(kept), int(new)])  # integer keys
    assert step["outcome"] in ("failed", "invalid") and merged["status"] == step["outcome"] and code in (2, 3)
    assert merged["watermark_before"] == merged["watermark_after"] == {"articles": moved}  # not advanced

    code, mirrored = sync("run", "mirror", "--json")
    step = mirrored["steps"]["articles"]
    assert sorted(step["changed"]["upsert"]) == sorted([kept, new]) and step["changed"]["delete"] == [gone]
    # integer keys are renumbered on the target, so the upserts merge by key and the deletion is a mirror of
    # the profile's filter (a mirror filtered by source keys would pick the target's rows of those numbers)
    assert sorted(step["params"]["filter"]["id"]["_in"]) == sorted([int(kept), int(new)])
    assert step["params"]["mode"] == "merge" and step["delete_rescan"] is True
    assert mirrored["watermark_after"] == mirrored["watermark_before"]

    # The next run sees the same changes again (the watermark stayed), and the history says so.
    code, again = sync("run", "merge", "--json")
    assert sorted(again["steps"]["articles"]["changed"]["upsert"]) == sorted([kept, new])
    code, history = sync("history", "merge", "--json")
    assert [r["outcome"] == "ok" for r in history["runs"]] == [False, False, True, True]
    assert history["runs"][0]["watermark_before"] == history["runs"][0]["watermark_after"] == {"articles": moved}
