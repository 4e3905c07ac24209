"""/v1/chat/completions, /v1/completions (causal LM) and /v1/predictions (classification, regression).

Base models, the tenant's fine-tunes (`fine_tuned_model`) and their checkpoints
(`fine_tuned_model_checkpoint`) by name; another tenant's fine-tune is a 404. The work runs in the inference
server (`sgft infer`), never in this process; `stream: true` answers with Server-Sent Events as tokens come.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api import infer_client
from api.deps import KeyDep, SettingsDep
from api.errors import APIError, error_body, error_responses
from api.inference_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    PredictionList,
    PredictionRequest,
    Sampling,
)
from core.settings import Settings

router = APIRouter(prefix="/v1", tags=["inference"])
ERRORS = error_responses(400, 401, 404, 409, 413, 502, 503, 504)
STREAM = {
    "text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events, then [DONE]"}}
}
CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _payload(
    target: Any, body: Sampling, max_tokens: int | None, default: int, settings: Settings
) -> dict[str, Any]:
    limit = settings.infer_max_tokens
    wanted = max_tokens or min(default, limit)
    if wanted > limit:
        raise APIError(
            400,
            f"max_tokens is {wanted}; this service allows at most {limit} (SGFT_INFER_MAX_TOKENS).",
            param="max_tokens",
            code="invalid_value",
        )
    return {
        "target": target.to_json(),
        "max_tokens": wanted,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "n": body.n,
        "stop": body.stops(),
        "seed": body.seed,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _collect(gen: infer_client.Generation, n: int) -> tuple[list[str], list[str], int]:
    texts, reasons, completion = [""] * n, ["stop"] * n, 0
    async for event in gen.events():
        if event["type"] == "text":
            texts[event["index"]] += event["text"]
        elif event["type"] == "finish":
            reasons[event["index"]] = event["reason"]
            completion += int(event["completion_tokens"])
        elif event["type"] == "error":
            raise infer_client.engine_error(event)
    return texts, reasons, completion


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(
    gen: infer_client.Generation, chat: bool, head: dict[str, Any], n: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's chunks: for chat a first delta with the role per choice, then text deltas, a finish chunk
    per choice, an optional usage chunk, and `data: [DONE]`. An error after the start is an error event."""

    def chunk(index: int, content: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if content is not None:
                delta["content"] = content
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "finish_reason": reason,
                "logprobs": None,
            }
        else:
            choice = {"index": index, "text": content or "", "finish_reason": reason, "logprobs": None}
        return {**head, "choices": [choice]}

    if chat:
        for i in range(n):
            yield _sse(chunk(i, None, None, role=True))
    completion = 0
    async for event in gen.events():
        if event["type"] == "text":
            yield _sse(chunk(event["index"], event["text"], None))
        elif event["type"] == "finish":
            completion += int(event["completion_tokens"])
            yield _sse(chunk(event["index"], None if chat else "", event["reason"]))
        elif event["type"] == "error":
            err = infer_client.engine_error(event)
            yield _sse(error_body(err.message, err.type, None, err.code))
            return
    if include_usage:
        yield _sse({**head, "choices": [], "usage": _usage(int(gen.start["prompt_tokens"]), completion)})
    yield _sse("[DONE]")


async def _run(request: Request, body: Sampling, payload: dict[str, Any], chat: bool) -> Any:
    gen = await infer_client.generate(request, request.app.state.settings, payload)
    prefix, obj = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    head = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _stream(gen, chat, {**head, "object": obj + (".chunk" if chat else "")}, body.n, include)
        return StreamingResponse(
            chunks,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    texts, reasons, completion = await _collect(gen, body.n)
    usage = _usage(int(gen.start["prompt_tokens"]), completion)
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return ChatCompletion.model_validate({**head, "choices": choices, "usage": usage})
    choices = [
        {"index": i, "text": t, "finish_reason": r}
        for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
    ]
    return Completion.model_validate({**head, "choices": choices, "usage": usage})


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={**ERRORS, 200: {"content": STREAM}},
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, key: KeyDep, settings: SettingsDep
) -> Any:
    """A reply to a conversation from a causal-LM base model, fine-tune or checkpoint."""
    target = await infer_client.target_for(settings, key.tenant_id, body.model, "causal_lm")
    limit = body.max_tokens or body.max_completion_tokens
    payload = _payload(target, body, limit, CHAT_DEFAULT_MAX_TOKENS, settings)
    payload["messages"] = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    return await _run(request, body, payload, chat=True)


@router.post(
    "/completions",
    response_model=Completion,
    responses={**ERRORS, 200: {"content": STREAM}},
)
async def completions(body: CompletionRequest, request: Request, key: KeyDep, settings: SettingsDep) -> Any:
    """The continuation of a prompt (raw text, no chat template)."""
    target = await infer_client.target_for(settings, key.tenant_id, body.model, "causal_lm")
    payload = _payload(target, body, body.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, settings)
    payload["prompt"] = body.text()
    return await _run(request, body, payload, chat=False)


@router.post("/predictions", response_model=PredictionList, responses=ERRORS)
async def predictions(
    body: PredictionRequest, request: Request, key: KeyDep, settings: SettingsDep
) -> PredictionList:
    """Labels and scores of a classification or regression model (base or fine-tune) for a batch of inputs,
    tokenised as the engine evaluates them."""
    target = await infer_client.target_for(settings, key.tenant_id, body.model, "classification")
    if target.kind == "base":
        raise APIError(
            400,
            f"The base model {body.model!r} has no classification head of its own (each fine-tune trains "
            "one); predict with a fine-tuned model.",
            param="model",
            code="wrong_task",
        )
    result = await infer_client.predict(
        request, settings, {"target": target.to_json(), "inputs": body.pairs()}
    )
    data = [{"index": i, **row} for i, row in enumerate(result["data"])]
    tokens = int(result["prompt_tokens"])
    return PredictionList.model_validate(
        {"model": body.model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )
