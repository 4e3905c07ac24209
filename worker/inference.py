"""The inference engine behind `sgft infer`: deltas fetched from the artifact store, models from a bounded
cache (training.serving), one generation at a time on its own thread (the CPU has few cores; a queue of
requests waits its turn, each within its time limit; requests for the same model grouped: worker.infer_queue).

Each call reports through `emit(dict)`: {"type": "start", "prompt_tokens"}, {"type": "text", "index",
"text"} as tokens are produced, {"type": "finish", "index", "reason", "completion_tokens"} per choice, then
{"type": "end"} -- or {"type": "error", "status", "message"} at any point.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from core.settings import Settings
from core.storage import Storage
from training.merge import delta_config_path
from training.serving.generate import Finish, GenerationError, Sampling, chat_prompt, stream_text, text_prompt
from training.serving.models import ModelCache, ModelTooLarge, Served
from training.serving.predict import predict
from training.spec import TrainingError
from worker import archives
from worker.infer_queue import CallQueue

log = logging.getLogger(__name__)
Emit = Callable[[dict[str, Any]], None]


class Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings.artifacts_url)
        self.cache = ModelCache(settings.models_path, settings.infer_memory)
        # Fetched deltas, kept on disk while their model is in the cache (evicted: removed); a previous run's
        # are stale (the cache starts empty), so they go at start. One `sgft infer` per data directory.
        self.deltas = settings.data_dir / "infer-deltas"
        shutil.rmtree(self.deltas, ignore_errors=True)
        self._fetched: dict[Path, str] = {}  # local folder -> the model it holds
        self.queue = CallQueue()
        self.timeout = settings.infer_timeout

    def submit(self, fn: Callable[..., Any], body: dict[str, Any], *args: Any) -> Future[Any]:
        """Run fn(body, *args) on the engine's thread; calls for the same model are grouped (infer_queue)."""
        model = (body.get("target") or {}).get("model")
        return self.queue.submit(str(model) if model is not None else None, fn, body, *args)

    # -- models ------------------------------------------------------------------------------------------
    def _delta_dir(self, target: dict[str, Any]) -> Path:
        """The delta folder of a fine-tune or checkpoint, fetched once from the artifact store."""
        key = str(target["storage_key"])
        local = self.deltas / hashlib.sha256(key.encode()).hexdigest()[:24]
        if not (local / "ready").is_file():
            tmp = local.with_name(local.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if target["kind"] == "checkpoint":
                self.storage.get_dir(key, tmp / "ckpt")
                if delta_config_path(tmp / "ckpt" / "delta") is None:
                    raise Failed(
                        409,
                        f"The checkpoint {target['model']!r} holds no servable delta "
                        "(it was written before checkpoints carried one).",
                    )
                (tmp / "ckpt" / "delta").rename(tmp / "delta")
            else:
                tmp.mkdir(parents=True)
                self.storage.get_file(key, tmp / "delta.tar.gz")
                archives.extract(tmp / "delta.tar.gz", tmp / "delta")
            (tmp / "ready").write_text("")
            shutil.rmtree(local, ignore_errors=True)
            tmp.rename(local)
        self._fetched[local] = str(target["model"])
        return local / "delta"

    def _drop_unused_deltas(self) -> None:
        """Remove the fetched deltas of models that are not (or no longer) in the cache."""
        loaded = self.cache.loaded_fine_tunes()
        for local, model in list(self._fetched.items()):
            if model not in loaded:
                shutil.rmtree(local, ignore_errors=True)
                del self._fetched[local]

    def served(self, target: dict[str, Any]) -> Served:
        try:
            if target["kind"] == "base":
                return self.cache.serve_base(target["base"], target["task"])
            try:
                return self.cache.serve_delta(
                    target["model"], target["base"], target["task"], self._delta_dir(target)
                )
            finally:
                self._drop_unused_deltas()  # what this load evicted, or a delta that failed to load
        except ModelTooLarge as exc:
            raise Failed(503, str(exc)) from None
        except TrainingError as exc:
            raise Failed(409, f"The model {target['model']!r} cannot be loaded: {exc.message}") from None
        except (ValueError, KeyError, OSError) as exc:  # a delta that does not fit its base, a bad archive
            log.warning("cannot load %s: %s", target["model"], exc)
            raise Failed(
                409, f"The model {target['model']!r} cannot be loaded: {type(exc).__name__}"
            ) from None

    # -- calls (on the engine's thread) ----------------------------------------------------------------
    def _start(self, queued_at: float) -> float:
        waited = time.monotonic() - queued_at
        if waited > self.timeout:
            raise Failed(
                503, f"The inference server is busy: the request waited {waited:.0f} s; retry later."
            )
        return queued_at + self.timeout

    def generate(
        self, body: dict[str, Any], emit: Emit, cancelled: threading.Event, queued_at: float
    ) -> None:
        try:
            deadline = self._start(queued_at)
            served = self.served(body["target"])
            if served.task != "causal_lm":
                raise Failed(
                    400,
                    f"The model {body['target']['model']!r} is a {served.task} model; "
                    "use POST /v1/predictions",
                )
            tok = served.tokenizer
            ids = (
                chat_prompt(tok, body["messages"])
                if body.get("messages") is not None
                else text_prompt(tok, body["prompt"])
            )
            if len(ids) >= served.context:  # refused before the start: still a plain 400 when streaming
                raise Failed(
                    400, f"The prompt is {len(ids)} tokens; this model's context is {served.context}."
                )
            emit({"type": "start", "prompt_tokens": len(ids), "mode": served.mode})
            seed = body.get("seed")
            for index in range(int(body.get("n") or 1)):
                sampling = Sampling(
                    max_tokens=int(body["max_tokens"]),
                    temperature=float(body.get("temperature", 1.0)),
                    top_p=float(body.get("top_p", 1.0)),
                    stop=tuple(body.get("stop") or ()),
                    seed=None if seed is None else int(seed) + index,
                )
                with served.use():
                    for piece in stream_text(served.model, tok, ids, sampling, deadline, served.context):
                        if cancelled.is_set():
                            return
                        if isinstance(piece, Finish):
                            emit(
                                {
                                    "type": "finish",
                                    "index": index,
                                    "reason": piece.reason,
                                    "completion_tokens": piece.completion_tokens,
                                }
                            )
                        elif piece:
                            emit({"type": "text", "index": index, "text": piece})
            emit({"type": "end"})
        except Failed as exc:
            emit({"type": "error", "status": exc.status, "message": exc.message})
        except GenerationError as exc:
            emit({"type": "error", "status": 400, "message": str(exc)})
        except TimeoutError as exc:
            emit({"type": "error", "status": 504, "message": f"The request timed out: {exc}."})
        except Exception:
            log.exception("generation failed")
            emit({"type": "error", "status": 500, "message": "The inference server had an error."})

    def predict(self, body: dict[str, Any], queued_at: float) -> dict[str, Any]:
        self._start(queued_at)
        served = self.served(body["target"])
        if served.task != "classification":
            raise Failed(
                400,
                f"The model {body['target']['model']!r} is a {served.task} model; "
                "use POST /v1/chat/completions or /v1/completions",
            )
        inputs = [(str(i["text"]), i.get("text_pair")) for i in body["inputs"]]
        with torch.no_grad():
            results, tokens = predict(served, inputs)
        return {"data": results, "prompt_tokens": tokens, "mode": served.mode}
