"""worker.archives.extract: a delta archive unpacks on every Python 3.11 patch release (the worker image's
Debian 3.11.2 has no tarfile "data" filter), and a member outside the folder or a link is refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from worker.archives import extract


def _archive(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


@pytest.mark.parametrize("has_data_filter", [True, False])
def test_extract_unpacks_files_and_refuses_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_data_filter: bool
) -> None:
    if not has_data_filter:  # as on Python 3.11.0-3.11.3
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good = _archive(tmp_path / "good.tar.gz", {"delta/a.json": b"{}", "delta/b.bin": b"\x00\x01"})
    extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "delta" / "a.json").read_bytes() == b"{}"
    assert (tmp_path / "out" / "delta" / "b.bin").read_bytes() == b"\x00\x01"
    for bad in (
        _archive(tmp_path / "escape.tar.gz", {"../evil": b"x"}),
        _archive(tmp_path / "link.tar.gz", {}, link="delta/passwd"),
    ):
        with pytest.raises((ValueError, tarfile.TarError)):
            extract(bad, tmp_path / f"out-{bad.stem}")
    assert not (tmp_path / "evil").exists()
