"""The starter library: one LoRA module per upstream task, trained with the shared trainer.

:func:`build_library` is resumable (a task whose module folder exists is skipped; folders are
written atomically, so an existing folder is a finished one) and records what each module
learned in ``library/manifest.json``. The manifest and ``library/README.md`` are rewritten after
every module, so stopping at any point leaves a consistent library.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from composer.data import Example, load_examples, write_examples
from composer.metrics import majority
from composer.models import DEFAULT_BASE_MODEL, LoadedModel
from composer.train import TaskInfo, TrainConfig, train_lora
from loradex.errors import InvalidDataFile, ModuleNotFound
from loradex.files import atomic_write

if TYPE_CHECKING:
    from registry.embedders import Embedder

# Hand-assigned categories of the upstream BIG-bench tasks (used for search and study reports).
TASK_CATEGORIES: dict[str, str] = {
    "abstract_narrative_understanding__4_distractors": "reading-comprehension",
    "anachronisms": "commonsense",
    "auto_categorization": "knowledge",
    "bbq_lite_json__gender_identity_disambig": "social-bias",
    "bbq_lite_json__race_ethnicity_disambig": "social-bias",
    "contextual_parametric_knowledge_conflicts": "reading-comprehension",
    "cryptonite": "wordplay",
    "discourse_marker_prediction": "discourse",
    "elementary_math_qa__question_only": "math",
    "epistemic_reasoning": "logical-reasoning",
    "fact_checker__covid19_scientific": "fact-checking",
    "fact_checker__fever": "fact-checking",
    "fact_checker__politifact": "fact-checking",
    "fantasy_reasoning": "commonsense",
    "gem__common_gen": "generation",
    "gem__e2e_nlg": "generation",
    "goal_step_wikihow__goal_inference": "procedural",
    "goal_step_wikihow__step_inference": "procedural",
    "goal_step_wikihow__step_ordering": "procedural",
    "implicatures": "pragmatics",
    "intent_recognition": "dialogue",
    "language_identification": "multilingual",
    "linguistic_mappings__past_tense": "grammar",
    "linguistic_mappings__plural": "grammar",
    "linguistic_mappings__pronoun_replacement": "grammar",
    "linguistic_mappings__question_formation": "grammar",
    "linguistic_mappings__sentence_negation": "grammar",
    "metaphor_boolean": "figurative-language",
    "misconceptions": "truthfulness",
    "movie_dialog_same_or_different": "dialogue",
    "periodic_elements__subtask_0": "knowledge",
    "periodic_elements__subtask_1": "knowledge",
    "physics": "science",
    "play_dialog_same_or_different": "dialogue",
    "presuppositions_as_nli": "nli",
    "qa_wikidata": "knowledge",
    "semantic_parsing_spider": "code",
    "social_iqa": "commonsense",
    "social_support": "social",
    "strategyqa": "multi-step-reasoning",
    "tense": "grammar",
    "unit_interpretation": "math",
    "vitaminc_fact_verification": "fact-checking",
}


@dataclass(frozen=True)
class LibrarySpec:
    """How the starter library is built; defaults are the settings the shipped library used."""

    data_dir: Path = field(metadata={"help": "folder of upstream task JSONL files"})
    out_dir: Path = field(metadata={"help": "library folder (one module folder per task)"})
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "task names; empty = all"})
    test_size: int = field(default=50, metadata={"help": "held-out examples per task"})
    max_train: int = field(default=1000, metadata={"help": "at most this many training examples"})
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            rank=16, steps=30, lr=1e-3, batch_size=8, max_length=256, save_dtype="float16"
        ),
        metadata={"help": "training settings of every module"},
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the train/test split"})
    namespace: str = field(default="loradex", metadata={"help": "repo namespace in cards"})


def task_files(data_dir: Path, tasks: Sequence[str] = ()) -> list[Path]:
    """The task files to build, cheapest first (shorter inputs train faster), or as named."""
    if not data_dir.is_dir():
        raise InvalidDataFile(f"{data_dir}: no such folder of task files")
    files = sorted(data_dir.glob("*.jsonl"))
    if tasks:
        by_name = {f.stem: f for f in files}
        missing = [t for t in tasks if t not in by_name]
        if missing:
            raise InvalidDataFile(f"{data_dir}: no task file for {', '.join(missing)}")
        return [by_name[t] for t in tasks]
    if not files:
        raise InvalidDataFile(f"{data_dir}: no *.jsonl task files")

    def mean_chars(path: Path) -> float:
        lines = path.read_text(encoding="utf-8").splitlines()
        return sum(len(line) for line in lines) / max(1, len(lines))

    return sorted(files, key=mean_chars)


def split_task(
    examples: Sequence[Example], test_size: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded train/test split: ``test_size`` examples held out (at most a fifth of the task)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = min(test_size, len(examples) // 5)
    test = [examples[i] for i in sorted(order[:n_test])]
    train = [examples[i] for i in sorted(order[n_test:])]
    return train, test


def _write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """The library manifest (``{"modules": {task: record}}``), empty when there is none yet."""
    path = out_dir / "manifest.json"
    if not path.is_file():
        return {"modules": {}}
    return dict(json.loads(path.read_text()))


def _update_manifest(out_dir: Path, settings: dict[str, Any], task: str | None = None,
                     record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge one module's record into ``manifest.json`` under a file lock.

    Several builders may work on disjoint task lists of one library at once (one per core);
    the lock and the re-read make their manifest updates add up instead of overwriting.
    """
    with FileLock(out_dir / ".manifest.lock"):
        manifest = load_manifest(out_dir)
        manifest["settings"] = settings
        if task is not None and record is not None:
            manifest["modules"][task] = record
        _write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def library_settings(loaded: LoadedModel, spec: LibrarySpec) -> dict[str, Any]:
    """The manifest's ``settings``: how every module of the library is built."""
    settings: dict[str, Any] = {
        "base_model": loaded.name,
        "test_size": spec.test_size,
        "max_train": spec.max_train,
        "split_seed": spec.split_seed,
        "train": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec.train).items()
        },
    }
    if loaded.name != DEFAULT_BASE_MODEL:  # the starter library's manifest stays as it was
        settings["base_source"] = Path(loaded.gguf_file or loaded.source).name
        settings["license"] = loaded.module_license
        settings["chat_template"] = bool(getattr(loaded.tokenizer, "chat_template", None))
    return settings


