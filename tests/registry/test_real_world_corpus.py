"""Real-world adapter configs and cards (``tests/registry/corpus``) through ``add`` and ``sync``.

Each case folder holds an ``adapter_config.json`` and, where its repository has one beside it,
the ``README.md``, both verbatim from a public GitHub repository (``SOURCE.json`` says which
file at which commit), and ``expected.json``: what a correct loradex records for it, or the one
line it refuses it with. The weights are never in such repositories' text, so each test writes
synthetic tensors that match the config the way PEFT saves them (per-module ranks, DoRA
magnitude vectors, ``lora_B`` biases, whole ``modules_to_save`` modules, only the layers of
``layers_to_transform``); ``synthetic.json`` names module paths where the targets alone cannot
(a regex ``target_modules``, an ``lm_head``), or lists the tensors outright (PEFT 0.2's merged
``enable_lora`` layers).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from loradex.errors import InvalidAdapter
from registry.embedders import EMBEDDER_ENV
from registry.entities import Module
from registry.peft_options import module_peft_options
from registry.schema import upgrade
from tests.support.cli import run
from tests.support.pg import drop_pg_schema, make_pg_schema_url, pg_available

if TYPE_CHECKING:
    from tests.support.hub import HubServer

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").is_file())
NAMESPACE = "alice"  # the hub fixture's alice may write under her own name
REPO_PREFIX = "corpus-"
DEFAULT_LAYERS = 2
DEFAULT_HIDDEN = 8

# expected.json keys compared against the module; the others say how to compare.
_FIELDS = (
    "base_model", "base_model_is_path", "rank", "alpha", "task_type", "target_modules",
    "use_dora", "use_rslora", "lora_bias", "peft_version", "rank_pattern", "alpha_pattern",
    "modules_to_save", "layers_to_transform", "license", "tags",
)


@dataclass(frozen=True)
class Case:
    """One corpus case: its files, what loradex must make of it, and how to fake its weights."""

    name: str
    config: dict[str, Any]
    expected: dict[str, Any]
    synthetic: dict[str, Any]

    @property
    def repo_id(self) -> str:
        return f"{NAMESPACE}/{REPO_PREFIX}{self.name}"


def load_case(name: str) -> Case:
    """Read a case folder (the config is parsed only to fake matching tensors)."""
    folder = CORPUS / name
    synthetic_path = folder / "synthetic.json"
    return Case(
        name=name,
        config=json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")),
        expected=json.loads((folder / "expected.json").read_text(encoding="utf-8")),
        synthetic=(
            json.loads(synthetic_path.read_text(encoding="utf-8"))
            if synthetic_path.is_file() else {}
        ),
    )


def _rank_of(config: Mapping[str, Any], module_path: str, default: int) -> int:
    """PEFT's rule: the first rank_pattern key matching the end of the module path."""
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return int(value)
    return default


def _module_paths(config: Mapping[str, Any], synthetic: Mapping[str, Any]) -> list[str]:
    """Module paths (no PEFT prefix) holding LoRA pairs, as a model of the config would have."""
    layers_value = config.get("layers_to_transform")
    if isinstance(layers_value, int) and not isinstance(layers_value, bool):
        layers = [layers_value]
    elif isinstance(layers_value, list):
        layers = [int(i) for i in layers_value]
    else:
        layers = list(range(int(synthetic.get("layers", DEFAULT_LAYERS))))
    templates = synthetic.get("modules")
    if templates is None:
        targets = config.get("target_modules")
        if not isinstance(targets, list):
            targets = ["q_proj", "v_proj"]  # a config that is not PEFT's: any tensors will do
        templates = [f"model.layers.{{layer}}.{t}" for t in dict.fromkeys(targets)]
    paths = []
    for template in templates:
        if "{layer}" in template:
            paths += [template.format(layer=i) for i in layers]
        else:
            paths.append(template)
    return paths


