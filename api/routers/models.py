"""/v1/models: base models from the registry and the tenant's fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import KeyDep, SessionDep, SettingsDep
from api.errors import error_responses, not_found
from api.schemas import ListPage, ModelPublic
from core.models import Job, Tenant
from rules.registry import list_models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(400, 401, 503))


def _all(session: SessionDep, settings: SettingsDep, tenant_id: str) -> list[ModelPublic]:
    base = [
        ModelPublic(id=m.name, created=0, owned_by="system", task=m.task, description=m.description)
        for m in list_models(settings.models_path)
    ]
    owner = session.get(Tenant, tenant_id)
    tuned = session.execute(
        select(Job.fine_tuned_model, Job.finished_at, Job.task)
        .where(Job.tenant_id == tenant_id, Job.status == "succeeded", Job.fine_tuned_model.is_not(None))
        .order_by(Job.finished_at.desc())
    ).all()
    return base + [
        ModelPublic(
            id=str(name), created=int(finished or 0), owned_by=owner.name if owner else tenant_id, task=task
        )
        for name, finished, task in tuned
    ]


@router.get("", response_model=ListPage[ModelPublic])
def list_all(key: KeyDep, session: SessionDep, settings: SettingsDep) -> ListPage[ModelPublic]:
    data = _all(session, settings, key.tenant_id)
    return ListPage(data=data, has_more=False, first_id=None, last_id=None)


@router.get("/{model_id:path}", response_model=ModelPublic, responses=error_responses(404))
def get_one(model_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> ModelPublic:
    for model in _all(session, settings, key.tenant_id):
        if model.id == model_id:
            return model
    raise not_found("model", model_id, "model")
