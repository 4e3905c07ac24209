"""bench.gpu_table on the tiny LLaMA shape on CPU under bf16 autocast: every method trains and is measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import gpu_table


def test_tiny_table_on_cpu_has_every_method_learning(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    args = ["--shape", "tiny", "--device", "cpu", "--steps", "3", "--precision", "bf16"]
    quick = ["--warmup", "1", "--batch", "2", "--seq", "32", "--basis-steps", "2", "--lr-multiplier", "10"]
    assert gpu_table.main([*args, *quick, "--json", str(out)]) == 0

    saved = json.loads(out.read_text())
    rows = [gpu_table.Row(**r) for r in saved["rows"]]
    assert [r.method for r in rows] == list(gpu_table.METHODS)
    for r in rows:
        numbers = [r.step_ms, r.prepare_s, r.loss_before, r.loss_after, r.learning_rate]
        assert all(math.isfinite(x) for x in numbers), r
        assert r.step_ms > 0 and r.peak_bytes > 0 and r.delta_bytes > 0 and r.trainable > 0, r
        assert r.loss_after < r.loss_before, r
    assert gpu_table.problems(rows) == []
    lora = next(r for r in rows if r.method == "lora")
    full = next(r for r in rows if r.method == "full")
    assert lora.lora_rank is not None and lora.lora_rank >= 1
    assert full.delta_bytes > lora.delta_bytes  # every weight against two thin matrices per layer
    for method in gpu_table.METHODS:
        assert f"| {method}" in saved["table"]
    assert saved["meta"]["precision"] == "bf16" and saved["meta"]["shape"] == "tiny"


def test_problems_names_a_loss_that_did_not_go_down_and_a_missing_method() -> None:
    row = gpu_table.Row("lora", 1.0, 10, 0.1, 10, 2.0, 2.0, 5, 1e-4, 1)
    found = gpu_table.problems([row])
    assert "lora: loss did not go down (2.00000 -> 2.00000)" in found
    assert "full: missing" in found and "sparsegrad-unconfined: missing" in found


def test_smollm2_shape_is_the_real_configuration() -> None:
    config = gpu_table.build_config("smollm2-135m")
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (576, 1536, 30)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and config.max_position_embeddings == 8192
    rope = config.rope_parameters
    assert config.rms_norm_eps == 1e-5 and isinstance(rope, dict) and rope["rope_theta"] == 100000.0
