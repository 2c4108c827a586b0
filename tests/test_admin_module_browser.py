"""The admin-app module in headless Chromium, on every running instance the live fixtures give.

Each test is a thin wrapper around a helper that takes the Playwright page and any object with the
:class:`LiveInstance` interface (``url``, ``request()``, ``sidecar_stopped()``, ``logs``), so the same
checks run on CairnCMS and on Directus 9.22.4: ``INSTANCE_FIXTURES`` lists the fixtures of
``live_instance.py`` that exist.  Screenshots land in ``test-output/`` (repo-relative, gitignored):
``admin-module-<fixture>.png`` after an export, ``admin-module-<fixture>-import.png`` with an import
plan, ``admin-module-<fixture>-promote.png`` with a promote plan, ``admin-module-<fixture>-sidecar-down.png``
with the sidecar stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import live_instance as live_fixtures
import pytest
import requests
from live_instance import (ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN, COLLECTION, REPO, LiveInstance, free_port,
                           start_server, stop_process)

OUTPUT = REPO / "test-output"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: The fixtures giving a running instance plus sidecar (LiveInstance interface); every test runs on each.
INSTANCE_FIXTURES = [name for name in ("live_instance", "directus_instance") if hasattr(live_fixtures, name)]
FINAL = ("succeeded", "failed", "cancelled")
PASSPHRASE = "correct horse battery"
GZIP_MAGIC = b"\x1f\x8b"
#: Lines an instance logs when the app extensions did not bundle (the module would be "Page Not Found").
BUNDLE_FAILURES = ("Couldn't bundle App extensions", "could not be resolved")
#: The collection a promote test creates on its source and promotes (then drops again) onto the instance.
NOTES = "promoted_notes"


@pytest.fixture(scope="module", params=INSTANCE_FIXTURES)
def instance(request: pytest.FixtureRequest) -> LiveInstance:
    instance: LiveInstance = request.getfixturevalue(request.param)
    return instance


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser: Any, instance: LiveInstance) -> Iterator[Any]:
    """A page logged in to ``instance`` as its admin."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    log_in(page, instance)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> str:
    """Screenshot path prefix, named after the instance fixture: test-output/admin-module-<fixture>."""
    OUTPUT.mkdir(exist_ok=True)
    return str(OUTPUT / f"admin-module-{request.node.callspec.params['instance']}")


# ---------------------------------------------------------------------------------------------
# Helpers: each takes the page and the instance (plus where to write files), nothing platform-specific.


def log_in(page: Any, instance: LiveInstance) -> None:
    """Sign in as the admin, whatever session the page had (the app keeps it in a refresh cookie)."""
    page.context.clear_cookies()
    page.goto(f"{instance.url}/admin/login")
    page.fill("input[type=email]", ADMIN_EMAIL)
    page.fill("input[type=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/admin/" in url and "/admin/login" not in url)


def open_module(page: Any, instance: LiveInstance) -> None:
    page.goto(f"{instance.url}/admin/migrate")
    page.wait_for_selector("[data-testid=sidecar-up]")