def synthetic_tensors(case: Case) -> dict[str, np.ndarray]:
    """Tensors named and shaped as PEFT saves an adapter of this config (values are noise)."""
    rng = np.random.default_rng(len(case.name))
    hidden = int(case.synthetic.get("hidden", DEFAULT_HIDDEN))
    if "tensors" in case.synthetic:
        return {
            name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in case.synthetic["tensors"].items()
        }
    config = case.config
    declared = config.get("r")
    rank = declared if isinstance(declared, int) else 8
    tensors: dict[str, np.ndarray] = {}
    for path in _module_paths(config, case.synthetic):
        prefix = f"base_model.model.{path}"
        r = _rank_of(config, path, rank)
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.zeros((hidden, r), dtype=np.float32)
        if config.get("lora_bias") is True:
            tensors[f"{prefix}.lora_B.bias"] = np.zeros((hidden,), dtype=np.float32)
        if config.get("use_dora") is True:
            # PEFT >= 0.12 drops the ".<adapter>.weight" of lora_magnitude_vector on save.
            tensors[f"{prefix}.lora_magnitude_vector"] = np.ones((hidden,), dtype=np.float32)
    saved = case.synthetic.get("modules_to_save_tensors", config.get("modules_to_save") or [])
    for module in saved:
        # "<module>.modules_to_save.default.weight" is saved as "<module>.weight".
        tensors[f"base_model.model.{module}.weight"] = rng.standard_normal(
            (2, hidden)).astype(np.float32)
        tensors[f"base_model.model.{module}.bias"] = np.zeros((2,), dtype=np.float32)
    return tensors


def write_case_folder(case: Case, dest: Path) -> Path:
    """The adapter folder of a case: its real config and card, and synthetic weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "README.md"):
        if (CORPUS / case.name / name).is_file():
            shutil.copyfile(CORPUS / case.name / name, dest / name)
    save_file(synthetic_tensors(case), str(dest / "adapter_model.safetensors"))
    return dest


def observed(module: Module) -> dict[str, Any]:
    """The fields of a module that expected.json speaks of, in expected.json's shapes."""
    return {
        "base_model": module.base_model,
        "base_model_is_path": module.base_model_is_path,
        "rank": module.rank,
        "alpha": module.alpha,
        "task_type": module.task_type,
        "target_modules": list(module.target_modules),
        "use_dora": module.use_dora,
        "use_rslora": module.use_rslora,
        "lora_bias": module.lora_bias,
        "peft_version": module.peft_version,
        "rank_pattern": dict(module.rank_pattern),
        "alpha_pattern": dict(module.alpha_pattern),
        "modules_to_save": list(module.modules_to_save),
        "layers_to_transform": list(module.layers_to_transform),
        "license": module.license,
        "tags": list(module.tags),
    }


def composition_blocker(module: Module) -> str | None:
    """What the composer says of the module, from the options the registry recorded."""
    return module_peft_options(module).composition_blocker()


def mismatches(case: Case, module: Module) -> list[str]:
    """Where a module differs from expected.json."""
    expected = case.expected
    keys = tuple(expected)
    seen = observed(module)
    problems = []
    for key in keys:
        if key in _FIELDS:
            if seen[key] != expected[key]:
                problems.append(f"{key}: expected {expected[key]!r}, got {seen[key]!r}")
        elif key == "description_startswith":
            want, got = expected[key], module.description
            ok = got is None if want is None else bool(got and got.startswith(want))
            if not ok:
                problems.append(f"description: expected {want!r}..., got {got!r}")
        elif key == "composition_blocker":
            want, got = expected[key], composition_blocker(module)
            ok = got is None if want is None else bool(got and want in got)
            if not ok:
                problems.append(f"composition_blocker: expected {want!r}, got {got!r}")
    return problems


