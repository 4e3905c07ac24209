"""The method registry (training.methods.REGISTRY): the engine's methods are exactly the job API's torch-free
list, every flag the torch-free rules repeat agrees with it, and each registered method's merge inverts its
own save_delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rules.hparam_bounds import METHOD_LABELS, METHODS, SPARSE_DELTA_METHODS
from tests.sparsegrad.tiny import tiny_batches, tiny_model
from training import HyperparameterError, JobSpec, ModelLoadError, merge_delta, run_training
from training.hparams import resolve
from training.merge import _merge
from training.methods import DELTA_META, REGISTRY, get_method
from training.testing import write_jsonl


def test_registry_names_are_the_job_apis_methods_in_order() -> None:
    assert tuple(REGISTRY) == METHODS
    assert set(METHOD_LABELS) == set(REGISTRY)
    assert all(method.name == name for name, method in REGISTRY.items())


def test_sparse_delta_methods_of_the_rules_are_the_registrys() -> None:
    assert SPARSE_DELTA_METHODS == tuple(n for n, m in REGISTRY.items() if m.sparse_delta)


def test_unknown_method_names_the_registered_ones(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown method 'adapter'"):
        get_method("adapter")
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    spec = JobSpec(model="tiny-bert", method="adapter", hyperparameters={"max_steps": 1})
    with pytest.raises(HyperparameterError) as err:
        run_training(spec, train, None, tmp_path / "w", models_dir=models_dir)
    assert err.value.param == "method"
    assert str(METHODS) in err.value.message


def test_a_delta_of_an_unregistered_method_is_refused(tmp_path: Path, models_dir: Path) -> None:
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / "full_delta.json").write_text(json.dumps({"format": "full", "method": "full"}))
    (delta / DELTA_META).write_text(
        json.dumps({"method": "adapter", "task": "classification", "labels": ["a", "b"]})
    )
    with pytest.raises(ModelLoadError, match="unknown delta method 'adapter'"):
        merge_delta("tiny-bert", delta, tmp_path / "merged", models_dir=models_dir)


@pytest.mark.parametrize("name", METHODS)
def test_each_methods_merge_inverts_its_save_delta(name: str, tmp_path: Path) -> None:
    batches = tiny_batches("bert", 3)
    hp = resolve({"learning_rate": 1e-2, "basis_steps": 2}, 12, "classification", name, 64)
    method = get_method(name)
    cfg = method.config(hp, "classification", ["a", "b", "c"], "tiny-bert")
    prepared = method.prepare(tiny_model("bert"), hp, cfg, batches[:2])
    model = prepared.model
    model.train()
    model(**batches[2]).loss.backward()
    prepared.optimizer.step()
    model.eval()
    out = method.save_delta(model, tmp_path / "delta", "classification", ["a", "b", "c"], "tiny-bert", {})
    assert json.loads((out / DELTA_META).read_text())["method"] == name
    merged = _merge(tiny_model("bert"), name, out).eval()
    probe = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad():
        trained, again, base = (
            model(**probe).logits,
            merged(**probe).logits,
            tiny_model("bert")(**probe).logits,
        )
    assert not torch.allclose(trained, base)  # the step changed the model: the merge has something to carry
    torch.testing.assert_close(again, trained, rtol=1e-4, atol=1e-5)
