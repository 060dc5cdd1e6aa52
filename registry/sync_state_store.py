"""Hub sync progress in the registry: one row per endpoint and repository.

:class:`SyncStateQueries` is part of :class:`registry.store.RegistryStore` (a mixin over the
same engine and helpers); ``loradex sync`` reads it to skip what it has and resume where it
stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.entities import SyncState
from registry.models import SyncStateRow


class SyncStateQueries:
    """Sync state reads and writes of :class:`~registry.store.RegistryStore`."""

    engine: Engine
    _sessions: sessionmaker[Session]

    if TYPE_CHECKING:  # provided by RegistryStore, which this class is part of
        def _existing_keys(self, conn: Connection, keys: Sequence[tuple[str, str]],
                           ) -> list[tuple[tuple[str, str], int]]: ...

        def _delete_rows(self, conn: Connection, ids: Sequence[int]) -> None: ...

    def get_sync_state(self, endpoint: str, repo_id: str) -> SyncState | None:
        """What the last sync of ``repo_id`` from ``endpoint`` recorded, or None."""
        with self._sessions() as session:
            row = session.get(SyncStateRow, (endpoint, repo_id))
            return row.to_entity() if row is not None else None

    def set_sync_state(
        self,
        endpoint: str,
        repo_id: str,
        *,
        last_sha: str | None,
        status: str = "ok",
        error: str | None = None,
    ) -> SyncState:
        """Record the outcome of syncing one repository: 'ok', 'skipped', 'gated', 'gone' or
        'error'."""
        with self._sessions.begin() as session:
            row = session.get(SyncStateRow, (endpoint, repo_id))
            if row is None:
                row = SyncStateRow(endpoint=endpoint, repo_id=repo_id)
                session.add(row)
            row.last_sha = last_sha
            row.status = status
            row.error = error
            row.synced_at = datetime.now(UTC)
            session.flush()
            return row.to_entity()

    def set_sync_states(self, states: Sequence[SyncState]) -> None:
        """Record many sync outcomes in one transaction (the last one per repo wins)."""
        rows = {
            (st.endpoint, st.repo_id): {
                "endpoint": st.endpoint,
                "repo_id": st.repo_id,
                "last_sha": st.last_sha,
                "status": st.status,
                "error": st.error,
                "synced_at": st.synced_at or datetime.now(UTC),
            }
            for st in states
        }
        if not rows:
            return
        table = cast(sa.Table, SyncStateRow.__table__)
        keys = list(rows)
        key_columns = sa.tuple_(table.c.endpoint, table.c.repo_id)
        with self.engine.begin() as conn:
            for start in range(0, len(keys), 400):
                conn.execute(sa.delete(table).where(key_columns.in_(keys[start : start + 400])))
            conn.execute(sa.insert(table), list(rows.values()))

    def forget_repos(self, endpoint: str, repo_ids: Sequence[str]) -> int:
        """Remove the modules synced from ``endpoint`` under ``repo_ids`` and their sync
        states, in one transaction; return how many modules were removed."""
        table = cast(sa.Table, SyncStateRow.__table__)
        removed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(repo_ids), 400):
                chunk = list(repo_ids[start : start + 400])
                ids = [
                    module_id for _key, module_id
                    in self._existing_keys(conn, [(endpoint, r) for r in chunk])
                ]
                self._delete_rows(conn, ids)
                removed += len(ids)
                conn.execute(
                    sa.delete(table).where(table.c.endpoint == endpoint,
                                           table.c.repo_id.in_(chunk))
                )
        return removed

    def sync_states(self, endpoint: str) -> list[SyncState]:
        """Every recorded sync state of one endpoint, by repo id."""
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(SyncStateRow)
                .where(SyncStateRow.endpoint == endpoint)
                .order_by(SyncStateRow.repo_id)
            ).all()
            return [row.to_entity() for row in rows]
