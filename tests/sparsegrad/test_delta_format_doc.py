"""docs/delta-format.md's loader (safetensors + torch only), run as written, equals sparsegrad.load_delta."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import sparsegrad as sg
from tests.sparsegrad.test_delta import _trained
from tests.sparsegrad.tiny import tiny_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "delta-format.md"


def _doc_loader() -> Any:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "def apply_sparsegrad_delta" in b]
    assert "sparsegrad" not in re.findall(r"^(?:from|import) (\w+)", code, flags=re.M)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the documented code, as a user runs it
    return namespace["apply_sparsegrad_delta"]


@pytest.mark.parametrize(
    ("kind", "method", "encoding"),
    [
        ("bert", "sparsegrad", "auto"),
        ("bert", "sparsegrad", "csr"),
        ("bert", "sparsegrad", "bitmap"),
        ("bert", "sparsegrad", "block"),
        ("bert", "sparsegrad", "dense"),
        ("llama", "sparsegrad", "csr"),
        ("gpt2", "sparsegrad", "bitmap"),
        ("bert", "meprop", "csr"),
    ],
)
def test_doc_loader_merges_the_same_weights_as_load_delta(
    kind: str, method: str, encoding: str, tmp_path: Path
) -> None:
    extra = {"train_head": True, "train_bias": True} if kind == "gpt2" else {}
    sg.save_delta(_trained(kind, method, **extra), tmp_path, encoding=encoding)
    expected = dict(sg.load_delta(tiny_model(kind), tmp_path).named_parameters())
    plain = _doc_loader()(tiny_model(kind), str(tmp_path))
    base = dict(tiny_model(kind).named_parameters())
    changed = 0
    for name, p in plain.named_parameters():
        assert torch.equal(p, expected[name]), name
        changed += not torch.equal(p, base[name])
    assert changed >= 4  # the target layers (and head) moved
