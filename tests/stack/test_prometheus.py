"""Static checks of the Prometheus configuration (deploy/prometheus/): it scrapes the compose stack's
scoring service with the key compose gives it, its rule files are mounted, and every metric its
alerts name is one the real service exports (read from a running app's /metrics)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]


def test_the_scrape_job_reaches_the_service_with_the_metrics_key():
    config, services = yaml.safe_load(CONFIG.read_text()), compose_services()
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and services[host]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    (secret,) = services["prometheus"]["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")}
    assert set(config["rule_files"]) <= mounted and "/etc/prometheus/prometheus.yml" in mounted
    for volume in services["prometheus"]["volumes"]:
        if volume.startswith("./"):
            assert (ROOT / volume.split(":")[0]).is_file(), volume


def test_every_alert_names_metrics_the_service_exports(tmp_path):
    from fastapi.testclient import TestClient

    from jobs.settings import Settings
    from jobs.storage.online_store import SqliteStore
    from services.scoring.app import create_app
    from services.scoring.keys import ApiKeys

    settings = Settings(state_dir=tmp_path)
    key = ApiKeys(settings.serving_dir).create("prometheus", role="metrics")
    with TestClient(create_app(settings, store=SqliteStore(tmp_path / "online.db"))) as http:
        http.post("/v1/score", json={})  # 401: every labelled series appears once it has a value
        exported = http.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
    names = set(re.findall(r"^(scoring_\w+)", exported, re.MULTILINE))
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 6
    for rule in rules:
        used = set(re.findall(r"\b(scoring_\w+)", rule["expr"]))
        assert used <= names, (rule["alert"], used - names)
        assert rule["annotations"]["summary"]
    assert {"scoring_requests_total", "scoring_latency_seconds_bucket", "scoring_fraud_probability_bucket",
            "scoring_flagged_total", "scoring_model_version", "scoring_store_latency_seconds_bucket",
            "scoring_batch_layer_age_seconds"} <= names
