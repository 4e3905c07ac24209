"""The project installs on Python 3.11 to 3.13: pyproject says so, and every dependency it names (base and
extras, as installed here) declares support for those versions."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.deploy.project import REPO

SUPPORTED = ("3.11", "3.12", "3.13")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_requires_python_admits_3_11_to_3_13_and_the_classifiers_say_so() -> None:
    spec = SpecifierSet(PROJECT["requires-python"])
    for version in SUPPORTED:
        assert spec.contains(f"{version}.0") and spec.contains(f"{version}.9"), version
    assert not spec.contains("3.10.14")
    classified = {
        m.group(1) for c in PROJECT["classifiers"] if (m := re.fullmatch(r".*Python :: (3\.\d+)", c))
    }
    assert classified == set(SUPPORTED)


def test_every_dependency_supports_the_same_versions() -> None:
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    checked = []
    for req in requirements:
        try:
            meta = distribution(req.name).metadata
        except PackageNotFoundError:
            continue  # an extra this environment does not install
        declared = SpecifierSet(meta.get("Requires-Python") or "")
        for version in SUPPORTED:
            assert declared.contains(f"{version}.0"), f"{req.name} declares Requires-Python {declared}"
        checked.append(req.name)
    assert {"fastapi", "sqlalchemy", "celery", "torch", "transformers", "pytest"} <= set(checked)
