"""rules.registry: the built-in MiniLM, model folders in models_dir, task inference, unknown names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rules.registry import UnknownModel, get_model, list_models


def _folder(
    root: Path, name: str, config: dict[str, object], marker: dict[str, object] | None = None
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if marker is not None:
        (folder / "sgft_model.json").write_text(json.dumps(marker))
    return folder


def test_builtin_minilm_is_present() -> None:
    entry = get_model("all-MiniLM-L6-v2")
    assert entry.task == "classification" and entry.architecture == "bert"
    assert entry.path is not None and (entry.path / "config.json").is_file()


def test_models_dir_folders_become_entries(tmp_path: Path) -> None:
    _folder(tmp_path, "tiny-llama", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    _folder(tmp_path, "tiny-gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    _folder(tmp_path, "tiny-bert", {"model_type": "bert", "architectures": ["BertModel"]})
    _folder(tmp_path, "marked", {"model_type": "bert"}, {"task": "causal_lm", "description": "odd one"})
    (tmp_path / "no-config").mkdir()
    _folder(tmp_path, ".half-written", {"model_type": "llama"})
    names = [m.name for m in list_models(tmp_path)]
    assert names == ["all-MiniLM-L6-v2", "marked", "tiny-bert", "tiny-gpt2", "tiny-llama"]
    assert get_model("tiny-llama", tmp_path).task == "causal_lm"
    assert get_model("tiny-gpt2", tmp_path).architecture == "gpt2"
    assert get_model("tiny-gpt2", tmp_path).task == "causal_lm"
    assert get_model("tiny-bert", tmp_path).task == "classification"
    marked = get_model("marked", tmp_path)
    assert marked.task == "causal_lm" and marked.description == "odd one"


def test_unknown_model_lists_what_exists(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel) as err:
        get_model("../etc", tmp_path)
    assert "all-MiniLM-L6-v2" in str(err.value) and isinstance(err.value, KeyError)
    assert list_models(tmp_path / "missing")[0].name == "all-MiniLM-L6-v2"


def test_registry_and_datasets_never_import_torch() -> None:
    code = "import sys, rules.registry, rules.datasets; rules.registry.list_models(); "
    code += "assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_saved_models_are_registered_with_their_task(models_dir: Path) -> None:
    entries = {m.name: m for m in list_models(models_dir)}
    assert (entries["tiny-llama"].task, entries["tiny-llama"].architecture) == ("causal_lm", "llama")
    assert (entries["tiny-gpt2"].task, entries["tiny-gpt2"].architecture) == ("causal_lm", "gpt2")
    assert (entries["tiny-bert"].task, entries["tiny-bert"].architecture) == ("classification", "bert")
    assert entries["tiny-llama"].path == models_dir / "tiny-llama"
