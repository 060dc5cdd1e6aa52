"""``loradex serve --workers 2`` on one SQLite file, with ``loradex`` CLI writes beside it.

Six huggingface_hub clients commit adapters (each commit is indexed into the registry by the
worker that took it) while ``loradex add`` and ``loradex token create`` write to the same file
from other processes. SQLite allows one writer at a time: no "database is locked" and no
traceback may appear anywhere (server log, CLI output); every CLI write is done or refused with
one line, every commit lands (retried on a 503, if one comes), and the registry ends up holding
every adapter at its head.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import HfHubHTTPError

from registry.db import make_engine
from registry.store import RegistryStore
from tests.support.faults import start_fault_hub
from tests.support.hub import make_adapter

pytestmark = pytest.mark.slow

CLIENTS = 6
ROUNDS = 4
CLI_ADDS = 3


def _run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loradex", *args], capture_output=True,
                          text=True, timeout=180)


def test_two_workers_on_sqlite_with_cli_writes_beside_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_fault_hub(tmp_path, url, workers=2)
    try:
        api = hub.api(hub.alice)
        adapters = [make_adapter(tmp_path / f"hub-adapter-{i}", seed=i) for i in range(CLIENTS)]
        for i in range(CLIENTS):
            api.create_repo(f"alice/busy-{i}")
        heads: dict[str, str] = {}
        refusals: list[int] = []
        failures: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            repo = f"alice/busy-{i}"
            for round_ in range(ROUNDS):
                card = f"---\nlicense: mit\ntags: [round-{round_}]\n---\nround {round_}\n"
                ops = [CommitOperationAdd(p.name, p.read_bytes())
                       for p in sorted(adapters[i].iterdir()) if p.name != "README.md"]
                ops.append(CommitOperationAdd("README.md", card.encode()))
                for _attempt in range(20):
                    try:
                        info = api.create_commit(repo, ops, commit_message=f"round {round_}")
                        with lock:
                            heads[repo] = info.oid
                        break
                    except HfHubHTTPError as exc:
                        status = exc.response.status_code if exc.response is not None else -1
                        with lock:
                            refusals.append(status)
                        if status not in (409, 503):
                            with lock:
                                failures.append(f"{repo}: {status} {exc}")
                            return
                        time.sleep(1)
                    except Exception as exc:
                        with lock:
                            failures.append(f"{repo}: {type(exc).__name__}: {exc}")
                        return
                else:
                    with lock:
                        failures.append(f"{repo}: refused 20 times")

        cli_folders = [make_adapter(tmp_path / f"cli-adapter-{i}", seed=100 + i)
                       for i in range(CLI_ADDS)]
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        cli_commands = [["--db", url, "add", str(folder)] for folder in cli_folders]
        cli_commands.append(["--db", url, "token", "create", "cli"])
        # Two CLI processes at a time beside the server: writes from three processes at once.
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(zip(cli_commands, pool.map(_run_cli, cli_commands), strict=True))
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert failures == []
        assert set(refusals) <= {409, 503}
        assert len(heads) == CLIENTS

        # Every CLI write is done, or refused with exactly one line and no traceback.
        assert len(results) == len(cli_commands)
        added = []
        for args, result in results:
            output = result.stdout + result.stderr
            assert "Traceback" not in output and "database is locked" not in output, output
            if result.returncode == 0:
                if args[2] == "add":
                    added.append(Path(args[3]).name)
            else:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        log = hub.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "database is locked" not in log, log
        assert hub.internal_errors() == []

        # The registry holds every CLI addition, and every hosted adapter at its head (the
        # background re-indexing included, should an indexing have met a busy database).
        store = RegistryStore(make_engine(url))
        for name in added:
            assert store.get_module(f"local/{name}").repo_id == f"local/{name}"
        deadline = time.monotonic() + 30
        while True:
            indexed = {repo: store.get_module(repo, source="local").revision for repo in heads}
            if indexed == heads or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert indexed == heads
        store.engine.dispose()
        print(f"\ncommits: {len(heads) * ROUNDS} landed, refused {refusals}; CLI: "
              f"{sum(r.returncode == 0 for _, r in results)}/{len(results)} done, the rest "
              f"refused in one line: {[r.stderr.strip() for _, r in results if r.returncode]}")
    finally:
        hub.launched.stop(timeout=15)
