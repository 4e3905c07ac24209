"""Chat fine-tuning data from the Chit-Chat Challenge corpus (PyPI `chitchat-dataset`, MIT, 7,168 dialogues).

`python -m training.chitchat --out DIR --train N --valid M --seed S` writes DIR/train.jsonl and
DIR/valid.jsonl in the OpenAI chat format, one conversation a line:
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}`.

The corpus stores a dialogue as a list of turns, each a list of utterances by one sender; consecutive turns
alternate senders. The first speaker becomes "user", the second "assistant"; a turn's utterances are joined
by newlines. Conversations are cut to an even number of turns so each ends with an assistant reply (the part
a chat SFT learns), and optionally to `max_turns` turns and `max_chars` characters (whole turn pairs) so
they fit short training sequences; a conversation whose first pair alone is longer is left out. Which
conversations land in train and valid is fixed by the seed alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Conversation = list[str]  # one string per turn, speakers alternating, first speaker first


class ChitchatError(Exception):
    """Bad arguments or a corpus that cannot give what was asked."""


def load_corpus() -> dict[str, Any]:
    """The raw corpus {conversation_id: {"messages": [[{"text", "sender", ...}, ...], ...], ...}}."""
    try:
        import chitchat_dataset
    except ImportError as exc:
        raise ChitchatError("the chitchat-dataset package is missing: pip install chitchat-dataset") from exc
    return dict(chitchat_dataset.Dataset())


def turns_of(record: Mapping[str, Any]) -> Conversation:
    """A corpus record as one string per turn; same-sender turns (none in 0.9.0, but cheap to guard) merge."""
    turns: list[str] = []
    last_sender: str | None = None
    for turn in record["messages"]:
        text = "\n".join(u["text"].strip() for u in turn if u["text"].strip())
        sender = turn[0]["sender"] if turn else None
        if not text:
            continue
        if turns and sender == last_sender:
            turns[-1] += "\n" + text
        else:
            turns.append(text)
        last_sender = sender
    return turns


def trim(turns: Conversation, max_turns: int | None = None, max_chars: int | None = None) -> Conversation:
    """Cut to an even number of turns (ends on the second speaker), at most `max_turns` and `max_chars`.

    Whole user/assistant pairs are dropped from the end. Returns [] (the conversation is left out) when
    fewer than 2 turns remain, or when the first pair alone is longer than `max_chars`: cut further, a
    conversation could lose every assistant token to the training engine's sequence truncation.
    """
    n = len(turns) - len(turns) % 2
    if max_turns is not None:
        n = min(n, max_turns - max_turns % 2)
    while max_chars is not None and n >= 2 and sum(len(t) for t in turns[:n]) > max_chars:
        n -= 2
    return list(turns[:n]) if n >= 2 else []


def to_chat(turns: Sequence[str], system: str | None = None) -> dict[str, list[dict[str, str]]]:
    """One conversation as an OpenAI chat example: speakers alternate user/assistant, user first."""
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"messages": messages}


def split_conversations(
    corpus: Mapping[str, Any],
    n_train: int,
    n_valid: int,
    seed: int,
    min_turns: int = 2,
    max_turns: int | None = None,
    max_chars: int | None = None,
) -> tuple[list[Conversation], list[Conversation]]:
    """Draw `n_train` + `n_valid` distinct conversations with at least `min_turns` turns after trimming.

    Candidates are ordered by conversation id, then shuffled by `seed`, so the split depends on the seed
    and the corpus only (not on dict order or on the machine).
    """
    if n_train < 1 or n_valid < 0:
        raise ChitchatError(f"need train >= 1 and valid >= 0 conversations, got {n_train} and {n_valid}")
    if min_turns < 2:
        raise ChitchatError(f"min_turns must be at least 2 (one user turn and one reply), got {min_turns}")
    if max_turns is not None and max_turns < min_turns:
        raise ChitchatError(f"max_turns ({max_turns}) is below min_turns ({min_turns})")
    candidates: list[Conversation] = []
    for key in sorted(corpus):
        turns = trim(turns_of(corpus[key]), max_turns, max_chars)
        if len(turns) >= min_turns:
            candidates.append(turns)
    wanted = n_train + n_valid
    if wanted > len(candidates):
        raise ChitchatError(
            f"asked for {wanted} conversations but only {len(candidates)} have at least {min_turns} turns"
        )
    random.Random(seed).shuffle(candidates)
    return candidates[:n_train], candidates[n_train:wanted]


def write_jsonl(path: Path, conversations: Sequence[Conversation], system: str | None = None) -> Path:
    """Write conversations as chat JSONL (UTF-8, one object a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for turns in conversations:
            f.write(json.dumps(to_chat(turns, system), ensure_ascii=False) + "\n")
    return path


def convert(
    out_dir: Path,
    n_train: int,
    n_valid: int,
    seed: int = 0,
    min_turns: int = 2,
    max_turns: int | None = None,
    max_chars: int | None = None,
    system: str | None = None,
    corpus: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write out_dir/train.jsonl and out_dir/valid.jsonl; return their paths. `corpus`: the package's."""
    train, valid = split_conversations(
        corpus if corpus is not None else load_corpus(),
        n_train,
        n_valid,
        seed,
        min_turns,
        max_turns,
        max_chars,
    )
    out_dir = Path(out_dir)
    return write_jsonl(out_dir / "train.jsonl", train, system), write_jsonl(
        out_dir / "valid.jsonl", valid, system
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: convert chitchat-dataset conversations to chat JSONL."""
    parser = argparse.ArgumentParser(prog="python -m training.chitchat", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl and valid.jsonl")
    parser.add_argument("--train", type=int, required=True, help="number of training conversations")
    parser.add_argument("--valid", type=int, required=True, help="number of validation conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-turns", type=int, default=2)
    parser.add_argument("--max-turns", type=int, default=None)
    parser.add_argument("--max-chars", type=int, default=None, help="cut whole turn pairs beyond this length")
    parser.add_argument("--system", default=None, help="a system prompt put first in every conversation")
    args = parser.parse_args(argv)
    try:
        train, valid = convert(
            args.out,
            args.train,
            args.valid,
            args.seed,
            args.min_turns,
            args.max_turns,
            args.max_chars,
            args.system,
        )
    except ChitchatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{train}\n{valid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
