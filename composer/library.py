"""The starter library: one LoRA module per upstream task, trained with the shared trainer.

:func:`build_library` is resumable (a task whose module folder exists is skipped; folders are
written atomically, so an existing folder is a finished one) and records what each module
learned in ``library/manifest.json``. The manifest and ``library/README.md`` are rewritten after
every module, so stopping at any point leaves a consistent library.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from composer.data import Example, load_examples
from composer.models import LoadedModel
from composer.train import TaskInfo, TrainConfig, train_lora
from loradex.errors import InvalidDataFile

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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
    import fcntl

    with open(out_dir / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(out_dir)
        manifest["settings"] = settings
        if task is not None and record is not None:
            manifest["modules"][task] = record
        _write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def build_library(
    loaded: LoadedModel, spec: LibrarySpec, *, progress: bool = True
) -> dict[str, Any]:
    """Train every missing module of the library; returns the updated manifest."""
    from tqdm.auto import tqdm

    spec.out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "base_model": loaded.name,
        "test_size": spec.test_size,
        "max_train": spec.max_train,
        "split_seed": spec.split_seed,
        "train": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec.train).items()
        },
    }
    manifest = _update_manifest(spec.out_dir, settings)
    files = task_files(spec.data_dir, spec.tasks)
    bar = tqdm(files, desc="library", unit="module", disable=not progress)
    for path in bar:
        task = path.stem
        bar.set_postfix(task=task[:30])
        folder = spec.out_dir / task
        if (folder / "adapter_model.safetensors").is_file():
            continue
        examples = load_examples(path)
        train, test = split_task(examples, spec.test_size, spec.split_seed)
        train = train[: spec.max_train]
        info = TaskInfo(
            name=task,
            category=TASK_CATEGORIES.get(task),
            dataset=f"bigbench/{task.replace('__', '/')}",
            license="apache-2.0",
            description=f"LoRA module for the BIG-bench task {task}, trained by loradex.",
            tags=("bigbench", "loradex-starter-library"),
        )
        started = time.perf_counter()

        def log_step(step: int, loss: float, task: str = task, started: float = started) -> None:
            if (step + 1) % 10 == 0:
                rate = (time.perf_counter() - started) / (step + 1)
                tqdm.write(f"{task}: step {step + 1} loss {loss:.3f} ({rate:.2f} s/step)")

        result = train_lora(loaded, train, folder, spec.train, task=info, heldout=test,
                            progress=False, on_step=log_step)
        record = {
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
        manifest = _update_manifest(spec.out_dir, settings, task, record)
        tqdm.write(
            f"{task}: loss {result.heldout_loss_before:.3f} -> {result.heldout_loss_after:.3f}"
            f" in {result.seconds:.0f} s"
        )
    return manifest


def test_split(spec: LibrarySpec, task: str) -> list[Example]:
    """The held-out examples of ``task`` exactly as the build split them."""
    examples = load_examples(spec.data_dir / f"{task}.jsonl")
    return split_task(examples, spec.test_size, spec.split_seed)[1]

