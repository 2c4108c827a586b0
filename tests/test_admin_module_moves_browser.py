"""The admin module's Content move and Syncs sections in headless Chromium, on real CairnCMS (one boot).

The target is the live instance (``live_instance``); the source is a copy of its folder and SQLite
database (``copy_instance``: same version, same structure, not started: a content move and a sync read the
source's database, not its API), given new rows with ``sqlite3``.  Both ``.env`` files are named by path, so
for this module the live sidecar runs with ``CAIRN_MIGRATE_HTTP_PATHS`` allowing the two instances' folders
and ``CAIRN_MIGRATE_PEERS`` listing the source's ``.env`` (the operator's consent to move from another instance;
both restored afterwards).  Screenshots: ``test-output/admin-module-content.png``, ``…-syncs.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_instance import ADMIN_TOKEN, COLLECTION, LiveInstance
from test_admin_module_browser import CHROMIUM_ARGS, OUTPUT, copy_instance, log_in, open_module

HTTP_PATHS = "CAIRN_MIGRATE_HTTP_PATHS"
PEERS = "CAIRN_MIGRATE_PEERS"
MOVED = "moved from the source"
THROUGH_API = "moved through the api"
SYNCED = "synced from the source"
PROFILE = "articles-sync"


@pytest.fixture(scope="module")
def source(live_instance: LiveInstance, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source instance's ``.env``: a copy of the live instance (same structure), not running."""
    folder = tmp_path_factory.mktemp("moves") / "source"
    copy_instance(live_instance, folder)
    return folder / ".env"


@pytest.fixture(scope="module")
def instance(live_instance: LiveInstance, source: Path) -> Iterator[LiveInstance]:
    """The live instance, its sidecar allowing HTTP callers the folders of both instances' ``.env`` files and
    trusting the source as a peer (without it a move or sync from another instance is refused, 403)."""
    live_instance.env[HTTP_PATHS] = os.pathsep.join([str(live_instance.folder), str(source.parent)])
    live_instance.env[PEERS] = str(source.resolve())
    live_instance.stop_sidecar()
    live_instance.start_sidecar()
    try:
        yield live_instance
    finally:
        live_instance.env.pop(HTTP_PATHS, None)
        live_instance.env.pop(PEERS, None)
        live_instance.stop_sidecar()
        live_instance.start_sidecar()


@pytest.fixture(scope="module")
def page(chromium_path: str, instance: LiveInstance) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(30_000)
            log_in(page, instance)
            yield page
        finally:
            browser.close()


def stranger_env(source: Path) -> Path:
    """An ``.env`` inside the allowed folders naming another database (a third instance, not in
    ``CAIRN_MIGRATE_PEERS``): over HTTP a move or a sync from it is refused (403)."""
    env = source.parent / "stranger" / ".env"
    env.parent.mkdir(exist_ok=True)
    text = source.read_text()
    assert "data.db" in text, text
    env.write_text(text.replace(str(source.parent / "data.db"), str(env.parent / "data.db")))
    return env


def assert_peers_refusal(text: str, env: Path) -> None:
    """The page's wording of the confinement refusal: which side, and what the operator sets."""
    assert "is another instance" in text and str(env) in text, text
    assert "CAIRN_MIGRATE_PEERS" in text and "restart the sidecar" in text, text


def add_source_rows(source: Path, titles: list[str]) -> None:
    conn = sqlite3.connect(source.parent / "data.db")
    try:
        conn.executemany(f"INSERT INTO {COLLECTION} (title) VALUES (?)", [(t,) for t in titles])
        conn.commit()
    finally:
        conn.close()


def target_titles(instance: LiveInstance, containing: str) -> list[str]:
    response = instance.request("GET", f"/items/{COLLECTION}", params={
        "filter": json.dumps({"title": {"_contains": containing}}), "fields": "title", "limit": -1, "sort": "title"})
    assert response.status_code == 200, response.text
    return [row["title"] for row in response.json()["data"]]


def delete_target_rows(instance: LiveInstance, containing: str) -> None:
    """Leave the shared instance as it was: its rows the test moved in are deleted again."""
    response = instance.request("GET", f"/items/{COLLECTION}", params={
        "filter": json.dumps({"title": {"_contains": containing}}), "fields": "id", "limit": -1})
    ids = [row["id"] for row in response.json()["data"]]
    if ids:
        instance.request("DELETE", f"/items/{COLLECTION}", json=ids)


