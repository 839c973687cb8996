"""Static checks of the docker-compose stack and the job image (no Docker engine needed)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services_depend_only_on_defined_services():
    services = compose()["services"]
    for name, svc in services.items():
        for dep in (svc.get("depends_on") or {}):
            assert dep in services, f"{name} depends on undefined {dep}"


def test_bind_mounts_exist_in_the_repo():
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_every_variable_has_an_example_and_no_secret_is_inline():
    text = (ROOT / "docker-compose.yaml").read_text()
    example = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    assert used <= example, f"not in .env.example: {used - example}"
    assert not re.search(r"(PASSWORD|SECRET)[A-Z_]*:\s*[^$\s{]", text), "a secret is written inline"


def test_ports_bind_to_localhost_only():
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} exposes {port} beyond localhost"


def test_dockerfile_copies_only_existing_paths():
    for line in (ROOT / "jobs" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
