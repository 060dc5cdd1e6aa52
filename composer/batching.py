"""Batches of tokenised examples and the loss on target tokens, shared by train, compose and eval.

Causal models get either one *packed* row (all examples back to back, a block-diagonal causal
mask and restarting positions: no padding at all; the choices of one question share one copy
of its prompt) or right-padded rows. Either way the LM head is applied only at the positions
that predict a target token, which skips most of the vocabulary projection. Seq2seq models
get padded encoder inputs and teacher-forced decoder inputs. A batch can be *repeated*
``groups`` times along the batch dimension so that a batched LoRA layer can evaluate several
weight vectors in one forward (see :mod:`composer.lora_runtime`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from composer.data import EncodedExample


@dataclass
class TargetBatch:
    """Model inputs plus where the target tokens are.

    ``target_rows``/``target_cols`` index the hidden state (causal: the position *before* the
    token; seq2seq: the decoder position) whose logits predict ``target_ids``;
    ``target_example`` says which example each target token belongs to.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_ids: torch.Tensor
    target_example: torch.Tensor
    n_examples: int
    decoder_input_ids: torch.Tensor | None = None
    decoder_attention_mask: torch.Tensor | None = None
    # pack_causal only: (start, length) in the row of each prefix group's prompt, in order.
    prompt_spans: tuple[tuple[int, int], ...] = ()

    @property
    def n_tokens(self) -> int:
        """Number of tokens the model reads (encoder + decoder for seq2seq), padding included."""
        n = self.input_ids.numel()
        if self.decoder_input_ids is not None:
            n += self.decoder_input_ids.numel()
        return n

    def to(self, device: torch.device) -> TargetBatch:
        """This batch with every tensor on ``device``."""
        moved: dict[str, Any] = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()
        }
        return TargetBatch(**moved)


def prefix_groups(encoded: Sequence[EncodedExample]) -> list[list[int]]:
    """Indices of ``encoded`` in runs of consecutive examples that share one non-empty prompt."""
    groups: list[list[int]] = []
    for i, ex in enumerate(encoded):
        if groups and ex.prompt_ids and encoded[groups[-1][0]].prompt_ids == ex.prompt_ids:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def packed_length(encoded: Sequence[EncodedExample]) -> int:
    """Tokens :func:`pack_causal` puts in its row for ``encoded`` (shared prompts read once)."""
    return sum(
        len(encoded[group[0]].prompt_ids)
        + sum(max(len(encoded[i].target_ids) - 1, 0) for i in group)
        for group in prefix_groups(encoded)
    )


def pack_causal(encoded: Sequence[EncodedExample]) -> TargetBatch:
    """All examples in one row with a block-diagonal causal mask: no padding anywhere.

    Consecutive examples with the same prompt (the choices of one multiple-choice question)
    share one copy of it: each target branch attends to the prompt and to its own earlier
    tokens only, and its positions continue from the prompt's, so every target token sees
    exactly what it would see in a row of its own, while the prompt is read once instead of
    once per choice. A target's last token is only predicted, never read.
    """
    ids: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    branches: list[int] = []  # -1: the shared prompt; otherwise the example the token belongs to
    cols: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    spans: list[tuple[int, int]] = []
    for segment, group in enumerate(prefix_groups(encoded)):
        prompt = encoded[group[0]].prompt_ids
        spans.append((len(ids), len(prompt)))
        ids.extend(prompt)
        positions.extend(range(len(prompt)))
        segments.extend([segment] * len(prompt))
        branches.extend([-1] * len(prompt))
        last_prompt = len(ids) - 1
        for i in group:
            target = encoded[i].target_ids
            start = len(ids)
            ids.extend(target[:-1])
            positions.extend(range(len(prompt), len(prompt) + len(target) - 1))
            segments.extend([segment] * (len(target) - 1))
            branches.extend([i] * (len(target) - 1))
            for j, tok in enumerate(target):
                # Target token j is predicted by the hidden state just before it: the prompt's
                # last token for j = 0 (none when the prompt is empty), else target token j-1.
                if j == 0 and not prompt:
                    continue
                cols.append(last_prompt if j == 0 else start + j - 1)
                targets.append(tok)
                owner.append(i)
    seg = torch.tensor(segments)
    branch = torch.tensor(branches)
    n = len(ids)
    visible = (branch[None, :] == -1) | (branch[:, None] == branch[None, :])
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool)) & (seg[:, None] == seg[None, :]) & visible
    return TargetBatch(
        input_ids=torch.tensor([ids]),
        attention_mask=mask[None, None],
        position_ids=torch.tensor([positions]),
        target_rows=torch.zeros(len(cols), dtype=torch.long),
        target_cols=torch.tensor(cols, dtype=torch.long),
        target_ids=torch.tensor(targets, dtype=torch.long),
        target_example=torch.tensor(owner, dtype=torch.long),
        n_examples=len(encoded),
        prompt_spans=tuple(spans),
    )


