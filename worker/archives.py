"""Unpacking the service's own .tar.gz results (deltas) safely on every Python 3.11 patch release."""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into `dest`: regular files and folders only, every path inside `dest`. Python's
    "data" filter does this where it exists (3.11.4 and later; Debian bookworm's 3.11.2 lacks it, and
    `extractall(filter=...)` is then a TypeError); before that, the same rule is checked member by member."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in tar.getmembers():
            inside = (root / member.name).resolve().is_relative_to(root)
            if not inside or not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive.name}: refusing member {member.name!r} (not a plain file inside)")
        tar.extractall(dest)  # noqa: S202 (every member checked above)
