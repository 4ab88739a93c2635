"""Integer CDFs for the range coder, built from integer logits.

A logit here is an integer in units of 2^-LOGIT_FRAC_BITS nats. `counts_from_logits` turns the
logits of each distribution into integer symbol counts that

- are each at least `min_range`, so every symbol stays codable, and
- sum to exactly 2^count_precision,

whatever the input: the logits are clamped first, the exponentials come from an exact table,
and every step is an int64 operation whose bounds are stated where it happens. Float logits
(from a float LM, or from a test) go through `quantize_logits` first, which maps NaN and
infinities to finite integers.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ecdc_stream.entropy.tables import exp_table

LOGIT_FRAC_BITS = 8

# The exponential of the softmax: round(2^EXP_BITS * exp(-u / 2^LOGIT_FRAC_BITS)).
EXP_BITS = 30

# Logits are clamped to this magnitude, in logit units (2^40 / 2^8 = 2^32 nats), so that
# differences of two logits stay far inside int64.
LOGIT_LIMIT = 1 << 40

MIN_COUNT_PRECISION = 8
MAX_COUNT_PRECISION = 32


@functools.lru_cache(maxsize=None)
def _exp_tensor(device: str) -> torch.Tensor:
    return torch.from_numpy(exp_table(LOGIT_FRAC_BITS, EXP_BITS).copy()).to(device)


def check_cdf_parameters(num_symbols: int, count_precision: int, min_range: int) -> None:
    """Raise ValueError unless `num_symbols` symbols of `min_range` each fit in half the total."""
    if not MIN_COUNT_PRECISION <= count_precision <= MAX_COUNT_PRECISION:
        raise ValueError(
            f"count precision {count_precision} bits is outside [{MIN_COUNT_PRECISION}, {MAX_COUNT_PRECISION}]"
        )
    if min_range < 1:
        raise ValueError(f"minimum range {min_range} must be at least 1")
    if num_symbols < 1 or num_symbols * min_range > 1 << (count_precision - 1):
        raise ValueError(
            f"{num_symbols} symbols with a minimum range of {min_range} take more than half of 2^{count_precision}"
        )


def quantize_logits(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Convert float logits in nats to integer logits in units of 2^-LOGIT_FRAC_BITS nats.

    NaN and -inf become -LOGIT_LIMIT (the least likely value), +inf becomes +LOGIT_LIMIT, and
    finite values are clamped to [-LOGIT_LIMIT, LOGIT_LIMIT] before rounding half to even.
    Returns int64 of the input's shape.
    """
    values = torch.as_tensor(logits).to(torch.float64)
    limit = float(LOGIT_LIMIT)
    values = torch.nan_to_num(values * (1 << LOGIT_FRAC_BITS), nan=-limit, posinf=limit, neginf=-limit)
    values = torch.clamp(values, -limit, limit)
    return torch.round(values).to(torch.int64)


def counts_from_logits(logits: torch.Tensor, count_precision: int, min_range: int) -> torch.Tensor:
    """Build integer symbol counts from integer logits `[..., n]`.

    Returns int64 `[..., n]`: each count is at least `min_range` and every row sums to exactly
    2^count_precision. The remainder that flooring leaves goes to the most likely symbol (the
    first one among equals).
    """
    num_symbols = int(logits.shape[-1])
    check_cdf_parameters(num_symbols, count_precision, min_range)
    table = _exp_tensor(str(logits.device))

    # Differences from the row's maximum are in [0, 2 * LOGIT_LIMIT]; anything past the table's
    # end looks up its final entry, which is 0.
    clamped = torch.clamp(logits.to(torch.int64), -LOGIT_LIMIT, LOGIT_LIMIT)
    offsets = torch.clamp(clamped.amax(dim=-1, keepdim=True) - clamped, max=table.numel() - 1)
    weights = torch.take(table, offsets)

    # The maximum contributes 2^EXP_BITS, so the row sum is in [2^EXP_BITS, n * 2^EXP_BITS].
    # A weight times the free range is below 2^EXP_BITS * 2^MAX_COUNT_PRECISION = 2^62.
    total_weight = weights.sum(dim=-1, keepdim=True)
    free_range = (1 << count_precision) - num_symbols * min_range
    counts = torch.div(weights * free_range, total_weight, rounding_mode="floor") + min_range

    # Flooring loses less than one unit per symbol, so the remainder is in [0, n). It goes to
    # the first of the most likely symbols: torch documents that argmax returns the first
    # index among equal maxima, on every device.
    remainder = (1 << count_precision) - counts.sum(dim=-1, keepdim=True)
    return counts.scatter_add_(-1, torch.argmax(weights, dim=-1, keepdim=True), remainder)


def cdf_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Return the cumulative table `[..., n + 1]`, starting at 0 and ending at the total."""
    zeros = torch.zeros(counts.shape[:-1] + (1,), dtype=torch.int64, device=counts.device)
    return torch.cat([zeros, torch.cumsum(counts, dim=-1)], dim=-1)


def ideal_bits(counts: torch.Tensor, symbols: torch.Tensor, count_precision: int) -> float:
    """Return the information content in bits of `symbols` `[...]` under `counts` `[..., n]`."""
    chosen = counts.gather(-1, symbols.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    return float((count_precision - torch.log2(chosen)).sum()) if chosen.numel() else 0.0


def symbol_cost_bound(count_precision: int, min_range: int) -> float:
    """Return the most bits one symbol can cost: the total over the minimum range."""
    return count_precision - math.log2(min_range)
