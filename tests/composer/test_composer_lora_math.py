"""The pure tensor functions behind the composition methods."""

from __future__ import annotations

import torch

from composer.lora_math import (
    concat_lora,
    lora_scale,
    lorahub_compose,
    lorahub_delta,
    svd_compress,
    weighted_sum_delta,
)


def _stacks(n: int = 3, r: int = 4, d_in: int = 10, d_out: int = 7):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, r, d_in, generator=g), torch.randn(n, d_out, r, generator=g)


def test_lorahub_compose_is_the_weighted_sum_of_each_factor() -> None:
    a, b = _stacks()
    w = torch.tensor([0.5, -1.0, 0.25])
    ca, cb = lorahub_compose(a, b, w)
    torch.testing.assert_close(ca, 0.5 * a[0] - a[1] + 0.25 * a[2])
    torch.testing.assert_close(cb, 0.5 * b[0] - b[1] + 0.25 * b[2])
    torch.testing.assert_close(lorahub_delta(a, b, w, 2.0), 2.0 * cb @ ca)


def test_concat_lora_is_exactly_the_weighted_sum_of_updates_for_any_ranks() -> None:
    g = torch.Generator().manual_seed(1)
    a_list = [torch.randn(r, 6, generator=g) for r in (2, 4, 8)]
    b_list = [torch.randn(5, r, generator=g) for r in (2, 4, 8)]
    scales, weights = [2.0, 1.0, 0.5], [0.3, -0.7, 1.1]
    a, b = concat_lora(a_list, b_list, scales, weights)
    assert a.shape == (14, 6) and b.shape == (5, 14)
    torch.testing.assert_close(
        (b @ a).double(), weighted_sum_delta(a_list, b_list, scales, weights), rtol=1e-5, atol=1e-5
    )


def test_svd_compress_is_exact_at_full_rank_and_reports_energy() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(6, 20, generator=g, dtype=torch.float64)
    b = torch.randn(12, 6, generator=g, dtype=torch.float64)
    full_a, full_b, energy = svd_compress(a, b, 6)
    torch.testing.assert_close(full_b @ full_a, b @ a)
    assert abs(energy - 1.0) < 1e-12
    low_a, low_b, low_energy = svd_compress(a, b, 2)
    sigma = torch.linalg.svdvals(b @ a)
    expected = float((sigma[:2] ** 2).sum() / (sigma**2).sum())
    assert abs(low_energy - expected) < 1e-9
    # Eckart-Young: the error is the norm of the dropped singular values.
    err = torch.linalg.matrix_norm(b @ a - low_b @ low_a)
    assert abs(float(err) - float(sigma[2:].norm())) < 1e-9
    assert low_a.shape == (2, 20) and low_b.shape == (12, 2)


def test_svd_compress_pads_when_asked_for_more_rank_than_exists() -> None:
    a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pa, pb, energy = svd_compress(a, b, 3)
    assert pa.shape == (3, 5) and pb.shape == (4, 3)
    torch.testing.assert_close(pb @ pa, b @ a)
    assert energy == 1.0


def test_lora_scale() -> None:
    assert lora_scale(32, 16) == 2.0
    assert lora_scale(32, 16, use_rslora=True) == 8.0
