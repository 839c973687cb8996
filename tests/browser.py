"""Headless Chromium for the UI tests: Debian's ``chromium`` driven by Playwright (no browser download).

``make test`` installs the package where it can (``make browser``). Where no Chromium exists the UI
tests skip, unless ``PIPELINE_REQUIRE_BROWSER=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

# No background traffic: this machine's network is closed, and a test must not depend on Google's hosts.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def browser() -> Iterator[object]:
    """A Playwright browser context (1280x900) in headless Chromium."""
    path = chromium_path()
    if path is None:
        message = "no Chromium found: `make browser` installs Debian's package (apt-get install chromium)"
        if os.environ.get("PIPELINE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        try:
            context = chromium.new_context(viewport={"width": 1280, "height": 900})
            yield context
        finally:
            chromium.close()


def sign_in(page, base: str, airflow_home) -> None:
    """Sign in to the Airflow UI as the admin of SimpleAuthManager, through its login form."""
    import json
    from pathlib import Path

    password = json.loads((Path(airflow_home) / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    page.goto(f"{base}/auth/login")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)


def follow_extra_link(page, base: str, dag_id: str, run_id: str, task_id: str, name: str) -> str:
    """As a person would: open the task instance, its Details, and click the extra link ``name``;
    returns the link's address as the UI shows it."""
    from urllib.parse import quote

    page.goto(f"{base}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}")
    page.get_by_text("Details", exact=True).click()
    link = page.get_by_role("link", name=name, exact=True)
    link.wait_for(timeout=60_000)
    href = link.get_attribute("href")
    link.click()
    page.wait_for_load_state()
    return href
