"""API keys: a bearer secret per key, stored as SHA-256 only, each belonging to one tenant."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.store.engine import rows_changed
from core.store.tables import ApiKey, Job, Sweep, utcnow

SECRET_PREFIX = "lbdn_"


def digest(secret: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(s: Session, tenant: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key of `tenant`; returns (row, secret). The secret is shown once and never stored."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=f"key_{secrets.token_hex(6)}", tenant=tenant, name=name, secret_sha256=digest(secret))
    s.add(key)
    s.flush()
    return key, secret


def list_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(s: Session, key_id: str) -> bool:
    return bool(
        rows_changed(
            s, update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
    )


def tenant_for_secret(s: Session, secret: str) -> str | None:
    """The tenant of an active key with this secret, else None."""
    return tenant_for_digest(s, digest(secret))


def tenant_for_digest(s: Session, secret_sha256: str) -> str | None:
    """The tenant of the active key whose secret has this SHA-256 (hex), else None."""
    return s.scalar(select(ApiKey.tenant).where(ApiKey.secret_sha256 == secret_sha256, ApiKey.revoked_at.is_(None)))


def any_active_key(s: Session) -> bool:
    return s.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def tenant_holdings(s: Session, tenant: str) -> tuple[int, int]:
    """(jobs, sweeps) filed under `tenant`, e.g. the open mode's before the first key hides them."""
    n_jobs = s.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant)) or 0
    n_sweeps = s.scalar(select(func.count()).select_from(Sweep).where(Sweep.tenant == tenant)) or 0
    return int(n_jobs), int(n_sweeps)


def move_tenant(s: Session, old: str, new: str) -> tuple[int, int]:
    """File every job and sweep of `old` under `new` (their ids, files and links stay); returns the
    (jobs, sweeps) moved. A job whose Idempotency-Key `new` already used keeps `old` (the key is unique
    per tenant), so a replay cannot answer with the wrong job."""
    taken = select(Job.idempotency_key).where(Job.tenant == new, Job.idempotency_key.is_not(None))
    movable = (Job.tenant == old) & (Job.idempotency_key.is_(None) | Job.idempotency_key.not_in(taken))
    n_jobs = rows_changed(s, update(Job).where(movable).values(tenant=new).execution_options(synchronize_session=False))
    n_sweeps = rows_changed(s, update(Sweep).where(Sweep.tenant == old).values(tenant=new))
    return n_jobs, n_sweeps
