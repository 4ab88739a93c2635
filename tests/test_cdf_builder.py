"""The integer CDF builder: every symbol keeps a positive range and the total is exact, always."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ecdc_stream.entropy import cdf

SPECIAL_FLOATS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, -5e-324, 2.2e-308, 1e308, -1e308, 3.4e38, -3.4e38]


def check_counts(counts: torch.Tensor, count_precision: int, min_range: int) -> None:
    assert counts.dtype == torch.int64
    assert int(counts.min()) >= min_range
    assert torch.all(counts.sum(dim=-1) == 1 << count_precision)
    cumulative = cdf.cdf_from_counts(counts)
    assert torch.all(cumulative[..., 1:] > cumulative[..., :-1])
    assert torch.all(cumulative[..., 0] == 0)
    assert torch.all(cumulative[..., -1] == 1 << count_precision)


def parameters(num_symbols: int):
    """Count precisions and minimum ranges that fit num_symbols symbols."""
    return st.integers(cdf.MIN_COUNT_PRECISION, cdf.MAX_COUNT_PRECISION).flatmap(
        lambda bits: st.tuples(
            st.just(bits),
            st.integers(1, max(1, (1 << (bits - 1)) // num_symbols)),
        )
    ).filter(lambda pair: num_symbols * pair[1] <= 1 << (pair[0] - 1))


float_rows = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32]),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 128)),
    elements=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(SPECIAL_FLOATS)),
)


# Special values that overflow float32 become infinities when hypothesis casts them, which is fine.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@settings(max_examples=300, deadline=None)
@given(logits=float_rows, data=st.data())
def test_float_logits_give_valid_counts(logits, data):
    count_precision, min_range = data.draw(parameters(logits.shape[-1]))
    counts = cdf.counts_from_logits(cdf.quantize_logits(logits), count_precision, min_range)
    check_counts(counts, count_precision, min_range)


@settings(max_examples=300, deadline=None)
@given(
    logits=hnp.arrays(
        dtype=np.int64,
        shape=st.tuples(st.integers(1, 3), st.integers(1, 64)),
        elements=st.integers(-(2**63), 2**63 - 1),
    ),
    data=st.data(),
)
def test_integer_logits_give_valid_counts(logits, data):
    count_precision, min_range = data.draw(parameters(logits.shape[-1]))
    counts = cdf.counts_from_logits(torch.from_numpy(logits), count_precision, min_range)
    check_counts(counts, count_precision, min_range)


@pytest.mark.parametrize(
    "row",
    [
        np.zeros(1024),
        np.eye(1024)[17] * 1e6,
        np.eye(1024)[0] * -1e30,
        np.full(1024, np.nan),
        np.full(1024, np.inf),
        np.full(1024, -np.inf),
        np.full(1024, 5e-324),
        np.where(np.arange(1024) % 2, np.inf, -np.inf),
        np.where(np.arange(1024) % 3, np.nan, 1e300),
    ],
    ids=["all-zero", "one-hot", "one-very-negative", "nan", "inf", "minus-inf", "denormal", "alternating-inf", "nan-and-huge"],
)
def test_edge_rows_give_valid_counts(row):
    counts = cdf.counts_from_logits(cdf.quantize_logits(row[None]), 24, 2)
    check_counts(counts, 24, 2)


def test_uniform_logits_give_equal_counts():
    counts = cdf.counts_from_logits(torch.zeros(1, 1024, dtype=torch.int64), 24, 2)
    assert int(counts.max() - counts.min()) == 0


def test_one_hot_gives_minimum_elsewhere():
    logits = torch.zeros(1, 1024, dtype=torch.int64)
    logits[0, 5] = 100 << cdf.LOGIT_FRAC_BITS
    counts = cdf.counts_from_logits(logits, 24, 2)
    assert int(counts[0, 5]) == (1 << 24) - 2 * 1023
    assert torch.all(counts[0, torch.arange(1024) != 5] == 2)


def test_remainder_goes_to_first_maximum():
    logits = torch.tensor([[0, 256, 256, 0, 0]], dtype=torch.int64)
    counts = cdf.counts_from_logits(logits, 8, 1)
    assert int(counts[0, 1]) >= int(counts[0, 2])
    assert int(counts.sum()) == 256


def test_counts_follow_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 1024, generator=generator, dtype=torch.float64) * 3
    counts = cdf.counts_from_logits(cdf.quantize_logits(logits), 24, 2)
    probabilities = torch.softmax(logits, dim=-1)
    likely = probabilities > 1e-4
    relative = (counts.double() / 2**24)[likely] / probabilities[likely]
    assert float((relative - 1).abs().max()) < 0.01
    ideal = -(probabilities * torch.log2(probabilities)).sum()
    coded = -(probabilities * torch.log2(counts.double() / 2**24)).sum()
    assert float(coded - ideal) / float(ideal) < 1e-3


def test_quantize_maps_specials():
    values = cdf.quantize_logits(np.array([np.nan, np.inf, -np.inf, 1.0, -1e300]))
    assert values.tolist() == [-cdf.LOGIT_LIMIT, cdf.LOGIT_LIMIT, -cdf.LOGIT_LIMIT, 256, -cdf.LOGIT_LIMIT]


@pytest.mark.parametrize(
    ("num_symbols", "count_precision", "min_range"),
    [(1024, 7, 1), (1024, 33, 1), (1024, 24, 0), (1024, 10, 1), (0, 24, 1), (3, 8, 64)],
)
def test_invalid_parameters_are_rejected(num_symbols, count_precision, min_range):
    with pytest.raises(ValueError):
        cdf.check_cdf_parameters(num_symbols, count_precision, min_range)


def test_symbol_cost_bound():
    assert cdf.symbol_cost_bound(24, 2) == 23
    counts = cdf.counts_from_logits(torch.tensor([[0, -(10**9)]]), 24, 2)
    assert math.isclose(cdf.ideal_bits(counts, torch.tensor([1]), 24), 23.0)
