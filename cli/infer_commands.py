"""`sgft chat MODEL` (tokens printed as they stream) and `sgft predict MODEL TEXT...`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.client import JSON
from cli.commands import _client, _emit, _run, _table


def _turn(args: argparse.Namespace, client: Any, messages: list[JSON]) -> str:
    body: JSON = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens}
    body |= {k: v for k, v in (("temperature", args.temperature), ("seed", args.seed)) if v is not None}
    parts: list[str] = []
    for piece in client.chat_stream(body):
        parts.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    reply = "".join(parts)
    if args.json:
        print(json.dumps({"model": args.model, "role": "assistant", "content": reply}))
    else:
        print()
    return reply


@_run
def chat(args: argparse.Namespace) -> int:
    """One turn with --message (or piped stdin); otherwise a conversation, one line per turn."""
    messages: list[JSON] = [{"role": "system", "content": args.system}] if args.system else []
    with _client(args) as client:
        if args.message is not None or not sys.stdin.isatty():
            text = args.message if args.message is not None else sys.stdin.read()
            _turn(args, client, [*messages, {"role": "user", "content": text}])
            return 0
        print(f"chatting with {args.model}; an empty line or Ctrl-D ends", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                return 0
            if not line.strip():
                return 0
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": _turn(args, client, messages)})


@_run
def predict(args: argparse.Namespace) -> int:
    """Labels and scores for each TEXT (with --pair: each TEXT paired with it)."""
    inputs: list[Any] = [[t, args.pair] for t in args.texts] if args.pair is not None else list(args.texts)
    with _client(args) as client:
        result = client.predict(args.model, inputs)
    rows = []
    for item, text in zip(result["data"], args.texts, strict=True):
        label = item["label"] if item["label"] is not None else "-"
        rows.append([label, f"{item['score']:.4f}", text if len(text) <= 60 else text[:57] + "..."])
    _emit(args, result, _table(rows, ["LABEL", "SCORE", "TEXT"]))
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("chat", parents=[common], help="chat with a causal-LM model or fine-tune")
    p.add_argument("model", help="a base model or a fine_tuned_model (or a checkpoint's name)")
    p.add_argument("-m", "--message", help="one user message (default: stdin when piped, else interactive)")
    p.add_argument("--system", help="a system message first")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(fn=chat)
    p = subparsers.add_parser(
        "predict", parents=[common], help="labels and scores of a classification fine-tune"
    )
    p.add_argument("model")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--pair", help="the second text of every pair")
    p.set_defaults(fn=predict)
