"""Turn a LoraHub composition into a Hydra module, then fit its router on the few-shot examples.

Given candidate LoRA modules (equal rank and alpha) and the weights w found by the CMA-ES
search, the Hydra module has

- shared A = Σ_i w_i A_i (the composed A);
- N heads from the candidates' B: candidates are split into N groups G_j (``top``: the N-1
  largest |w_i| each alone and the rest together; ``cluster``: k-means over the weighted
  updates w_i B_i) and head j = N · Σ_{i∈G_j} w_i B_i;
- routers with zero weight and zero bias, i.e. the uniform gate 1/N for every token.

So before any training Σ_j g_j B_j = Σ_j (1/N) · N · Σ_{i∈G_j} w_i B_i = Σ_i w_i B_i: the module
computes exactly the LoraHub result (A and B composed with the same weights), up to float
rounding of the one multiply by N and by 1/N. :func:`fit_router` then trains only the routers
on the few-shot examples (A and heads frozen) and reports few-shot and held-out loss before
and after.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from composer.adapter_io import check_output_dir
from composer.batching import make_batch, mean_target_loss
from composer.candidates import Candidate, load_layers, read_candidate
from composer.cards import render_card, settings_table
from composer.compose import ComposeResult
from composer.data import EncodedExample, Example, encode_examples
from composer.hydra.format import HydraLayerWeights, HydraModule, write_hydra_folder
from composer.hydra.heads import kmeans
from composer.hydra.runtime import HeadUsage, attach_hydra
from composer.hydra.training import measure_head_usage
from composer.inference import mean_loss
from composer.models import LoadedModel
from loradex import __version__
from loradex.errors import ConfigError, IncompatibleModules
from registry.hydra import HydraConfig

Grouping = Literal["top", "cluster"]


@dataclass(frozen=True)
class LoraCandidate:
    """One candidate LoRA: its id and, per layer path, its ``(A [r, in], B [out, r])``."""

    repo_id: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str
    layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    revision: str | None = None


@dataclass(frozen=True)
class HeadGroup:
    """Which candidates (with their weights) one head was built from."""

    repo_ids: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass
class RouterFitResult:
    """The router fit: losses before/after on the few-shot and held-out sets, and head usage."""

    module: HydraModule
    steps: int
    losses: list[float]
    fewshot_loss_before: float
    fewshot_loss_after: float
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    head_usage: HeadUsage
    seconds: float


@dataclass
class HydraComposeResult:
    """What :func:`compose_hydra_module` produced."""

    out_dir: Path | None
    module: HydraModule
    groups: list[HeadGroup]
    fit: RouterFitResult | None
    front_matter: dict[str, Any] = field(default_factory=dict)


def lora_candidate_from(candidate: Candidate) -> LoraCandidate:
    """Load a composer :class:`~composer.candidates.Candidate`'s tensors (float32).

    rsLoRA candidates (scale alpha / sqrt(r)) get the alpha that gives the same scale as
    alpha / r, since a Hydra module's scale is alpha / r.
    """
    layers = load_layers(candidate)
    return LoraCandidate(
        repo_id=candidate.repo_id,
        rank=candidate.rank,
        alpha=candidate.scale * candidate.rank,
        target_modules=tuple(sorted(candidate.target_modules)),
        base_model=candidate.base_model,
        layers={name: (t.a, t.b) for name, t in layers.items()},
        revision=candidate.revision,
    )


def load_peft_candidate(
    folder: str | Path, repo_id: str | None = None, revision: str | None = None
) -> LoraCandidate:
    """Read a PEFT LoRA folder through the composer's validated candidate reader."""
    return lora_candidate_from(read_candidate(folder, repo_id=repo_id, revision=revision))


