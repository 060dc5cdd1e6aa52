"""The end-to-end demo: host a library, sync it, compose a module for an unseen task, share it.

Every step runs the real ``loradex`` command in a subprocess, printed as the user would type
it, against a local ``loradex serve`` and a fresh SQLite registry under the work folder, so the
demo doubles as a tour of the command line. Only the bulk upload of the starter library runs
in-process (one ``loradex publish`` per module would spend most of its time starting Python).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradex.errors import ConfigError, LoradexError

if TYPE_CHECKING:
    from registry.server.launch import LaunchedServer

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on; the defaults are the repository's embedded library and examples."""

    workdir: Path = field(default=Path("demo-out"), metadata={"help": "folder for all outputs"})
    library: Path = field(default=Path("library"), metadata={"help": "starter library folder"})
    few_shot: Path = field(
        default=Path("examples/boolean_expressions/few_shot.jsonl"),
        metadata={"help": "few-shot examples of the new task"},
    )
    test: Path = field(
        default=Path("examples/boolean_expressions/test.jsonl"),
        metadata={"help": "held-out examples of the new task"},
    )
    task_name: str = field(default="boolean_expressions", metadata={"help": "the new task"})
    namespace: str = field(default="demo", metadata={"help": "Hub namespace of the demo user"})
    k: int = field(default=5, metadata={"help": "candidates chosen from the registry"})
    select: str = field(
        default="retrieve+screen",
        metadata={"help": "how compose chooses them (compose --select; measured in "
                          "docs/benchmarks/retrieval.md)"})
    budget: int = field(default=40, metadata={"help": "CMA-ES loss evaluations"})
    seed: int = field(default=0, metadata={"help": "candidate draw and optimizer seed"})
    base_model: str | None = field(default=None, metadata={"help": "None = embedded SmolLM2"})
    test_limit: int | None = field(default=None, metadata={"help": "evaluate at most N examples"})
    max_modules: int | None = field(default=None, metadata={"help": "publish at most N modules"})
    wait: bool = field(
        default=True,
        metadata={"help": "keep the server up for its web page until Enter (only when standard "
                          "input is a terminal)"})


@dataclass
class DemoResult:
    """What the demo produced: the scores it printed and where its outputs are."""

    zero_shot: dict[str, Any]
    composed: dict[str, Any]
    adapter_dir: Path
    plot: Path | None
    composed_repo: str
    seconds: float
    page_url: str = ""  # the composed module's web page on the demo's server


def repo_name_for(folder_name: str) -> str:
    """A Hub repo name for a library folder: ``a_b__c`` -> ``a-b-c``."""
    return "-".join(part for part in folder_name.replace("_", "-").split("-") if part)


def library_modules(library: Path, limit: int | None = None) -> list[Path]:
    """The finished module folders of a library (those holding adapter weights), sorted."""
    if not library.is_dir():
        raise ConfigError(
            f"starter library not found: {library} (build it with `loradex library build`)"
        )
    folders = sorted(p for p in library.iterdir() if (p / "adapter_model.safetensors").is_file())
    if not folders:
        raise ConfigError(
            f"{library} holds no built module (build it with `loradex library build`)"
        )
    return folders[:limit] if limit else folders


