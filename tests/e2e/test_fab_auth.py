"""The compose stack's auth manager, for real: Airflow's API server with the FAB auth manager.

The same set-up as the stack's ``airflow-init`` (``airflow db migrate``, ``airflow users create
... --role Admin``, ``airflow users reset-password``) on a fresh SQLite state, then the API server
with ``AIRFLOW__CORE__AUTH_MANAGER`` set to FAB's: the REST API and the pipeline's report view refuse
anyone without a token, a wrong password gets no token, and in headless Chromium a person signs in
through FAB's login form and reaches the report view from the UI.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import browser
from standalone import airflow_api_server, wait_for_api

ROOT = Path(__file__).resolve().parents[2]
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ADMIN, PASSWORD = "admin", "a-long-admin-password-for-tests"


def airflow(env, *args):
    out = subprocess.run(["bash", "-c", 'source scripts/env.sh && exec airflow "$@"', "airflow", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def request(url, *, token=None, body=None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if "json" in response.headers.get("Content-Type", "") else text
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def fab_api(tmp_path_factory):
    state = tmp_path_factory.mktemp("fab")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
    env.update(PIPELINE_STATE_DIR=str(state), AIRFLOW__CORE__AUTH_MANAGER=FAB,
               AIRFLOW__API__SECRET_KEY="a-static-secret-for-tests", AIRFLOW__API_AUTH__JWT_SECRET="a-jwt-secret-xyz")
    airflow(env, "db", "migrate")
    who = ["--firstname", "Pipeline", "--lastname", "Admin", "--email", "admin@example.com", "--role", "Admin"]
    created = airflow(env, "users", "create", "--username", ADMIN, "--password", "first-password-1234", *who)
    assert f'User "{ADMIN}" created with role "Admin"' in created.stdout
    # As airflow-init at every `up`: create is a no-op for an existing user; the password follows .env.
    again = airflow(env, "users", "create", "--username", ADMIN, "--password", PASSWORD, *who)
    assert "already exist" in again.stdout
    airflow(env, "users", "reset-password", "--username", ADMIN, "--password", PASSWORD)
    with airflow_api_server(env, state / "api-server.log") as proc:
        wait_for_api(proc)
        yield proc.api_url


def test_no_token_no_access_and_wrong_passwords_get_none(fab_api):
    assert request(f"{fab_api}/api/v2/dags")[0] == 401
    assert request(f"{fab_api}/pipeline/")[0] == 401
    status, _ = request(f"{fab_api}/auth/token", body={"username": ADMIN, "password": "first-password-1234"})
    assert status == 401, "the password was reset to the one in .env"
    status, answer = request(f"{fab_api}/auth/token", body={"username": ADMIN, "password": PASSWORD})
    assert status in (200, 201), answer
    token = answer["access_token"]
    assert request(f"{fab_api}/api/v2/dags", token=token)[0] == 200
    status, page = request(f"{fab_api}/pipeline/", token=token)
    assert status == 200 and "Pipeline reports" in page


def test_a_person_signs_in_through_the_fab_form_and_reaches_the_reports(fab_api):
    with browser() as context:
        page = context.new_page()
        page.goto(f"{fab_api}/pipeline/")
        page.wait_for_url(lambda url: "/login" in url, timeout=60_000)  # sent to sign in first
        page.goto(f"{fab_api}/auth/login/")
        page.locator("input[name=username]").fill(ADMIN)
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("input[type=submit], button[type=submit]").first.click()
        page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
        page.goto(f"{fab_api}/pipeline/")
        assert "Pipeline reports" in page.content()
        # A wrong password in a fresh session stays on the form.
        other = context.browser.new_context().new_page()
        other.goto(f"{fab_api}/auth/login/")
        other.locator("input[name=username]").fill(ADMIN)
        other.locator("input[name=password]").fill("not-the-password")
        other.locator("input[type=submit], button[type=submit]").first.click()
        other.wait_for_load_state()
        assert "/login" in other.url
        assert other.goto(f"{fab_api}/pipeline/").status in (401, 200) and "Pipeline reports" not in other.content()