def compose_lora(
    candidates: Sequence[LoraCandidate], weights: Sequence[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The LoraHub composition per layer: ``(Σ w_i A_i, Σ w_i B_i)``."""
    _check_candidates(candidates, weights)
    w = torch.tensor(list(weights), dtype=torch.float64)
    composed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in candidates[0].layers:
        a = torch.stack([c.layers[name][0].double() for c in candidates])
        b = torch.stack([c.layers[name][1].double() for c in candidates])
        dtype = candidates[0].layers[name][0].dtype
        composed[name] = (
            torch.einsum("k,kri->ri", w, a).to(dtype),
            torch.einsum("k,kor->or", w, b).to(dtype),
        )
    return composed


def group_candidates(
    candidates: Sequence[LoraCandidate],
    weights: Sequence[float],
    num_heads: int,
    grouping: Grouping = "top",
    seed: int = 0,
) -> list[list[int]]:
    """Split candidate indices into ``min(num_heads, len(candidates))`` non-empty groups."""
    n = min(num_heads, len(candidates))
    order = sorted(range(len(candidates)), key=lambda i: (-abs(weights[i]), i))
    if grouping == "top":
        return [[i] for i in order[: n - 1]] + [sorted(order[n - 1 :])]
    if grouping == "cluster":
        # Cluster the weighted updates w_i B_i (what each candidate adds), unit-normalised.
        rows = []
        for i, cand in enumerate(candidates):
            flat = torch.cat([b.double().flatten() for _, b in cand.layers.values()])
            flat = weights[i] * flat
            norm = float(flat.norm())
            rows.append((flat / norm if norm > 0 else flat).numpy())
        labels, _ = kmeans(np.stack(rows), n, seed=seed)
        groups = [sorted(int(i) for i in np.flatnonzero(labels == j)) for j in range(n)]
        groups = [g for g in groups if g]
        # Heads ordered by their largest weight, like "top".
        return sorted(groups, key=lambda g: min(order.index(i) for i in g))
    raise ConfigError(f"unknown grouping {grouping!r} (choose top or cluster)")


def compose_to_hydra(
    candidates: Sequence[LoraCandidate],
    weights: Sequence[float],
    *,
    num_heads: int,
    grouping: Grouping = "top",
    base_model: str | None = None,
    router_temperature: float = 1.0,
    task: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[HydraModule, list[HeadGroup]]:
    """Build the Hydra module that reproduces the LoraHub composition exactly (uniform gates).

    ``num_heads`` is clipped to the number of candidates. Raises ``IncompatibleModules`` for
    candidates of different ranks, alphas, layers or shapes.
    """
    if num_heads < 1:
        raise ConfigError(f"num_heads must be >= 1, got {num_heads}")
    _check_candidates(candidates, weights)
    groups = group_candidates(candidates, weights, num_heads, grouping, seed)
    n = len(groups)
    first = candidates[0]
    w = torch.tensor(list(weights), dtype=torch.float64)
    layers: dict[str, HydraLayerWeights] = {}
    for name in first.layers:
        a_stack = torch.stack([c.layers[name][0].double() for c in candidates])
        b_stack = torch.stack([c.layers[name][1].double() for c in candidates])
        dtype = first.layers[name][0].dtype
        shared_a = torch.einsum("k,kri->ri", w, a_stack)
        heads = torch.stack(
            [n * torch.einsum("k,kor->or", w[group], b_stack[group]) for group in groups]
        )
        in_features = shared_a.shape[1]
        layers[name] = HydraLayerWeights(
            lora_A=shared_a.to(dtype),
            lora_B=heads.to(dtype),
            router_weight=torch.zeros(n, in_features, dtype=dtype),
            router_bias=torch.zeros(n, dtype=dtype),
        )
    head_groups = [
        HeadGroup(
            repo_ids=tuple(candidates[i].repo_id for i in group),
            weights=tuple(float(weights[i]) for i in group),
        )
        for group in groups
    ]
    config = HydraConfig(
        base_model=base_model or first.base_model or "unknown",
        target_modules=first.target_modules,
        rank=first.rank,
        alpha=first.alpha,
        num_heads=n,
        router_temperature=router_temperature,
        task=dict(task or {}),
        head_selection={
            "method": "compose",
            "grouping": grouping,
            "requested_heads": num_heads,
            "init": "router weight 0, bias 0 (uniform gates); head j = N * sum of w_i B_i "
            "over its group, so the module equals the LoraHub composition",
            "heads": [
                {"repo_ids": list(g.repo_ids), "weights": [round(x, 6) for x in g.weights]}
                for g in head_groups
            ],
        },
    )
    return HydraModule(config=config, layers=layers), head_groups


def fit_router(
    loaded: LoadedModel,
    module: HydraModule,
    few_shot: Sequence[Example],
    *,
    holdout: Sequence[Example] = (),
    steps: int = 30,
    lr: float = 5e-3,
    batch_size: int = 8,
    max_length: int = 256,
    use_chat_template: bool = True,
    seed: int = 0,
) -> RouterFitResult:
    """Train only the routers on ``few_shot`` (A and heads frozen); the model is left as it was.

    Full-batch AdamW on the target-token loss of the few-shot set (it is a handful of examples).
    """
    if steps < 0:
        raise ConfigError(f"router fit steps must be >= 0, got {steps}")
    if not few_shot:
        raise ConfigError("router fit needs at least one few-shot example")

    def encode(examples: Sequence[Example]) -> list[EncodedExample]:
        return encode_examples(
            loaded.tokenizer,
            examples,
            seq2seq=loaded.is_seq2seq,
            max_length=max_length,
            use_chat_template=use_chat_template,
        )

    model = loaded.model
    fewshot_encoded = encode(few_shot)
    holdout_encoded = encode(holdout)
    torch.manual_seed(seed)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    handle = attach_hydra(model, module)
    started = time.perf_counter()
    losses: list[float] = []
    try:
        for param in handle.router_parameters():
            param.requires_grad_(True)
        fewshot_before = mean_loss(loaded, fewshot_encoded, batch_size, packed=False)
        heldout_before = (mean_loss(loaded, holdout_encoded, batch_size, packed=False)
                          if holdout else None)
        optimizer = torch.optim.AdamW(handle.router_parameters(), lr=lr, weight_decay=0.0)
        batches = [
            make_batch(fewshot_encoded[i : i + batch_size], model, packed=False).to(loaded.device)
            for i in range(0, len(fewshot_encoded), batch_size)
        ]
        weights = [len(b.target_ids) for b in batches]
        total = sum(weights)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            value = 0.0
            for batch, count in zip(batches, weights, strict=True):
                loss = mean_target_loss(model, batch)[0] * (count / total)
                loss.backward()
                value += float(loss.detach())
            optimizer.step()
            losses.append(value)
        model.eval()
        fewshot_after = mean_loss(loaded, fewshot_encoded, batch_size, packed=False)
        heldout_after = (mean_loss(loaded, holdout_encoded, batch_size, packed=False)
                         if holdout else None)
        usage = measure_head_usage(handle, loaded, fewshot_encoded + holdout_encoded, batch_size)
        fitted = handle.to_module(module.config)
    finally:
        handle.detach()
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, False))
        model.eval()
    return RouterFitResult(
        module=fitted,
        steps=steps,
        losses=losses,
        fewshot_loss_before=fewshot_before,
        fewshot_loss_after=fewshot_after,
        heldout_loss_before=heldout_before,
        heldout_loss_after=heldout_after,
        head_usage=usage,
        seconds=time.perf_counter() - started,
    )


def compose_hydra_module(
    loaded: LoadedModel,
    candidates: Sequence[LoraCandidate],
    weights: Sequence[float],
    few_shot: Sequence[Example],
    out_dir: str | Path | None,
    *,
    num_heads: int,
    grouping: Grouping = "top",
    holdout: Sequence[Example] = (),
    fit_steps: int = 30,
    fit_lr: float = 5e-3,
    use_chat_template: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> HydraComposeResult:
    """Build the Hydra module from a LoraHub result, fit its router, write it with a card.

    ``provenance`` (optimizer, budget, l1, few-shot sha256, ...) is copied into the card.
    """
    out = check_output_dir(out_dir, overwrite) if out_dir is not None else None
    module, groups = compose_to_hydra(
        candidates,
        weights,
        num_heads=num_heads,
        grouping=grouping,
        base_model=loaded.name,
        seed=seed,
        task={"name": "composition", "provenance": dict(provenance or {})},
    )
    fit = fit_router(
        loaded,
        module,
        few_shot,
        holdout=holdout,
        steps=fit_steps,
        lr=fit_lr,
        use_chat_template=use_chat_template,
        seed=seed,
    )
    front = compose_front_matter(loaded, module, candidates, weights, fit, fit_lr=fit_lr)
    if out is not None:
        title = out.name
        write_hydra_folder(
            fit.module,
            out,
            card=render_card(front, title, _card_body(front, groups, fit)),
            extra_files={"router_fit_log.json": json.dumps({"losses": fit.losses}).encode()},
        )
    return HydraComposeResult(
        out_dir=out, module=fit.module, groups=groups, fit=fit, front_matter=front
    )


def compose_result_to_hydra(
    loaded: LoadedModel,
    result: ComposeResult,
    few_shot: Sequence[Example],
    out_dir: str | Path | None,
    *,
    num_heads: int,
    grouping: Grouping = "top",
    holdout: Sequence[Example] = (),
    fit_steps: int = 30,
    fit_lr: float = 5e-3,
    overwrite: bool = False,
) -> HydraComposeResult:
    """``loradex compose --output hydra``: the composer's CMA-ES result as a Hydra module.

    Uses ``result.weights`` over ``result.candidates``; the search settings go in the card.
    """
    if result.config.layer_groups != 1:
        raise ConfigError("--output hydra needs one weight per candidate (--layer-groups 1)")
    s = result.config.search
    provenance = {
        "optimizer": s.optimizer,
        "budget": s.budget,
        "seed": s.seed,
        "l1": s.l1,
        "bound": s.bound,
        "lorahub_fewshot_loss": round(result.loss, 6),
        "loss_zero_weights": round(result.zero_loss, 6),
    }
    candidates = [lora_candidate_from(c) for c in result.candidates]
    return compose_hydra_module(
        loaded,
        candidates,
        [float(w) for w in result.weights],
        few_shot,
        out_dir,
        num_heads=num_heads,
        grouping=grouping,
        holdout=holdout,
        fit_steps=fit_steps,
        fit_lr=fit_lr,
        use_chat_template=result.config.use_chat_template,
        seed=s.seed,
        overwrite=overwrite,
        provenance=provenance,
    )


def compose_front_matter(
    loaded: LoadedModel,
    module: HydraModule,
    candidates: Sequence[LoraCandidate],
    weights: Sequence[float],
    fit: RouterFitResult,
    *,
    fit_lr: float,
) -> dict[str, Any]:
    """YAML front matter of a composed Hydra module: lineage, heads, the router fit's losses."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "base_model": loaded.name,
        "library_name": "loradex",
        "license": "apache-2.0",
        "tags": ["loradex", "hydra-lora", "lora", "lorahub", "composition"],
        "pipeline_tag": "text-generation",
        "loradex": {
            "kind": "hydra",
            "num_heads": module.config.num_heads,
            "version": __version__,
            "method": "lorahub-to-hydra",
            "head_selection": dict(module.config.head_selection),
            "router_fit": {
                "steps": fit.steps,
                "lr": fit_lr,
                "fewshot_loss_before": r(fit.fewshot_loss_before),
                "fewshot_loss_after": r(fit.fewshot_loss_after),
                "heldout_loss_before": r(fit.heldout_loss_before),
                "heldout_loss_after": r(fit.heldout_loss_after),
            },
            "head_usage": fit.head_usage.to_json_dict(),
            "task": {k: v for k, v in module.config.task.items() if k != "provenance"},
            "provenance": dict(module.config.task.get("provenance", {})),
            "lineage": [
                {
                    "repo_id": c.repo_id,
                    "revision": c.revision,
                    "weight": round(float(w), 6),
                    "role": "candidate",
                }
                for c, w in zip(candidates, weights, strict=True)
            ],
        },
    }


def _card_body(front: dict[str, Any], groups: Sequence[HeadGroup], fit: RouterFitResult) -> str:
    block = front["loradex"]
    lines = [
        f"A Hydra module (shared A, {block['num_heads']} B heads, a router) built by loradex "
        "from a LoraHub composition: A is the composed A, the heads are groups of the "
        "candidates' B, and the router started from uniform gates (reproducing the LoraHub "
        "result exactly) before it was fitted on the few-shot examples with A and the heads "
        "frozen.",
        "",
        "## Heads",
        "",
        "| head | candidates (weight) |",
        "|---|---|",
    ]
    for j, group in enumerate(groups):
        members = ", ".join(
            f"`{rid}` ({w:+.3f})" for rid, w in zip(group.repo_ids, group.weights, strict=True)
        )
        lines.append(f"| {j} | {members} |")
    lines += ["", "## Router fit", "", settings_table(block["router_fit"])]
    lines += [
        "",
        "## Head usage after the fit",
        "",
        "| head | top-1 share | mean gate |",
        "|---|---|---|",
    ]
    lines += [
        f"| {j} | {s:.3f} | {g:.3f} |"
        for j, (s, g) in enumerate(
            zip(fit.head_usage.top1_share, fit.head_usage.mean_gate, strict=True)
        )
    ]
    return "\n".join(lines)



def _check_candidates(candidates: Sequence[LoraCandidate], weights: Sequence[float]) -> None:
    if not candidates:
        raise IncompatibleModules("no candidate modules to compose")
    if len(weights) != len(candidates):
        raise IncompatibleModules(
            f"{len(weights)} weights for {len(candidates)} candidates: need one weight each"
        )
    first = candidates[0]
    for cand in candidates[1:]:
        if cand.rank != first.rank:
            raise IncompatibleModules(
                f"{cand.repo_id} has rank {cand.rank} but {first.repo_id} has {first.rank}: "
                "a Hydra module from a LoraHub composition needs equal ranks"
            )
        if cand.alpha != first.alpha:
            raise IncompatibleModules(
                f"{cand.repo_id} has lora_alpha {cand.alpha} but {first.repo_id} has "
                f"{first.alpha}: the composition needs one scale"
            )
        if cand.layers.keys() != first.layers.keys():
            raise IncompatibleModules(
                f"{cand.repo_id} adapts other layers than {first.repo_id}"
            )
        for name, (a, b) in cand.layers.items():
            a0, b0 = first.layers[name]
            if a.shape != a0.shape or b.shape != b0.shape:
                raise IncompatibleModules(
                    f"{cand.repo_id}: layer {name} has shapes {list(a.shape)}/{list(b.shape)}, "
                    f"{first.repo_id} has {list(a0.shape)}/{list(b0.shape)}"
                )