class DemoRun:
    """One demo run: a work folder, a server subprocess, and the environment of every step."""

    def __init__(self, config: DemoConfig, echo: Echo = print) -> None:
        from registry.server.launch import free_port

        self.config = config
        self.echo = echo
        self.work = config.workdir.resolve()
        self.hub_db = f"sqlite:///{self.work / 'hub.db'}"
        self.registry_db = f"sqlite:///{self.work / 'registry.db'}"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: LaunchedServer | None = None
        self.env = dict(os.environ)
        self.env.update(
            LORADEX_HOME=str(self.work / "home"),
            LORADEX_DB=self.registry_db,
            LORADEX_ENDPOINT=self.endpoint,
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(self.work / "hf-home"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("HF_TOKEN", None)
        self.env.pop("HF_HUB_OFFLINE", None)

    # -- plumbing -------------------------------------------------------------------------

    def step(self, title: str) -> None:
        """Print a step heading."""
        self.echo(f"\n== {title}")

    def loradex(self, *args: str, capture: bool = False, quiet_env: bool = False) -> str:
        """Run ``loradex ARGS`` as the user would; print the command and its output."""
        shown = " ".join(shlex.quote(a) for a in args)
        self.echo(f"$ loradex {shown}")
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "loradex", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
            text=True,
        )
        out = proc.stdout
        if not capture and out.strip():
            self.echo(out.rstrip())
        if proc.returncode != 0:
            detail = (proc.stderr or out or "").strip().splitlines()
            last = detail[-1] if detail else f"exit code {proc.returncode}"
            raise LoradexError(f"demo step `loradex {args[0]}` failed: {last}")
        self.echo(f"   ({time.perf_counter() - started:.1f} s)")
        return out

    def start_server(self) -> str:
        """Start ``loradex serve`` on a free loopback port; return a write token for the demo."""
        from registry.server.launch import serve_args, start_server

        data = self.work / "hub-data"
        args = serve_args(self.hub_db, data, port=self.port)
        self.echo(f"$ loradex {' '.join(shlex.quote(c) for c in args)} &")
        self.server = start_server(self.hub_db, data, port=self.port, env=self.env,
                                   log_path=self.work / "server.log", timeout=90)
        self.echo(f"   server up at {self.endpoint}")
        token = self.loradex("--db", self.hub_db, "token", "create", self.config.namespace,
                             capture=True).strip().splitlines()[-1]
        self.echo("   (a write token for user 'demo' was printed once; the demo keeps it)")
        self.env["LORADEX_TOKEN"] = token
        return token

    def stop_server(self) -> None:
        """Stop the server subprocess (gracefully, then forcefully)."""
        if self.server is not None:
            self.server.stop(timeout=20)

    # -- the steps ------------------------------------------------------------------------

    def publish_library(self, token: str) -> list[str]:
        """Upload every library module to the server, each in one commit with a complete card."""
        from huggingface_hub.utils import disable_progress_bars
        from tqdm.auto import tqdm

        from hub_client.client import HubClient
        from hub_client.publish import publish_folder
        from registry.db import make_engine
        from registry.schema import ensure_schema
        from registry.store import RegistryStore

        folders = library_modules(self.config.library, self.config.max_modules)
        disable_progress_bars()  # one bar for the whole library, not one per file
        self.echo(f"publishing {len(folders)} modules of {self.config.library} as "
                  f"{self.config.namespace}/<task> (as `loradex publish DIR --repo ...` does)")
        # The publisher's own registry: the demo's registry is filled by `loradex sync` later.
        publisher_db = f"sqlite:///{self.work / 'publisher.db'}"
        ensure_schema(publisher_db)
        engine = make_engine(publisher_db)
        client = HubClient(self.endpoint, token, cache_dir=self.work / "publisher-cache")
        repos = []
        try:
            store = RegistryStore(engine)
            for folder in tqdm(folders, desc="publish", unit="module"):
                repo_id = f"{self.config.namespace}/{repo_name_for(folder.name)}"
                publish_folder(client, store, folder, repo_id)
                repos.append(repo_id)
        finally:
            engine.dispose()
        return repos

    def run(self) -> DemoResult:
        """Run every step; the server is stopped whatever happens."""
        cfg = self.config
        for path in (cfg.few_shot, cfg.test):
            if not path.is_file():
                raise ConfigError(f"demo data file not found: {path}")
        started = time.perf_counter()
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        base = ["--base-model", cfg.base_model] if cfg.base_model else []
        try:
            self.step("1. Host the starter library on a local Hub, sync it into a fresh registry")
            token = self.start_server()
            published = self.publish_library(token)
            self.loradex("sync", "--endpoint", self.endpoint, "--author", cfg.namespace, "--quiet")

            self.step("2. Search the registry for modules that fit the base model")
            listing = json.loads(self.loradex("search", "--json", "--limit", "1", capture=True))
            if not listing.get("results"):
                raise LoradexError("the registry is empty after sync")
            first = listing["results"][0]["repo_id"]
            self.loradex("search", "--compatible-with", first, "--sort", "rank", "--limit", "5")
            self.loradex("search", "grammar", "--limit", "5")
            self.echo("   the modules whose task signatures fit the few-shot examples best "
                      "(data: their training inputs; card: their card text):")
            self.loradex("search", "--like", str(cfg.few_shot), "--limit", "5")

            n_few = sum(1 for line in cfg.few_shot.open() if line.strip())
            n_candidates = min(cfg.k, len(published))
            self.step(f"3. Compose a module for the unseen task {cfg.task_name!r} from {n_few} "
                      f"examples (CMA-ES over the {n_candidates} registry modules that fit it "
                      f"best: {cfg.select})")
            if n_candidates < cfg.k:
                self.echo(f"   (the library holds {len(published)} modules, fewer than --k {cfg.k}:"
                          " all of them are candidates)")
            adapter = self.work / "composed"
            self.loradex(
                "compose", "--examples", str(cfg.few_shot), "--from-registry", "--select",
                cfg.select, "--k", str(cfg.k), "--budget", str(cfg.budget), "--seed",
                str(cfg.seed), "--out", str(adapter), *base,
            )

            self.step("4. Evaluate zero-shot vs the composed module on held-out examples")
            limit = ["--limit", str(cfg.test_limit)] if cfg.test_limit else []
            zero = json.loads(self.loradex("eval", str(cfg.test), "--json", *limit, *base,
                                           capture=True))
            composed = json.loads(self.loradex("eval", str(cfg.test), "--adapter", str(adapter),
                                               "--json", *limit, *base, capture=True))
            self.echo(format_scores(zero, composed, majority_label(cfg.test)))

            self.step("5. Publish the composed module with its provenance, and show it")
            repo = f"{cfg.namespace}/{repo_name_for(cfg.task_name)}-composed"
            self.loradex("publish", str(adapter), "--repo", repo)
            self.loradex("show", repo, "--card-lines", "0")
            page_url = f"{self.endpoint}/{repo}"
            self.echo(f"   its page (card, files, parents with weights, loss curve): {page_url}")
            self.wait_for_user()
        finally:
            self.stop_server()
        plots = sorted(adapter.glob("*.png")) if adapter.is_dir() else []
        seconds = time.perf_counter() - started
        self.echo(f"\nDone in {seconds / 60:.1f} min. Adapter: {adapter}"
                  + (f"  Loss plot: {plots[0]}" if plots else ""))
        return DemoResult(zero, composed, adapter, plots[0] if plots else None, repo, seconds,
                          page_url)

    def wait_for_user(self) -> None:
        """Keep the server up until Enter, so the page can be opened; not when nobody can
        press it (standard input is no terminal) or with ``--no-wait``."""
        if not self.config.wait or not _stdin_is_terminal():
            return
        self.echo("   the server stays up for the page: press Enter to stop it")
        with contextlib.suppress(EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C: stop too
            input()


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):  # closed or replaced (pytest) stdin
        return False


def _metric(scores: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = scores.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


SCORE_METRICS = ("choice_accuracy", "exact_match", "loss")


def majority_label(path: Path) -> tuple[str, float] | None:
    """The most frequent target of a task file and its rate (what always answering it scores)."""
    from composer.metrics import majority

    label, rate = majority(json.loads(line)["target"] for line in path.open() if line.strip())
    return None if label is None else (label, rate)


def format_scores(
    zero: dict[str, Any], composed: dict[str, Any], majority: tuple[str, float] | None = None
) -> str:
    """A small side-by-side table of two ``loradex eval --json`` results."""
    rows = [f"  {'metric':<28} {'zero-shot':>10} {'composed':>10}"]
    for key in SCORE_METRICS:
        a, b = _metric(zero, key), _metric(composed, key)
        if a is not None and b is not None:
            rows.append(f"  {key:<28} {a:>10.3f} {b:>10.3f}")
    if majority is not None:
        rows.append(f"  majority label rate (always {majority[0]!r}): {majority[1]:.3f}")
    for name, scores in (("zero-shot", zero), ("composed", composed)):
        labels = scores.get("predicted_labels")
        if labels:
            dist = ", ".join(f"{k}: {v}" for k, v in labels.items())
            rows.append(f"  predicted labels ({name}): {dist}")
    return "\n".join(rows)


def run_demo(config: DemoConfig, echo: Echo = print) -> DemoResult:
    """Run the demo with ``config``; see :class:`DemoRun`."""
    return DemoRun(config, echo).run()
