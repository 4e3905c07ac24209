"""Token-by-token sampling for chat and completions: temperature, top_p, stop strings, a seed, a deadline.

`stream_text` yields the text as it is produced (whole characters only, never a piece of a stop string),
then one `Finish`. A chat prompt is rendered with the tokenizer's chat template, or the plain format the
engine trains models without one on (training/chat.py).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


class GenerationError(ValueError):
    """A request the model cannot serve (prompt too long, ...): the message names the problem."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Finish:
    reason: str  # "stop" | "length"
    completion_tokens: int


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant's turn header."""
    if getattr(tokenizer, "chat_template", None):
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        text = str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True))
    else:  # the plain chat format of training/chat.py
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def text_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a raw prompt, with a BOS token where the tokenizer adds one (as the engine trains)."""
    ids = list(tokenizer(prompt, add_special_tokens=False).input_ids)
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("x").input_ids[:1] == [bos]:
        ids = [bos, *ids]
    return ids


def stop_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> set[int]:
    """Token ids that end a reply: EOS (tokenizer and generation config) and end-of-turn markers."""
    ids: set[int] = set()
    for source in (
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return ids


def _pick(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator) -> int:
    """The next token from logits (V,): argmax at temperature 0, else nucleus sampling."""
    if sampling.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)  # (V,)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may begin a stop string (or be half a character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-n:]):
                hold = max(hold, n)
                break
    return hold


@torch.no_grad()
def stream_text(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    sampling: Sampling,
    deadline: float,
    context: int,
) -> Iterator[str | Finish]:
    """Text pieces as tokens are produced, then a Finish. TimeoutError past `deadline` (time.monotonic)."""
    if len(prompt_ids) + 1 > context:
        raise GenerationError(
            f"the prompt is {len(prompt_ids)} tokens; this model's context is {context} tokens"
        )
    budget = min(sampling.max_tokens, context - len(prompt_ids))
    gen = torch.Generator()
    gen.manual_seed(sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,))))
    enders = stop_ids(tokenizer, model)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    past: Any = None
    # transformers 5 calls the KV cache `cache` (`past_key_values` before, deprecated since)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    produced: list[int] = []
    sent = 0
    while len(produced) < budget:
        if time.monotonic() > deadline:
            raise TimeoutError(f"generation ran past its time limit after {len(produced)} tokens")
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_arg: past})
        past = getattr(out, cache_arg)
        token = _pick(out.logits[0, -1], sampling, gen)
        if token in enders:
            break
        produced.append(token)
        ids = torch.tensor([[token]], device=device)
        text = str(tokenizer.decode(produced, skip_special_tokens=True))
        cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
        if cut >= 0:
            if cut > sent:
                yield text[sent:cut]
            yield Finish("stop", len(produced))
            return
        safe = len(text) - _held_back(text, sampling.stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    text = str(tokenizer.decode(produced, skip_special_tokens=True))
    if len(text) > sent:
        yield text[sent:].rstrip("\ufffd")
    yield Finish("length" if len(produced) >= budget else "stop", len(produced))
