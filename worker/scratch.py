"""Scratch space of job and merge attempts: `<data_dir>/work/<job id>-<random>` (a merge's has `-merge-`).

An attempt removes its folder when it ends. One killed outright cannot, so each worker sweeps at start-up:
a folder whose job (or merge) is not running any more belongs to a dead attempt. A running job's folder is
kept even if its owner is a dead process here: the reaper will re-queue the job, and the next sweep or the
next attempt on this machine finds it no longer running.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from sqlalchemy import select

from core.db import get_sessionmaker
from core.models import Job
from core.settings import Settings
from rules.states import JobStatus, MergeStatus

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(ftjob-[0-9a-f]+)-(merge-)?")


def scratch_dir(settings: Settings) -> Path:
    path = settings.data_dir / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sweep(settings: Settings) -> list[Path]:
    """Remove the scratch folders of attempts that are over; returns what was removed."""
    folders = [p for p in scratch_dir(settings).iterdir() if p.is_dir()]
    folders += [p for p in settings.data_dir.glob("ftjob-*-merge-*") if p.is_dir()]  # before work/ held them
    named = {p: m for p in folders if (m := _NAME.match(p.name))}
    ids = {m.group(1) for m in named.values()}
    with get_sessionmaker(settings.database_url)() as s:
        query = select(Job.id, Job.status, Job.merge_status).where(Job.id.in_(ids))
        rows = s.execute(query).all() if ids else []
    live = {job_id for job_id, status, _ in rows if status == JobStatus.RUNNING.value}
    merging = {job_id for job_id, _, merge in rows if merge == MergeStatus.RUNNING.value}
    removed = []
    for path, match in named.items():
        if match.group(1) in (merging if match.group(2) else live):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d scratch folder(s) of attempts that are over: %s", len(removed), removed[:5])
    return removed