def stack_packed(rows: Sequence[TargetBatch], pad_id: int) -> TargetBatch:
    """Packed batches (:func:`pack_causal`, one row each) left-padded to one width and stacked.

    Each keeps its mask, positions, targets and prompt spans (shifted by its padding); the
    examples are numbered on across rows. A pad attends only to itself: a query that sees
    nothing would turn its row into NaN.
    """
    width = max(r.input_ids.shape[1] for r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1, 1)
    target_rows, target_cols, target_ids, owners = [], [], [], []
    spans: list[tuple[int, int]] = []
    examples = 0
    for b, row in enumerate(rows):
        assert row.position_ids is not None and row.attention_mask is not None
        pad = width - row.input_ids.shape[1]
        input_ids[b, pad:] = row.input_ids[0]
        positions[b, pad:] = row.position_ids[0]
        mask[b, 0, pad:, pad:] = row.attention_mask[0, 0]
        target_rows.append(torch.full_like(row.target_cols, b))
        target_cols.append(row.target_cols + pad)
        target_ids.append(row.target_ids)
        owners.append(row.target_example + examples)
        spans.extend((start + pad, length) for start, length in row.prompt_spans)
        examples += row.n_examples
    return TargetBatch(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        target_rows=torch.cat(target_rows),
        target_cols=torch.cat(target_cols),
        target_ids=torch.cat(target_ids),
        target_example=torch.cat(owners),
        n_examples=examples,
        prompt_spans=tuple(spans),
    )


def pad_causal(encoded: Sequence[EncodedExample], pad_id: int) -> TargetBatch:
    """One right-padded row per example (the usual layout; used for training batches)."""
    seqs = [list(ex.prompt_ids) + list(ex.target_ids) for ex in encoded]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for i, (ex, seq) in enumerate(zip(encoded, seqs, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        for j, tok in enumerate(ex.target_ids):
            pos = len(ex.prompt_ids) + j - 1
            if pos >= 0:
                rows.append(i)
                cols.append(pos)
                targets.append(tok)
    return TargetBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=None,
        target_rows=torch.tensor(rows, dtype=torch.long),
        target_cols=torch.tensor(cols, dtype=torch.long),
        target_ids=torch.tensor(targets, dtype=torch.long),
        target_example=torch.tensor(rows, dtype=torch.long),
        n_examples=len(encoded),
    )


def pad_seq2seq(
    encoded: Sequence[EncodedExample], pad_id: int, decoder_start_id: int
) -> TargetBatch:
    """Padded encoder inputs and teacher-forced decoder inputs (targets shifted right)."""
    enc_width = max(1, max(len(ex.prompt_ids) for ex in encoded))
    dec_width = max(len(ex.target_ids) for ex in encoded)
    n = len(encoded)
    input_ids = torch.full((n, enc_width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, enc_width), dtype=torch.long)
    dec_ids = torch.full((n, dec_width), pad_id, dtype=torch.long)
    dec_mask = torch.zeros((n, dec_width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for i, ex in enumerate(encoded):
        input_ids[i, : len(ex.prompt_ids)] = torch.tensor(ex.prompt_ids, dtype=torch.long)
        attention[i, : len(ex.prompt_ids)] = 1
        shifted = [decoder_start_id, *ex.target_ids[:-1]]
        dec_ids[i, : len(shifted)] = torch.tensor(shifted)
        dec_mask[i, : len(shifted)] = 1
        for j, tok in enumerate(ex.target_ids):
            rows.append(i)
            cols.append(j)
            targets.append(tok)
    return TargetBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=None,
        target_rows=torch.tensor(rows, dtype=torch.long),
        target_cols=torch.tensor(cols, dtype=torch.long),
        target_ids=torch.tensor(targets, dtype=torch.long),
        target_example=torch.tensor(rows, dtype=torch.long),
        n_examples=n,
        decoder_input_ids=dec_ids,
        decoder_attention_mask=dec_mask,
    )


def sliding_window(model: PreTrainedModel) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 2/3, Mistral), else
    None. Our packed rows pass a 4D mask, which such models use as it is in every layer, and
    their KV cache keeps only the window: packing is exact only for sequences within it."""
    config = getattr(_unwrap(model), "config", None)
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return window if getattr(config, "use_sliding_window", True) else None


def fits_window(model: PreTrainedModel, lengths: Sequence[int]) -> bool:
    """Whether sequences of these lengths are all within ``model``'s sliding window (or it has
    none), so that packing them gives what the model's own masks give."""
    window = sliding_window(model)
    return window is None or max(lengths, default=0) <= window


