"""API keys: a bearer secret per key, stored as SHA-256 only, each belonging to one tenant."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.store.engine import rows_changed
from core.store.tables import ApiKey, utcnow

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
