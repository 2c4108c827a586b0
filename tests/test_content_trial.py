"""What a new operator's trial of ``content move`` found, on real CairnCMS 1.0.0-beta.4 and PostgreSQL.

One CairnCMS boots on the populated PostgreSQL target ``served`` (at ``url``).  A second populated
target, ``other``, is never booted: its ``.env`` paired with ``url`` (``--to-url``, or its ``PUBLIC_URL``
for ``promote``) is the trial's mistake, where the API that answers is not the ``.env``'s instance.

- ``--via api --to-url`` of another instance is refused before any write (a nonce written into the
  ``.env``'s database is not seen through that API), for ``content move`` and for ``promote``;
- a wrong or non-admin ``--to-token`` is refused before the plan, and a URL that is not CairnCMS's API
  says so;
- a real ``cairn-migrate`` process stopped by a real signal (SIGINT on the database path, SIGTERM on the
  API path) says what it left: rolled back (exit 3), or partial and resumable (exit 4), and stops promptly;
  a ``--transform`` that slows the articles' rows down gives the signal its moment (a marker file);
- with stderr piped (not a terminal), a move prints plain progress lines with counts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from conftest import FIXTURES, populated_postgres_target, query
from live_instance import Platform, free_port, server_env, start_server, stop_process

from live_instance import CLI

from cairn_migrate.cli import cli
from cairn_migrate.testing import build_sqlite_instance

TOKEN = "content-trial-admin-token-0123456789"
EDITOR_TOKEN = "content-trial-editor-token-0123456789"
PUBLISHED = '{"status": {"_eq": "published"}}'



@dataclass
class Trial:
    source: Path
    served: Path  # booted: CairnCMS answers at url
    other: Path  # never booted; its PUBLIC_URL is url (the trial's mistake)
    url: str
    state: Path

    def run(self, *args: str) -> tuple[int, str, str]:
        result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{self.state}"}).invoke(cli, list(args))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    def move(self, target: Path, *args: str) -> tuple[int, str, str]:
        return self.run("content", "move", "--from", str(self.source), "--to", str(target), "--collection", "articles",
                        "--filter", PUBLISHED, *args)



@pytest.fixture(scope="module")
def trial(cairncms: Platform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Trial]:
    base = tmp_path_factory.mktemp("content-trial")
    source = build_sqlite_instance(FIXTURES / "sqlite", base / "src")
    url = f"http://127.0.0.1:{free_port()}"
    served = populated_postgres_target("served", base, request, url, TOKEN)
    other = populated_postgres_target("other", base, request, url, TOKEN)  # the same PUBLIC_URL: what a copied .env often says
    # a non-admin on the served target, with its own static token
    role = str(uuid.uuid4())
    query(served, "INSERT INTO directus_roles (id, name, key, icon, admin_access, app_access) "
                  "VALUES (:id, 'Trial editor', 'trial-editor', 'supervised_user_circle', false, true)", id=role)
    query(served, "INSERT INTO directus_users (id, email, status, role, token, provider) "
                  "VALUES (:id, 'trial-editor@example.com', 'active', :role, :t, 'default')",
          id=str(uuid.uuid4()), role=role, t=EDITOR_TOKEN)
    (served.parent / "package.json").write_text('{"name": "content-trial-target", "private": true}\n')
    server = start_server(cairncms, served.parent, url, server_env(), base / "cairncms.log")
    try:
        yield Trial(source, served, other, url, base / "state" / "state.db")
    finally:
        stop_process(server)


def _articles(env: Path) -> int:
    return int(query(env, "SELECT count(*) FROM articles")[0][0])


def _proof_rows(env: Path) -> int:
    return int(query(env, "SELECT count(*) FROM directus_presets WHERE bookmark LIKE 'cairn-migrate identity%'")[0][0])


# --------------------------------------------------------------------------- 1. the API must be the .env's
def test_an_api_at_to_url_that_is_not_the_targets_is_refused_before_any_write(trial: Trial) -> None:
    before = {env: _articles(env) for env in (trial.served, trial.other)}
    code, out, err = trial.move(trial.other, "--via", "api", "--to-token", TOKEN, "--to-url", trial.url)
    assert code == 2, (out, err)
    assert f"The API at {trial.url} does not serve the target" in err and str(trial.other) in err, err
    assert "fix: pass the target's own URL with --to-url and its own admin token with --to-token" in err, err
    assert "applied" not in out
    assert before == {env: _articles(env) for env in (trial.served, trial.other)}  # nothing written anywhere
    assert _proof_rows(trial.other) == 0 and _proof_rows(trial.served) == 0  # the nonce row was deleted


def test_the_targets_own_api_passes_the_proof_and_the_move_applies(trial: Trial) -> None:
    code, out, err = trial.move(trial.served, "--via", "api", "--to-token", TOKEN, "--json")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["applied"] and report["plan"]["articles"]["created"] > 0
    assert _proof_rows(trial.served) == 0


def test_promote_to_a_env_whose_public_url_is_another_instance_is_refused_before_its_safety_snapshot(
        trial: Trial, tmp_path: Path) -> None:
    source = build_sqlite_instance(FIXTURES / "sqlite", tmp_path / "promote-src")
    query(source, "INSERT INTO directus_dashboards (id, name, icon) VALUES (:id, 'Trial board', 'dashboard')",
          id=str(uuid.uuid4()))
    dashboards = "SELECT count(*) FROM directus_dashboards WHERE name = 'Trial board'"
    code, out, err = trial.run("promote", "--from", str(source), "--to", str(trial.other), "--to-token", TOKEN,
                               "--only", "dashboards", "--force")
    assert code == 2, (out, err)
    assert f"The API at {trial.url} does not serve the target" in err, err
    assert query(trial.served, dashboards)[0][0] == 0 and query(trial.other, dashboards)[0][0] == 0
    assert not (trial.state.parent / "promote-safety").exists() or not any((trial.state.parent / "promote-safety").iterdir())
    # the same promote to the served target's own .env passes the proof and writes there
    code, out, err = trial.run("promote", "--from", str(source), "--to", str(trial.served), "--to-token", TOKEN,
                               "--only", "dashboards", "--force")
    assert code == 0, (out, err)
    assert query(trial.served, dashboards)[0][0] == 1 and _proof_rows(trial.served) == 0


# --------------------------------------------------------------------------- 2. the token, before the plan
def test_a_wrong_token_is_refused_before_the_plan_with_exit_2(trial: Trial) -> None:
    started = time.monotonic()
    code, out, err = trial.move(trial.served, "--via", "api", "--to-token", "not-a-token-of-anyone")
    assert code == 2, (out, err)
    assert f"The target's API at {trial.url} refused the token (GET /users/me: 401)" in err, err
    assert "fix: pass a static token of an admin of the target with --to-token" in err
    took = time.monotonic() - started
    print(f"wrong token refused in {took:.2f} s")  # the report's figure
    assert "partial" not in out + err and took < 10


def test_a_non_admin_token_is_refused_before_the_plan(trial: Trial) -> None:
    code, out, err = trial.move(trial.served, "--via", "api", "--to-token", EDITOR_TOKEN)
    assert code == 2, (out, err)
    assert "is not an admin's on the target" in err, err


def test_a_url_that_is_not_a_cairncms_api_says_so(trial: Trial) -> None:
    class NotFound(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html>no such page</html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), NotFound)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, out, err = trial.move(trial.served, "--via", "api", "--to-token", TOKEN, "--to-url", elsewhere)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2, (out, err)
    assert f"{elsewhere} does not serve the CairnCMS API (GET /users/me answered 404)" in err, err
    assert "validation refused" not in err
    assert requests.get(trial.url + "/server/ping", timeout=10).status_code == 200


# --------------------------------------------------------------------------- 3. interrupts, 4. progress
SLOW = """
import os, pathlib, time

