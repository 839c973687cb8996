"""Write docs/configuration.md from the two settings objects' field descriptions.

    python scripts/config_docs.py            # rewrite the page
    python scripts/config_docs.py --check    # exit 1 when the page is not what the settings say

Every field must have a description (a docstring under it, or ``Field(description=...)``): an
undocumented setting fails here and in tests/docs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting is an environment variable, `PIPELINE_<NAME>` in capitals. The defaults are the
embedded, single-machine setup of `make run`; the compose stack (`docker-compose.yaml`, `.env`) and
Kubernetes (`deploy/kubernetes/`) override them through the environment only.

There are two settings objects, one per side, and no other reads of `PIPELINE_*`:

- **the jobs** (`jobs/settings.py`, `Settings`): what every `python -m jobs <step>` reads;
- **the Airflow side** (`plugins/pipeline/settings.py`, `AirflowSettings`): where jobs run and where
  the UI links go, read by the scheduler, the workers and the API server.

A job's variables reach it from the worker (`pipeline.execution.runners.forwarded_env`): the runner's
own settings stay on the worker, and the promotion identity and the gate's signing key reach only the
steps that need them.

This page is generated from the fields' descriptions (`python scripts/config_docs.py`); a test fails
when a setting has none or the page is out of date.
"""


def _default(field) -> str:
    from pydantic import SecretStr

    value = field.default
    if isinstance(value, SecretStr):
        return "*(secret)*" if value.get_secret_value() else "*(empty)*"
    if isinstance(value, Path):
        try:
            return f"`<project>/{value.resolve().relative_to(ROOT).as_posix()}`"
        except ValueError:
            return f"`{value}`"
    if value is None or value == "":
        return "*(empty)*"
    return f"`{value}`"


def undocumented(*classes) -> list[str]:
    """``Class.field`` of every field without a description."""
    return [f"{cls.__name__}.{name}" for cls in classes for name, field in cls.model_fields.items()
            if not (field.description or "").strip()]


def _table(cls) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        text = " ".join((field.description or "").split()).replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {text} |")
    return "\n".join(rows)


def render() -> str:
    sys.path.insert(0, str(ROOT / "plugins"))
    from pipeline.settings import AirflowSettings

    from jobs.settings import Settings

    missing = undocumented(Settings, AirflowSettings)
    if missing:
        raise SystemExit(f"settings without a description: {', '.join(missing)}")
    return (f"{HEADER}\n## The jobs (`jobs.settings.Settings`)\n\n{_table(Settings)}\n\n"
            f"## The Airflow side (`pipeline.settings.AirflowSettings`)\n\n{_table(AirflowSettings)}\n")


def main(argv: list[str]) -> int:
    page = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
