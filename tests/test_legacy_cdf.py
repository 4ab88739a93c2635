"""The original LM streams' quantized CDF: reference numerics, and never an empty or negative range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ecdc_stream.entropy.legacy_cdf import build_stable_quantized_cdf

TOTAL = 1 << 24


def reference_cdf(pdf: torch.Tensor) -> np.ndarray:
    """The reference's formula, written with the torch operations it uses (float32 tensor, float scalars)."""
    card = pdf.shape[-1]
    alpha = 2 * card / TOTAL
    rounded = (pdf / 1e-8).floor() * 1e-8
    counts = (((1 - alpha) * TOTAL) * rounded).floor().long() + 2
    return torch.cumsum(counts, dim=-1).numpy()


@settings(max_examples=200, deadline=None)
@given(
    card=st.sampled_from([2, 16, 1024]),
    temperature=st.sampled_from([0.5, 1.0, 5.0, 30.0]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_cdf_equals_reference_on_softmax(card: int, temperature: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    pdf = torch.softmax(torch.randn(card, generator=generator) * temperature, dim=0)

    expected = reference_cdf(pdf)
    cdf = build_stable_quantized_cdf(pdf.numpy())

    assert cdf.dtype == np.int64
    if expected[-1] <= TOTAL:
        assert np.array_equal(cdf, expected)
    else:
        # The reference overflowed 2**24: entries it kept inside the range with room for the
        # codes after them are unchanged, the rest are capped.
        room = 2 * np.arange(card - 1, -1, -1)
        kept = expected <= TOTAL - room
        assert np.array_equal(cdf[kept], expected[kept])
        assert cdf[-1] <= TOTAL


def test_cdf_batch_rows_are_independent() -> None:
    torch.manual_seed(0)
    pdfs = torch.softmax(torch.randn(5, 64) * 4, dim=-1).numpy()

    batch = build_stable_quantized_cdf(pdfs)

    assert batch.shape == (5, 64)
    for row in range(5):
        assert np.array_equal(batch[row], build_stable_quantized_cdf(pdfs[row]))


def test_cdf_overflowing_total_is_capped() -> None:
    # Probabilities that sum to far more than 1 push the reference's total past 2**24.
    pdf = np.full(16, 0.5, dtype=np.float32)

    cdf = build_stable_quantized_cdf(pdf)

    counts = np.diff(cdf, prepend=0)
    assert cdf[-1] <= TOTAL
    assert counts.min() >= 2


def test_cdf_one_hot_gives_minimum_to_others() -> None:
    pdf = np.zeros(8, dtype=np.float32)
    pdf[3] = 1.0

    counts = np.diff(build_stable_quantized_cdf(pdf), prepend=0)

    assert counts[3] > TOTAL - 100
    assert [int(c) for i, c in enumerate(counts) if i != 3] == [2] * 7


any_floats = hnp.arrays(
    dtype=np.float32,
    shape=st.integers(min_value=1, max_value=300),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
)


@settings(max_examples=300, deadline=None)
@given(any_floats)
def test_cdf_ranges_positive_for_any_input(pdf: np.ndarray) -> None:
    cdf = build_stable_quantized_cdf(pdf)

    counts = np.diff(cdf, prepend=0)
    assert counts.shape == pdf.shape
    assert int(counts.min()) >= 2
    assert int(cdf[-1]) <= TOTAL


@pytest.mark.parametrize(
    "pdf",
    [
        np.zeros(16, dtype=np.float32),
        np.full(16, np.nan, dtype=np.float32),
        np.full(16, -1.0, dtype=np.float32),
        np.full(16, np.inf, dtype=np.float32),
        np.full(16, np.float32(1e-45), dtype=np.float32),
        np.array([np.finfo(np.float32).max] * 4 + [-np.inf] * 4, dtype=np.float32),
    ],
    ids=["zeros", "nan", "negative", "inf", "denormal", "huge"],
)
def test_cdf_ranges_positive_for_degenerate_input(pdf: np.ndarray) -> None:
    counts = np.diff(build_stable_quantized_cdf(pdf), prepend=0)

    assert int(counts.min()) >= 2
    assert int(counts.sum()) <= TOTAL


def test_cdf_zero_probabilities_get_min_range() -> None:
    counts = np.diff(build_stable_quantized_cdf(np.zeros(4, dtype=np.float32)), prepend=0)

    assert counts.tolist() == [2, 2, 2, 2]


def test_cdf_rejects_min_range_below_two() -> None:
    with pytest.raises(ValueError, match="min_range"):
        build_stable_quantized_cdf(np.ones(4, dtype=np.float32) / 4, min_range=1)


def test_cdf_rejects_too_many_codes() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        build_stable_quantized_cdf(np.ones(9, dtype=np.float32) / 9, total_range_bits=4)


def test_cdf_rejects_empty_pdf() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_stable_quantized_cdf(np.zeros(0, dtype=np.float32))
