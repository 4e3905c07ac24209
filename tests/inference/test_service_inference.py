"""The real service (sgft serve + worker + infer on the embedded default) serves the fine-tunes its worker
trained: the official openai client, streaming and not, chat and completions, checkpoints and predictions;
another tenant gets 404; a stopped inference server is a clean 503."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.service.stack import Stack, free_port, serve_sqlite, wait_for
from training.testing import chat_records, make_tiny_model, sst2_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("infer")
    make_tiny_model(tmp / "data" / "models", "tiny-llama")
    make_tiny_model(tmp / "data" / "models", "tiny-bert")
    port = str(free_port())
    for stack in serve_sqlite(tmp, "tenant-a", SGFT_INFER_PORT=port, SGFT_CHECKPOINT_EVERY="2"):
        stack.start("worker", "worker", "--concurrency", "1")
        stack.start("infer", "infer")
        wait_for(lambda: _infer_up(port), 60, "sgft infer to listen")
        yield stack


def _infer_up(port: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _train(stack: Stack, model: str, lines: list[str], hyper: dict[str, Any]) -> dict[str, Any]:
    with stack.client() as c:
        files = {"file": ("train.jsonl", io.BytesIO("".join(lines).encode()), "application/jsonl")}
        file_id = c.post("/v1/files", files=files, data={"purpose": "fine-tune"}).json()["id"]
        body = {"model": model, "training_file": file_id, "hyperparameters": hyper}
        created = c.post("/v1/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
    return stack.wait_status(created.json()["id"], {"succeeded"}, timeout=300)


@pytest.fixture(scope="module")
def chat_job(stack: Stack) -> dict[str, Any]:
    lines = [json.dumps(r) + "\n" for r in chat_records(16)]
    hyper = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "basis_steps": 2}
    return _train(stack, "tiny-llama", lines, hyper)


def client(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key or stack.key, max_retries=0)


def test_openai_client_chats_with_a_fine_tune_streaming_and_not(
    stack: Stack, chat_job: dict[str, Any]
) -> None:
    name = chat_job["fine_tuned_model"]
    messages: Any = [{"role": "user", "content": "is the answer yes ?"}]
    full = client(stack).chat.completions.create(model=name, messages=messages, max_tokens=8, seed=1)
    assert full.model == name and full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage is not None and full.usage.prompt_tokens > 0
    assert 0 < full.usage.completion_tokens <= 8 or full.choices[0].finish_reason == "stop"
    chunks = list(
        client(stack).chat.completions.create(
            model=name,
            messages=messages,
            max_tokens=8,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # same seed, same tokens
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_completions_n_and_seed_and_the_base_model(stack: Stack, chat_job: dict[str, Any]) -> None:
    c = client(stack)
    out = c.completions.create(
        model=chat_job["fine_tuned_model"], prompt="the answer", max_tokens=5, n=2, seed=4
    )
    again = c.completions.create(
        model=chat_job["fine_tuned_model"], prompt="the answer", max_tokens=5, n=2, seed=4
    )
    assert [ch.text for ch in out.choices] == [ch.text for ch in again.choices]
    assert [ch.index for ch in out.choices] == [0, 1]
    base = c.completions.create(model="tiny-llama", prompt="the answer", max_tokens=5, temperature=0)
    assert base.usage is not None and base.usage.prompt_tokens == out.usage.prompt_tokens  # type: ignore[union-attr]
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="tiny-llama", prompt="the answer", max_tokens=5, temperature=0, stream=True
        )
    )
    assert streamed == base.choices[0].text


def test_a_checkpoint_is_served_by_its_name(stack: Stack, chat_job: dict[str, Any]) -> None:
    with stack.client() as c:
        ckpts = c.get(f"/v1/fine_tuning/jobs/{chat_job['id']}/checkpoints").json()["data"]
    assert ckpts
    name = ckpts[0]["fine_tuned_model_checkpoint"]
    reply = client(stack).chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert reply.model == name and reply.usage is not None


def test_another_tenant_gets_404_and_bad_input_a_clear_400(stack: Stack, chat_job: dict[str, Any]) -> None:
    other = stack.sgft("keys", "create", "--tenant", "tenant-b").strip()
    name = chat_job["fine_tuned_model"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(stack, other).chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client(stack, other).chat.completions.create(
            model=name + ":ckpt-step-2", messages=[{"role": "user", "content": "x"}]
        )
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}) as h:
        cases: list[dict[str, Any]] = [
            {"model": name, "messages": []},
            {"model": name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
            {"model": name, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            {"model": "tiny-bert", "messages": [{"role": "user", "content": "x"}]},
            {"model": name, "messages": [{"role": "wizard", "content": "x"}]},
        ]
        for body in cases:
            r = h.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["message"]


def test_predictions_of_a_classification_fine_tune(stack: Stack) -> None:
    job = _train(stack, "tiny-bert", sst2_lines("train", 32), {"n_epochs": 1, "batch_size": 8})
    texts = ["a gripping film", ["one", "two"], {"text": "dull", "text_pair": "long"}]
    with stack.client() as c:
        r = c.post("/v1/predictions", json={"model": job["fine_tuned_model"], "input": texts})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1, 2]
        for d in data:
            assert d["label"] in ("0", "1") and abs(sum(d["scores"].values()) - 1) < 1e-5
            assert d["score"] == max(d["scores"].values())
        wrong = c.post("/v1/predictions", json={"model": "tiny-llama", "input": ["x"]})
        assert wrong.status_code == 400 and "causal_lm" in wrong.json()["error"]["message"]


def test_stopped_inference_server_is_a_clean_503(stack: Stack, chat_job: dict[str, Any]) -> None:
    stack.kill("infer")
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client(stack).chat.completions.create(
                model=chat_job["fine_tuned_model"], messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 503 and "sgft infer" in str(info.value)
    finally:
        stack.start("infer", "infer")
        port = stack.env["SGFT_INFER_PORT"]
        wait_for(lambda: _infer_up(port), 60, "sgft infer to listen again")
