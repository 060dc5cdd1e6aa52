"""``loradex train``, ``loradex compose`` and ``loradex eval``.

Nothing heavy is imported at module level: torch, transformers and peft load inside the
command functions, so ``loradex --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from loradex.errors import ConfigError
from loradex.settings import Settings

_model_options = [
    click.option("--base-model", default=None, metavar="ID|DIR|FILE.gguf",
                 help="Base model: local folder, cached Hub id or GGUF file "
                      "(default: the embedded SmolLM2-135M-Instruct GGUF)."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda or cuda:N."),
    click.option("--dtype", default="auto", show_default=True,
                 type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                 help="Compute dtype (auto: float32 on CPU, bfloat16 on CUDA)."),
    click.option("--no-chat-template", is_flag=True,
                 help="Render prompts as plain text even if the tokenizer has a chat template."),
]


def model_options(func: Any) -> Any:
    """Attach the options shared by every command that loads a base model."""
    for option in reversed(_model_options):
        func = option(func)
    return func


def _split_csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parse_heads(value: str) -> int | str:
    """``--heads``: ``auto`` or a positive integer, else a ConfigError naming the option."""
    if value == "auto":
        return "auto"
    try:
        heads = int(value)
    except ValueError:
        heads = 0
    if heads < 1:
        raise ConfigError(f"--heads must be 'auto' or a positive integer, got {value!r}")
    return heads


def _load_model(base_model: str | None, device: str, dtype: str) -> Any:
    from composer.models import ModelSpec, load_base_model

    click.echo(f"loading base model {base_model or '(embedded SmolLM2-135M-Instruct GGUF)'} ...",
               err=True)
    return load_base_model(ModelSpec(name_or_path=base_model, device=device, dtype=dtype))


def _index_folder(settings: Settings, folder: Path) -> str | None:
    """Index an adapter folder in the registry (lineage comes from its card); return its id."""
    from composer.registry_link import index_adapter_folder

    return index_adapter_folder(settings.db_url, folder)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("datas", nargs=-1, required=True, metavar="DATA [DATA2 ...]",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--method", default="lora", show_default=True,
              type=click.Choice(["lora", "hydra"]),
              help="lora: one LoRA on one DATA file. hydra: shared A, N heads and a router, "
                   "trained on the mixture of all DATA files.")
@click.option("--heads", default="auto", show_default=True, metavar="auto|N",
              help="--method hydra: number of heads, or auto (k-means elbow over the inputs).")
@click.option("--max-heads", default=8, show_default=True,
              help="--method hydra: largest N tried by --heads auto.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the PEFT adapter into.")
@model_options
@click.option("--rank", default=16, show_default=True, help="LoRA rank.")
@click.option("--alpha", default=None, type=float, help="LoRA alpha (default: 2 x rank).")
@click.option("--targets", default="q_proj,v_proj", show_default=True,
              help="Comma-separated names of the linear layers to adapt.")
@click.option("--dropout", default=0.0, show_default=True, help="LoRA dropout.")
@click.option("--steps", default=None, type=int, help="Optimizer steps (default 100).")
@click.option("--epochs", default=None, type=float, help="Passes over the data instead of --steps.")
@click.option("--lr", default=5e-4, show_default=True, help="AdamW learning rate.")
@click.option("--batch-size", default=8, show_default=True, help="Examples per step.")
@click.option("--max-length", default=256, show_default=True, help="Max tokens per example.")
@click.option("--seed", default=0, show_default=True, help="Seed (LoRA init, data order, split).")
@click.option("--save-dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16"]),
              help="dtype of the saved tensors (float16 halves the download).")
@click.option("--task-name", default=None, help="Task name recorded in the card and registry.")
@click.option("--task-category", default=None, help="Task category, e.g. grammar.")
@click.option("--dataset", default=None, help="Source dataset name or id.")
@click.option("--license", "license_", default=None,
              help="License of the module (default apache-2.0).")
@click.option("--description", default=None, help="One-line description for the card.")
@click.option("--holdout-fraction", default=None, type=float,
              help="Hold out this share of DATA and report its loss before/after training.")
@click.option("--eval-file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out JSONL file to report loss on (instead of --holdout-fraction).")
@click.option("--no-index", is_flag=True, help="Do not index the module in the registry.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def train(settings: Settings, datas: tuple[Path, ...], method: str, heads: str,
          max_heads: int, out: Path, base_model: str | None, device: str,
          dtype: str, no_chat_template: bool, rank: int, alpha: float | None, targets: str,
          dropout: float, steps: int | None, epochs: float | None, lr: float, batch_size: int,
          max_length: int, seed: int, save_dtype: str, task_name: str | None,
          task_category: str | None, dataset: str | None, license_: str | None,
          description: str | None, holdout_fraction: float | None, eval_file: Path | None,
          no_index: bool, overwrite: bool, as_json: bool) -> None:
    """Train a LoRA module on DATA (JSONL lines of {"input", "target"}) and index it.

    With --method hydra, train a Hydra module (one shared A, N heads B_j, a router) on the
    mixture of every DATA file, with a load-balancing term; the head usage is reported.

    \b
    Examples:
      loradex train past_tense.jsonl --out modules/past_tense --rank 16 --steps 200 \\
          --task-name past_tense --task-category grammar
      loradex train --method hydra a.jsonl b.jsonl c.jsonl --heads auto --out modules/abc
    """
    if method == "hydra":
        _train_hydra(settings, datas, heads, max_heads, out, base_model, device, dtype,
                     no_chat_template, rank, alpha, targets, dropout, steps, epochs, lr,
                     batch_size, max_length, seed, save_dtype, task_name, task_category,
                     dataset, license_, description, holdout_fraction, eval_file, no_index,
                     overwrite, as_json)
        return
    if len(datas) != 1:
        raise ConfigError("--method lora trains on one DATA file (use --method hydra for several)")
    data = datas[0]
    from composer.adapter_io import check_output_dir
    from composer.data import load_examples, split_holdout
    from composer.train import TaskInfo, TrainConfig, train_lora

    config = TrainConfig(
        rank=rank, alpha=alpha, targets=_split_csv(targets), dropout=dropout, steps=steps,
        epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
        use_chat_template=not no_chat_template, save_dtype=save_dtype,
    )
    config.validate()
    if holdout_fraction is not None and eval_file is not None:
        raise ConfigError("give --holdout-fraction or --eval-file, not both")
    check_output_dir(out, overwrite)
    examples = load_examples(data)
    heldout = []
    if eval_file is not None:
        heldout = load_examples(eval_file)
    elif holdout_fraction is not None:
        examples, heldout = split_holdout(examples, holdout_fraction, seed)
    task = TaskInfo(name=task_name, category=task_category, dataset=dataset, license=license_,
                    description=description)

    loaded = _load_model(base_model, device, dtype)
    from loradex.cli.embedding import optional_embedder

    result = train_lora(loaded, examples, out, config, task=task, heldout=heldout,
                        overwrite=overwrite, embedder=optional_embedder())
    module_id = None if no_index else _index_folder(settings, result.out_dir)
    summary = {
        "out": str(result.out_dir),
        "steps": result.steps,
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "seconds": round(result.seconds, 1),
        "heldout_loss_before": result.heldout_loss_before,
        "heldout_loss_after": result.heldout_loss_after,
        "registry_id": module_id,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f}s: loss "
               f"{summary['first_loss']} -> {summary['last_loss']}")
    if result.heldout_loss_after is not None:
        click.echo(f"held-out loss {result.heldout_loss_before:.4f} -> "
                   f"{result.heldout_loss_after:.4f} ({len(heldout)} examples)")
    click.echo(f"wrote {result.out_dir}")
    if module_id:
        click.echo(f"indexed as {module_id}")


def _train_hydra(settings: Settings, datas: tuple[Path, ...], heads: str, max_heads: int,
                 out: Path, base_model: str | None, device: str, dtype: str,
                 no_chat_template: bool, rank: int, alpha: float | None, targets: str,
                 dropout: float, steps: int | None, epochs: float | None, lr: float,
                 batch_size: int, max_length: int, seed: int, save_dtype: str,
                 task_name: str | None, task_category: str | None, dataset: str | None,
                 license_: str | None, description: str | None,
                 holdout_fraction: float | None, eval_file: Path | None, no_index: bool,
                 overwrite: bool, as_json: bool) -> None:
    """``loradex train --method hydra``: validate, train, index (see composer.hydra)."""
    from composer.adapter_io import check_output_dir
    from composer.data import load_examples
    from composer.hydra.training import HydraTrainConfig, train_hydra
    from composer.train import TaskInfo
    from loradex.cli.hydra_output import print_train_summary, train_summary

    if dropout:
        raise ConfigError("--dropout is not used by --method hydra")
    if holdout_fraction is not None:
        raise ConfigError("--method hydra takes a held-out set with --eval-file, "
                          "not --holdout-fraction")
    config = HydraTrainConfig(
        heads=_parse_heads(heads), max_heads=max_heads,  # type: ignore[arg-type]
        rank=rank, alpha=alpha, targets=_split_csv(targets), steps=steps, epochs=epochs,
        lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
        use_chat_template=not no_chat_template, save_dtype=save_dtype,
    )
    config.validate()
    check_output_dir(out, overwrite)
    heldout = load_examples(eval_file) if eval_file is not None else []
    task = TaskInfo(name=task_name, category=task_category, dataset=dataset, license=license_,
                    description=description)
    loaded = _load_model(base_model, device, dtype)
    result = train_hydra(loaded, datas, out, config, task=task, heldout=heldout,
                         overwrite=overwrite)
    assert result.out_dir is not None  # written, since an out folder was given
    summary = train_summary(result)
    summary["registry_id"] = None if no_index else _index_folder(settings, result.out_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    print_train_summary(summary, click.echo)
    click.echo(f"wrote {result.out_dir}")
    if summary["registry_id"]:
        click.echo(f"indexed as {summary['registry_id']}")


def _hub_fetcher(settings: Settings) -> Any:
    """Fetch a Hub module through ``loradex pull`` (verified; offline falls back to the cache)."""

    def fetch(repo_id: str, revision: str | None) -> tuple[Path, str]:
        import os

        from hub_client.client import HubClient
        from hub_client.pull import pull_module
        from registry.store import RegistryStore

        store = RegistryStore.from_url(settings.db_url)
        try:
            client = HubClient(settings.endpoint, settings.token, cache_dir=settings.cache_dir)
            result = pull_module(
                client, store, repo_id, revision,
                offline=os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"),
            )
        finally:
            store.engine.dispose()
        return result.folder, result.revision

    return fetch


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("candidate_args", nargs=-1, metavar="[CANDIDATE]...")
@click.option("--examples", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Few-shot JSONL file the weights are fitted on.")
@click.option("--candidates", "candidate_opts", multiple=True, metavar="DIR|ID[@REV]",
              help="Candidate module (repeat, or comma-separate): an adapter folder or a Hub id.")
@click.option("--from-registry", is_flag=True,
              help="Pick candidates from the registry: --k at random (seeded) among the "
                   "modules matching --query/--task/--tag that fit the base model.")
@click.option("--k", type=click.IntRange(min=1), default=None,
              help="How many registry candidates (default: 5 chosen by fit, 20 at random).")
@click.option("--all-compatible", is_flag=True, help="With --from-registry: take all, not --k.")
@click.option("--select", default="retrieve+screen", show_default=True,
              type=click.Choice(["random", "retrieve", "retrieve+screen"]),
              help="With --from-registry: retrieve+screen: the best --screen-pool by task "
                   "signature, each scored alone on the examples, the --k best kept (measured "
                   "best: docs/composer.md); retrieve: the --k whose signatures fit best; "
                   "random: a seeded random --k (the paper).")
@click.option("--screen-pool", default=20, show_default=True,
              help="With --select retrieve+screen: modules retrieved before the screen.")
@click.option("--include-composed", is_flag=True,
              help="With --from-registry: also draw modules composed from others (left out by "
                   "default: their parents are candidates already).")
@click.option("--query", default=None, help="Registry filter: free text.")
@click.option("--task", default=None, help="Registry filter: task name or category.")
@click.option("--tag", "tags", multiple=True, help="Registry filter: tag (repeatable).")
@click.option("--rank", "rank_filter", default=None, type=int, help="Registry filter: rank.")
@click.option("--modules-dir", "module_dirs", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where folders of locally indexed modules (ids local/NAME) live.")
@model_options
@click.option("--method", default="lorahub", show_default=True,
              help="Composition method: lorahub ((sum w A)(sum w B), equal ranks) or "
                   "mixed-rank (exact sum w B A, any ranks).")
@click.option("--svd-rank", default=None, type=int,
              help="mixed-rank: compress the result to this rank by SVD.")
@click.option("--objective", default="auto", show_default=True,
              type=click.Choice(["auto", "lm", "choice", "choice-normalized"]),
              help="Search objective: lm (target-token loss, the paper), choice (cross-entropy "
                   "of the right choice among the choices' log-likelihoods; -normalized: mean "
                   "per token). auto: choice when every example has choices, else lm.")
@click.option("--optimizer", default="cma", show_default=True,
              help="cma (standard CMA-ES) or any nevergrad optimizer name (e.g. NGOpt).")
@click.option("--budget", default=40, show_default=True, help="Loss evaluations.")
@click.option("--l1", default=0.05, show_default=True, help="L1 penalty weight.")
@click.option("--l1-form", default="sum", show_default=True, type=click.Choice(["sum", "mean"]),
              help="sum: l1*sum|w| (the paper); mean: l1*mean|w| (the reference code).")
@click.option("--bound", default=1.5, show_default=True, help="Weights lie in [-bound, bound].")
@click.option("--seed", default=0, show_default=True, help="Optimizer (and --k selection) seed.")
@click.option("--holdout", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out JSONL: report loss/accuracy for zero weights, the result and "
                   "each single candidate.")
@click.option("--batched-population", is_flag=True,
              help="Evaluate a whole CMA-ES generation in one batched forward.")
@click.option("--layer-groups", default=1, show_default=True,
              help="Search one weight per candidate for each of this many groups of "
                   "consecutive layers (1: one weight per candidate, the paper).")
@click.option("--restarts", default=1, show_default=True,
              help="Search from seeds SEED..SEED+N-1 and score each by cross-validation on "
                   "the examples (leave-one-out up to 5); costs N x folds extra searches.")
@click.option("--restart-pick", default="best", show_default=True,
              type=click.Choice(["best", "average"]),
              help="With --restarts: best: the seed with the lowest held-out loss; average: "
                   "the mean of every seed's weights.")
@click.option("--start", default="auto", show_default=True,
              type=click.Choice(["auto", "zero", "best-single"]),
              help="Where the search starts: zero weights (the paper), or best-single: first "
                   "try zero and each candidate alone (k + 1 evaluations of --budget) and "
                   "search from the best. auto: best-single for candidates chosen by "
                   "retrieve+screen, else zero.")
@click.option("--guard", default="auto", show_default=True,
              type=click.Choice(["auto", "off", "cv"]),
              help="cv: score the search and its start point (zero weights, or the best single "
                   "candidate) by cross-validation on the examples (leave-one-out up to 5) and "
                   "keep the start point unless the search does better; costs folds x more "
                   "searches. auto: cv when the search starts from the best single candidate "
                   "(as --select retrieve+screen does), else off.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the composed PEFT adapter into.")
@click.option("--output", "output_kind", default="lora", show_default=True,
              type=click.Choice(["lora", "hydra"]),
              help="lora: one PEFT adapter. hydra: a Hydra module (shared composed A, heads "
                   "from the most weighted candidates, router fitted on the examples).")
@click.option("--hydra-heads", default=None, type=int,
              help="--output hydra: number of heads (default: min(4, candidates)).")
@click.option("--router-steps", default=30, show_default=True,
              help="--output hydra: router fit steps on the examples (A and heads frozen).")
@click.option("--name", default=None, help="Title of the model card (default: folder name).")
@click.option("--publish", "publish_repo", default=None, metavar="NAMESPACE/NAME",
              help="Publish the result to the Hub under this repo id.")
@click.option("--no-index", is_flag=True, help="Do not index the result in the registry.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def compose(settings: Settings, candidate_args: tuple[str, ...], examples: Path,
            candidate_opts: tuple[str, ...], from_registry: bool, k: int, all_compatible: bool,
            select: str, screen_pool: int, include_composed: bool, query: str | None,
            task: str | None, tags: tuple[str, ...], rank_filter: int | None,
            module_dirs: tuple[Path, ...], base_model: str | None, device: str, dtype: str,
            no_chat_template: bool, method: str, svd_rank: int | None, objective: str,
            optimizer: str,
            budget: int, l1: float, l1_form: str, bound: float, seed: int,
            holdout: Path | None, batched_population: bool, layer_groups: int, restarts: int,
            restart_pick: str, start: str, guard: str, out: Path, output_kind: str,
            hydra_heads: int | None, router_steps: int, name: str | None,
            publish_repo: str | None, no_index: bool, overwrite: bool, as_json: bool) -> None:
    """Compose candidate LoRA modules into one for the task of --examples (LoraHub).

    Searches one weight per candidate with CMA-ES to minimise the loss on the few-shot
    examples (+ an L1 penalty), then writes the composed module as a PEFT adapter folder
    with its provenance (parents, weights, settings, loss curve).

    \b
    Examples:
      loradex compose --examples few.jsonl --out composed/ modules/a modules/b modules/c
      loradex compose --examples few.jsonl --from-registry --k 20 --seed 1 --out composed/
      loradex compose --examples few.jsonl --from-registry --select retrieve+screen --k 5 \
        --start best-single --out composed/
      loradex compose --examples few.jsonl --output hydra --hydra-heads 3 --out hydra/ a b c d
    """
    from composer.compose import ComposeConfig
    from composer.models import ModelSpec
    from composer.pipeline import ComposeRequest, RegistrySelection, run_compose
    from composer.search import SearchConfig

    refs = list(candidate_args)
    refs += [r.strip() for opt in candidate_opts for r in opt.split(",") if r.strip()]
    if from_registry == bool(refs):
        raise ConfigError("give candidates (folders or ids) or --from-registry, not both/neither")
    explicit_select = (click.get_current_context().get_parameter_source("select")
                       != click.core.ParameterSource.DEFAULT)
    if explicit_select and not from_registry:
        raise ConfigError("--select chooses among registry modules: it needs --from-registry")
    if all_compatible and explicit_select and select != "random":
        raise ConfigError("--all-compatible takes every module; it goes with --select random")
    if all_compatible or not from_registry:
        select = "random"
    if k is None:
        k = 20 if select == "random" else 5
    if start == "auto":
        start = "best-single" if select == "retrieve+screen" else "zero"
    if publish_repo:
        from registry.repo_ids import check_repo_id

        check_repo_id(publish_repo)
        if not settings.token:
            raise ConfigError("--publish needs a token: LORADEX_TOKEN or HF_TOKEN")
    request = ComposeRequest(
        examples=examples,
        out=out,
        candidates=RegistrySelection(
            k=None if all_compatible else k, text=query, task=task, tags=tuple(tags),
            rank=rank_filter, select=select, screen_pool=screen_pool,
            include_composed=include_composed,
        ) if from_registry else tuple(refs),
        module_dirs=tuple(module_dirs),
        model=ModelSpec(name_or_path=base_model, device=device, dtype=dtype),
        compose=ComposeConfig(
            method=method, svd_rank=svd_rank, objective=objective,
            search=SearchConfig(optimizer=optimizer, budget=budget, l1=l1, l1_form=l1_form,
                                bound=bound, seed=seed),
            batched_population=batched_population, use_chat_template=not no_chat_template,
            layer_groups=layer_groups, restarts=restarts, restart_pick=restart_pick, start=start,
            guard=guard,
        ),
        holdout=holdout,
        output=output_kind,
        hydra_heads=hydra_heads,
        router_steps=router_steps,
        name=name,
        index=not no_index,
        overwrite=overwrite,
    )
    outcome = run_compose(
        request, settings, fetch=_hub_fetcher(settings),
        load_model=lambda spec: _load_model(spec.name_or_path, spec.device, spec.dtype),
        notify=lambda message: click.echo(message, err=True),
    )
    published = None
    if publish_repo:
        from hub_client.client import HubClient
        from hub_client.publish import publish_folder
        from loradex.cli.embedding import optional_embedder
        from registry.store import RegistryStore

        store = RegistryStore.from_url(settings.db_url)
        try:
            published = publish_folder(
                HubClient(settings.endpoint, settings.token), store, outcome.folder, publish_repo,
                embedder=optional_embedder("indexed without a card signature"),
            )
        finally:
            store.engine.dispose()
    from loradex.cli.compose_output import print_compose

    print_compose(outcome, request, published, as_json)


@click.command(name="eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--adapter", default=None, metavar="DIR|ID[@REV]",
              help="LoRA adapter to evaluate (folder or Hub id); default: the base model alone.")
@model_options
@click.option("--few-shot", default=0, show_default=True,
              help="Use the first N examples as in-context demonstrations; evaluate the rest.")
@click.option("--limit", default=None, type=int, help="Evaluate at most this many examples.")
@click.option("--batch-size", default=16, show_default=True, help="Prompts per batch.")
@click.option("--max-new-tokens", default=None, type=int,
              help="Generation length (default: longest target + 8 tokens).")
@click.option("--no-generate", is_flag=True, help="Skip generation (loss and choices only).")
@click.option("--max-length", default=1024, show_default=True,
              help="Longest prompt in tokens; longer ones lose their beginning (counted).")
@click.option("--modules-dir", "module_dirs", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where folders of locally indexed modules (ids local/NAME) live.")
@click.option("--predictions", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-example predictions to this JSONL file.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_obj
def eval_cmd(settings: Settings, data: Path, adapter: str | None, base_model: str | None,
             device: str, dtype: str, no_chat_template: bool, few_shot: int, limit: int | None,
             batch_size: int, max_new_tokens: int | None, no_generate: bool, max_length: int,
             module_dirs: tuple[Path, ...], predictions: Path | None, as_json: bool) -> None:
    """Evaluate the base model, or base + an adapter, on DATA (JSONL).

    Exact match (after normalising case, spaces and edge punctuation) from batched greedy
    generation; for examples with "choices", multiple-choice accuracy by log-likelihood.

    \b
    Example:
      loradex eval test.jsonl --adapter composed/ --few-shot 0 --json
    """
    from composer.candidates import check_compatible, resolve_candidate
    from composer.data import load_examples
    from composer.metrics import EvalConfig, evaluate_examples
    from composer.models import base_model_name_for

    if few_shot < 0 or (limit is not None and limit < 1) or batch_size < 1 or max_length < 1:
        raise ConfigError("--few-shot must be >= 0, --limit, --batch-size and --max-length >= 1")
    examples = load_examples(data, min_examples=few_shot + 1)
    demos, examples = examples[:few_shot], examples[few_shot:]
    if limit is not None:
        examples = examples[:limit]
    candidate = None
    if adapter:
        dirs = [*module_dirs, settings.home / "modules"]
        from composer.pipeline import local_module_lookup

        with local_module_lookup(settings.db_url) as lookup:
            candidate = resolve_candidate(adapter, settings.cache_dir, dirs,
                                          _hub_fetcher(settings), lookup)
        check_compatible([candidate], base_model=base_model_name_for(base_model), same_rank=False)
    loaded = _load_model(base_model, device, dtype)
    if candidate is not None:
        from peft import PeftModel

        # PEFT injects its LoRA layers into the model in place; keep using the plain model.
        peft_model = PeftModel.from_pretrained(loaded.model, str(candidate.folder))
        loaded.model = peft_model.get_base_model()
        loaded.model.eval()
    config = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens,
                        few_shot=few_shot, use_chat_template=not no_chat_template,
                        max_length=max_length, generate=not no_generate)
    report = evaluate_examples(loaded, examples, config, demonstrations=demos)
    if report.prompts_cut:
        click.echo(f"note: {report.prompts_cut} of {report.n_examples} prompts were longer than "
                   f"--max-length {max_length} tokens and lost their beginning", err=True)
    summary = {
        "data": str(data),
        "adapter": candidate.repo_id if candidate else None,
        "base_model": loaded.name,
        "few_shot": few_shot,
        **report.summary(),
    }
    if predictions is not None:
        predictions.write_text("".join(json.dumps(p) + "\n" for p in report.predictions))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    em = "-" if report.exact_match is None else f"{report.exact_match:.4f}"
    click.echo(f"{report.n_examples} examples: exact match {em}, loss {report.loss:.4f}")
    if report.n_choice_examples:
        click.echo(f"multiple-choice accuracy {report.choice_accuracy:.4f} "
                   f"({report.n_choice_examples} examples with choices)")
        dist = ", ".join(f"{k}: {v}" for k, v in report.label_distribution.items())
        click.echo(f"predicted labels: {dist}")
        click.echo(f"majority-label rate {report.majority_rate:.4f} "
                   f"(always answering {report.majority_label!r})")