def wait_for_default_target(page: Any, testid: str, instance: LiveInstance) -> None:
    """The form's target field fills in with this instance's .env (GET /migrate/paths) by itself."""
    own = str((instance.folder / ".env").resolve())
    page.wait_for_function("([id, want]) => document.querySelector(`[data-testid=${id}]`)?.value === want", arg=[testid, own])


def show_content_plan(page: Any) -> Any:
    """Click "Show the plan" and return the rendered plan (a new one, not the one shown before)."""
    page.evaluate("() => document.querySelector('[data-testid=content-plan]')?.remove()")
    page.click("[data-testid=plan-content] button")
    shown = page.wait_for_selector("[data-testid=content-plan], [data-testid=content-error]", timeout=120_000)
    assert shown.get_attribute("data-testid") == "content-plan", shown.inner_text()
    return shown


def counts(page: Any, scope: str, collection: str) -> dict[str, int]:
    row = page.locator(f"[data-testid={scope}] [data-testid=content-plan-row][data-collection={collection}]")
    return {cell.get_attribute("data-kind"): int(cell.inner_text()) for cell in row.locator("td[data-kind]").all()}


def test_content_move_plans_first_then_applies(page: Any, instance: LiveInstance, source: Path) -> None:
    """Plan (per-collection counts, nothing written) → apply as a job with progress → a second plan changes nothing;
    mirror without "Max delete" and a source whose fields differ are refused with fixes worded for the page."""
    titles = [f"{MOVED} {n}" for n in (1, 2, 3)]
    add_source_rows(source, titles)
    try:
        open_module(page, instance)
        wait_for_default_target(page, "content-to", instance)
        assert str(source.parent) in page.inner_text("[data-testid=paths-allowed]")
        page.check(f"[data-testid=content-collection-{COLLECTION}]")
        page.fill("[data-testid=content-filter]", json.dumps({"title": {"_contains": MOVED}}))
        stranger = stranger_env(source)  # another instance the operator has not listed: refused, what to set
        page.fill("[data-testid=content-from]", str(stranger))
        page.click("[data-testid=plan-content] button")
        assert_peers_refusal(page.wait_for_selector("[data-testid=content-error]").inner_text(), stranger)
        page.fill("[data-testid=content-from]", str(source))
        plan = show_content_plan(page)
        assert plan.get_attribute("data-changes") == "true" and plan.get_attribute("data-refused") == "0", plan.inner_text()
        assert counts(page, "content-plan", COLLECTION) == {"created": 3, "updated": 0, "unchanged": 0, "skipped": 0, "deleted": 0}
        assert page.inner_text("[data-testid=content-plan] [data-testid=content-users]").startswith("Users: 0 matched")
        assert page.inner_text("[data-testid=content-plan] [data-testid=content-files]") == "Files: 0 to copy, 0 B."
        assert target_titles(instance, MOVED) == []  # the plan wrote nothing
        OUTPUT.mkdir(exist_ok=True)
        page.locator("#content").scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "admin-module-content.png"))

        page.click("[data-testid=apply-content] button")
        done = page.wait_for_selector("[data-testid=job][data-panel=content][data-state=succeeded]", timeout=120_000)
        job = instance.request("GET", f"/migrate/jobs/{done.get_attribute('data-job-id')}").json()
        assert job["kind"] == "content" and job["params"]["collections"] == [COLLECTION], job
        assert job["progress"]["items_done"] == job["progress"]["items_total"] == 3, job["progress"]
        assert page.inner_text("[data-testid=job][data-panel=content] [data-testid=job-progress]").startswith("3/3 items, 0 B")
        assert page.get_attribute("[data-testid=content-report]", "data-applied") == "true"
        assert counts(page, "content-report", COLLECTION)["created"] == 3
        assert target_titles(instance, MOVED) == titles

        again = show_content_plan(page)  # the ID map: the same rows, unchanged
        assert again.get_attribute("data-changes") == "false"
        assert counts(page, "content-plan", COLLECTION)["unchanged"] == 3
        assert page.is_visible("[data-testid=content-no-changes]")
        assert page.is_disabled("[data-testid=apply-content] button")

        page.select_option("[data-testid=content-mode]", "mirror")
        show_content_plan(page)
        refused = page.inner_text("[data-testid=content-refused]")
        assert "mirror would delete 0 target rows and needs consent" in refused and "\u201cMax delete\u201d" in refused, refused
        assert "--max-delete" not in refused
        assert page.is_disabled("[data-testid=apply-content] button")
        page.fill("[data-testid=content-max-delete]", "0")
        assert show_content_plan(page).get_attribute("data-refused") == "0"

        with source_field(source, "subtitle"):
            show_content_plan(page)
            refused = page.inner_text("[data-testid=content-refused]")
            assert f"{COLLECTION}.subtitle: only on the source" in refused, refused
            assert "\u201cPromote structure\u201d section" in refused and "cairn-migrate promote" not in refused, refused
            assert page.is_disabled("[data-testid=apply-content] button")
        assert target_titles(instance, MOVED) == titles  # nothing more moved
    finally:
        delete_target_rows(instance, MOVED)


