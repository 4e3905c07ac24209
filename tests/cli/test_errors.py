"""`sgft` errors reach a user as one clear line and a non-zero exit code, never as a traceback (no service
needed: these are the commands run against a database that is missing, empty or unreachable)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.web.service import SGFT


def run_sgft(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    environ.update(SGFT_DATA_DIR=str(data_dir), **env)
    return subprocess.run(
        [*SGFT, *args], cwd=data_dir.parent, env=environ, capture_output=True, text=True, timeout=120
    )


def test_keys_create_with_an_empty_data_dir_says_where_and_what_to_do_and_creates_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    done = run_sgft(data_dir, "keys", "create", "--tenant", "me")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(data_dir / "sgft.db") in done.stderr
    assert "sgft migrate" in done.stderr and "SGFT_DATA_DIR" in done.stderr
    assert not data_dir.exists(), "no empty database (nor its folder) is left behind"
    assert list(tmp_path.iterdir()) == []


def test_keys_against_an_empty_database_file_says_it_is_not_set_up(tmp_path: Path) -> None:
    """The empty sgft.db an older `sgft keys create` left behind: named as not set up, left as it was."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "sgft.db").touch()
    for args in (("keys", "create", "--tenant", "me"), ("keys", "revoke", "key-x")):
        done = run_sgft(data_dir, *args)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert "is not set up" in done.stderr and "tenants" in done.stderr and "sgft migrate" in done.stderr
    assert (data_dir / "sgft.db").stat().st_size == 0
    assert sorted(p.name for p in data_dir.iterdir()) == ["sgft.db"]


def test_keys_create_after_migrate_prints_a_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    assert run_sgft(data_dir, "migrate").returncode == 0
    done = run_sgft(data_dir, "keys", "create", "--tenant", "me")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sgft-")


def test_an_unreachable_database_is_one_line_without_password_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg2://sgft:hunter2secret@127.0.0.1:1/sgft"
    for args in (("keys", "create", "--tenant", "me"), ("migrate",)):
        done = run_sgft(tmp_path / "var", *args, SGFT_DATABASE_URL=url)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "hunter2secret" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("sgft: error:")]
        assert len(errors) == 1 and "127.0.0.1" in errors[0] and "refused" in errors[0].lower(), done.stderr
    debug = run_sgft(tmp_path / "var", "--debug", "migrate", SGFT_DATABASE_URL=url)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    via_env = run_sgft(tmp_path / "var", "migrate", SGFT_DATABASE_URL=url, SGFT_DEBUG="1")
    assert "Traceback" in via_env.stderr
