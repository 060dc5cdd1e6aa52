"""The registry's task-signature queries: store, read and find what an embedder signed.

:class:`SignatureQueries` is part of :class:`registry.store.RegistryStore` (a mixin over the
same engine and helpers); the rows live in ``module_signatures`` (one per module, kind and
embedder), and the in-memory index of :mod:`registry.retrieval` is loaded from
:meth:`SignatureQueries.signature_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from registry.entities import Signature
from registry.models import ModuleRow, ModuleSignatureRow

_modules = cast(sa.Table, ModuleRow.__table__)
_signatures = cast(sa.Table, ModuleSignatureRow.__table__)


def signature_row(module_id: int, sig: Signature) -> dict[str, Any]:
    """The ``module_signatures`` row of one signature (its centroid as float16 bytes)."""
    return {"module_id": module_id, "kind": sig.kind, "embedder": sig.embedder, "dim": sig.dim,
            "count": sig.count, "vectors": sig.vectors,
            "centroid": sig.centroid().astype("<f2").tobytes()}


@dataclass(frozen=True)
class SignatureRows:
    """The centroids of every signature one embedder made: what the retrieval index loads."""

    keys: list[tuple[str, str]]
    kinds: list[str]
    dim: int
    centroids: bytes


class SignatureQueries:
    """Signature reads and writes of :class:`~registry.store.RegistryStore`."""

    engine: Engine

    if TYPE_CHECKING:  # provided by RegistryStore, which this class is part of
        def _resolve_id(self, conn: Connection, repo_id: str, source: str | None) -> int: ...

        def _existing_keys(self, conn: Connection, keys: Sequence[tuple[str, str]],
                           ) -> list[tuple[tuple[str, str], int]]: ...

        def _insert_rows(self, conn: Connection, table: sa.Table,
                         rows: list[dict[str, Any]]) -> None: ...

    def signatures(self, repo_id: str, source: str | None = None) -> list[Signature]:
        """Every signature stored for one module (all kinds and embedders)."""
        with self.engine.connect() as conn:
            module_id = self._resolve_id(conn, repo_id, source)
            rows = conn.execute(
                sa.select(_signatures).where(_signatures.c.module_id == module_id)
                .order_by(_signatures.c.kind, _signatures.c.embedder)
            ).mappings().all()
        return [Signature(kind=r["kind"], embedder=r["embedder"], dim=r["dim"],
                          count=r["count"], vectors=bytes(r["vectors"])) for r in rows]

    def signature_embedders(self) -> dict[str, int]:
        """How many modules each embedder has signed (any kind)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_signatures.c.embedder,
                          sa.func.count(sa.distinct(_signatures.c.module_id)))
                .group_by(_signatures.c.embedder)
            ).all()
        return {name: int(n) for name, n in rows}

    def signature_rows(self, embedder: str) -> SignatureRows:
        """The centroid of each module's signatures made by ``embedder``, data before card."""
        m, g = _modules.c, _signatures.c
        stmt = (sa.select(m.source, m.repo_id, g.kind, g.dim, g.centroid)
                .join(_modules, m.id == g.module_id)
                .where(g.embedder == embedder).order_by(g.module_id, g.kind.desc()))
        keys: list[tuple[str, str]] = []
        kinds: list[str] = []
        chunks: list[bytes] = []
        dim = 0
        with self.engine.connect() as conn:
            for source, repo_id, kind, width, centroid in conn.execute(stmt):
                # 'data' sorts after 'card': descending puts a module's data signature first.
                if keys and keys[-1] == (source, repo_id):
                    continue
                if dim and width != dim:
                    continue
                dim = width
                keys.append((source, repo_id))
                kinds.append(kind)
                chunks.append(bytes(centroid))
        return SignatureRows(keys=keys, kinds=kinds, dim=dim, centroids=b"".join(chunks))

    def put_signatures(self, repo_id: str, source: str | None,
                       signatures: Sequence[Signature]) -> None:
        """Store signatures for an indexed module, replacing those of the same kind and embedder."""
        with self.engine.begin() as conn:
            module_id = self._resolve_id(conn, repo_id, source)
            self._put_signatures(conn, module_id, signatures)

    def put_signatures_many(self, items: Sequence[tuple[tuple[str, str], Sequence[Signature]]],
                            ) -> int:
        """``put_signatures`` for many (source, repo_id) keys in one transaction; modules gone
        meanwhile are skipped. Returns how many modules were signed."""
        with self.engine.begin() as conn:
            found = dict(self._existing_keys(conn, [key for key, _ in items]))
            for key, signatures in items:
                if key in found:
                    self._put_signatures(conn, found[key], signatures)
        return sum(1 for key, _ in items if key in found)

    def _put_signatures(self, conn: Connection, module_id: int,
                        signatures: Sequence[Signature]) -> None:
        for sig in signatures:
            conn.execute(sa.delete(_signatures).where(
                _signatures.c.module_id == module_id, _signatures.c.kind == sig.kind,
                _signatures.c.embedder == sig.embedder))
        self._insert_rows(conn, _signatures, [signature_row(module_id, s) for s in signatures])

    def unsigned_keys(self, embedder: str) -> list[tuple[str, str]]:
        """(source, repo_id) of the modules with no signature of any kind from ``embedder``,
        found by one query (the modules themselves are loaded by the caller, a batch at a
        time)."""
        m, g = _modules.c, _signatures.c
        signed = sa.select(g.module_id).where(g.module_id == m.id, g.embedder == embedder)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(m.source, m.repo_id).where(~signed.exists())
                                .order_by(m.id)).all()
        return [(source, repo_id) for source, repo_id in rows]
