"""Who is asking: the identity behind a bearer token, ``whoami``, and the write check."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.hub_models import SqlHubNamespaceMember, SqlHubToken
from registry.server.errors import forbidden, unauthorized
from registry.server.tokens import hash_token
from registry.server.types import Identity


class Authenticator:
    """Looks tokens up in the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity behind an ``Authorization: Bearer`` header; None when anonymous."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        with self.sessions.begin() as session:
            row = session.scalar(
                select(SqlHubToken).where(
                    SqlHubToken.token_hash == hash_token(token), SqlHubToken.revoked_at.is_(None)
                )
            )
            if row is None:
                raise unauthorized()
            orgs = session.scalars(
                select(SqlHubNamespaceMember.namespace).where(
                    SqlHubNamespaceMember.user == row.user
                )
            ).all()
            return Identity(
                user=row.user,
                token_name=row.display_name,
                role=row.role,
                namespaces=frozenset([row.user, *orgs]),
            )


def whoami(identity: Identity | None) -> dict[str, Any]:
    """``/api/whoami-v2``."""
    if identity is None:
        raise unauthorized("Authorization header is required")
    orgs = sorted(identity.namespaces - {identity.user})
    return {
        "type": "user",
        "id": hashlib.sha1(identity.user.encode(), usedforsecurity=False).hexdigest()[:24],
        "name": identity.user,
        "fullname": identity.user,
        "email": None,
        "emailVerified": False,
        "isPro": False,
        "orgs": [{"name": o, "type": "org", "fullname": o} for o in orgs],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": identity.token_name, "role": identity.role},
        },
    }


def require_write(identity: Identity | None, namespace: str) -> Identity:
    """401 without a token, 403 when the token may not write to ``namespace``."""
    if identity is None:
        raise unauthorized("a token is required to write (Authorization: Bearer ...)")
    if namespace not in identity.namespaces or not identity.can_write:
        raise forbidden(
            f"token of {identity.user!r} has no write access to namespace {namespace!r}"
        )
    return identity