_MASK_KINDS = frozenset({"full_attention", "sliding_attention"})


def _layer_kinds(model: PreTrainedModel) -> set[str]:
    """The kinds of attention layer of a model with a sliding window (all sliding when its
    config does not say)."""
    return set(getattr(_unwrap(model).config, "layer_types", None) or ["sliding_attention"])


@functools.cache
def _takes_mask_mapping(module_type: Any) -> bool:
    # transformers' models that build a mask per layer kind take that mapping ready-made.
    try:
        source = inspect.getsource(module_type.forward)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping := attention_mask, dict" in source


def windowed_masks(model: PreTrainedModel) -> bool:
    """Whether our masks can carry ``model``'s sliding window, so that packed rows and their
    KV cache are exact at any length: every layer slides (one mask serves all), or the layers
    are full and sliding and the model takes a mask per kind (Gemma 2/3, Qwen 2/3, ...)."""
    if sliding_window(model) is None:
        return True
    kinds = _layer_kinds(model)
    if not kinds <= _MASK_KINDS:
        return False
    if kinds == {"sliding_attention"}:
        return True
    inner = _unwrap(model)
    module: Any = inner.base_model if hasattr(inner, "base_model") else inner
    return _takes_mask_mapping(module.__class__)


def can_pack(model: PreTrainedModel, lengths: Sequence[int]) -> bool:
    """Whether sequences of these lengths can be packed (our masks, one row, a shared cache)
    and give what the model's own masks give."""
    return windowed_masks(model) or fits_window(model, lengths)


