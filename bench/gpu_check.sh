#!/usr/bin/env bash
# The GPU check, run unchanged on a lent GPU machine (Python 3.12 with its own CUDA torch, transformers, peft;
# no network, no Redis, no PostgreSQL), from the source tree without installing the project:
#   here, once:  make gpu-wheels        (.whl/, git-ignored: what the machine's image lacks)
#   there:       bash bench/gpu_check.sh   (a device run carrying [".whl"]; or `make gpu-check`)
# Sections: setup (wheels into $GPU_CHECK_SITE, imports, CUDA), the tests marked gpu, bench.gpu_table on
# SmolLM2-135M's shape, one job through `sgft run` (API + worker on SQLite) with its delta downloaded, and
# multi-device: bench.ddp_step on 1 and GPU_CHECK_NPROC processes under torchrun (nccl on CUDA, gloo on CPU).
# Every section runs even when an earlier one failed; the exit status is 1 when any failed, 124 when the
# whole run outlasted GPU_CHECK_TIMEOUT. Where $OUT is set (a device run) the log and the table's JSON go there.
#
# Knobs: GPU_CHECK_DEVICE=cuda|cpu (cpu: a rehearsal on a machine without a GPU, tiny shape),
# GPU_CHECK_SHAPE (smollm2-135m on cuda, tiny on cpu), GPU_CHECK_STEPS (20 / 3), GPU_CHECK_PRECISION (bf16),
# GPU_CHECK_TIMEOUT (235 s in all), GPU_CHECK_WHEELS (.whl; empty: none), GPU_CHECK_SITE (/tmp/site),
# PYTHON (python3), GPU_CHECK_NPROC (processes of the multi-device section: the GPUs nvidia-smi lists on
# cuda, 2 on cpu), GPU_CHECK_SECTIONS (comma list of tests,table,service,multidevice; default all; setup
# always runs).
# A CPU rehearsal on .venv: GPU_CHECK_DEVICE=cpu GPU_CHECK_WHEELS= PYTHON=.venv/bin/python
set -uo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.." || exit 1

if [ -z "${GPU_CHECK_GUARDED:-}" ]; then
  total="${GPU_CHECK_TIMEOUT:-235}"
  GPU_CHECK_GUARDED=1 timeout --kill-after=10 "$total" bash "$self" "$@"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu-check: TIMED OUT after ${total} s (GPU_CHECK_TIMEOUT); the sections above ran" >&2
    exit 124
  fi
  exit "$rc"
fi

PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" = cuda ]; then shape=smollm2-135m steps=20; else shape=tiny steps=3; fi
SHAPE="${GPU_CHECK_SHAPE:-$shape}"
STEPS="${GPU_CHECK_STEPS:-$steps}"
PRECISION="${GPU_CHECK_PRECISION:-bf16}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
export SGFT_PRECISION=auto HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
failed=()
started=$SECONDS

SECTIONS=",${GPU_CHECK_SECTIONS:-setup,tests,table,service,multidevice},"
want() { [[ "$SECTIONS" == *",$1,"* ]]; }
if [ "$DEVICE" = cuda ]; then
  nproc_default=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
else
  nproc_default=2
fi
NPROC="${GPU_CHECK_NPROC:-${nproc_default:-1}}"
[ "$NPROC" -ge 1 ] 2>/dev/null || NPROC=1
section() { printf '\n===== gpu-check: %s (%d s in) =====\n' "$1" "$((SECONDS - started))"; }
fail() {
  echo "gpu-check: FAILED $1" >&2
  failed+=("$1")
}

section "setup"
shopt -s nullglob
WHEELS="${GPU_CHECK_WHEELS-.whl}"
wheels=()
if [ -n "$WHEELS" ]; then wheels=("$WHEELS"/*.whl); fi
if [ "${#wheels[@]}" -gt 0 ]; then
  echo "installing ${#wheels[@]} wheels from $WHEELS/ into $SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}"; then
    echo "gpu-check: FAILED pip install of $WHEELS/ (two versions of one package? make gpu-wheels anew)" >&2
    exit 1
  fi
  export PYTHONPATH="$SITE:$PWD"
else
  echo "no wheels${WHEELS:+ in $WHEELS/}: using the packages $PY already has"
  export PYTHONPATH="$PWD"
fi
if ! "$PY" - "$DEVICE" <<'EOF'; then
import importlib, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}; torch {torch.__version__}")
for name in ("transformers", "peft", "safetensors", "fastapi", "pydantic", "sqlalchemy", "celery", "kombu"):
    print(f"  {name} {importlib.import_module(name).__version__}")
for module in ("api.app", "cli.main", "worker.tasks", "migrations", "training", "sparsegrad"):
    importlib.import_module(module)  # a package missing from the image and from .whl/ fails here
cuda = torch.cuda.is_available()
print(f"cuda available: {cuda}" + (f", {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}" if cuda else ""))
if sys.argv[1] == "cuda" and not cuda:
    sys.exit("torch sees no CUDA device (GPU_CHECK_DEVICE=cpu runs the rehearsal)")
EOF
  echo "gpu-check: FAILED setup (a missing package, an import error or no CUDA; see above)" >&2
  exit 1
fi
echo "git: $(git log -1 --format='%h %s' 2>/dev/null || echo 'no git')"

if want tests; then
section "tests marked gpu"
mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu\b' tests | sort)
if [ "${#gpu_tests[@]}" -eq 0 ]; then
  if [ "$DEVICE" = cuda ]; then fail "tests: no test file under tests/ has a gpu mark"; else echo "no gpu tests yet"; fi
else
  echo "files: ${gpu_tests[*]}"
  timeout 75 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu "${gpu_tests[@]}" || fail "tests marked gpu (exit $?)"
fi
fi

if want table; then
section "bench.gpu_table ($SHAPE, $DEVICE, $PRECISION, $STEPS steps)"
table=(--shape "$SHAPE" --device "$DEVICE" --precision "$PRECISION" --steps "$STEPS")
if [ -n "${OUT:-}" ]; then table+=(--json "$OUT/gpu_table.json"); fi
timeout 90 "$PY" -m bench.gpu_table "${table[@]}" || fail "bench.gpu_table (exit $?)"

section "bench.gpu_table ($SHAPE, $DEVICE, bf16-weights: frozen weights in bf16, $STEPS steps)"
table=(--shape "$SHAPE" --device "$DEVICE" --precision bf16-weights --steps "$STEPS")
if [ -n "${OUT:-}" ]; then table+=(--json "$OUT/gpu_table_bf16_weights.json"); fi
timeout 60 "$PY" -m bench.gpu_table "${table[@]}" || fail "bench.gpu_table bf16-weights (exit $?)"
fi

if want service; then
section "one job through sgft run (SQLite database and broker, local artifacts)"
timeout 100 "$PY" -m bench.gpu_service --timeout 75 --expect-device "$DEVICE" || fail "bench.gpu_service (exit $?)"
fi

if want multidevice; then
section "multi-device: bench.ddp_step, 1 against $NPROC processes (torchrun, $DEVICE)"
counts=1
if [ "$NPROC" -gt 1 ]; then counts="1,$NPROC"; fi
ddp=(--nproc "$counts" --device "$DEVICE")
if [ -n "${OUT:-}" ]; then ddp+=(--json "$OUT/ddp_step.json"); fi
timeout 120 "$PY" -m bench.ddp_step "${ddp[@]}" || fail "bench.ddp_step on $counts processes (exit $?)"
fi

section "summary"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'gpu-check: %d section(s) FAILED:\n' "${#failed[@]}" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "gpu-check: all sections passed in $((SECONDS - started)) s"
