"""Turn chat / prompt-completion records into token ids and labels: loss only on what the model must write.

With a tokenizer chat template, a conversation is rendered prefix by prefix: the text an assistant turn
adds is `render(messages[:i+1])` minus `render(messages[:i], add_generation_prompt=True)`, which is its
content and end-of-turn marker (the role header belongs to the prompt). Without a template, the plain
format below is used (also documented in the README):

    <|system|>\n{content}\n<|user|>\n{content}\n<|assistant|>\n{content}{eos}\n

where only `{content}{eos}` of assistant turns (weight 1) is learnt. Prompt/completion records are raw text:
`{prompt}` (not learnt) then `{completion}{eos}` (learnt). Every piece is tokenised without special tokens
and the ids are concatenated, so the mask is exact at piece boundaries.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from training.spec import DataError

IGNORE = -100
Piece = tuple[str, bool]  # (text, learnt?)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], gen: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen)
    return str(text)


def template_pieces(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[Piece]:
    """Pieces of a conversation rendered with the tokenizer's chat template."""
    pieces: list[Piece] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], gen=True) if i else _render(tokenizer, [], gen=True)
        after = _render(tokenizer, messages[: i + 1], gen=False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        pieces.append((before[len(done) :], False))
        pieces.append((after[len(before) :], msg.get("weight", 1) == 1))
        done = after
    full = _render(tokenizer, messages, gen=False)
    if not full.startswith(done):
        raise ValueError("the chat template does not render conversations prefix by prefix")
    if full[len(done) :]:
        pieces.append((full[len(done) :], False))
    return pieces


def plain_pieces(eos: str, messages: list[dict[str, Any]]) -> list[Piece]:
    """Pieces in the plain chat format (models without a chat template)."""
    pieces: list[Piece] = []
    for msg in messages:
        if msg["role"] == "assistant":
            pieces.append(("<|assistant|>\n", False))
            pieces.append((msg["content"] + eos, msg.get("weight", 1) == 1))
            pieces.append(("\n", False))
        else:
            pieces.append((f"<|{msg['role']}|>\n{msg['content']}\n", False))
    return pieces


def encode_causal(
    tokenizer: PreTrainedTokenizerBase, record: dict[str, Any], max_len: int, where: str
) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for a chat or prompt/completion record, cut to `max_len` tokens.

    `where` ("train.jsonl line 7") names the record in errors. DataError when no learnt token is left.
    """
    eos = tokenizer.eos_token or ""
    prefix: list[int] = []
    if "messages" in record:
        if getattr(tokenizer, "chat_template", None):
            try:
                pieces = template_pieces(tokenizer, record["messages"])
            except Exception as exc:  # jinja errors, templates that reject the role order, ...
                raise DataError(f"{where}: the model's chat template cannot render it ({exc})") from exc
        else:
            pieces = plain_pieces(eos, record["messages"])
    else:
        # A BOS token where the tokenizer adds one by default (LLaMA family), as in pre-training.
        bos = tokenizer.bos_token_id
        if bos is not None and tokenizer("x").input_ids[:1] == [bos]:
            prefix = [bos]
        pieces = [(record["prompt"], False), (record["completion"] + eos, True)]
    ids: list[int] = list(prefix)
    labels: list[int] = [IGNORE] * len(prefix)
    for text, learnt in pieces:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids.extend(piece)
        labels.extend(piece if learnt else [IGNORE] * len(piece))
    n_tokens = len(ids)
    truncated = n_tokens > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    # The causal shift drops the first label, so a learnt token must sit at position >= 1.
    if not any(label != IGNORE for label in labels[1:]):
        what = "assistant" if "messages" in record else "completion"
        if truncated:
            raise DataError(
                f"{where}: no {what} token is left after truncation to max_seq_length={max_len} "
                f"(the example is {n_tokens} tokens); shorten the text before the {what} or raise "
                "max_seq_length"
            )
        raise DataError(f"{where}: the {what} text is empty after tokenisation")
    return ids, labels, truncated
