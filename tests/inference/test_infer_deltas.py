"""The deltas `sgft infer` fetches to disk are bounded by its model cache: a fine-tune evicted from the cache
has its folder removed, and a previous run's folders are removed at start."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.storage import Storage
from tests.inference.test_shared_base import chat_deltas, models_dir  # noqa: F401 (fixtures)
from worker.inference import Engine


def _target(i: int) -> dict[str, Any]:
    return {
        "model": f"ft:tiny-llama:t:{i}",
        "base": "tiny-llama",
        "task": "causal_lm",
        "kind": "delta",
        "storage_key": f"files/ft{i}-delta.tar.gz",
    }


def test_evicted_fine_tunes_leave_disk_and_stale_folders_go_at_start(
    tmp_path: Path,
    models_dir: Path,  # noqa: F811
    chat_deltas: list[Path],  # noqa: F811
) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=models_dir)
    storage = Storage(settings.artifacts_url)
    for i, delta in enumerate(chat_deltas):
        archive = tmp_path / f"ft{i}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(delta.iterdir()):
                tar.add(path, arcname=path.name)
        storage.put_file(archive, _target(i)["storage_key"])
    stale = tmp_path / "infer-deltas" / "0123456789abcdef01234567"
    (stale / "delta").mkdir(parents=True)
    (stale / "ready").write_text("")

    engine = Engine(settings)
    assert not stale.exists()
    first = engine.served(_target(0))
    assert first.mode == "shared"
    folders = list(engine.deltas.iterdir())
    assert len(folders) == 1 and (folders[0] / "delta").is_dir()

    engine.cache.budget = engine.cache.used + 1  # room for the base and one fine-tune only
    assert engine.served(_target(1)).mode == "shared"
    assert engine.cache.loaded_fine_tunes() == {_target(1)["model"]}
    assert not folders[0].exists()  # evicted from the cache: removed from disk
    (kept,) = engine.deltas.iterdir()
    assert (kept / "delta").is_dir()

    assert engine.served(_target(1)).mode == "shared"  # in the cache: its folder stays
    assert list(engine.deltas.iterdir()) == [kept]