def refusal_problems(case: Case, message: str) -> list[str]:
    """Why a refusal message is not the one line expected.json asks for."""
    problems = []
    if "\n" in message.strip() or "Traceback" in message:
        problems.append(f"not one line: {message!r}")
    want = case.expected.get("error_contains")
    if want and want not in message:
        problems.append(f"expected {want!r} in {message!r}")
    return problems


def _main_params() -> list[Any]:
    return [pytest.param(name, id=name) for name in CASES]


# --------------------------------------------------------------------------- the corpus itself


def test_every_case_names_its_source_and_expectation() -> None:
    assert len(CASES) >= 20
    for name in CASES:
        folder = CORPUS / name
        source = json.loads((folder / "SOURCE.json").read_text(encoding="utf-8"))
        assert {"repo", "path", "commit", "licence_note"} <= set(source), name
        assert len(source["commit"]) == 40, name
        expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
        assert isinstance(expected.get("indexed"), bool), name
        unknown = set(expected) - {*_FIELDS, "indexed", "error_contains",
                                   "description_startswith", "composition_blocker"}
        assert not unknown, f"{name}: unknown keys {unknown}"
        for path in folder.iterdir():
            assert path.stat().st_size < 8 * 1024, f"{path} is over 8 kB"
            assert path.suffix in (".json", ".md"), f"{path}: configs and cards only"


# --------------------------------------------------------------------------- loradex add


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def corpus_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated registry per backend for every ``add`` of this file (a fresh one per case
    would spend the time on migrations)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('corpus-db') / 'registry.db'}"
        upgrade(url)
        yield url
        return
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable")
    url, schema = make_pg_schema_url()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_schema(schema)


