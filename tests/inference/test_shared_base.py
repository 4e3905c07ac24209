"""Fine-tunes served on one shared base (training.serving) equal their merged copies, and cost their delta."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

import sparsegrad as sg
from sparsegrad.delta import delta_files
from training import JobSpec, TrainResult, run_training
from training.models import load_model, registry_entry
from training.serving.adapters import SharedBase, activate, read_adapter
from training.serving.generate import Finish, Sampling, chat_prompt, stream_text
from training.serving.models import ModelCache, param_bytes
from training.serving.predict import predict
from training.testing import chat_records, make_tiny_model, sst2_lines, write_jsonl

FAST = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "basis_steps": 2, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("tiny-llama", "tiny-bert"):
        make_tiny_model(root, name)
    return root


def train(models_dir: Path, work: Path, model: str, data: Path, seed: int, **hyper: Any) -> TrainResult:
    spec = JobSpec(model=model, method="sparsegrad", hyperparameters={**FAST, **hyper}, seed=seed)
    result = run_training(spec, data, None, work, models_dir=models_dir)
    assert result.delta_dir is not None
    return result


@pytest.fixture(scope="module")
def chat_deltas(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("chat")
    data = write_jsonl(root / "chat.jsonl", chat_records(16))
    out = []
    for seed in (0, 1):
        result = train(models_dir, root / f"w{seed}", "tiny-llama", data, seed, learning_rate=1e-2)
        assert result.delta_dir is not None
        out.append(result.delta_dir)
    return out


def merged_logits(models_dir: Path, delta: Path | None, ids: torch.Tensor) -> torch.Tensor:
    model = load_model(registry_entry("tiny-llama", models_dir), "causal_lm", None, False).eval()
    if delta is not None:
        sg.load_delta(model, delta)
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


def test_two_fine_tunes_on_one_base_equal_their_merged_copies(
    models_dir: Path, chat_deltas: list[Path]
) -> None:
    cache = ModelCache(models_dir, budget=1 << 30)
    served = [cache.serve_delta(f"ft:{i}", "tiny-llama", "causal_lm", d) for i, d in enumerate(chat_deltas)]
    assert all(s.mode == "shared" for s in served) and served[0].model is served[1].model
    ids = torch.tensor(
        [chat_prompt(served[0].tokenizer, [{"role": "user", "content": "is the answer yes ?"}])]
    )
    base = merged_logits(models_dir, None, ids)
    for s, delta in zip(served, chat_deltas, strict=True):
        with torch.no_grad(), s.use():
            shared = s.model(input_ids=ids).logits
        reference = merged_logits(models_dir, delta, ids)
        assert not torch.allclose(reference, base, atol=1e-4)  # the fine-tune changed the model
        torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), cache.serve_base("tiny-llama", "causal_lm").use():  # the base itself, untouched
        torch.testing.assert_close(served[0].model(input_ids=ids).logits, base, atol=0, rtol=0)


@pytest.mark.parametrize("form", ["own", "shared"])
def test_each_in_memory_form_equals_the_merged_copy(
    models_dir: Path, chat_deltas: list[Path], form: str
) -> None:
    """Each layer's own thin factors, and the group's basis columns held once with ΔC per layer (gathered
    and scattered activations): the same outputs as the merged model, within 1e-5."""
    adapter = read_adapter(chat_deltas[0], "ft:a", form=form)
    rotated = [d for d in adapter.layers.values() if d.dense is None]
    assert rotated and all((d.basis is not None) == (form == "shared") for d in rotated)
    model = load_model(registry_entry("tiny-llama", models_dir), "causal_lm", None, False).eval()
    SharedBase(model).attach(adapter)
    ids = torch.tensor([[3, 7, 11, 19, 23, 5, 9]])
    with torch.no_grad(), activate(adapter):
        shared = model(input_ids=ids).logits
    reference = merged_logits(models_dir, chat_deltas[0], ids)
    assert not torch.allclose(reference, merged_logits(models_dir, None, ids), atol=1e-4)
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["apply", "hook"])
def test_an_extra_fine_tune_costs_at_most_twice_its_delta(
    models_dir: Path, chat_deltas: list[Path], strategy: str
) -> None:
    """Per fine-tune: its adapter. Per base, once (apply): the pristine copies of the target weights."""
    cache = ModelCache(models_dir, budget=1 << 30, strategy=strategy)
    base = cache.serve_base("tiny-llama", "causal_lm")
    before = cache.used
    first = cache.serve_delta("ft:a", "tiny-llama", "causal_lm", chat_deltas[0])
    assert base.base is not None and first.adapter is not None
    pristine = base.base.extra_bytes
    assert (pristine > 0) == (strategy == "apply")
    assert cache.used - before == first.adapter.nbytes + pristine
    before = cache.used
    served = cache.serve_delta("ft:b", "tiny-llama", "causal_lm", chat_deltas[1])
    extra = cache.used - before
    delta_bytes = delta_files(chat_deltas[1])[1].stat().st_size
    assert base.base.extra_bytes == pristine  # the same layers: nothing more per base
    assert served.adapter is not None and extra == served.adapter.nbytes
    assert 0 < extra <= 2 * delta_bytes
    assert extra < param_bytes(served.model)  # well under a merged copy


def test_stream_text_is_seeded_and_stops_at_a_stop_string(models_dir: Path, chat_deltas: list[Path]) -> None:
    cache = ModelCache(models_dir, budget=1 << 30)
    s = cache.serve_delta("ft:a", "tiny-llama", "causal_lm", chat_deltas[0])
    ids = chat_prompt(s.tokenizer, [{"role": "user", "content": "hi"}])

    def run(sampling: Sampling) -> tuple[str, Finish]:
        with s.use():
            parts = list(stream_text(s.model, s.tokenizer, ids, sampling, time.monotonic() + 60, s.context))
        finish = parts.pop()
        assert isinstance(finish, Finish)
        return "".join(str(p) for p in parts), finish

    text, finish = run(Sampling(max_tokens=12, temperature=1.0, seed=3))
    assert (text, finish) == run(Sampling(max_tokens=12, temperature=1.0, seed=3))
    assert finish.completion_tokens <= 12
    words = text.split()
    if len(words) >= 2:
        stopped, fin = run(Sampling(max_tokens=12, temperature=1.0, seed=3, stop=(words[1],)))
        assert fin.reason == "stop" and words[1] not in stopped and text.startswith(stopped)


def test_budget_evicts_least_recent_and_refuses_a_model_larger_than_it(models_dir: Path) -> None:
    small = ModelCache(models_dir, budget=1000)
    with pytest.raises(RuntimeError, match="SGFT_INFER_MEMORY"):
        small.serve_base("tiny-llama", "causal_lm")
    cache = ModelCache(models_dir, budget=1 << 30)
    cache.serve_base("tiny-llama", "causal_lm")
    cache.budget = cache.used + 1  # room for this base only
    cache.serve_base("tiny-bert", "classification")
    assert list(cache.sizes()) == ["base:tiny-bert"]


def test_predictions_on_the_shared_base_equal_the_merged_model(models_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(sst2_lines("train", 32)))
    result = train(models_dir, tmp_path / "w", "tiny-bert", data, 0, learning_rate=1e-3)
    assert result.delta_dir is not None
    cache = ModelCache(models_dir, budget=1 << 30)
    s = cache.serve_delta("ft:bert", "tiny-bert", "classification", result.delta_dir)
    assert s.mode == "shared" and s.labels == ["0", "1"]
    texts = [("a gripping , funny film", None), ("dull and long", None)]
    out, _ = predict(s, texts)
    merged = load_model(registry_entry("tiny-bert", models_dir), "classification", ["0", "1"], False).eval()
    sg.load_delta(merged, result.delta_dir)
    enc = s.tokenizer(
        [t for t, _ in texts], padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        probs = torch.softmax(merged(**enc).logits, -1)
    for row, p in zip(out, probs, strict=True):
        assert row["label"] == str(int(p.argmax()))
        assert abs(row["score"] - float(p.max())) < 1e-5
