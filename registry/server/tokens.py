"""Token administration (``loradex token create/list/revoke``): tokens are stored only hashed."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from registry.hub_models import SqlHubNamespaceMember, SqlHubToken
from registry.server.errors import bad_request
from registry.server.timestamps import iso_z, utcnow
from registry.server.validation import check_name


def hash_token(token: str) -> str:
    """sha256 of a token: what the database stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    engine: Engine,
    user: str,
    display_name: str,
    namespaces: Sequence[str] = (),
    role: str = "write",
) -> str:
    """Create a token for ``user`` (plus org memberships); return the secret, stored only hashed."""
    check_name(user, "user name")
    for ns in namespaces:
        check_name(ns, "namespace")
    if role not in ("read", "write"):
        raise bad_request(f"role must be 'read' or 'write', not {role!r}")
    token = "ldx_" + secrets.token_urlsafe(30)
    with sessionmaker(engine).begin() as session:
        session.add(
            SqlHubToken(
                display_name=display_name,
                user=user,
                token_hash=hash_token(token),
                role=role,
                created_at=utcnow(),
            )
        )
        existing = set(
            session.scalars(
                select(SqlHubNamespaceMember.namespace).where(SqlHubNamespaceMember.user == user)
            )
        )
        for ns in dict.fromkeys(namespaces):
            if ns != user and ns not in existing:
                session.add(SqlHubNamespaceMember(namespace=ns, user=user))
    return token


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """Every token (never the secret): id, user, name, role, namespaces, created, revoked."""
    with sessionmaker(engine).begin() as session:
        members: dict[str, list[str]] = {}
        for ns, user in session.execute(
            select(SqlHubNamespaceMember.namespace, SqlHubNamespaceMember.user)
        ):
            members.setdefault(user, []).append(ns)
        rows = session.scalars(select(SqlHubToken).order_by(SqlHubToken.id)).all()
        return [
            {
                "id": r.id,
                "user": r.user,
                "name": r.display_name,
                "role": r.role,
                "namespaces": sorted([r.user, *members.get(r.user, [])]),
                "created_at": iso_z(r.created_at),
                "revoked_at": iso_z(r.revoked_at) if r.revoked_at else None,
            }
            for r in rows
        ]


def revoke_token(engine: Engine, token_id: int) -> bool:
    """Revoke a token by id; False when there is no such active token."""
    with sessionmaker(engine).begin() as session:
        result = session.execute(
            update(SqlHubToken)
            .where(SqlHubToken.id == token_id, SqlHubToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