def _add(case: Case, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    folder = write_case_folder(case, tmp_path / case.name)
    # No embedder: add then indexes without a card signature (one warning line). Embedding
    # each card costs 1-3 s here and is tested with the signatures, not with this corpus.
    monkeypatch.setenv(EMBEDDER_ENV, str(tmp_path / "no-embedder"))
    return run(["--db", db_url, "add", str(folder), "--id", case.repo_id, "--json"], capsys)


def _module_from_json(text: str) -> Module:
    """The Module that ``add --json`` printed (only the fields this file compares)."""
    data = json.loads(text)
    peft = data["peft"]
    return Module(
        repo_id=data["repo_id"], base_model=data["base_model"], rank=data["rank"],
        target_modules=tuple(data["target_modules"]),
        base_model_is_path=data["base_model_is_path"], alpha=data["alpha"],
        task_type=data["task_type"], license=data["license"], tags=tuple(data["tags"]),
        description=data["task"]["description"],
        use_dora=peft["use_dora"], use_rslora=peft["use_rslora"], lora_bias=peft["lora_bias"],
        peft_version=peft["version"], rank_pattern=tuple(sorted(peft["rank_pattern"].items())),
        alpha_pattern=tuple(sorted(peft["alpha_pattern"].items())),
        modules_to_save=tuple(peft["modules_to_save"]),
        layers_to_transform=tuple(peft["layers_to_transform"]),
    )


@pytest.mark.parametrize("name", _main_params())
def test_add_indexes_or_refuses_in_one_line(
    name: str, corpus_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = load_case(name)
    code, out, err = _add(case, corpus_db, tmp_path, capsys, monkeypatch)
    if case.expected["indexed"]:
        assert code == 0, err
        assert mismatches(case, _module_from_json(out)) == []
    else:
        assert code == InvalidAdapter.exit_code, (code, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert refusal_problems(case, err) == []


# --------------------------------------------------------------------------- loradex sync


@pytest.fixture(scope="module")
def corpus_hub(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> HubServer:
    """Every case uploaded to the test Hub as ``alice/corpus-<name>`` with huggingface_hub."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("corpus-upload")
    api = hub.api(hub.alice)

    def upload(name: str) -> None:
        case = load_case(name)
        folder = write_case_folder(case, root / name)
        api.create_repo(case.repo_id, exist_ok=True)
        api.upload_folder(repo_id=case.repo_id, folder_path=folder)

    with ThreadPoolExecutor(max_workers=4) as pool:  # a few at a time, as users push
        list(pool.map(upload, CASES))
    return hub


@pytest.mark.parametrize("name", _main_params())
def test_sync_reads_each_repo_as_add_does(name: str, corpus_hub: HubServer) -> None:
    """The sync's per-repo reading (metadata over HTTP) judges each case as ``add`` does."""
    from hub_client import HubClient
    from hub_client.sync import module_from_hub

    case = load_case(name)
    client = HubClient(corpus_hub.url)
    info = client.model_info(case.repo_id)
    if case.expected["indexed"]:
        module = module_from_hub(client, info)
        assert module.revision == info.sha
        assert mismatches(case, module) == []
        return
    with pytest.raises(InvalidAdapter) as refused:
        module_from_hub(client, info)
    assert refusal_problems(case, str(refused.value)) == []
    assert str(refused.value).startswith(case.repo_id)


def test_sync_indexes_each_case_or_skips_it_with_the_reason(corpus_hub: HubServer) -> None:
    """``loradex sync`` over the whole corpus: each repo indexed with the fields ``add`` gives,
    or recorded as skipped with the one-line reason. The sync lists adapters by the Hub's
    ``peft`` tag, which the server infers from an adapter_config.json as the Hub does.
    """
    from hub_client import HubClient, SyncOptions, sync_hub
    from registry.db import make_engine
    from registry.store import RegistryStore

    engine = make_engine(corpus_hub.db_url)
    try:
        store = RegistryStore(engine)
        client = HubClient(corpus_hub.url)
        report = sync_hub(client, store, SyncOptions(search=REPO_PREFIX, progress=False))
        states = {s.repo_id: s for s in store.sync_states(client.endpoint)}
        problems = []
        for name in CASES:
            case = load_case(name)
            state = states.get(case.repo_id)
            if state is None:
                if _card_library(name) in (None, "peft"):  # another library: not listed
                    problems.append(f"{name}: not synced")
            elif case.expected["indexed"]:
                if state.status != "ok":
                    problems.append(f"{name}: {state.status} {state.error}")
                    continue
                module = store.get_module(case.repo_id, source=client.endpoint)
                problems += [f"{name}: {p}" for p in mismatches(case, module)]
            elif state.status != "skipped" or not state.error:
                problems.append(f"{name}: {state.status}, expected skipped with a reason")
            else:
                problems += [f"{name}: {p}" for p in
                             refusal_problems(case, state.error)]
        assert problems == []
        listed = [name for name in CASES if _card_library(name) in (None, "peft")]
        refused = sum(not load_case(name).expected["indexed"] for name in listed)
        assert (report.new, report.failed) == (len(listed) - refused, refused)
    finally:
        engine.dispose()


def _card_library(name: str) -> str | None:
    from registry.cards import parse_card

    card = CORPUS / name / "README.md"
    front = parse_card(card.read_text(encoding="utf-8"))[0] if card.is_file() else {}
    library = front.get("library_name")
    return library if isinstance(library, str) else None


def test_sync_listing_finds_every_repo_that_holds_an_adapter_config(
    corpus_hub: HubServer,
) -> None:
    """As on the Hub, an adapter_config.json makes a repo ``peft`` unless its card names
    another library (``library_name: tunix``)."""
    listed = {m.id for m in corpus_hub.api().list_models(filter="peft", search=REPO_PREFIX)}
    wanted = {name for name in CASES if _card_library(name) in (None, "peft")}
    assert 0 < len(CASES) - len(wanted) < 3  # the corpus holds a card of another library
    assert sorted(n for n in wanted if load_case(n).repo_id not in listed) == []
    assert sorted(n for n in CASES if n not in wanted and load_case(n).repo_id in listed) == []