def train_module(
    loaded: LoadedModel, spec: LibrarySpec, task: str, examples: Sequence[Example],
    folder: Path, *, embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Train the module of one task into ``folder`` (on the training part of the task's split,
    at most ``max_train`` examples); return its manifest record."""
    from tqdm.auto import tqdm

    train, test = split_task(examples, spec.test_size, spec.split_seed)
    train = train[: spec.max_train]
    # The data are Apache-2.0; a module also carries its base model's terms when it has some.
    info = TaskInfo(
        name=task,
        category=TASK_CATEGORIES.get(task),
        dataset=f"bigbench/{task.replace('__', '/')}",
        license=loaded.module_license,
        description=f"LoRA module for the BIG-bench task {task}, trained by loradex.",
        tags=("bigbench", "loradex-starter-library"),
    )
    started = time.perf_counter()

    def log_step(step: int, loss: float) -> None:
        if (step + 1) % 10 == 0:
            rate = (time.perf_counter() - started) / (step + 1)
            tqdm.write(f"{task}: step {step + 1} loss {loss:.3f} ({rate:.2f} s/step)")

    result = train_lora(loaded, train, folder, spec.train, task=info, heldout=test,
                        progress=False, on_step=log_step, embedder=embedder)
    return {
        "task": task,
        "category": info.category,
        "n_train": len(train),
        "n_test": len(test),
        "multiple_choice": test[0].choices is not None if test else False,
        "steps": result.steps,
        "lr": spec.train.lr,
        "seconds": round(result.seconds, 1),
        "final_train_loss": result.front_matter["loradex"]["training"]["final_train_loss"],
        "heldout_loss_base": result.heldout_loss_before,
        "heldout_loss": result.heldout_loss_after,
        "size_bytes": (folder / "adapter_model.safetensors").stat().st_size,
    }


def trained_line(record: dict[str, Any]) -> str:
    """What the build prints when a module is done."""
    return (f"{record['task']}: loss {record['heldout_loss_base']:.3f} -> "
            f"{record['heldout_loss']:.3f} in {record['seconds']:.0f} s")


def record_module(out_dir: Path, settings: dict[str, Any], task: str,
                  record: dict[str, Any]) -> dict[str, Any]:
    """Add one built module's record to the manifest (under its lock); the updated manifest."""
    return _update_manifest(out_dir, settings, task, record)


def build_library(
    loaded: LoadedModel, spec: LibrarySpec, *, progress: bool = True,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Train every missing module of the library in this process, on ``loaded`` (each with the
    data signature of its training split when given an ``embedder``); returns the updated
    manifest. The units are those of a ``--ray`` build (:mod:`composer.scaleout.library_jobs`).
    """
    from composer.scaleout.library_jobs import LibraryBuildJob, LibraryTrainer
    from composer.scaleout.units import LocalRunner, run_units

    spec.out_dir.mkdir(parents=True, exist_ok=True)
    _update_manifest(spec.out_dir, library_settings(loaded, spec))
    job = LibraryBuildJob(spec, model=None)
    run_units(job, LocalRunner(LibraryTrainer(loaded, spec, embedder)), progress=progress).check()
    return load_manifest(spec.out_dir)


def test_split(spec: LibrarySpec, task: str) -> list[Example]:
    """The held-out examples of ``task`` exactly as the build split them."""
    examples = load_examples(spec.data_dir / f"{task}.jsonl")
    return split_task(examples, spec.test_size, spec.split_seed)[1]


def built_spec(data_dir: Path, out_dir: Path) -> LibrarySpec:
    """The spec of a built library as far as its splits go (test size and split seed from
    its manifest), to find the held-out examples it was scored on."""
    settings = load_manifest(out_dir).get("settings", {})
    return LibrarySpec(
        data_dir=data_dir,
        out_dir=out_dir,
        test_size=int(settings.get("test_size", 50)),
        split_seed=int(settings.get("split_seed", 0)),
    )


def write_heldout(spec: LibrarySpec, dest: Path, tasks: Sequence[str] = ()) -> list[Path]:
    """Write the held-out split of every built module's task (or of ``tasks``) to
    ``dest/<task>.jsonl``: examples no module of the library was trained on, for scoring or
    composing on the library's own tasks without leakage."""
    built = sorted(load_manifest(spec.out_dir)["modules"])
    if not built:
        raise ModuleNotFound(f"{spec.out_dir}: no built modules in manifest.json")
    missing = [t for t in tasks if t not in built]
    if missing:
        raise ModuleNotFound(f"{spec.out_dir}: no built module for {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks or built:
        path = dest / f"{task}.jsonl"
        write_examples(path, test_split(spec, task))
        written.append(path)
    return written


def evaluate_module(loaded: LoadedModel, folder: Path, test: Sequence[Example]
                    ) -> dict[str, Any]:
    """Score the module in ``folder`` and the base model alone on ``test``: the fields the
    manifest record gets (multiple-choice accuracy for tasks with choices, else exact match)."""
    from peft import PeftModel

    from composer.metrics import EvalConfig, evaluate_examples

    multiple_choice = test[0].choices is not None
    config = EvalConfig(generate=not multiple_choice)
    metric = "choice_accuracy" if multiple_choice else "exact_match"
    base = evaluate_examples(loaded, test, config)
    peft_model = PeftModel.from_pretrained(loaded.model, str(folder))
    try:
        tuned = evaluate_examples(loaded, test, config)
    finally:
        loaded.model = peft_model.unload()
        loaded.model.eval()
    return {
        "metric": metric,
        "accuracy_base": getattr(base, metric),
        "accuracy": getattr(tuned, metric),
        "majority_rate": majority_rate(test),
    }


def record_scores(out_dir: Path, task: str, scores: dict[str, Any]) -> str:
    """Add one module's scores to its manifest record; the line the evaluation prints."""
    with FileLock(out_dir / ".manifest.lock"):
        manifest = load_manifest(out_dir)
        manifest["modules"][task] = {**manifest["modules"][task], **scores}
        _write_json_atomic(out_dir / "manifest.json", manifest)
    return (f"{task}: {scores['metric']} {scores['accuracy_base']:.2f} -> "
            f"{scores['accuracy']:.2f}")


def evaluate_library(
    loaded: LoadedModel, spec: LibrarySpec, *, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Score every built module on its task's held-out split, beside the base model alone,
    in this process (the units of a ``--ray`` evaluation). Results go into the manifest."""
    from composer.scaleout.library_jobs import LibraryEvaluateJob, LibraryEvaluator
    from composer.scaleout.units import LocalRunner, run_units

    job = LibraryEvaluateJob(spec, model=None, force=force)
    run_units(job, LocalRunner(LibraryEvaluator(loaded)), progress=progress).check()
    return load_manifest(spec.out_dir)


def majority_rate(examples: Sequence[Example]) -> float:
    """Share of the most frequent target: what always answering one label scores."""
    return majority(e.target for e in examples)[1]


def learned(record: dict[str, Any]) -> str:
    """Whether a module measurably learned its task, judged on its held-out split.

    "yes" when the score rose above the base model's by more than two standard errors of the
    difference (binomial, n = the test size) and, for a multiple-choice task, also above the
    majority rate (always answering the commonest label) by as much; "label prior" when it beat
    the base model but not the majority rate (it learned which label is common, not the task);
    "loss only" when just the held-out loss fell; else "no".
    """
    import math

    n = max(1, int(record.get("n_test", 0)))

    def above(score: float, reference: float) -> bool:
        se = math.sqrt(max(score * (1 - score) + reference * (1 - reference), 1e-9) / n)
        return score - reference > 2 * se

    acc, base = record.get("accuracy"), record.get("accuracy_base")
    if acc is not None and base is not None and above(acc, base):
        majority = record.get("majority_rate") if record.get("multiple_choice") else None
        return "yes" if majority is None or above(acc, majority) else "label prior"
    loss, loss_base = record.get("heldout_loss"), record.get("heldout_loss_base")
    if loss is not None and loss_base is not None and loss < loss_base:
        return "loss only"
    return "no"


def render_library_readme(manifest: dict[str, Any]) -> str:
    """``library/README.md``: how the library was built and what each module learned."""
    settings = manifest.get("settings", {})
    train = settings.get("train", {})
    modules = manifest.get("modules", {})
    total = sum(int(m.get("size_bytes", 0)) for m in modules.values())
    base = settings.get("base_model", "?")
    source = settings.get("base_source")
    starter = base == DEFAULT_BASE_MODEL and not source
    license_ = settings.get("license", "apache-2.0")
    template = "chat template" if settings.get("chat_template", True) else (
        "plain prompts (the base model has no chat template)")
    base_option = " --base-model BASE" if source else ""
    out = "library" if starter else "LIBRARY"
    lines = [
        "# The loradex starter library" if starter else f"# A loradex library on `{base}`",
        "",
        f"{len(modules)} LoRA modules, one per upstream BIG-bench task in"
        f" `../shared/data/upstream/`, trained on `{base}`"
        + (" (the embedded SmolLM2-135M-Instruct GGUF)" if starter
           else f" (from `{source}`)" if source else "")
        + " with `loradex library build`."
        " This file and `manifest.json` are written by the build; the build script is the"
        " source of truth.",
        "",
        f"Every module: rank {train.get('rank')}, alpha {2 * int(train.get('rank', 0) or 0)},"
        f" targets {', '.join(train.get('targets', []))}, {train.get('batch_size')} examples per"
        f" step, learning rate of the module's row, {template}, max {train.get('max_length')}"
        f" tokens, seed {train.get('seed')}, stored as float16 safetensors"
        f" ({total / 1e6:.1f} MB in all, {total / max(1, len(modules)) / 1e6:.2f} MB each).",
        f"Each task's examples are split with `random.Random({settings.get('split_seed')})`:"
        f" {settings.get('test_size')} held out (at most a fifth of the task), never trained on;"
        " the scores below are on those.",
        "",
        "Rebuild (resumable; finished modules are skipped), then score:",
        "",
        "```console",
        f"loradex library build --data-dir ../shared/data/upstream --out {out}{base_option}",
        f"loradex library evaluate --data-dir ../shared/data/upstream --out {out}{base_option}",
        "```",
        "",
        *([f"where BASE is the path of `{source}` and LIBRARY this folder.", ""] if source
          else []),
        "Metric: multiple-choice accuracy (log-likelihood of each choice) for tasks with"
        " choices, exact match of greedy generation for the others. *Learned* is `yes` when the"
        " score rose by more than two standard errors at this test size above the base model"
        " and, with choices, above the majority rate too; `label prior` when it beat the base"
        " model but not the majority rate (always answering the commonest label); `loss only`"
        " when only the held-out loss fell.",
        "",
        "| task | category | metric | n test | majority | base | module | held-out loss"
        " base -> module | steps | learned |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---|",
    ]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}"

    for task, rec in sorted(modules.items()):
        metric = {"choice_accuracy": "MC acc", "exact_match": "EM"}.get(rec.get("metric"), "-")
        lines.append(
            f"| {task} | {rec.get('category') or '-'} | {metric} | {rec.get('n_test')} |"
            f" {fmt(rec.get('majority_rate')) if rec.get('multiple_choice') else '-'} |"
            f" {fmt(rec.get('accuracy_base'))} | {fmt(rec.get('accuracy'))} |"
            f" {fmt(rec.get('heldout_loss_base'))} -> {fmt(rec.get('heldout_loss'))} |"
            f" {rec.get('steps')} | {learned(rec) if 'accuracy' in rec else 'not scored yet'} |"
        )
    lines += [
        "",
        "Data licence: the upstream tasks come from the `bigbench==1.0.0` source distribution"
        " (Apache-2.0; some tasks derive from earlier datasets whose terms also apply), see"
        " `../shared/data/README.md`. "
        + (LICENSE_NOTES.get(license_, f"The modules are released under `{license_}`.")),
        "",
    ]
    return "\n".join(lines)


# What a library README says of its modules' licence (a Hub licence id -> a sentence).
LICENSE_NOTES = {
    "apache-2.0": "The modules are released under Apache-2.0.",
    "gemma": "The modules are derivatives of a Gemma model: Gemma is provided under and subject"
             " to the Gemma Terms of Use found at ai.google.dev/gemma/terms, and so are they,"
             " including its use restrictions.",
}


def write_library_readme(out_dir: Path) -> Path:
    """Regenerate ``README.md`` of the library from its manifest."""
    path = out_dir / "README.md"
    text = render_library_readme(load_manifest(out_dir))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
