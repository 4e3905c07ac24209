"""The inference server's engine (worker.inference) ends every call with a clear event: busy (503), past its
time limit (504), a prompt longer than the context (400), a model over the memory budget (503)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from training.testing import make_tiny_model
from worker.inference import Engine

TARGET = {
    "model": "tiny-llama",
    "base": "tiny-llama",
    "task": "causal_lm",
    "kind": "base",
    "storage_key": None,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    make_tiny_model(root / "models", "tiny-llama")
    return root


def events(engine: Engine, queued_at: float | None = None, **body: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    request = {"target": TARGET, "prompt": "hello", "max_tokens": 4, **body}
    engine.generate(
        request, out.append, threading.Event(), time.monotonic() if queued_at is None else queued_at
    )
    return out


def test_a_request_that_waited_past_the_timeout_is_a_503(data_dir: Path) -> None:
    engine = Engine(Settings(data_dir=data_dir, infer_timeout=5))
    (error,) = events(engine, queued_at=time.monotonic() - 10)
    assert error["type"] == "error" and error["status"] == 503 and "busy" in error["message"]


def test_generation_past_its_deadline_is_a_504(data_dir: Path) -> None:
    engine = Engine(Settings(data_dir=data_dir, infer_timeout=5))
    out = events(engine, queued_at=time.monotonic() - 4.999, max_tokens=1000)
    assert out[-1]["type"] == "error" and out[-1]["status"] == 504, out[-1]
    assert "time limit" in out[-1]["message"]


def test_a_prompt_longer_than_the_context_is_a_400(data_dir: Path) -> None:
    engine = Engine(Settings(data_dir=data_dir))
    (error,) = events(engine, prompt="hello " * 5000)
    assert error["status"] == 400 and "context" in error["message"]


def test_a_model_over_the_memory_budget_is_a_503_naming_the_setting(data_dir: Path) -> None:
    engine = Engine(Settings(data_dir=data_dir, infer_memory=1000))
    (error,) = events(engine)
    assert error["status"] == 503 and "SGFT_INFER_MEMORY" in error["message"]


def test_a_normal_call_starts_streams_and_ends(data_dir: Path) -> None:
    out = events(Engine(Settings(data_dir=data_dir)), n=2, seed=1, temperature=1.0)
    assert out[0]["type"] == "start" and out[0]["prompt_tokens"] > 0 and out[-1] == {"type": "end"}
    assert [e["index"] for e in out if e["type"] == "finish"] == [0, 1]
