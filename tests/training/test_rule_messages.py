"""check_rules names every field the same way: with the caller's prefix (the API's "hyperparameters."),
the cross-field rules' messages and max_delta_density's included; with none, the bare names."""

from __future__ import annotations

import pytest

from rules.hparam_bounds import HyperparameterProblem, check_rules

CASES = [
    ({"learning_rate": 1e-4, "learning_rate_multiplier": 2}, "sparsegrad", ["learning_rate_multiplier"]),
    ({"max_delta_density": 0.005}, "sparsegrad", ["max_delta_density", "density"]),
    ({"max_delta_density": 0.1}, "lora", ["max_delta_density"]),
    ({"max_delta_density": 0.1, "support": "fixed"}, "sparsegrad", ["max_delta_density"]),
]


@pytest.mark.parametrize(("raw", "method", "fields"), CASES)
def test_every_field_in_a_rule_message_carries_the_prefix(
    raw: dict[str, object], method: str, fields: list[str]
) -> None:
    messages = {}
    for pre in ("", "hyperparameters."):
        with pytest.raises(HyperparameterProblem) as err:
            check_rules(raw, method=method, task="classification", n_train=100, validation=False, prefix=pre)
        messages[pre] = str(err.value)
    assert "{p}" not in messages[""] and "{p}" not in messages["hyperparameters."]
    for field in fields:
        assert f"hyperparameters.{field}" in messages["hyperparameters."]
    assert messages["hyperparameters."].replace("hyperparameters.", "") == messages[""]