def slow(collection, row, context):
    # in the writing pass, each article row waits: the test signals the process meanwhile
    if context.get("write") and collection == "articles":
        pathlib.Path(os.environ["TRIAL_MARK"]).touch()
        time.sleep(float(os.environ.get("TRIAL_SLEEP", "1")))
    return row
"""


def _spawn(trial: Trial, tmp_path: Path, target: Path, *args: str, sleep: str = "1",
           interval: str = "10") -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "trial_slow.py").write_text(SLOW)
    mark = tmp_path / "writing.mark"
    env = {**os.environ, "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{trial.state}", "TRIAL_MARK": str(mark),
           "TRIAL_SLEEP": sleep, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "CAIRN_MIGRATE_PROGRESS_INTERVAL": interval}
    proc = subprocess.Popen([str(CLI), "content", "move", "--from", str(trial.source), "--to", str(target),
                             "--collection", "articles", "--transform", "trial_slow:slow", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, mark


def _signal_when_writing(proc: subprocess.Popen[str], mark: Path, sig: int) -> tuple[int, str, str, float]:
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the move never reached its writing pass"
        time.sleep(0.05)
    proc.send_signal(sig)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    print(f"{signal.Signals(sig).name}: exit {proc.returncode} {took:.2f} s after the signal")  # the report's figure
    return proc.returncode, out, err, took


def test_ctrl_c_of_a_database_move_says_the_transaction_was_rolled_back(trial: Trial, tmp_path: Path) -> None:
    before = {t: query(trial.other, f"SELECT count(*) FROM {t}")[0][0] for t in ("articles", "authors", "tags")}
    proc, mark = _spawn(trial, tmp_path, trial.other, "--filter", PUBLISHED)
    code, out, err, took = _signal_when_writing(proc, mark, signal.SIGINT)
    assert code == 3, (out, err)
    assert "Error: interrupted: the target's transaction was rolled back, nothing was written" in err, err
    assert took < 15
    assert before == {t: query(trial.other, f"SELECT count(*) FROM {t}")[0][0] for t in ("articles", "authors", "tags")}


def test_sigterm_of_an_api_move_stops_promptly_saves_the_id_map_and_says_partial(trial: Trial, tmp_path: Path) -> None:
    drafts = '{"status": {"_eq": "draft"}}'
    proc, mark = _spawn(trial, tmp_path, trial.served, "--filter", drafts, "--via", "api", "--to-token", TOKEN,
                        "--batch-size", "1", sleep="3")
    code, out, err, took = _signal_when_writing(proc, mark, signal.SIGTERM)
    assert code == 4, (out, err)
    assert "Error: terminated (SIGTERM): the move through the target's API stopped part-way (partial)" in err, err
    assert "fix: run the same command again to resume" in err
    assert took < 15, took
    recorded = re.search(r"recorded in the ID map \((\d+) keys\)", err)
    assert recorded and int(recorded.group(1)) > 0, err  # the collections before the articles: acknowledged, saved
    # the same command resumes through the ID map: every draft once on the target, nothing twice
    code, out, err = trial.run("content", "move", "--from", str(trial.source), "--to", str(trial.served),
                               "--collection", "articles", "--filter", drafts, "--via", "api", "--to-token", TOKEN,
                               "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["applied"]
    source = query(trial.source, "SELECT count(*) FROM articles WHERE status = 'draft'")[0][0]
    assert query(trial.served, "SELECT count(*) FROM articles WHERE status = 'draft' AND slug NOT LIKE 'pg-%'")[0][0] == source


def test_with_stderr_piped_a_move_prints_plain_progress_lines_and_json_stays_clean(trial: Trial, tmp_path: Path) -> None:
    proc, _ = _spawn(trial, tmp_path, trial.other, "--filter", PUBLISHED, "--json", sleep="0.3", interval="0.2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, (out, err)
    assert json.loads(out)["applied"]  # stdout is the report alone
    lines = [line for line in err.splitlines() if line.startswith("content move: ")]
    assert any(re.search(r"content articles \(writing\): \d+ rows: \d+/\d+ items, .*items/s", line) for line in lines), err


def test_ctrl_c_of_an_api_move_whose_batch_the_target_holds_exits_once_the_grace_is_over(
        trial: Trial, tmp_path: Path) -> None:
    """The trial's Ctrl-C of a 5000-article move through the API printed "stopped part-way (partial)" after the
    grace and then held the prompt until CairnCMS answered the batches still on the wire (Python joins the
    request pool's threads at exit; up to CAIRN_MIGRATE_READ_TIMEOUT).  Here a blocking flow on the served
    target (a filter on ``items.create`` of articles whose operation sleeps 90 s: real CairnCMS, holding the
    request) keeps the first article's POST on the wire; the process must exit with its message, at the grace."""
    from cairn_migrate.content.api_client import STOP_GRACE

    held = '{"status": {"_eq": "held"}}'
    for n in (1, 2, 3):
        query(trial.source, "INSERT INTO articles (id, status, title, slug, author, body) SELECT :id, 'held', "
                            "'Held ' || title, 'held-' || slug, author, body FROM articles WHERE slug = :s",
              id=str(uuid.uuid4()), s=f"article-{n}")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    flow = requests.post(f"{trial.url}/flows", headers=headers, timeout=30, json={
        "name": "trial: hold article creates", "status": "active", "trigger": "event", "accountability": "all",
        "options": {"type": "filter", "scope": ["items.create"], "collections": ["articles"]}}).json()["data"]["id"]
    operation = requests.post(f"{trial.url}/operations", headers=headers, timeout=30, json={
        "name": "sleep", "key": "sleep", "type": "sleep", "position_x": 19, "position_y": 1,
        "options": {"milliseconds": 90000}, "flow": flow}).json()["data"]["id"]
    assert requests.patch(f"{trial.url}/flows/{flow}", headers=headers, timeout=30,
                          json={"operation": operation}).status_code == 200
    proc = None
    try:
        proc, mark = _spawn(trial, tmp_path, trial.served, "--filter", held, "--via", "api", "--to-token", TOKEN,
                            "--batch-size", "1", sleep="0")
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the move never reached its writing pass"
            time.sleep(0.05)
        time.sleep(3)  # the first article's POST is on the wire, held by the flow
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)  # the old code: held until the flow's 90 s were over
        took = time.monotonic() - sent
        print(f"SIGINT with a held batch: exit {proc.returncode} {took:.2f} s after the signal")
        assert proc.returncode == 4, (out, err)
        assert "requests in flight were not answered in time" in err, err
        assert took < STOP_GRACE + 10, took
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        requests.delete(f"{trial.url}/flows/{flow}", headers=headers, timeout=30)
