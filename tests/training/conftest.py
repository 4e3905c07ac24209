"""Fixtures: tiny models registered in a temporary models folder, SST-2 slices written as JSONL files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from training.testing import make_tiny_model, sst2_lines


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("tiny-bert", "tiny-llama", "tiny-gpt2"):
        make_tiny_model(root, name)
    return root


@pytest.fixture(scope="session")
def sst2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, valid): the first 64 SST-2 train lines and the first 32 dev lines."""
    root = tmp_path_factory.mktemp("sst2")
    train, valid = root / "train.jsonl", root / "valid.jsonl"
    train.write_text("".join(sst2_lines("train", 64)))
    valid.write_text("".join(sst2_lines("dev", 32)))
    return train, valid


def relabel(src: Path, dst: Path, names: Mapping[int, object]) -> Path:
    """A copy of a {"text", "label"} file with labels mapped through `names`."""
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    dst.write_text("".join(json.dumps({**r, "label": names[r["label"]]}) + "\n" for r in rows))
    return dst