def wait_for_job(instance: LiveInstance, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job record once it is final (polled through the instance's /migrate endpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = instance.request("GET", f"/migrate/jobs/{job_id}").json()
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout:.0f}s"
        time.sleep(0.5)


def export_bundle(instance: LiveInstance, passphrase: str | None = None) -> dict[str, Any]:
    """A finished export made through the API (not the page): its job record."""
    body: dict[str, Any] = {"full": True}
    if passphrase:
        body["passphrase"] = passphrase
    started = instance.request("POST", "/migrate/export", json=body)
    assert started.status_code == 202, started.text
    job = wait_for_job(instance, started.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job


def record_job_states(page: Any) -> None:
    """Collect every data-state the job panel shows, however briefly (window.__jobStates)."""
    page.evaluate("""() => {
        window.__jobStates = [];
        const seen = (el) => { if (el && el.dataset.state) window.__jobStates.push(el.dataset.state); };
        new MutationObserver(() => seen(document.querySelector('[data-testid=job]')))
            .observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
    }""")


def folder_names(instance: LiveInstance) -> list[str]:
    response = instance.request("GET", "/folders", params={"fields": "name", "limit": -1})
    assert response.status_code == 200, response.text
    return [row["name"] for row in response.json()["data"]]


def check_module_loads_with_the_apps_vue(page: Any, instance: LiveInstance) -> None:
    named = instance.request("GET", "/migrate/app/vue", token=None)
    assert named.status_code == 200, named.text
    chunk = named.json()["vue"]
    assert re.fullmatch(r"vue\.[A-Za-z0-9_-]+\.entry\.js", chunk)
    open_module(page, instance)
    # The app's own components rendered the page, so h() and resolveComponent() were the app's Vue.
    assert page.locator("header").get_by_text("Migrate", exact=True).count() >= 1
    assert page.locator("[href$='/admin/migrate'], [href$='/migrate']").count() >= 1  # the module bar entry
    # The live sidecars allow no folder for paths (CAIRN_MIGRATE_HTTP_PATHS): the content move's target stays empty.
    assert "CAIRN_MIGRATE_HTTP_PATHS is empty" in page.wait_for_selector("[data-testid=paths-none]").inner_text()
    assert page.input_value("[data-testid=content-to]") == ""
    loaded = page.evaluate("() => performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)")
    assert any(path.endswith(f"/admin/assets/{chunk}") for path in loaded), loaded
    logs = "\n".join(p.read_text(errors="replace") for p in Path(instance.logs).glob("*.log"))
    assert not [line for line in BUNDLE_FAILURES if line in logs], logs[-3000:]


def check_export(page: Any, instance: LiveInstance, tmp_path: Path, shots: str) -> None:
    """Export with freeze and a passphrase: live progress, then the encrypted bundle downloads."""
    open_module(page, instance)
    page.fill("[data-testid=export-passphrase]", "short")
    assert page.is_disabled("[data-testid=start-export] button")  # under 8 characters
    page.fill("[data-testid=export-passphrase]", PASSPHRASE)
    page.check("[data-testid=export-freeze]")
    record_job_states(page)
    page.click("[data-testid=start-export] button")
    page.wait_for_selector("[data-testid=job][data-state=succeeded]", timeout=120_000)
    states = page.evaluate("() => window.__jobStates")
    assert states[0] not in FINAL and states[-1] == "succeeded", states  # shown while it ran, then polled to the end
    assert "capturing tables" in page.inner_text("[data-testid=job-log]")
    job_id = page.get_attribute("[data-testid=job]", "data-job-id")
    job = instance.request("GET", f"/migrate/jobs/{job_id}").json()
    assert job["kind"] == "export" and job["params"]["freeze"] is True and job["params"]["encrypted"] is True
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name == f"{job['result']['bundle_id']}.tar.gz.enc"
    assert saved.stat().st_size == job["result"]["size"] > 0
    assert not saved.read_bytes().startswith(GZIP_MAGIC)  # encrypted, not a plain .tar.gz
    page.screenshot(path=f"{shots}.png", full_page=True)


def check_import(page: Any, instance: LiveInstance, shots: str) -> None:
    """The dry-run plan comes first and changes nothing; applying it restores the bundle."""
    bundle = export_bundle(instance, PASSPHRASE)["result"]
    later = f"made after export {bundle['bundle_id'][:8]}"
    assert instance.request("POST", "/folders", json={"name": later}).status_code == 200
    open_module(page, instance)
    page.select_option("[data-testid=import-source]", bundle["bundle_id"])
    page.fill("[data-testid=import-passphrase]", PASSPHRASE)
    page.click("[data-testid=plan-import] button")
    refused = page.wait_for_selector("[data-testid=plan-error]").inner_text()
    assert "not empty" in refused  # without "replace" the non-empty instance is refused
    # Worded for this page: the "Replace" box, not the CLI's flags.
    assert "tick \u201cReplace a non-empty instance\u201d" in refused and "--replace" not in refused, refused
    page.check("[data-testid=import-replace]")
    page.click("[data-testid=plan-import] button")
    plan = page.wait_for_selector("[data-testid=import-plan]")
    assert '"replace": true' in plan.inner_text() and "directus_users" in plan.inner_text()
    assert later in folder_names(instance)  # the dry run changed nothing
    page.screenshot(path=f"{shots}-import.png", full_page=True)
    page.click("[data-testid=apply-import] button")
    page.wait_for_selector("[data-testid=job][data-state=succeeded]", timeout=120_000)
    assert page.inner_text("[data-testid=job] strong").startswith("import ")
    assert later not in folder_names(instance)  # the instance is the bundle again
    log_in(page, instance)  # the sessions are the bundle's too: the page's own refresh session is gone


def check_uploaded_bundle_is_planned(page: Any, instance: LiveInstance, tmp_path: Path) -> None:
    bundle = export_bundle(instance)["result"]
    download = instance.request("GET", bundle["download"])
    assert download.status_code == 200
    archive = tmp_path / f"{bundle['bundle_id']}.tar.gz"
    archive.write_bytes(download.content)
    open_module(page, instance)
    page.set_input_files("[data-testid=import-file]", str(archive))
    page.check("[data-testid=import-replace]")
    page.click("[data-testid=plan-import] button")
    page.wait_for_selector("[data-testid=import-plan]")
    uploads = [b for b in instance.request("GET", "/migrate/bundles").json()["bundles"] if b["id"].startswith("upload-")]
    assert any(b["size"] == archive.stat().st_size for b in uploads), uploads


def check_files_report(page: Any, instance: LiveInstance) -> None:
    """A file row without bytes (created through the API) shows in the report."""
    created = instance.request("POST", "/files", json={"title": "no bytes", "storage": "local",
                                                        "filename_download": "gone.txt", "type": "text/plain"})
    assert created.status_code == 200, created.text
    file_id = created.json()["data"]["id"]
    try:
        open_module(page, instance)
        page.click("[data-testid=check-files] button")
        report = json.loads(page.wait_for_selector("[data-testid=files-report]", timeout=120_000).inner_text())
        without_bytes = instance.request("GET", "/files", params={"filter[filename_disk][_null]": "true", "fields": "id", "limit": -1})
        expected = sorted(row["id"] for row in without_bytes.json()["data"])
        assert file_id in expected and report["ok"] is False
        assert report["counts"]["no_filename_disk"] == len(expected)
        assert sorted(p["id"] for p in report["problems"]["no_filename_disk"]) == expected
    finally:
        instance.request("DELETE", f"/files/{file_id}")


def check_export_and_files_check_side_by_side(page: Any, instance: LiveInstance) -> None:
    """A files check started while an export runs has its own panel; the export is still followed to its download."""
    open_module(page, instance)
    page.fill("[data-testid=export-passphrase]", PASSPHRASE)
    page.check("[data-testid=export-freeze]")
    page.click("[data-testid=start-export] button")
    export_id = page.wait_for_selector("#export [data-testid=job]").get_attribute("data-job-id")
    page.click("[data-testid=check-files] button")
    files_id = page.wait_for_selector("#files [data-testid=job]").get_attribute("data-job-id")
    page.wait_for_selector("#files [data-testid=files-report]", timeout=120_000)
    page.wait_for_selector(f"#export [data-testid=job][data-job-id='{export_id}'][data-state=succeeded]", timeout=120_000)
    export_job = instance.request("GET", f"/migrate/jobs/{export_id}").json()
    files_job = instance.request("GET", f"/migrate/jobs/{files_id}").json()
    assert export_job["kind"] == "export" and files_job["kind"] == "files_check"
    assert files_job["created_at"] < export_job["finished_at"]  # the check really started while the export ran
    href = page.get_attribute("#export [data-testid=download]", "href") or ""
    assert href.startswith(f"{export_job['result']['download']}?access_token="), href
    page.wait_for_selector(f"#files [data-testid=job][data-job-id='{files_id}'][data-state=succeeded]")
    assert page.locator("[data-testid=files-message]").count() == 0  # "Checking every file row…" ended with its job
    assert page.locator("[data-testid=job-error]").count() == 0
    write_after_the_freeze(instance)


def write_after_the_freeze(instance: LiveInstance, timeout: float = 15) -> None:
    """The instance takes writes again once a frozen export is over (its hook asks again after its cache).

    Also leaves the hook knowing the freeze ended: a hook that last saw it active keeps it while the
    sidecar is down, until its expiry, which a later test stopping the sidecar would run into.
    """
    deadline = time.monotonic() + timeout
    while True:
        created = instance.request("POST", f"/items/{COLLECTION}", json={"title": "after the frozen export"})
        if created.status_code == 200:
            instance.request("DELETE", f"/items/{COLLECTION}/{created.json()['data']['id']}")
            return
        assert created.status_code == 503 and time.monotonic() < deadline, created.text
        time.sleep(0.5)


#: What CairnCMS answers while a table its request reads is being recreated (a raw SQL error, HTTP 500).
SQL_ERROR = "select `directus_users`.`id` from `directus_users` - SQLITE_ERROR: no such table: directus_users"


def check_poll_error_during_a_replace_passes(page: Any, instance: LiveInstance) -> None:
    """A poll that fails while an import replaces the instance shows a passing note, gone at the next good poll.

    Mocked: the failing answers.  A Playwright route answers the import's job polls with the 500 CairnCMS gives
    while a table it reads is recreated, as long as the real job (fetched first) still runs, twice at most.
    Which poll lands inside the real window depends on timing a test cannot choose.
    """
    bundle = export_bundle(instance)["result"]
    failed: list[str] = []

    def flaky(route: Any) -> None:
        response = route.fetch()
        job = response.json() if response.ok else {}
        if job.get("kind") == "import" and job.get("state") not in FINAL and len(failed) < 2:
            failed.append(job["state"])
            body = json.dumps({"errors": [{"message": SQL_ERROR, "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]})
            route.fulfill(status=500, content_type="application/json", body=body)
        else:
            route.fulfill(response=response)

    open_module(page, instance)
    page.select_option("[data-testid=import-source]", bundle["bundle_id"])
    page.check("[data-testid=import-replace]")
    page.click("[data-testid=plan-import] button")
    page.wait_for_selector("[data-testid=import-plan]")
    page.evaluate("""() => {
        window.__notes = [];
        new MutationObserver(() => document.querySelectorAll('#import [data-testid=job-note], #import [data-testid=job-error]')
            .forEach((el) => window.__notes.push(el.innerText)))
            .observe(document.body, { subtree: true, childList: true, characterData: true });
    }""")
    page.route("**/migrate/jobs/*", flaky)
    try:
        page.click("[data-testid=apply-import] button")
        page.wait_for_selector("#import [data-testid=job][data-state=succeeded]", timeout=120_000)
    finally:
        page.unroute("**/migrate/jobs/*")
    notes = page.evaluate("() => window.__notes")
    assert failed and notes and set(notes) == {"Instance restarting its tables… (asking again)"}, (failed, notes)
    assert page.locator("#import [data-testid=job-note], #import [data-testid=job-error]").count() == 0
    assert SQL_ERROR not in page.inner_text("[data-testid=cairn-migrate]")
    log_in(page, instance)  # the sessions are the bundle's: the page's own refresh session is gone


def check_past_jobs(page: Any, instance: LiveInstance) -> None:
    open_module(page, instance)
    page.wait_for_load_state("networkidle")  # the page has its job list
    job_id = export_bundle(instance)["id"]  # finished after the page loaded: Refresh must bring it in
    row = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
    assert row.count() == 0
    page.click("[data-testid=refresh-jobs] button")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == [job_id, "export", "succeeded"], cells
    assert f"/migrate/bundles/{job_id}?access_token=" in (row.locator("a[download]").get_attribute("href") or "")
    row.locator("td").first.locator("a").click()
    page.wait_for_selector(f"[data-testid=job][data-job-id='{job_id}'][data-state=succeeded]")


def check_load_failure_is_shown(page: Any, instance: LiveInstance) -> None:
    """When the app's Vue cannot be found, the route says why instead of staying blank.

    Mocked: the endpoint's 500 answer (Playwright route).  The real one needs an instance whose app
    package cannot be resolved, which a shared live instance cannot be made into.
    """
    message = "cairn-migrate found no vue chunk of the admin app"
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": "APP_VUE_NOT_FOUND"}}]})
    page.route("**/migrate/app/vue", lambda route: route.fulfill(status=500, content_type="application/json", body=body))
    try:
        page.goto(f"{instance.url}/admin/migrate")
        shown = page.wait_for_selector(f"text=could not load the admin app's Vue: GET /migrate/app/vue: {message}")
        assert "cairn-migrate install-extension" in shown.inner_text()
    finally:
        page.unroute("**/migrate/app/vue")


def copy_instance(instance: LiveInstance, folder: Path) -> str:
    """A copy of ``instance``'s folder and SQLite database at ``folder`` (its ``.env`` naming its own files and a
    port of its own), not started; returns the URL its ``.env`` gives it (``PUBLIC_URL``)."""
    shutil.copytree(instance.folder, folder, ignore=shutil.ignore_patterns("data.db*"))
    live, copy = sqlite3.connect(instance.folder / "data.db"), sqlite3.connect(folder / "data.db")
    try:
        live.backup(copy)  # consistent even while the instance writes
    finally:
        live.close()
        copy.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_file = folder / ".env"
    text = env_file.read_text().replace(str(instance.folder), str(folder))
    text = re.sub(r"(?m)^PORT=.*$", f"PORT={port}", text)
    env_file.write_text(re.sub(r"(?m)^PUBLIC_URL=.*$", f"PUBLIC_URL={url}", text))
    return url


@contextlib.contextmanager
def running_copy(instance: LiveInstance, folder: Path) -> Iterator[str]:
    """A second real instance of the same platform, version and vendor: a copy of ``instance``'s folder and
    SQLite database on a port of its own; yields its URL (its admin token is ``ADMIN_TOKEN`` too)."""
    url = copy_instance(instance, folder)
    server = start_server(instance.platform, folder, url, instance.env, folder / "server.log")
    try:
        yield url
    finally:
        stop_process(server)


def source_request(url: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30, **kwargs)


def collection_names(instance: LiveInstance) -> list[str]:
    response = instance.request("GET", "/collections")
    assert response.status_code == 200, response.text
    return [row["collection"] for row in response.json()["data"]]


def create_notes(url: str) -> None:
    created = source_request(url, "POST", "/collections", json={
        "collection": NOTES, "meta": {}, "schema": {},
        "fields": [
            {"field": "id", "type": "integer", "meta": {"hidden": True}, "schema": {"is_primary_key": True, "has_auto_increment": True}},
            {"field": "title", "type": "string", "meta": {}, "schema": {}},
        ],
    })
    assert created.status_code == 200, created.text


def show_promote_plan(page: Any) -> Any:
    """Click "Show the plan" and return the rendered plan (a new one, not the one shown before)."""
    page.evaluate("() => document.querySelector('[data-testid=promote-plan]')?.remove()")
    page.click("[data-testid=plan-promote] button")
    shown = page.wait_for_selector("[data-testid=promote-plan], [data-testid=promote-error]", timeout=120_000)
    assert shown.get_attribute("data-testid") == "promote-plan", shown.inner_text()
    return shown


def apply_promote(page: Any, instance: LiveInstance) -> dict[str, Any]:
    """Click "Apply" and return the finished job (shown in the promote panel and its report)."""
    page.evaluate("() => document.querySelector('[data-testid=job][data-panel=promote]')?.remove()")
    page.click("[data-testid=apply-promote] button")
    shown = page.wait_for_selector("[data-testid=job][data-panel=promote][data-state=succeeded]", timeout=120_000)
    job: dict[str, Any] = instance.request("GET", f"/migrate/jobs/{shown.get_attribute('data-job-id')}").json()
    assert job["kind"] == "promote" and "to_token" not in job["params"] and job["result"]["applied"] is True, job
    assert page.inner_text("[data-testid=promote-snapshot]") == job["result"]["safety_snapshot"]
    return job


def check_promote(page: Any, instance: LiveInstance, tmp_path: Path, shots: str) -> None:
    """Promote from a second real instance: the plan first (nothing changed), apply, a second plan says no
    changes; a drop of a collection holding rows is refused with its row count until "Allow data loss"."""
    with running_copy(instance, tmp_path / "source") as source:
        create_notes(source)
        try:
            open_module(page, instance)
            page.fill("[data-testid=promote-from]", source)
            page.fill("[data-testid=promote-from-token]", ADMIN_TOKEN)
            plan = show_promote_plan(page)
            lines = page.inner_text("[data-testid=promote-plan-lines]")
            assert plan.get_attribute("data-changes") == "true" and plan.get_attribute("data-refused") == "0", lines
            assert f"+ collection {NOTES}" in lines and f"+ field {NOTES}.title" in lines, lines
            assert "flows: 0 to create, 0 to update" in lines, lines
            assert NOTES not in collection_names(instance)  # the plan changed nothing
            page.screenshot(path=f"{shots}-promote.png", full_page=True)
            apply_promote(page, instance)
            assert instance.request("GET", f"/fields/{NOTES}/title").status_code == 200
            again = show_promote_plan(page)
            assert again.get_attribute("data-changes") == "false", page.inner_text("[data-testid=promote-plan-lines]")
            assert page.is_visible("[data-testid=promote-no-changes]")
            assert page.is_disabled("[data-testid=apply-promote] button")

            # The source drops the collection while this instance holds a row of it: refused, with the count.
            assert instance.request("POST", f"/items/{NOTES}", json={"title": "kept"}).status_code == 200
            assert source_request(source, "DELETE", f"/collections/{NOTES}").status_code == 204
            show_promote_plan(page)
            refused = page.inner_text("[data-testid=promote-refused]")
            assert f"{NOTES} (1 row)" in refused and "tick \u201cAllow data loss\u201d" in refused, refused
            assert "--allow-data-loss" not in refused
            assert page.is_disabled("[data-testid=apply-promote] button")
            assert instance.request("GET", f"/items/{NOTES}").json()["data"][0]["title"] == "kept"
            page.check("[data-testid=promote-allow-data-loss]")
            # "Destructive" next to it: the source is a copy of this instance, so it deletes nothing more here.
            assert not page.is_checked("[data-testid=promote-destructive]")
            page.check("[data-testid=promote-destructive]")
            plan = show_promote_plan(page)
            lines = page.inner_text("[data-testid=promote-plan-lines]")
            assert plan.get_attribute("data-refused") == "0" and f"- collection {NOTES}" in lines, lines
            assert "  - role" not in lines and "kept (target only)" not in lines, lines
            assert apply_promote(page, instance)["params"]["destructive"] is True
            assert NOTES not in collection_names(instance)
        finally:
            instance.request("DELETE", f"/collections/{NOTES}")  # leave the shared instance as it was


def check_promote_unsupported(page: Any, instance: LiveInstance) -> None:
    """An instance without CairnCMS's /schema/* and /config/* API (Directus 9.22.4): the section says so up front."""
    missing = [path for path in ("/schema/snapshot", "/config/snapshot") if instance.request("GET", path).status_code == 404]
    assert missing == ["/schema/snapshot", "/config/snapshot"], missing
    open_module(page, instance)
    notice = page.wait_for_selector("[data-testid=promote-unsupported]").inner_text()
    assert "404 to /schema/snapshot and /config/snapshot" in notice and "cannot promote into this instance" in notice, notice
    assert page.is_disabled("[data-testid=plan-promote] button")


def check_sidecar_down(page: Any, instance: LiveInstance, shots: str) -> None:
    """A red notice and disabled actions while the sidecar is down; the page recovers by itself."""
    with instance.sidecar_stopped():
        page.goto(f"{instance.url}/admin/migrate")
        notice = page.wait_for_selector("[data-testid=sidecar-down]").inner_text()
        assert "not reachable" in notice
        # The command starts the sidecar where the extension looks for it, not on serve's default port.
        assert f"cairn-migrate --env <instance .env> serve --host 127.0.0.1 --port {instance.sidecar_port}" in notice, notice
        assert page.is_disabled("[data-testid=start-export] button")
        assert page.is_disabled("[data-testid=check-files] button")
        page.screenshot(path=f"{shots}-sidecar-down.png", full_page=True)
    # The page asks again every 10 s; no reload.
    page.wait_for_selector("[data-testid=sidecar-up]", timeout=25_000)
    assert page.is_enabled("[data-testid=start-export] button")


# ---------------------------------------------------------------------------------------------


def test_module_loads_with_the_apps_vue(page: Any, instance: LiveInstance) -> None:
    check_module_loads_with_the_apps_vue(page, instance)


def test_export_with_freeze_and_passphrase_downloads(page: Any, instance: LiveInstance, tmp_path: Path, shots: str) -> None:
    check_export(page, instance, tmp_path, shots)


def test_import_plans_first_then_applies(page: Any, instance: LiveInstance, shots: str) -> None:
    check_import(page, instance, shots)


def test_an_uploaded_bundle_is_planned(page: Any, instance: LiveInstance, tmp_path: Path) -> None:
    check_uploaded_bundle_is_planned(page, instance, tmp_path)


def test_files_check_report(page: Any, instance: LiveInstance) -> None:
    check_files_report(page, instance)


def test_export_and_files_check_side_by_side(page: Any, instance: LiveInstance) -> None:
    check_export_and_files_check_side_by_side(page, instance)


def test_a_poll_error_during_a_replace_passes(page: Any, instance: LiveInstance) -> None:
    check_poll_error_during_a_replace_passes(page, instance)


def test_past_jobs(page: Any, instance: LiveInstance) -> None:
    check_past_jobs(page, instance)


def test_a_load_failure_is_shown(page: Any, instance: LiveInstance) -> None:
    check_load_failure_is_shown(page, instance)


def test_promote_plans_first_then_applies(page: Any, instance: LiveInstance, tmp_path: Path, shots: str) -> None:
    if instance.platform.script == "cairncms":
        check_promote(page, instance, tmp_path, shots)
    else:  # Directus 9.22.4 has neither /schema/* nor /config/*: promote cannot target it
        check_promote_unsupported(page, instance)


def test_module_says_the_sidecar_is_down(page: Any, instance: LiveInstance, shots: str) -> None:
    check_sidecar_down(page, instance, shots)
