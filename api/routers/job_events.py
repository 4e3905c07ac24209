"""/v1/fine_tuning/jobs/{id}/events (paginated or Server-Sent Events) and /checkpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, SessionDep, SettingsDep
from api.errors import APIError, error_responses, not_found
from api.responses import JSONBytes, page_response
from api.routers.jobs import load_job
from api.schemas import CheckpointPublic, EventPublic, JobPublic, ListPage, event_fields, parse_event_cursor
from core import queries
from core.db import get_sessionmaker
from core.jobs import fine_tuned_name
from core.reader import reader
from rules.states import JobStatus

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=error_responses(400, 401, 503)
)
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


@router.get(
    "/{fine_tuning_job_id}/events", response_model=ListPage[EventPublic], responses=error_responses(404)
)
async def list_events(
    request: Request,
    fine_tuning_job_id: str,
    key: KeyDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    order: Literal["desc", "asc"] = "desc",
    stream: bool = False,
) -> JSONBytes | StreamingResponse:
    """Newest first like OpenAI (`after` pages to older); `order=asc` for watchers; `stream=true` for SSE."""
    fetch = reader(settings.database_url)
    try:
        cursor = parse_event_cursor(after or request.headers.get("last-event-id"))
    except APIError:  # a job the tenant does not have is a 404 first, whatever the cursor
        if await queries.fetch_job(fetch, key.tenant_id, fine_tuning_job_id) is None:
            raise not_found("fine-tuning job", fine_tuning_job_id, "fine_tuning_job_id") from None
        raise
    if stream:  # the stream polls with its own short sessions
        if await queries.fetch_job(fetch, key.tenant_id, fine_tuning_job_id) is None:
            raise not_found("fine-tuning job", fine_tuning_job_id, "fine_tuning_job_id")
        return StreamingResponse(
            _sse(request, settings.database_url, fine_tuning_job_id, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    page = await queries.fetch_events(
        fetch, key.tenant_id, fine_tuning_job_id, after=cursor, limit=limit, ascending=order == "asc"
    )
    if page is None:
        raise not_found("fine-tuning job", fine_tuning_job_id, "fine_tuning_job_id")
    return page_response([event_fields(e) for e in page[0]], page[1])


async def _sse(request: Request, db_url: str, job_id: str, after: int | None) -> AsyncIterator[bytes]:
    """Events in order as they happen; ends with an `end` event carrying the job once it is terminal."""
    factory = get_sessionmaker(db_url)
    idle = 0.0

    def poll(cursor: int | None) -> tuple[list[EventPublic], JobPublic]:
        with factory() as s:
            rows, _ = queries.list_events(s, job_id, after=cursor, limit=500, ascending=True)
            job = s.get_one(queries.Job, job_id)
            return [EventPublic.of(e) for e in rows], JobPublic.of(job)

    while not await request.is_disconnected():
        events, job = await run_in_threadpool(poll, after)
        for event in events:
            after = int(event.id.rsplit("-", 1)[-1])
            yield f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()
        if events:
            idle = 0.0
        elif JobStatus(job.status).terminal:
            yield f"event: end\ndata: {json.dumps(job.model_dump())}\n\n".encode()
            return
        await asyncio.sleep(POLL_SECONDS)
        idle += POLL_SECONDS
        if idle >= KEEPALIVE_SECONDS:
            idle = 0.0
            yield b": keep-alive\n\n"


@router.get(
    "/{fine_tuning_job_id}/checkpoints",
    response_model=ListPage[CheckpointPublic],
    responses=error_responses(404),
)
def list_checkpoints(
    fine_tuning_job_id: str,
    key: KeyDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[CheckpointPublic]:
    """The job's checkpoints, highest step first."""
    job = load_job(session, key.tenant_id, fine_tuning_job_id)
    rows, more = queries.list_checkpoints(session, job.id, after=after, limit=limit)
    name = job.fine_tuned_model or fine_tuned_name(job)
    data = [CheckpointPublic.of(c, name) for c in rows]
    return ListPage(
        data=data, has_more=more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )
