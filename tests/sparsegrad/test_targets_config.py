"""Target-module resolution (auto / list / regex / layer subsets) and config validation."""

from __future__ import annotations

import pytest

from sparsegrad import SparseGradConfig, find_target_modules
from tests.sparsegrad.tiny import tiny_model


def test_auto_bert_takes_mlp_not_attention_output() -> None:
    targets = find_target_modules(tiny_model("bert"))
    names = [t.name for t in targets]
    assert names == [
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.intermediate.dense",
        "bert.encoder.layer.1.output.dense",
    ]
    assert {t.group for t in targets} == {"up:64x32", "down:32x64"}


def test_auto_llama_gate_optional_and_layer_subset() -> None:
    model = tiny_model("llama")
    assert [t.name for t in find_target_modules(model)] == [
        f"model.layers.{i}.mlp.{p}" for i in range(3) for p in ("up_proj", "down_proj")
    ]
    with_gate = find_target_modules(model, include_gate_proj=True, layers=[0, 2])
    assert [t.name for t in with_gate] == [
        f"model.layers.{i}.mlp.{p}" for i in (0, 2) for p in ("gate_proj", "up_proj", "down_proj")
    ]
    assert {t.group for t in with_gate} == {"gate:64x32", "up:64x32", "down:32x64"}


def test_auto_gpt2_conv1d_is_transposed() -> None:
    targets = find_target_modules(tiny_model("gpt2"))
    assert [t.name for t in targets] == [
        f"transformer.h.{i}.mlp.{p}" for i in range(2) for p in ("c_fc", "c_proj")
    ]
    assert all(t.transposed for t in targets)
    assert (targets[0].d_out, targets[0].d_in) == (128, 32)  # c_fc: n_embd -> 4·n_embd


def test_list_and_regex_override() -> None:
    model = tiny_model("llama")
    by_suffix = find_target_modules(model, ["mlp.gate_proj"])
    assert [t.name for t in by_suffix] == [f"model.layers.{i}.mlp.gate_proj" for i in range(3)]
    by_name = find_target_modules(model, ["model.layers.1.self_attn.q_proj"])
    assert [t.name for t in by_name] == ["model.layers.1.self_attn.q_proj"]
    assert by_name[0].group == "32x32"  # no role in the name: grouped by shape
    by_regex = find_target_modules(model, r".*\.1\.mlp\.(up|down)_proj")
    assert [t.name for t in by_regex] == ["model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    by_glob = find_target_modules(model, ["*.1.mlp.*_proj", "model.layers.[02].mlp.down_proj"])
    assert [t.name for t in by_glob] == [
        "model.layers.0.mlp.down_proj",
        *(f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")),
        "model.layers.2.mlp.down_proj",
    ]


def test_no_match_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no linear layer matches"):
        find_target_modules(tiny_model("bert"), ["does.not.exist"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"support": "sometimes"}, "support"),
        ({"support_refresh_every": 5}, "support='fixed'"),
        ({"selection": "momentum"}, "selection"),
        ({"selection": "adam", "support": "fixed"}, "support='dynamic' only"),
        ({"support": "fixed", "support_refresh_every": 0}, "support_refresh_every"),
        ({"basis_steps": 0}, "basis_steps"),
        ({"basis_probe_steps": -1}, "basis_probe_steps"),
        ({"basis_probe_steps": 1.5}, "basis_probe_steps"),
        ({"support_block": 0.5}, "support_block must be >= 1"),
        ({"support_block": True}, "support_block"),
        ({"target_modules": "(unclosed"}, "regex"),
        ({"target_modules": []}, "target_modules"),
        ({"layers": [-1]}, "layers"),
        ({"task": "translation"}, "task"),
        ({"labels": [0, 1]}, "labels"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseGradConfig(**kwargs)


def test_config_round_trip_and_help() -> None:
    cfg = SparseGradConfig(
        density=0.02, support="fixed", support_refresh_every=3, layers=[2, 0], labels=["a", "b"]
    )
    assert cfg.layers == [0, 2]
    assert SparseGradConfig.from_dict(cfg.to_dict()) == cfg
    assert all(SparseGradConfig.help().values())
    with pytest.raises(ValueError, match="unknown"):
        SparseGradConfig.from_dict({"densty": 0.1})
