"""One table of job hyper-parameters (rules.hparam_bounds): any combination the API accepts, the engine
resolves; the removed experiment knobs are refused by name on both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.errors import APIError
from api.job_request import check_hyperparameters
from rules.hparam_bounds import METHODS, PARAMS, REMOVED, Param
from training.hparams import resolve
from training.spec import HyperparameterError


def _values(param: Param) -> st.SearchStrategy[Any]:
    if param.kind == "integer":
        inner = st.integers(int(param.low), int(param.high))
    elif param.kind == "number":
        inner = st.floats(param.low, param.high, allow_nan=False)
    elif param.kind == "choice":
        inner = st.sampled_from(param.choices)
    elif param.kind == "bool":
        inner = st.booleans()
    else:
        inner = st.sampled_from(["auto", ["intermediate.dense", "output.dense"], "*.mlp.*_proj"])
    return st.one_of(st.just("auto"), inner)


hyperparameters = st.fixed_dictionaries({}, optional={name: _values(p) for name, p in PARAMS.items()})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    hyper=hyperparameters,
    method=st.sampled_from(METHODS),
    task=st.sampled_from(["classification", "causal_lm"]),
    n_train=st.integers(1, 50_000),
    validation=st.booleans(),
    devices=st.integers(1, 4),
)
def test_any_job_the_api_accepts_the_engine_resolves(
    hyper: dict[str, Any], method: str, task: str, n_train: int, validation: bool, devices: int
) -> None:
    try:
        check_hyperparameters(dict(hyper), method, task, n_train, validation, 512, devices)
    except APIError:
        return  # refused at the API: never queued
    resolved = resolve(dict(hyper), n_train, task, method, 512, validation=validation, devices=devices)
    assert resolved.total_steps >= 1 and resolved.learning_rate > 0


def test_the_api_and_the_engine_refuse_the_same_combination_naming_the_same_field() -> None:
    cases = [
        {"learning_rate": 1e-4, "learning_rate_multiplier": 2},
        {"selection": "adam", "support": "fixed"},
        {"gradient_accumulation_steps": 16},  # above the auto batch size (8 for 100 lines)
        {"max_seq_length": 1024},
    ]
    for hyper in cases:
        with pytest.raises(APIError) as api_err:
            check_hyperparameters(dict(hyper), "sparsegrad", "classification", 100, False, 512)
        with pytest.raises(HyperparameterError) as engine_err:
            resolve(dict(hyper), 100, "classification", "sparsegrad", 512)
        assert api_err.value.param == f"hyperparameters.{engine_err.value.param}"
        assert api_err.value.message.replace("hyperparameters.", "") == engine_err.value.message


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_a_removed_knob_is_refused_by_name(name: str) -> None:
    with pytest.raises(APIError) as err:
        check_hyperparameters({name: 1}, "sparsegrad", "classification", 100, False, 512)
    assert err.value.status == 400 and err.value.param == f"hyperparameters.{name}"
    assert f"hyperparameters.{name} was removed from the job API" in err.value.message
    assert "SparseGradConfig" in err.value.message


def test_the_docs_list_every_knob_and_every_removed_one() -> None:
    text = (Path(__file__).parents[2] / "docs" / "hyperparameters.md").read_text(encoding="utf-8")
    listed, removed_part = text.split("## Removed from the job API")
    for name in PARAMS:
        assert f"`{name}`" in listed, name
    for name in REMOVED:
        assert f"| `{name}` |" in removed_part, name
