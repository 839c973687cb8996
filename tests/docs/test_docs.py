"""The front door and the map: the README stays a quick start, the docs site builds strictly, the
configuration page says what the settings say, and the layout both describe is the code's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _layout_block(markdown: str, heading: str) -> str:
    """The first code block after ``heading``."""
    after = markdown.split(heading, 1)[1]
    return after.split("```", 2)[1].strip("\n")


def _named_paths(block: str) -> list[str]:
    """Every folder or file the tree names (first column, nested under its parent by indentation)."""
    paths, parent = [], ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        first = line.strip().split("  ")[0]
        if not first or indent > 2:
            continue
        if indent == 0:
            parent = first if first.endswith("/") else ""
            names = [first]
        else:
            names = [parent + name for name in first.split()]
        paths += [n for n in names if n.endswith("/") or "." in n.rsplit("/", 1)[-1]]
    return paths


def test_the_readme_is_a_quick_start_with_the_two_commands_on_top():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    commands = text.split("```", 2)[1]
    assert re.findall(r"^make (\w+)", commands, re.M) == ["run", "test"]


def test_the_readme_and_the_architecture_page_draw_the_same_map():
    readme = _layout_block(README.read_text(), "## Layout")
    docs = _layout_block(ARCHITECTURE.read_text(), "## Layout and layers")
    assert readme == docs


def test_every_folder_and_file_on_the_map_exists():
    named = _named_paths(_layout_block(ARCHITECTURE.read_text(), "## Layout and layers"))
    assert "jobs/steps/" in named and "plugins/pipeline/execution/" in named
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"named on the map but not in the tree: {missing}"


def test_every_package_is_on_the_map():
    named = set(_named_paths(_layout_block(ARCHITECTURE.read_text(), "## Layout and layers")))
    packages = {f"{p.parent.relative_to(ROOT).as_posix()}/" for root in ("jobs", "plugins/pipeline", "services")
                for p in (ROOT / root).rglob("__init__.py")}
    packages = {p for p in packages if p.count("/") <= 3 and "/lake/" not in p}
    assert packages <= named, f"packages missing from the map: {sorted(packages - named)}"


def test_the_configuration_page_documents_every_setting_as_the_code_says():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                              if not k.startswith("PIPELINE_")})
    assert out.returncode == 0, out.stderr + out.stdout


def test_an_undocumented_setting_is_found():
    sys.path.insert(0, str(ROOT / "scripts"))
    from config_docs import undocumented
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Partly(BaseSettings):
        model_config = SettingsConfigDict(use_attribute_docstrings=True)

        documented: int = 1
        """What it does."""
        silent: int = 2

    assert undocumented(Partly) == ["Partly.silent"]


def test_the_docs_site_builds_strictly(tmp_path):
    """Every page in the nav, every internal link and anchor resolves (mkdocs.yml: validation)."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_the_layers_hold():
    """import-linter on the contracts in pyproject.toml: layers, independent steps, no cycles, no I/O in ml."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    assert out.returncode == 0, out.stdout[-4000:]
    assert "0 broken" in out.stdout