def test_content_move_through_the_target_api(page: Any, instance: LiveInstance, source: Path) -> None:
    """"Write through: its API" needs an admin token of the target, says the apply is not one transaction,
    and the rows arrive through CairnCMS's own API: each create is in its activity log (a database write is not)."""
    titles = [f"{THROUGH_API} {n}" for n in (1, 2)]
    add_source_rows(source, titles)
    try:
        open_module(page, instance)
        wait_for_default_target(page, "content-to", instance)
        page.fill("[data-testid=content-from]", str(source))
        page.check(f"[data-testid=content-collection-{COLLECTION}]")
        page.fill("[data-testid=content-filter]", json.dumps({"title": {"_contains": THROUGH_API}}))
        assert not page.is_visible("[data-testid=content-to-token]")  # a .env target: its database by default
        page.select_option("[data-testid=content-via]", "api")
        page.click("[data-testid=plan-content] button")
        error = page.wait_for_selector("[data-testid=content-error]").inner_text()
        assert "needs an admin token of the target" in error, error
        page.fill("[data-testid=content-to-token]", ADMIN_TOKEN)
        plan = show_content_plan(page)
        assert counts(page, "content-plan", COLLECTION)["created"] == 2, plan.inner_text()
        warning = page.inner_text("[data-testid=content-apply-warning]")
        assert "through the API" in warning and "not one transaction" in warning, warning

        page.click("[data-testid=apply-content] button")
        done = page.wait_for_selector("[data-testid=job][data-panel=content][data-state=succeeded]", timeout=120_000)
        job = instance.request("GET", f"/migrate/jobs/{done.get_attribute('data-job-id')}").json()
        assert job["params"]["via"] == "api" and "to_token" not in job["params"], job["params"]  # a secret, never stored
        assert target_titles(instance, THROUGH_API) == titles
        ids = [str(row["id"]) for row in instance.request("GET", f"/items/{COLLECTION}", params={
            "filter": json.dumps({"title": {"_contains": THROUGH_API}}), "fields": "id", "limit": -1}).json()["data"]]
        activity = instance.request("GET", "/activity", params={"filter": json.dumps(
            {"collection": {"_eq": COLLECTION}, "action": {"_eq": "create"}, "item": {"_in": ids}}), "limit": -1})
        assert activity.status_code == 200, activity.text
        assert sorted(a["item"] for a in activity.json()["data"]) == sorted(ids)
    finally:
        delete_target_rows(instance, THROUGH_API)


