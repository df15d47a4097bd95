"""The dashboard at /ui/ in a real headless browser (Debian's chromium, driven by Playwright): it shows the
stored instances with their states, filters and searches (with and without JavaScript), refreshes itself,
passes axe-core's accessibility check, and leaves screenshots for a person to look at."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RegistryLauncher, unusable
from support.registry import ADMIN_PASSWORD, INSTANCE_SECRET, RegistryProcess

ADMIN = ("admin", ADMIN_PASSWORD)
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("BOSHREG_SCREENSHOTS", ROOT / "build" / "screenshots"))
# As root, without a sandbox; no background traffic to the internet this machine cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_SECONDS = 10
AGENT_WAIT = 3  # seconds: each test has this long after the fixture's last PUT to see vm-new "waiting"
SERIOUS = ("serious", "critical")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        unusable("chromium", "Debian's chromium is not installed (apt-get install chromium, or make tools as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def fleet(start_registry: RegistryLauncher) -> RegistryProcess:
    """A registry with one VM of each state: read fine, refused, stored long ago and never read, just stored."""
    registry = start_registry(instance_secret=INSTANCE_SECRET, workers=2)
    url = f"{registry.url}/instances/%s/settings"
    for key in ("vm-silent", "vm-ok", "vm-401"):
        assert httpx.put(url % key, content=b'{"agent_id": "a"}', auth=ADMIN).status_code == 200
    time.sleep(AGENT_WAIT + 0.2)  # vm-silent is now past the agent wait the pages are asked with
    assert httpx.put(url % "vm-new", content=b'{"agent_id": "a"}', auth=ADMIN).status_code == 200
    assert httpx.get(url % "vm-ok", auth=ADMIN).status_code == 200
    assert httpx.get(url % "vm-401", auth=("admin", "wrong")).status_code == 401
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:  # the audit writer: refusals within 0.5 s, counted reads within 2 s
        found = httpx.get(f"{registry.url}/fleet", auth=ADMIN).json()["instances"]
        states = {row["instance_id"]: row["state"] for row in found}
        if states.get("vm-401") == "failing" and states.get("vm-ok") == "ok":
            break
        time.sleep(0.2)
    return registry


def admin_page(browser: Any, **options: Any) -> Any:
    context = browser.new_context(http_credentials={"username": "admin", "password": ADMIN_PASSWORD}, **options)
    return context.new_page()


def rows(page: Any) -> dict[str, str]:
    """Instance -> state, as the page shows them, in the page's order."""
    found = page.eval_on_selector_all(
        "table.fleet tbody tr",
        "trs => trs.filter(tr => tr.querySelector('th')).map(tr => [tr.querySelector('th').innerText,"
        " tr.querySelector('td').innerText])",
    )
    return dict(found)


def serious_violations(page: Any) -> tuple[list[str], str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [v["id"] for v in results.response["violations"] if v["impact"] in SERIOUS], results.generate_report()


def test_the_fleet_page_in_a_browser(browser: Any, fleet: RegistryProcess) -> None:
    page = admin_page(browser, viewport={"width": 1280, "height": 900})
    page.goto(f"{fleet.url}/ui/?agent_wait={AGENT_WAIT}")
    assert page.title() == "Fleet - boshreg"
    assert rows(page) == {"vm-401": "failing", "vm-silent": "never read", "vm-new": "waiting", "vm-ok": "ok"}
    assert "401 access_denied" in page.inner_text("table.fleet")
    assert page.is_visible("#auto-refresh")  # with JavaScript, the page offers to refresh itself
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    serious, report = serious_violations(page)
    assert serious == [], report

    page.select_option("#state", "failing")  # the filter form, used as a person would
    page.click("button[type=submit]")
    assert rows(page) == {"vm-401": "failing"}
    page.select_option("#state", "")
    page.fill("#q", "silent")
    page.click("button[type=submit]")
    assert rows(page) == {"vm-silent": "never read"}  # the form keeps the agent wait it was shown with

    page.goto(f"{fleet.url}/ui/?agent_wait={AGENT_WAIT}&sort=instance&order=asc")
    assert list(rows(page)) == ["vm-401", "vm-new", "vm-ok", "vm-silent"]
    page.click("text=vm-401")
    assert page.title() == "vm-401 - boshreg"
    assert "refused-401" in page.inner_text(".diagnosis")
    assert "401 access_denied" in page.inner_text("table.events")
    serious, report = serious_violations(page)
    assert serious == [], report
    page.context.close()


def test_the_page_refreshes_itself_while_open_and_can_be_paused(browser: Any, fleet: RegistryProcess) -> None:
    page = admin_page(browser)
    page.goto(f"{fleet.url}/ui/?refresh=2")
    page.evaluate("window.marker = 'same page'")
    assert httpx.put(f"{fleet.url}/instances/vm-late/settings", content=b'{"agent_id": "a"}', auth=ADMIN).is_success
    page.wait_for_selector("table.fleet >> text=vm-late", timeout=WAIT_SECONDS * 1000)
    assert page.evaluate("window.marker") == "same page"  # swapped in place, not reloaded
    page.uncheck("#auto-refresh")
    assert httpx.put(f"{fleet.url}/instances/vm-later/settings", content=b'{"agent_id": "a"}', auth=ADMIN).is_success
    page.wait_for_timeout(4500)
    assert "vm-later" not in rows(page)  # paused by the person looking at it
    page.context.close()


def test_without_javascript_filters_and_sorting_still_work(browser: Any, fleet: RegistryProcess) -> None:
    page = admin_page(browser, java_script_enabled=False)
    page.goto(f"{fleet.url}/ui/?agent_wait={AGENT_WAIT}")
    assert not page.is_visible("#auto-refresh")
    page.select_option("#state", "never-read")
    page.click("button[type=submit]")
    assert rows(page) == {"vm-silent": "never read"}
    page.goto(f"{fleet.url}/ui/")
    page.click("thead >> text=Instance")
    page.click("thead >> text=Instance")  # again: descending
    assert list(rows(page)) == ["vm-silent", "vm-ok", "vm-new", "vm-401"]
    page.context.close()


def test_on_a_phone_the_table_scrolls_instead_of_the_page(browser: Any, fleet: RegistryProcess) -> None:
    page = admin_page(browser, viewport={"width": 390, "height": 844})
    page.goto(f"{fleet.url}/ui/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the table scrolls in its own box
    page.screenshot(path=str(SCREENSHOTS / "dashboard-phone.png"), full_page=True)
    page.context.close()


def test_the_dashboard_needs_the_admin_and_fetches_nothing_from_elsewhere(fleet: RegistryProcess) -> None:
    assert httpx.get(f"{fleet.url}/ui/").status_code == 401
    page = httpx.get(f"{fleet.url}/ui/?state=failing", auth=ADMIN)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert "vm-401" in page.text
    assert "vm-ok" not in page.text.split("<tbody>")[1]
    css = httpx.get(f"{fleet.url}/ui/static/ui.css", auth=ADMIN)
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert httpx.get(f"{fleet.url}/ui/instances/bad%00id", auth=ADMIN).status_code == 400
