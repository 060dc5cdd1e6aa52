"""Small pure functions on LoRA tensors (tested alone, as in peft's merge_utils).

Conventions follow PEFT: for one layer, ``A`` is ``[r, in]``, ``B`` is ``[out, r]`` and the
update is ``delta = scale * B @ A`` with ``scale = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's scaling factor of a LoRA update."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def lorahub_compose(
    a_stack: torch.Tensor, b_stack: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LoraHub composition of one layer: ``(sum_i w_i A_i, sum_i w_i B_i)``.

    ``a_stack`` is ``[n, r, in]``, ``b_stack`` is ``[n, out, r]``, ``weights`` is ``[n]``.
    """
    a = torch.einsum("n,nri->ri", weights.to(a_stack.dtype), a_stack)
    b = torch.einsum("n,nor->or", weights.to(b_stack.dtype), b_stack)
    return a, b


def lorahub_delta(
    a_stack: torch.Tensor, b_stack: torch.Tensor, weights: torch.Tensor, scale: float
) -> torch.Tensor:
    """The weight update of the LoraHub composition: ``scale * (sum w B)(sum w A)``."""
    a, b = lorahub_compose(a_stack, b_stack, weights)
    return scale * (b @ a)


def weighted_sum_delta(
    a_list: Sequence[torch.Tensor],
    b_list: Sequence[torch.Tensor],
    scales: Sequence[float],
    weights: Sequence[float],
) -> torch.Tensor:
    """The exact weighted sum of updates ``sum_i w_i * s_i * B_i A_i`` (any ranks)."""
    total = torch.zeros(b_list[0].shape[0], a_list[0].shape[1], dtype=torch.float64)
    for a, b, s, w in zip(a_list, b_list, scales, weights, strict=True):
        total += float(w) * float(s) * (b.double() @ a.double())
    return total


def concat_lora(
    a_list: Sequence[torch.Tensor],
    b_list: Sequence[torch.Tensor],
    scales: Sequence[float],
    weights: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA of rank ``sum r_i`` (scale 1) whose update is exactly ``sum w_i s_i B_i A_i``.

    A is the candidates' A stacked on the rank axis; B is their B side by side, each block
    multiplied by its weight and scale.
    """
    a = torch.cat(list(a_list), dim=0)
    b = torch.cat(
        [float(w) * float(s) * blk for blk, s, w in zip(b_list, scales, weights, strict=True)],
        dim=1,
    )
    return a, b


def svd_compress(
    a: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` approximation of ``b @ a`` as a LoRA pair; also the energy kept.

    Works on the factors (QR of each, then an SVD of the small core), never forming the full
    ``[out, in]`` matrix. Energy kept is ``sum of kept sigma^2 / sum of all sigma^2``.
    The returned pair splits the singular values evenly: ``B = U sqrt(S)``, ``A = sqrt(S) V^T``.
    """
    a64, b64 = a.double(), b.double()
    q_b, r_b = torch.linalg.qr(b64)  # b = q_b r_b, q_b [out, R]
    q_a, r_a = torch.linalg.qr(a64.T)  # a^T = q_a r_a, q_a [in, R]
    core = r_b @ r_a.T  # b a = q_b core q_a^T
    u, s, vh = torch.linalg.svd(core)
    total = float((s**2).sum())
    k = min(rank, s.numel())
    kept = float((s[:k] ** 2).sum())
    root = s[:k].sqrt()
    new_b = (q_b @ u[:, :k]) * root
    new_a = root[:, None] * (vh[:k] @ q_a.T)
    if k < rank:  # pad with zero directions so the declared rank holds
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], rank - k)], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(rank - k, new_a.shape[1])], dim=0)
    energy = kept / total if total > 0 else 1.0
    return new_a.to(a.dtype), new_b.to(b.dtype), energy
