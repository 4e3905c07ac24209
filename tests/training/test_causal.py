"""causal_lm: chat (with and without a chat template) and prompt/completion; loss only on learnt tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training import DataError, JobSpec, TrainResult, merge_delta, run_training
from training.chat import IGNORE, encode_causal
from training.testing import chat_records, sst2_lines, write_jsonl

FAST = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "basis_steps": 2, "learning_rate": 1e-3}


def run(
    model: str, data: Path, valid: Path | None, work: Path, models_dir: Path, **hyper: Any
) -> TrainResult:
    spec = JobSpec(model=model, method=hyper.pop("method", "sparsegrad"), hyperparameters={**FAST, **hyper})
    return run_training(spec, data, valid, work, models_dir=models_dir)


def learnt_text(model_dir: Path, record: dict[str, Any], max_len: int = 128) -> tuple[str, str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids, labels, _ = encode_causal(tokenizer, record, max_len, "t.jsonl line 1")
    assert len(ids) == len(labels)
    learnt = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    return str(tokenizer.decode(ids)), str(tokenizer.decode(learnt))


def two_turns() -> dict[str, Any]:
    record = chat_records(2)[1]
    record["messages"] += [  # type: ignore[operator]
        {"role": "user", "content": "ok ?"},
        {"role": "assistant", "content": "no", "weight": 0},
        {"role": "user", "content": "what ?"},
        {"role": "assistant", "content": "yes ok"},
    ]
    return record


def test_chat_template_masking_only_assistant_tokens_carry_loss(models_dir: Path) -> None:
    full, learnt = learnt_text(models_dir / "tiny-llama", two_turns())
    assert full.startswith("<|im_start|> system answer yes or no <|im_end|>")
    # Assistant contents with their end-of-turn marker; the weight-0 reply ("no") and headers are not learnt.
    assert learnt == "the answer is yes <|im_end|> yes ok <|im_end|>"


def test_plain_chat_format_without_template(models_dir: Path) -> None:
    full, learnt = learnt_text(models_dir / "tiny-gpt2", two_turns())
    assert full.startswith("<| system |> answer yes or no <| user |> is the answer yes ? <| assistant |>")
    assert learnt == "the answer is yes <|endoftext|> yes ok <|endoftext|>"


def test_prompt_completion_learns_the_completion_only(models_dir: Path) -> None:
    full, learnt = learnt_text(models_dir / "tiny-gpt2", {"prompt": "what is", "completion": "the answer"})
    assert full == "what is the answer <|endoftext|>" and learnt == "the answer <|endoftext|>"


def test_truncated_away_assistant_turn_names_the_line(tmp_path: Path, models_dir: Path) -> None:
    long_user = {"role": "user", "content": " ".join(["hello"] * 80)}
    records = chat_records(3)
    records[1] = {"messages": [long_user, {"role": "assistant", "content": "ok"}]}
    data = write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(DataError) as err:
        run("tiny-llama", data, None, tmp_path / "w", models_dir)
    assert "training file line 2" in err.value.message and "max_seq_length=64" in err.value.message


@pytest.mark.parametrize(("model", "method"), [("tiny-llama", "sparsegrad"), ("tiny-gpt2", "lora")])
def test_chat_sft_runs_and_merges(model: str, method: str, tmp_path: Path, models_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(16))
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_records(4))
    result = run(model, train, valid, tmp_path / "w", models_dir, method=method, n_epochs=2)
    assert result.status == "completed" and result.step == 8
    assert {"valid_loss", "valid_token_accuracy", "train_loss"} <= set(result.metrics)
    assert result.history[0]["step"] == 0 and result.metrics["valid_loss"] < result.history[0]["valid_loss"]
    merged = merge_delta(model, result.delta_dir, tmp_path / "merged", models_dir=models_dir)  # type: ignore[arg-type]
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert type(plain).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def test_prompt_completion_gradient_accumulation_equals_one_batch(tmp_path: Path, models_dir: Path) -> None:
    # Completions of different lengths: micro-batch losses must be weighted by learnt tokens to match.
    rows = [json.loads(line) for line in sst2_lines("dev", 16)]
    data = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "review :", "completion": r["text"]} for r in rows])
    one = run("tiny-gpt2", data, None, tmp_path / "one", models_dir, method="full", max_steps=3)
    two = run(
        "tiny-gpt2",
        data,
        None,
        tmp_path / "two",
        models_dir,
        method="full",
        max_steps=3,
        gradient_accumulation_steps=4,
    )
    losses = [[r["train_loss"] for r in res.history] for res in (one, two)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5) and losses[0][0] != losses[0][2]


def test_merged_causal_model_reproduces_the_delta(tmp_path: Path, models_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(8))
    result = run("tiny-llama", train, train, tmp_path / "w", models_dir, method="meprop", n_epochs=2)
    merged = merge_delta("tiny-llama", result.delta_dir, tmp_path / "m", models_dir=models_dir)  # type: ignore[arg-type]
    base = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-llama")
    plain = AutoModelForCausalLM.from_pretrained(merged)
    up = "model.layers.0.mlp.up_proj.weight"
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[up], plain.state_dict()[up])
    assert torch.equal(base.state_dict()[q], plain.state_dict()[q])
