"""API keys `sgft-<prefix>-<secret>`: stored as HMAC-SHA256 under SGFT_SECRET_KEY, constant-time compare."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.ids import new_id
from core.models import ApiKey, Tenant, now


def hash_key(key: str, secret_key: str) -> str:
    """HMAC-SHA256 of the full key, hex."""
    return hmac.new(secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if missing."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1-200 characters")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, secret_key: str) -> tuple[ApiKey, str]:
    """Create a key for `tenant_name` (and the tenant if new); returns the row and the plain key."""
    tenant = get_or_create_tenant(session, tenant_name)
    prefix = secrets.token_hex(6)
    plain = f"sgft-{prefix}-{secrets.token_urlsafe(24)}"
    row = ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(plain, secret_key))
    session.add(row)
    session.commit()
    return row, plain


def verify_key(session: Session, plain: str, secret_key: str) -> ApiKey | None:
    """The live key row matching `plain`, or None (unknown, malformed or revoked)."""
    parts = plain.split("-", 2)
    if len(parts) != 3 or parts[0] != "sgft":
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(plain, secret_key)):
        return None
    return row


def revoke_key(session: Session, key_id_or_prefix: str) -> bool:
    """Revoke a key by id or prefix; False if there is no such live key."""
    row = session.scalar(
        select(ApiKey).where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
    )
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now()
    session.commit()
    return True
