"""The admin-app module in headless Chromium: log in, open /admin/migrate, export, download.

Screenshots land in ``test-output/`` (repo-relative, gitignored): ``admin-module.png`` after the
export finished, ``admin-module-sidecar-down.png`` with the sidecar stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_instance import ADMIN_EMAIL, ADMIN_PASSWORD, REPO, LiveInstance

OUTPUT = REPO / "test-output"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def page(live_instance: LiveInstance, chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{live_instance.url}/admin/login")
        page.fill("input[type=email]", ADMIN_EMAIL)
        page.fill("input[type=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/content**")
        try:
            yield page
        finally:
            context.close()
            browser.close()


def test_export_finishes_and_downloads(page: Any, live_instance: LiveInstance, tmp_path: Path) -> None:
    page.goto(f"{live_instance.url}/admin/migrate")
    page.wait_for_selector("[data-testid=sidecar-up]")
    assert page.locator(".module-bar [href='/admin/migrate'], .module-bar a[href$='/migrate']").count() >= 1
    page.click("[data-testid=start-export] button")
    page.wait_for_selector("[data-testid=job][data-state=succeeded]", timeout=120_000)
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    bundles = live_instance.request("GET", "/migrate/bundles").json()["bundles"]
    bundle = next(b for b in bundles if b["name"] == download.suggested_filename)
    assert saved.stat().st_size == bundle["size"] > 0
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "admin-module.png"), full_page=True)


def test_module_says_the_sidecar_is_down(page: Any, live_instance: LiveInstance) -> None:
    with live_instance.sidecar_stopped():
        page.goto(f"{live_instance.url}/admin/migrate")
        notice = page.wait_for_selector("[data-testid=sidecar-down]")
        assert "not reachable" in notice.inner_text()
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "admin-module-sidecar-down.png"), full_page=True)
