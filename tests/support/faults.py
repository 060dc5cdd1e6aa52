"""A ``loradex serve`` for the fault tests, started with as few processes as possible.

The fault tests start, kill and restart servers several times on a 2-core CI machine, so the
schema and the tokens are made in process (``tests.support.hub.start_hub`` runs the CLI three
times for its tokens) and only the server itself runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

from pathlib import Path

from registry.db import make_engine
from registry.schema import ensure_schema
from registry.server.launch import LaunchedServer, start_server
from registry.server.tokens import create_token
from tests.support.hub import MAX_UPLOAD, HubServer


def start_fault_hub(
    root: Path, db_url: str, *, workers: int = 1, max_upload_size: int = MAX_UPLOAD
) -> HubServer:
    """Schema and tokens (alice of org ``team``, bob, read-only carol) in process, then
    ``loradex serve`` in a subprocess logging to ``root/server.log``."""
    ensure_schema(db_url)
    engine = make_engine(db_url)
    try:
        alice = create_token(engine, "alice", "alice", ["team"])
        bob = create_token(engine, "bob", "bob")
        reader = create_token(engine, "carol", "carol", role="read")
    finally:
        engine.dispose()
    data = root / "hub-data"
    server = start_server(db_url, data, workers=workers, max_upload_size=max_upload_size,
                          log_level="warning", log_path=root / "server.log")
    return HubServer(server, db_url, data, alice, bob, reader)


def restart(hub: HubServer, name: str, *, workers: int = 1,
            max_upload_size: int = MAX_UPLOAD) -> LaunchedServer:
    """Another ``loradex serve`` on the same database and data folder (a free port), logging
    to ``name.log`` beside the first one's log."""
    log = hub.data_dir.parent / f"{name}.log"
    return start_server(hub.db_url, hub.data_dir, workers=workers,
                        max_upload_size=max_upload_size, log_level="warning", log_path=log)
