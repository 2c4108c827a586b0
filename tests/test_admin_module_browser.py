"""The admin-app module in headless Chromium: log in, open /admin/migrate, export, download.

Each test runs on real CairnCMS (``live_instance``) and on Directus 9.22.4 (``directus_instance``).
Screenshots land in ``test-output/`` (repo-relative, gitignored): ``admin-module-<platform>.png``
after the export finished, ``admin-module-sidecar-down-<platform>.png`` with the sidecar stopped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_instance import ADMIN_EMAIL, ADMIN_PASSWORD, PLATFORM_FIXTURES, REPO, LiveInstance

OUTPUT = REPO / "test-output"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def bundle_keeps_bare_vue_import(live: LiveInstance) -> bool:
    """True when the instance's app-extension bundle still says ``import … from "vue"``.

    CairnCMS 1.0.0-beta.4 cannot map the app's shared ``vue`` chunk for app extensions (it looks for
    8-hex-digit chunk hashes, its app build names them in base64url; docs/extension.md): the bundle
    keeps the bare import, which no browser resolves, so no app extension loads at all.
    """
    source = live.request("GET", "/extensions/sources/index.js")
    assert source.status_code == 200, source.text
    return re.search(r"""from\s*["']vue["']""", source.text) is not None


@pytest.fixture(scope="module", params=list(PLATFORM_FIXTURES))
def platform_fixture(request: pytest.FixtureRequest) -> str:
    """``live_instance`` (CairnCMS) or ``directus_instance``: each browser test runs on both."""
    return PLATFORM_FIXTURES[request.param]


@pytest.fixture
def live(platform_fixture: str, request: pytest.FixtureRequest) -> LiveInstance:
    """The running instance of this test (asked for per test, so the summary counts each use)."""
    live: LiveInstance = request.getfixturevalue(platform_fixture)
    if bundle_keeps_bare_vue_import(live):
        pytest.xfail(f"{live.platform.name} cannot bundle an app module that imports vue (known bug); "
                     "the module rewrite without static vue imports makes it load")
    return live


@pytest.fixture(scope="module")
def page(platform_fixture: str, chromium_path: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A browser logged in to the admin app of the module's instance."""
    live: LiveInstance = request.getfixturevalue(platform_fixture)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{live.url}/admin/login")
        page.fill("input[type=email]", ADMIN_EMAIL)
        page.fill("input[type=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/content**")
        try:
            yield page
        finally:
            context.close()
            browser.close()


def test_export_finishes_and_downloads(live: LiveInstance, page: Any, tmp_path: Path) -> None:
    page.goto(f"{live.url}/admin/migrate")
    page.wait_for_selector("[data-testid=sidecar-up]")
    assert page.locator(".module-bar [href='/admin/migrate'], .module-bar a[href$='/migrate']").count() >= 1
    page.click("[data-testid=start-export] button")
    page.wait_for_selector("[data-testid=job][data-state=succeeded]", timeout=120_000)
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    bundles = live.request("GET", "/migrate/bundles").json()["bundles"]
    bundle = next(b for b in bundles if b["name"] == download.suggested_filename)
    assert saved.stat().st_size == bundle["size"] > 0
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"admin-module-{live.platform.script}.png"), full_page=True)


def test_module_says_the_sidecar_is_down(live: LiveInstance, page: Any) -> None:
    with live.sidecar_stopped():
        page.goto(f"{live.url}/admin/migrate")
        notice = page.wait_for_selector("[data-testid=sidecar-down]")
        assert "not reachable" in notice.inner_text()
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / f"admin-module-sidecar-down-{live.platform.script}.png"), full_page=True)
