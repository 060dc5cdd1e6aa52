"""The BIG-Bench Hard study: does composing library modules teach a task, or only its format?

For every task (a JSONL file in ``--tasks-dir``) and seed:

- 5 few-shot examples are drawn with the seed; every other example is the test split
  (``--test-limit N`` keeps the first N of them, in file order);
- ``k`` candidates are drawn with the seed from the library (the pool of modules is frozen in
  the results file on the first run);
- systems, all scored on the same test examples (paired): the majority label of the test split
  (a constant answer), zero-shot, 5-shot in-context (the few-shot examples as demonstrations),
  the best single candidate *chosen by few-shot loss* (``--oracle`` adds the best single
  candidate chosen on the test split itself, labelled as such), the uniform average of the k
  candidates (weights 1/k, lorahub method), and loradex compose (CMA-ES) for every method and
  objective asked for;
- metrics: exact match of the greedy answer, multiple-choice accuracy (the choice with the
  highest log-likelihood), the distribution of the picked labels, and paired tests (exact
  McNemar and a paired bootstrap) of every system against zero-shot and the majority label.

``--own-module include`` runs the study on tasks that have a library module of their own (the
held-out splits that ``loradex library heldout`` writes, never trained on): that module is in
every seed's candidates, the row "own module alone" scores it, and each task's table says how
often the single row picked it and what share of each compose row's weight it got, so the
study shows whether composition finds a skill that is in the library. ``exclude`` keeps it out
(transfer from the other modules only).

Prompts over ``--max-length`` tokens (1,024) lose their beginning, as in ``loradex eval``;
each row records how many did (5-shot prompts can be far longer than the question alone).

Results are written after every system to ``--out`` (atomically); a run that is stopped can be
resumed and finished cells are not recomputed. ``--ray [ADDRESS]`` runs the (task, seed) cells
on a Ray cluster instead (every worker holds the base model; this process writes ``--out`` as
each cell finishes): several machines without ``--first-seed`` and ``--merge``.
``--markdown`` prints the tables.
``--extend-from OLD`` takes a study run with a smaller ``--test-limit`` to a larger test split
(or the whole of it): the seeds' few-shot examples and candidates are the same and the first
test examples too, so each recorded row is rebuilt from what it recorded (weights, module) and
scores only the new examples; no search runs again.
``--baselines-from OTHER`` copies the zero-shot and in-context rows from another study of the
same splits (same tasks, shots, test limit, prompt settings and dtype; other candidates, other
selection): those rows do not depend on the candidates, and they are the slowest of a cell.
Each copied row names its file; a cell whose split differs there is computed as usual.

Run:  .venv/bin/python benchmarks/bbh_study.py --tasks navigate --seeds 2 --markdown
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.study.inputs import task_files
from benchmarks.study.report import report
from benchmarks.study.runner import Study
from benchmarks.study.settings import (
    DEFAULT_MAX_LENGTH,
    OWN_MODULE_MODES,
    ComposeSpec,
    StudySettings,
)
from composer.selection import DEFAULT_SCREEN_POOL, SELECT_METHODS, check_select
from loradex.errors import ConfigError, ModuleNotFound

ROOT = Path(__file__).resolve().parents[2]  # the repository: defaults are found from it


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks-dir", type=Path, default=ROOT.parent / "shared" / "data" / "bbh",
                   help="folder of JSONL tasks (input, target, optional choices)")
    p.add_argument("--library", type=Path, default=ROOT / "library",
                   help="folder of candidate adapter folders")
    p.add_argument("--base-model", default=None,
                   help="base model folder/GGUF (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run only seeds FIRST..N-1 (another process can take the others; "
                        "join them with --merge)")
    p.add_argument("--k", type=int, default=20, help="candidates per seed")
    p.add_argument("--shots", type=int, default=5, help="few-shot examples per task")
    p.add_argument("--budget", type=int, default=40, help="CMA-ES evaluations per compose")
    p.add_argument("--tasks", default="", help="comma-separated subset of task names")
    p.add_argument("--test-limit", type=int, default=None,
                   help="keep the first N test examples (default: every non-few-shot example)")
    p.add_argument("--methods", default="lorahub,mixed-rank", help="composition methods")
    p.add_argument("--objectives", default=None,
                   help="search objectives (default: every one the composer offers of lm, choice)")
    p.add_argument("--compose", default=None,
                   help="compose rows as METHOD/OBJECTIVE[/gN][/rN][/s][/cv] (N layer groups, "
                        "N restarts, s: start from the best single candidate, k + 1 evaluations "
                        "of the budget, cv: the cross-validation guard), comma-separated; "
                        "default: every --methods x --objectives pair")
    p.add_argument("--hydra-heads", type=int, default=0,
                   help="also build a Hydra module with this many heads from the weights of "
                        "the first lorahub compose row without layer groups (router fitted on "
                        "the few-shot examples)")
    p.add_argument("--hydra-module", type=Path, action="append", default=[],
                   help="also score this ready Hydra module folder (repeatable)")
    p.add_argument("--oracle", action="store_true",
                   help="also report the best single module chosen on the test split (k evals)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--own-module", default="any", choices=OWN_MODULE_MODES,
                   help="the library module named like the task (trained on it, e.g. on the "
                        "held-out splits of `loradex library heldout`): any = drawn like the "
                        "others, include = in every seed's candidates (adds the row 'own module "
                        "alone'), exclude = never a candidate")
    p.add_argument("--select", default="random", choices=SELECT_METHODS,
                   help="how each seed's --k candidates are chosen: at random (the paper), the "
                        "best by task signature (retrieve), or the best --screen-pool by "
                        "signature screened alone on the few-shot loss (retrieve+screen)")
    p.add_argument("--screen-pool", type=int, default=DEFAULT_SCREEN_POOL,
                   help="modules retrieved before the screen keeps --k (retrieve+screen)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="longest prompt in tokens; longer ones lose their beginning (counted)")
    p.add_argument("--out", type=Path, default=Path("bbh_study_results.json"))
    p.add_argument("--merge", type=Path, action="append", default=[],
                   help="first copy into --out the rows this results file (same settings) has "
                        "and --out lacks, e.g. from a second process (repeatable)")
    p.add_argument("--extend-from", type=Path, default=None,
                   help="a results file of the same settings with a smaller --test-limit: its "
                        "rows are extended to this run's larger test split by scoring only the "
                        "new examples with the systems it recorded (no search runs again)")
    p.add_argument("--baselines-from", type=Path, action="append", default=[],
                   help="copy the zero-shot and in-context rows from this results file of the "
                        "same splits (other candidates or selection), checked per cell "
                        "(repeatable)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run the (task, seed) cells on a Ray cluster (ADDRESS, or alone for "
                        "RAY_ADDRESS or a Ray on this machine): every worker holds the base "
                        "model, this process writes --out as cells finish")
    p.add_argument("--workers", type=int, default=None,
                   help="with --ray: at most this many workers (default: as many as fit)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="with --ray: CPU cores each worker asks for")
    p.add_argument("--shared-library", action="store_true",
                   help="with --ray: workers read --library from the same path (a shared file "
                        "system) instead of receiving its modules through Ray's object store")
    p.add_argument("--markdown", action="store_true", help="print the tables")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: print the tables of what --out holds so far")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Study:
    """Run (or resume) the study; return it (the tests read ``computed``)."""
    from composer.methods import METHODS
    from composer.objectives import OBJECTIVES

    args = parse_args(argv)
    for name, value in (("--seeds", args.seeds), ("--k", args.k), ("--shots", args.shots),
                        ("--budget", args.budget), ("--max-length", args.max_length)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not 0 <= args.first_seed < args.seeds:
        raise ConfigError(f"--first-seed must be in 0..{args.seeds - 1} (--seeds {args.seeds}), "
                          f"got {args.first_seed}")
    if args.test_limit is not None and args.test_limit < 1:
        raise ConfigError(f"--test-limit must be >= 1, got {args.test_limit}")
    if args.hydra_heads < 0:
        raise ConfigError(f"--hydra-heads must be >= 0, got {args.hydra_heads}")
    for folder in args.hydra_module:
        if not (folder / "hydra_config.json").is_file():
            raise ModuleNotFound(f"--hydra-module {folder}: no hydra_config.json there")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods {','.join(unknown)}: known: {', '.join(METHODS)}")
    if args.objectives is None:
        objectives = [o for o in ("lm", "choice") if o in OBJECTIVES]
    else:
        objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown:
            raise ConfigError(f"--objectives {','.join(unknown)}: known: {', '.join(OBJECTIVES)}")
    if args.compose:
        compose = [ComposeSpec.parse(c) for c in args.compose.split(",") if c.strip()]
    else:
        compose = [ComposeSpec(m, o) for m in methods for o in objectives]
    tasks = task_files(args.tasks_dir, [t.strip() for t in args.tasks.split(",") if t.strip()])
    settings = StudySettings(
        tasks_dir=str(args.tasks_dir.resolve()),
        library=str(args.library.resolve()),
        base_model=args.base_model,
        k=args.k,
        shots=args.shots,
        budget=args.budget,
        test_limit=args.test_limit,
        use_chat_template=not args.no_chat_template,
        max_length=args.max_length,
        dtype=args.dtype,
        own_module=args.own_module,
        select=args.select,
        screen_pool=args.screen_pool,
    )
    check_select(args.select, args.k, args.screen_pool)
    if args.select != "random" and args.own_module == "include":
        raise ConfigError("--own-module include forces the own module in; it only goes "
                          "with --select random")
    if args.report_only and not args.out.is_file():
        raise ConfigError(f"--report-only: no results file {args.out}")
    study = Study(settings, args.out, compose=compose, oracle=args.oracle,
                  hydra_heads=args.hydra_heads, hydra_modules=args.hydra_module,
                  quiet=args.quiet, extend_from=args.extend_from)
    for other in args.merge:
        taken = study.merge(other)
        study._say(f"merged {taken} row(s) from {other}")
    seeds = range(args.first_seed, args.seeds)
    for other in [] if args.report_only else args.baselines_from:
        taken, mismatched = study.adopt_baselines(other, tasks, seeds)
        study._say(f"copied {taken} zero-shot/in-context row(s) from {other}"
                   + (f"; {mismatched} cell(s) there have another split" if mismatched else ""))
    if args.report_only:
        print(report(study.results, study.systems()))
        return study
    try:
        if args.ray is not None:
            run_on_ray(study, tasks, seeds, args)
        else:
            study.run(tasks, seeds)
    except KeyboardInterrupt:
        study.save()
        print(f"stopped; finished cells are in {args.out}, run again to resume",
              file=sys.stderr)
        raise
    if args.markdown:
        print(report(study.results, study.systems()))
    return study


def run_on_ray(study: Study, tasks: dict[str, Path], seeds: Sequence[int],
               args: argparse.Namespace) -> None:
    """Every missing cell as a unit on the Ray cluster of ``--ray``; failed cells are reported
    (the others recorded) and raise at the end."""
    from benchmarks.study.units import StudyJob
    from composer.scaleout.ray_runner import RayRunner
    from composer.scaleout.units import Resources, run_units

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
    job = StudyJob(study, tasks, seeds, resources=Resources(cpus=args.cpus_per_worker),
                   shared_library=args.shared_library)
    runner = RayRunner(None if args.ray == "auto" else args.ray, max_workers=args.workers,
                       python_path=[str(ROOT)])  # workers import benchmarks.study from here
    run_units(job, runner, progress=not args.quiet).check()
