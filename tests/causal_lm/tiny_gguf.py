"""Write a tiny random LLaMA, with a tiny byte-level BPE tokenizer and a ChatML template, as a GGUF file.

This is what llama.cpp's `convert_hf_to_gguf.py` does for a LLaMA checkpoint, cut to the parts a test needs:
llama.cpp's metadata keys, its tensor names, and its row permutation of the query/key projections (which
transformers' GGUF loader undoes). Tensors are stored as F32 or as Q8_0 blocks.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

ROPE_THETA = 50000.0  # not the LLaMA default, so a lost rope base shows in the logits
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "Ġ t", "Ġt he", "l l", "he ll"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vocab() -> list[str]:
    """Specials (ids 0-2), the 256 byte symbols in byte order, then one token per merge."""
    byte_symbols = [bytes_to_unicode()[b] for b in range(256)]
    return SPECIALS + byte_symbols + [m.replace(" ", "") for m in MERGES]


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    """A 2-block LLaMA (hidden 32, MLP 64, 4 query heads over 2 key/value heads) with random weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": ROPE_THETA, "rope_type": "default"},
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms start at exactly 1; perturb them so a mix-up of norm tensors shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary-half row order for q/k: (n_head, 2, d/2, ...) -> (n_head, d/2, 2, ...)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model: LlamaForCausalLM, path: Path, quant: str = "F32") -> Path:
    """Write `model` and the tiny tokenizer to `path` in GGUF; `quant` is "F32" or "Q8_0" for 2-D weights."""
    cfg = model.config
    n_kv = int(cfg.num_key_value_heads or cfg.num_attention_heads)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in vocab])  # 3 = control, 1 = normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied model stores no output.weight; the loader ties it back
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        assert name is not None, hf_name
        data = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if quant == "Q8_0" and data.ndim == 2:
            blocks = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
