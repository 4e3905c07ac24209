"""Tiny random models with real tokenizers, saved into a models folder the registry lists (for tests).

Everything is built offline in seconds: a `tokenizers` WordLevel vocabulary from a few lines of text,
wrapped in `PreTrainedTokenizerFast`, and a randomly initialised transformers model, written with
`save_pretrained` to `models_dir/<name>/`. Importable by every engineer's tests:

    from training.testing import make_tiny_model
    make_tiny_model(tmp_path / "models", "tiny-llama")   # chat template (ChatML)
    make_tiny_model(tmp_path / "models", "tiny-gpt2")    # no chat template: the plain chat format
    make_tiny_model(tmp_path / "models", "tiny-bert")    # encoder (a BertModel, like all-MiniLM-L6-v2)
    run_training(spec, train, valid, work, models_dir=tmp_path / "models")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

Kind = Literal["llama", "gpt2", "bert"]
SST2_DEV = Path("/work/shared/data/sst2/dev.jsonl")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Words of the plain chat format and of the test conversations, so they are not all [UNK].
EXTRA_WORDS = "<|system|> <|user|> <|assistant|> user assistant system hi hello what is the answer yes no ok"


def sst2_lines(split: str = "dev", n: int = 64) -> list[str]:
    """The first `n` raw JSONL lines of SST-2 `split` ("train" or "dev"), read at call time."""
    path = SST2_DEV.with_name(f"{split}.jsonl")
    out: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(line if line.endswith("\n") else line + "\n")
            if len(out) >= n:
                break
    return out


def build_tokenizer(kind: Kind, corpus: Iterable[str], vocab_limit: int = 400) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the most frequent words of `corpus` plus the model kind's special tokens."""
    counts: dict[str, int] = {}
    for text in corpus:
        for word in re.findall(r"\w+|[^\w\s]+", text.lower()):
            counts[word] = counts.get(word, 0) + 1
    special = {
        "llama": ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        "gpt2": ["<|endoftext|>", "<unk>"],
        "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    }[kind]
    extra = re.findall(r"\w+|[^\w\s]+", EXTRA_WORDS)
    words = [*extra, *sorted(counts, key=lambda w: (-counts[w], w))[:vocab_limit]]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*special, *words]))}
    unk = "[UNK]" if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            do_lower_case=True,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    if kind == "llama":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
        )
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        fast.chat_template = CHATML
        return fast
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def random_model(
    kind: Kind,
    vocab_size: int,
    seed: int = 0,
    *,
    layers: int = 2,
    positions: int = 128,
    dropout: float = 0.0,
    head: Literal["base", "classifier"] = "base",
    num_labels: int = 2,
    **config: Any,
) -> PreTrainedModel:
    """The one builder of random transformers models (tests, bench): `kind` with hidden 32, MLP 64 and 2
    heads unless `config` (more fields of the kind's transformers config) says otherwise, `layers` blocks,
    `positions` positions, the same weights for a seed. `dropout`: BERT's hidden / GPT-2's dropouts.
    A LLaMA or GPT-2 is a causal LM; a BERT the bare encoder (`head` "base", as all-MiniLM-L6-v2's folder
    holds) or a sequence classifier of `num_labels` ("classifier")."""
    torch.manual_seed(seed)
    if kind == "llama":
        llama = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
        }
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                num_hidden_layers=layers,
                max_position_embeddings=positions,
                **{**llama, **config},
            )
        )
    if kind == "gpt2":
        gpt2 = {"n_embd": 32, "n_head": 2, "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": 0.0}
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab_size, n_layer=layers, n_positions=positions, **{**gpt2, **config})
        )
    bert = {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": 0.0,
        **({"num_labels": num_labels} if head == "classifier" else {}),
    }
    encoder = BertConfig(
        vocab_size=vocab_size,
        num_hidden_layers=layers,
        max_position_embeddings=positions,
        **{**bert, **config},
    )
    if head == "classifier":
        return BertForSequenceClassification(encoder)
    return BertModel(encoder, add_pooling_layer=True)


def build_model(kind: Kind, vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A tiny random model of `kind` (hidden 32, 2 blocks, MLP 64) for a registry folder: its tokenizer's
    special token ids; BERT with hidden dropout 0.1, as all-MiniLM-L6-v2 trains."""
    if kind == "llama":
        return random_model(kind, vocab_size, seed, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    if kind == "gpt2":
        return random_model(kind, vocab_size, seed, bos_token_id=0, eos_token_id=0)
    return random_model(kind, vocab_size, seed, dropout=0.1, pad_token_id=0)


def make_tiny_model(models_dir: Path, name: str, kind: Kind | None = None, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer to `models_dir/name` (kind from the name if not given); returns it.

    The vocabulary comes from the first 200 SST-2 dev sentences, so SST-2 slices tokenise to real words.
    """
    kind = kind or next(k for k in ("llama", "gpt2", "bert") if k in name)  # type: ignore[assignment]
    assert kind is not None
    folder = Path(models_dir) / name
    corpus = [json.loads(line)["text"] for line in sst2_lines("dev", 200)]
    tokenizer = build_tokenizer(kind, corpus)
    model = build_model(kind, len(tokenizer), seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, records: Iterable[dict[str, object]]) -> Path:
    """Write records as JSONL (one object a line) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat_records(n: int) -> list[dict[str, object]]:
    """`n` small deterministic chat conversations (system + user + assistant) in the OpenAI format."""
    out: list[dict[str, object]] = []
    for i in range(n):
        answer = "yes" if i % 2 else "no"
        out.append(
            {
                "messages": [
                    {"role": "system", "content": "answer yes or no"},
                    {"role": "user", "content": f"is the answer {answer} ?"},
                    {"role": "assistant", "content": f"the answer is {answer}"},
                ]
            }
        )
    return out
