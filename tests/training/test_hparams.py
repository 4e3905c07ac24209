"""Hyper-parameters: auto values, bounds named in errors, the learning-rate schedule."""

from __future__ import annotations

import pytest

from training.hparams import BASE_LR, get_lr, resolve
from training.spec import HyperparameterError


def test_auto_values_follow_data_size_and_method() -> None:
    small = resolve({}, 400, "classification", "sparsegrad", 512)
    assert small.n_epochs == 3 and small.batch_size == 8 and small.max_seq_length == 128
    assert small.learning_rate == BASE_LR["classification"]["sparsegrad"]
    assert small.total_steps == 50 * 3 and small.eval_every == small.checkpoint_every == 30
    assert small.selection == "adam"  # 150 steps; a short run, a fixed support or a causal LM: the paper's
    assert resolve({"max_steps": 99}, 400, "classification", "sparsegrad", 512).selection == "gradient"
    assert resolve({"support": "fixed"}, 400, "classification", "sparsegrad", 512).selection == "gradient"
    assert resolve({}, 10_000, "classification", "sparsegrad", 512).n_epochs == 2
    assert resolve({}, 2000, "causal_lm", "sparsegrad", 512).selection == "gradient"
    assert resolve({}, 200, "classification", "meprop", 512).selection == "gradient"
    big = resolve({"learning_rate_multiplier": 2}, 30_000, "classification", "full", 512)
    assert (
        big.n_epochs == 1
        and big.batch_size == 32
        and big.learning_rate == 2 * BASE_LR["classification"]["full"]
    )
    lm = resolve({"max_steps": 7}, 100, "causal_lm", "lora", 256)
    assert lm.max_seq_length == 256 and lm.batch_size == 4 and lm.total_steps == 7 and lm.eval_every == 10
    assert (
        resolve({"n_epochs": "auto", "batch_size": None}, 3000, "classification", "lora", 512).n_epochs == 3
    )


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"n_epochs": 0}, "n_epochs must be between 1 and 50, got 0"),
        ({"batch_size": 1000}, "batch_size must be between 1 and 512"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"learning_rate": 1.0}, "learning_rate must be between 1e-07 and 0.1"),
        ({"learning_rate_multiplier": 1000}, "learning_rate_multiplier must be between 0.01 and 100"),
        ({"learning_rate": 1e-4, "learning_rate_multiplier": 2}, "not both"),
        ({"density": 0}, "density must be between 0.0001 and 1"),
        ({"warmup_ratio": "lots"}, "warmup_ratio must be a number or 'auto'"),
        ({"support": "sometimes"}, "support must be one of dynamic, fixed, got 'sometimes'"),
        ({"lr_scheduler": "step"}, "lr_scheduler must be one of"),
        ({"bias_correction": "entry"}, "bias_correction was removed from the job API"),
        ({"selection": "momentum"}, "selection must be one of gradient, adam"),
        ({"selection": "adam", "support": "fixed"}, "selection 'adam' applies to support 'dynamic' only"),
        ({"per_layer_basis": True}, "per_layer_basis was removed from the job API"),
        ({"basis_probe_steps": 5}, "basis_probe_steps was removed from the job API"),
        ({"train_layernorm": "yes"}, "train_layernorm must be true or false"),
        ({"gradient_accumulation_steps": 16, "batch_size": 8}, "must not exceed batch_size (8)"),
        ({"max_seq_length": 1024}, "max_seq_length must be at most 512 for this model"),
        ({"epochs": 3}, "unknown hyperparameter 'epochs'"),
        ({"n_epochs": True}, "n_epochs must be a number"),
        ({"dense_learning_rate": 0.5}, "dense_learning_rate must be between 1e-07 and 0.1"),
        ({"max_delta_density": 0.005}, "max_delta_density (0.005) must be >= density (0.01)"),
        ({"max_delta_density": 0.1, "support": "fixed"}, "max_delta_density applies to support 'dynamic'"),
        ({"max_delta_density": 2}, "max_delta_density must be between 0.0001 and 1"),
    ],
)
def test_out_of_range_is_refused_with_the_bound(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(HyperparameterError) as err:
        resolve(raw, 100, "classification", "sparsegrad", 512)
    assert needle in err.value.message and err.value.code == "invalid_hyperparameters"


def test_dense_learning_rate_defaults_to_learning_rate_and_is_refused_for_full() -> None:
    assert resolve({"learning_rate": 3e-3}, 100, "classification", "lora", 512).dense_learning_rate == 3e-3
    own = resolve({"dense_learning_rate": 1e-4}, 100, "classification", "sparsegrad", 512)
    assert own.dense_learning_rate == 1e-4 and own.learning_rate == BASE_LR["classification"]["sparsegrad"]
    with pytest.raises(HyperparameterError, match="full trains every weight at learning_rate"):
        resolve({"dense_learning_rate": 1e-4}, 100, "classification", "full", 512)


def test_target_modules_forms() -> None:
    def tm(value: object) -> object:
        return resolve({"target_modules": value}, 10, "causal_lm", "sparsegrad", 512).target_modules

    assert tm("auto") == "auto" and tm("up_proj,down_proj") == ["up_proj", "down_proj"]
    assert tm(["mlp.c_fc"]) == ["mlp.c_fc"] and tm("*.mlp.*_proj") == ["*.mlp.*_proj"]
    with pytest.raises(HyperparameterError, match="regular expressions are not accepted"):
        tm(r".*mlp\.(up|down)_proj")
    with pytest.raises(HyperparameterError, match="at most 64"):
        tm([f"layer{i}" for i in range(65)])
    with pytest.raises(HyperparameterError, match="at most 200"):
        tm("a" * 201)


def test_get_lr_warmup_then_linear_or_cosine_decay() -> None:
    lrs = [get_lr(s, 1.0, 2, 10) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    cos = [get_lr(s, 1.0, 0, 10, "cosine") for s in range(10)]
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and cos[9] > 0
    assert get_lr(0, 3e-4, 0, 1) == 3e-4
