"""The quantized CDF of the original EnCodec LM streams (`build_stable_quantized_cdf` of encodec 0.1.2a3).

From a probability vector p over `card` codes the reference computes, in float32:

    p' = floor(p / 1e-8) * 1e-8                       (drop differences below 1e-8)
    count_i = floor(((1 - alpha) * 2**bits) * p'_i) + min_range,  alpha = min_range * card / 2**bits
    cdf = cumsum(count)                               (int64)

Each float32 operation here is the same IEEE operation on the same operands as the reference's
torch CPU kernels (a division and a multiplication by a float32 scalar, then floor), so the counts
are identical. numpy does them, so nothing here needs torch.

The reference trusts its input. Here every count is at least `min_range` and the total at most
`2**bits` for any input, so the arithmetic coder never gets an empty or out-of-range interval:

- NaN and negative probabilities count as 0, and values above 1 (and +inf) as 1. A softmax output
  is already in [0, 1], so this changes nothing the reference could have produced.
- The reference's total can exceed `2**bits` by a few counts when the probabilities sum to slightly
  more than 1 and the codebook is small (16 codes, say). Codes whose cumulative count passes
  `2**bits` then get an interval that leaves the coder's range, so no valid stream coded them.
  Here `cdf[i]` is capped at `2**bits - min_range * (card - 1 - i)`, the most that leaves
  `min_range` for each later code. The cap changes nothing in a CDF whose total fits in
  `2**bits`. In one that overflows, it keeps every entry up to the cap, and so the interval of
  every code that lies at least `min_range` per later code below `2**bits`.
"""

from __future__ import annotations

import numpy as np

ROUNDOFF = 1e-8
MIN_RANGE = 2
TOTAL_RANGE_BITS = 24


def build_stable_quantized_cdf(
    pdf: np.ndarray,
    total_range_bits: int = TOTAL_RANGE_BITS,
    roundoff: float = ROUNDOFF,
    min_range: int = MIN_RANGE,
) -> np.ndarray:
    """Quantize the probabilities `pdf` [..., card] into the reference's cumulative counts.

    Accepts one distribution [card] or a batch [N, card] (for example all codebooks of a frame,
    each row computed independently). Returns int64 of the same shape: `cdf[..., i]` is the sum of
    the counts of codes 0..i. Every count is >= `min_range` and `cdf[..., -1] <= 2**total_range_bits`.

    Raises ValueError if `min_range < 2` or `min_range * card > 2**total_range_bits`.
    """
    probabilities = np.asarray(pdf, dtype=np.float32)
    if probabilities.ndim == 0 or probabilities.shape[-1] == 0:
        raise ValueError(f"a CDF needs at least one probability, got shape {probabilities.shape}")
    if min_range < 2:
        raise ValueError(f"min_range must be at least 2, got {min_range}")
    card = probabilities.shape[-1]
    total_range = 1 << total_range_bits
    alpha = min_range * card / total_range
    if alpha > 1:
        raise ValueError(f"{card} codes with min_range {min_range} do not fit in {total_range_bits} bits")

    # Clamping into [0, 1] changes no softmax output, and it keeps NaN, inf and negative values
    # from turning into negative or overflowing counts below.
    probabilities = np.nan_to_num(probabilities, nan=0.0, posinf=1.0, neginf=0.0)
    probabilities = np.clip(probabilities, np.float32(0.0), np.float32(1.0))

    # The reference's float32 steps: torch converts the Python float scalars to float32 first.
    if roundoff:
        step = np.float32(roundoff)
        probabilities = np.floor(probabilities / step) * step
    scale = np.float32((1 - alpha) * total_range)
    counts = np.floor(scale * probabilities).astype(np.int64) + min_range

    # Cap the cumulative counts so that each later code keeps `min_range`. The cap is the
    # identity whenever the reference's total fits in 2**bits (see the module docstring).
    # NOTE: a reference stream that coded a code lying within that margin of the top of an
    # overflowing CDF decodes differently here. None of the golden reference streams overflows.
    cdf = np.cumsum(counts, axis=-1)
    room_after = min_range * np.arange(card - 1, -1, -1, dtype=np.int64)
    return np.minimum(cdf, total_range - room_after)