def _window_masks(
    model: PreTrainedModel, mask: torch.Tensor, query_positions: torch.Tensor,
    key_positions: torch.Tensor,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """``mask`` ([batch, 1, queries, keys], True = attend) for each kind of layer of a model
    with a sliding window: a sliding layer also hides keys ``window`` or more positions back."""
    window = sliding_window(model)
    assert window is not None
    near = (query_positions[:, None, :, None] - key_positions[:, None, None, :]) < window
    sliding = mask & near
    if _layer_kinds(model) == {"sliding_attention"}:
        return sliding
    return {"full_attention": mask, "sliding_attention": sliding}


def make_batch(
    encoded: Sequence[EncodedExample],
    model: PreTrainedModel,
    *,
    packed: bool = True,
) -> TargetBatch:
    """The right batch layout for ``model``: packed (causal, default), padded, or seq2seq.

    Packing falls back to padded rows when an example is longer than the model's sliding
    window (:func:`sliding_window`) and our masks cannot carry the window
    (:func:`windowed_masks`).
    """
    config = model.config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    if config.is_encoder_decoder:
        start = config.decoder_start_token_id
        return pad_seq2seq(encoded, pad_id, start if start is not None else pad_id)
    if packed and not can_pack(model, [len(e.prompt_ids) + len(e.target_ids) for e in encoded]):
        packed = False
    return pack_causal(encoded) if packed else pad_causal(encoded, pad_id)


def repeat_batch(batch: TargetBatch, groups: int) -> TargetBatch:
    """``groups`` copies of ``batch`` stacked along the batch dimension (copy g after copy g-1)."""
    if groups == 1:
        return batch
    rows_per_group = batch.input_ids.shape[0]

    def rep(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.repeat(groups, *([1] * (t.dim() - 1)))

    return TargetBatch(
        input_ids=rep(batch.input_ids),  # type: ignore[arg-type]
        attention_mask=rep(batch.attention_mask),
        position_ids=rep(batch.position_ids),
        target_rows=torch.cat([batch.target_rows + g * rows_per_group for g in range(groups)]),
        target_cols=batch.target_cols.repeat(groups),
        target_ids=batch.target_ids.repeat(groups),
        target_example=batch.target_example.repeat(groups),
        n_examples=batch.n_examples,
        decoder_input_ids=rep(batch.decoder_input_ids),
        decoder_attention_mask=rep(batch.decoder_attention_mask),
    )


def _head_only_ok(model: PreTrainedModel) -> bool:
    # Models that rescale or soft-cap logits after the head need the model's own forward.
    config = model.config
    return (
        not config.is_encoder_decoder
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
        and model.get_output_embeddings() is not None
        and hasattr(model, "base_model")
        and model.base_model is not model
    )


def _unwrap(model: PreTrainedModel) -> PreTrainedModel:
    if hasattr(model, "get_base_model"):  # a PeftModel: its LoRA layers live in the model
        unwrap: Any = model.get_base_model
        return unwrap()
    return model


def _cache_name(module: Any) -> str:
    # transformers 5 calls the KV cache argument and output ``cache``; earlier releases
    # ``past_key_values``.
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def causal_logits_at(
    model: PreTrainedModel,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    cache: Any = None,
    use_cache: bool = False,
    key_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """Logits ``[len(rows), vocab]`` of a causal model at positions ``(rows, cols)`` only, and,
    with ``use_cache``, its KV cache (extended in place when ``cache`` is given).

    A 4D ``attention_mask`` is ours (True = attend). For a model with a sliding window
    (:func:`windowed_masks`) the window is added to it from the positions of the queries
    (``position_ids``) and of the keys (``key_positions``: the cached ones, then these; by
    default ``position_ids``), and a new cache keeps every position, not only the window, for
    the mask to choose from.
    """
    model = _unwrap(model)
    head_only = _head_only_ok(model)
    module: Any = model.base_model if head_only else model
    name = _cache_name(module)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": use_cache,
    }
    if (attention_mask is not None and attention_mask.dim() == 4
            and sliding_window(model) is not None):
        assert position_ids is not None and windowed_masks(model)
        keys = position_ids if key_positions is None else key_positions
        kwargs["attention_mask"] = _window_masks(model, attention_mask, position_ids, keys)
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
    if cache is not None:
        kwargs[name] = cache
    out = module(**kwargs)
    new_cache = getattr(out, name, None) if use_cache else None
    if head_only:
        head: Any = model.get_output_embeddings()
        return head(out.last_hidden_state[rows, cols]), new_cache
    return out.logits[rows, cols], new_cache


def target_logits(model: PreTrainedModel, batch: TargetBatch) -> torch.Tensor:
    """Logits ``[n_target_tokens, vocab]`` at the target positions only."""
    if batch.decoder_input_ids is None:
        logits, _ = causal_logits_at(
            model,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            rows=batch.target_rows,
            cols=batch.target_cols,
        )
        return logits
    out = _unwrap(model)(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=batch.decoder_input_ids,
        decoder_attention_mask=batch.decoder_attention_mask,
        use_cache=False,
    )
    return out.logits[batch.target_rows, batch.target_cols]


def target_token_losses(model: PreTrainedModel, batch: TargetBatch) -> torch.Tensor:
    """Cross-entropy of every target token, float32, ``[n_target_tokens]``."""
    logits = target_logits(model, batch)
    return F.cross_entropy(logits.float(), batch.target_ids, reduction="none")


def mean_target_loss(model: PreTrainedModel, batch: TargetBatch, groups: int = 1) -> torch.Tensor:
    """Mean target-token cross-entropy per group ``[groups]`` (``batch`` repeated ``groups``x)."""
    losses = target_token_losses(model, batch)
    return losses.view(groups, -1).mean(dim=1)