@contextlib.contextmanager
def source_field(source: Path, field: str) -> Iterator[None]:
    """A field only the source has (its column and its ``directus_fields`` row), for the time of a ``with``."""
    def run(*statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = sqlite3.connect(source.parent / "data.db")
        try:
            for sql, args in statements:
                conn.execute(sql, args)
            conn.commit()
        finally:
            conn.close()

    run((f"ALTER TABLE {COLLECTION} ADD COLUMN {field} varchar(255)", ()),
        ("INSERT INTO directus_fields (collection, field) VALUES (?, ?)", (COLLECTION, field)))
    try:
        yield
    finally:
        run((f"ALTER TABLE {COLLECTION} DROP COLUMN {field}", ()),
            ("DELETE FROM directus_fields WHERE collection = ? AND field = ?", (COLLECTION, field)))


def test_sync_profile_created_run_now_history_paused_removed(page: Any, instance: LiveInstance, source: Path) -> None:
    """Add a profile with the form → listed → "Run now" (a job) → its run in the history with its counts →
    pause (Run now disabled) → remove (confirmed): gone from the list and the sidecar."""
    titles = [f"{SYNCED} {n}" for n in (1, 2)]
    add_source_rows(source, titles)
    try:
        open_module(page, instance)
        assert page.is_visible("[data-testid=syncs-empty]")
        wait_for_default_target(page, "sync-target", instance)
        page.fill("[data-testid=sync-name]", PROFILE)
        page.fill("[data-testid=sync-source]", str(source))
        page.check(f"[data-testid=sync-collection-{COLLECTION}]")
        page.fill("[data-testid=sync-filter]", json.dumps({"title": {"_contains": SYNCED}}))
        page.fill("[data-testid=sync-interval]", "3600")
        stranger = stranger_env(source)  # another instance the operator has not listed: refused, what to set
        page.fill("[data-testid=sync-source]", str(stranger))
        page.click("[data-testid=add-sync] button")
        assert_peers_refusal(page.wait_for_selector("[data-testid=sync-form-error]").inner_text(), stranger)
        assert instance.request("GET", f"/migrate/syncs/{PROFILE}").status_code == 404
        page.fill("[data-testid=sync-source]", str(source))
        page.click("[data-testid=add-sync] button")
        row = page.locator(f"[data-testid=sync-row][data-name={PROFILE}]")
        row.wait_for()
        cells = row.locator("tr").first.locator("td").all_inner_texts()
        assert cells[0] == PROFILE and cells[1] == f"{source.resolve()} \u2192 {(instance.folder / '.env').resolve()}", cells
        assert cells[2:8] == [COLLECTION, "merge, source-wins", "every 3600 s", "active", "never",
                              "not scheduled by this sidecar (serve --scheduler)"], cells
        stored = instance.request("GET", f"/migrate/syncs/{PROFILE}").json()
        assert stored["filters"] == {COLLECTION: {"title": {"_contains": SYNCED}}}
        assert stored["schedule"]["interval_seconds"] == 3600, stored

        row.locator("[data-testid=sync-run] button").click()
        done = page.wait_for_selector("[data-testid=job][data-panel=sync][data-state=succeeded]", timeout=120_000)
        run = page.wait_for_selector(f"[data-testid=sync-history][data-name={PROFILE}] "
                                     f"[data-testid=sync-history-row][data-job-id='{done.get_attribute('data-job-id')}']")
        assert run.get_attribute("data-outcome") == "ok"
        assert run.query_selector("[data-testid=sync-history-counts]").inner_text() == f"{COLLECTION}: 2 created"
        # The run counts collections as its items (the content step's rows are not mixed in).
        job = instance.request("GET", f"/migrate/jobs/{done.get_attribute('data-job-id')}").json()
        assert job["kind"] == "sync_run" and job["progress"]["items_done"] == job["progress"]["items_total"] == 1, job
        run.query_selector("summary").click()
        report = json.loads(run.query_selector("[data-testid=sync-history-report]").inner_text())
        assert report["status"] == "ok" and report["counts"][COLLECTION][COLLECTION]["created"] == 2, report
        assert target_titles(instance, SYNCED) == titles
        page.wait_for_function(f"() => document.querySelector('[data-testid=sync-row][data-name={PROFILE}] "
                               "[data-testid=sync-last-run]')?.innerText.startsWith('ok, ')")
        OUTPUT.mkdir(exist_ok=True)
        page.locator("#syncs").scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "admin-module-syncs.png"))

        row.locator("[data-testid=sync-pause] button").click()
        page.wait_for_selector(f"[data-testid=sync-row][data-name={PROFILE}][data-enabled=false]")
        assert row.locator("[data-testid=sync-state]").inner_text() == "paused"
        assert row.locator("[data-testid=sync-run] button").is_disabled()
        assert row.locator("[data-testid=sync-pause] button").inner_text().strip() == "Resume"
        assert instance.request("GET", f"/migrate/syncs/{PROFILE}").json()["enabled"] is False

        row.locator("[data-testid=sync-remove] button").click()
        assert "its schedule, watermarks and history" in row.locator("[data-testid=sync-confirm-remove]").inner_text()
        row.locator("[data-testid=sync-remove-no] button").click()  # "Keep" changes nothing
        assert instance.request("GET", f"/migrate/syncs/{PROFILE}").status_code == 200
        row.locator("[data-testid=sync-remove] button").click()
        row.locator("[data-testid=sync-remove-yes] button").click()
        page.wait_for_selector("[data-testid=syncs-empty]")
        assert page.locator("[data-testid=sync-history]").count() == 0
        assert instance.request("GET", f"/migrate/syncs/{PROFILE}").status_code == 404
    finally:
        instance.request("DELETE", f"/migrate/syncs/{PROFILE}")
        delete_target_rows(instance, SYNCED)
