"""A burst of job creations from many asyncio+httpx clients, checked against the broker queue and the DB."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text


async def _burst(base: str, headers: dict[str, str], body: str, n: int, clients: int) -> dict[str, Any]:
    ids: list[list[str]] = [[] for _ in range(clients)]
    codes: list[int] = []
    retries: list[int] = []
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:

        async def one(c: int, count: int) -> None:
            for n in range(count):  # each client submits its jobs one after another, like a script
                # A dropped connection is retried with the same Idempotency-Key: never a second job.
                headers = {"Content-Type": "application/json", "Idempotency-Key": f"burst-{run}-{c}-{n}"}
                for attempt in range(3):
                    try:
                        r = await client.post("/v1/fine_tuning/jobs", content=body, headers=headers)
                        break
                    except httpx.TransportError:
                        retries.append(c)
                        if attempt == 2:
                            raise
                codes.append(r.status_code)
                if r.status_code == 200:
                    ids[c].append(r.json()["id"])

        started = time.perf_counter()
        await asyncio.gather(*(one(c, n // clients + (c < n % clients)) for c in range(clients)))
        seconds = time.perf_counter() - started
    return {
        "sent": n,
        "clients": clients,
        "accepted": sum(code == 200 for code in codes),
        "status_codes": sorted(set(codes)),
        "seconds": seconds,
        "transport_retries": len(retries),
        "ids_by_client": ids,
    }


def burst(base: str, headers: dict[str, str], body: str, n: int, clients: int) -> dict[str, Any]:
    """`n` creations from `clients` concurrent clients (a separate event loop in this process)."""
    return asyncio.run(_burst(base, headers, body, n, clients))


def queue_order(redis_url: str, queue: str, ids_by_client: list[list[str]], db_url: str) -> dict[str, Any]:
    """Is every job of the burst in the broker queue once, in each client's submission order, and queued?

    kombu's Redis transport LPUSHes and workers BRPOP, so consumption order is the list read backwards.
    """
    raw = redis.Redis.from_url(redis_url).lrange(queue, 0, -1)
    consumed = [json.loads(m)["headers"]["id"] for m in reversed(raw)]
    wanted = {i for ids in ids_by_client for i in ids}
    position: dict[str, int] = {}
    duplicates = 0
    for index, job_id in enumerate(consumed):
        if job_id in wanted:
            duplicates += job_id in position
            position.setdefault(job_id, index)
    fifo = all(
        all(position.get(a, -1) < position.get(b, -1) for a, b in zip(ids, ids[1:], strict=False))
        for ids in ids_by_client
    )
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'queued' "
                "AND enqueued_at IS NOT NULL"
            ),
            {"ids": sorted(wanted)},
        ).scalar_one()
    engine.dispose()
    redis.Redis.from_url(redis_url).delete(queue)
    return {
        "in_queue": len(position),
        "duplicates": duplicates,
        "per_client_fifo": fifo and len(position) == len(wanted),
        "all_queued_in_db": rows == len(wanted),
    }
