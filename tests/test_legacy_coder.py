"""The original arithmetic coder: round trips, the reference's float scaling, and bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecdc_stream.entropy.legacy_cdf import build_stable_quantized_cdf
from ecdc_stream.entropy.legacy_coder import ArithmeticDecoder, ArithmeticEncoder
from ecdc_stream.errors import InvalidStreamError

BITS = 24


def random_cdfs(seed: int, steps: int, card: int, sharpness: float) -> tuple[list[np.ndarray], list[int]]:
    """Draw `steps` random distributions and one code from each; return their CDFs and the codes."""
    rng = np.random.default_rng(seed)
    cdfs = []
    codes = []
    for _ in range(steps):
        logits = rng.standard_normal(card) * sharpness
        weights = np.exp(logits - logits.max())
        pdf = weights / weights.sum()
        cdfs.append(build_stable_quantized_cdf(pdf.astype(np.float32)))
        # Mostly likely codes, sometimes a uniformly drawn one (possibly very unlikely).
        if rng.random() < 0.8:
            codes.append(int(rng.choice(card, p=pdf)))
        else:
            codes.append(int(rng.integers(card)))
    return cdfs, codes


def encode(cdfs: list[np.ndarray], codes: list[int]) -> bytes:
    encoder = ArithmeticEncoder(BITS)
    for cdf, code in zip(cdfs, codes):
        encoder.push(code, cdf)
    return encoder.finish()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    steps=st.integers(min_value=0, max_value=200),
    card=st.sampled_from([2, 3, 16, 1024]),
    sharpness=st.sampled_from([0.1, 1.0, 8.0, 40.0]),
)
def test_coder_round_trip_random_cdfs(seed: int, steps: int, card: int, sharpness: float) -> None:
    cdfs, codes = random_cdfs(seed, steps, card, sharpness)
    data = encode(cdfs, codes)
    trailer = b"\xa5\x5a"
    stream = io.BytesIO(data + trailer)

    decoder = ArithmeticDecoder(stream, BITS)
    decoded = [decoder.pull(cdf) for cdf in cdfs]

    assert decoded == codes
    # The decoder stops exactly at the end of the encoder's bytes.
    assert stream.read() == trailer


@settings(max_examples=500, deadline=None)
@given(
    cdf_value=st.integers(min_value=0, max_value=1 << BITS),
    delta=st.integers(min_value=1 << BITS, max_value=(1 << (BITS + 1)) - 1),
)
def test_integer_scaling_equals_reference_float(cdf_value: int, delta: int) -> None:
    # The reference computes ceil/floor(cdf_value * (delta / 2**24)) in float64.
    scale = delta / 2**BITS

    assert (cdf_value * delta + (1 << BITS) - 1) >> BITS == int(math.ceil(cdf_value * scale))
    assert (cdf_value * delta) >> BITS == int(math.floor(cdf_value * scale))


def test_coder_known_bytes_for_uniform_codes() -> None:
    # Four codes of equal count: each code is two bits, in order, low bit first in the bytes.
    cdf = build_stable_quantized_cdf(np.full(4, 0.25, dtype=np.float32))
    codes = [0, 1, 2, 3, 3, 2, 1, 0]

    data = encode([cdf] * len(codes), codes)

    decoder = ArithmeticDecoder(io.BytesIO(data), BITS)
    assert [decoder.pull(cdf) for _ in codes] == codes
    assert len(data) == 5


def test_decoder_truncated_data_raises() -> None:
    cdfs, codes = random_cdfs(1, 300, 16, 1.0)
    data = encode(cdfs, codes)

    for cut in range(len(data)):
        decoder = ArithmeticDecoder(io.BytesIO(data[:cut]), BITS, source="cut.ecdc")
        with pytest.raises(InvalidStreamError, match="cut.ecdc ends inside"):
            for cdf in cdfs:
                decoder.pull(cdf)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=0, max_size=64), seed=st.integers(min_value=0, max_value=1000))
def test_decoder_garbage_decodes_or_raises(data: bytes, seed: int) -> None:
    # Gaps between the scaled intervals make some bit patterns invalid. Either way the decoder
    # returns a valid code or raises InvalidStreamError, and stops when the data ends.
    cdfs, _ = random_cdfs(seed, 400, 16, 8.0)
    decoder = ArithmeticDecoder(io.BytesIO(data), BITS)

    try:
        for cdf in cdfs:
            code = decoder.pull(cdf)
            assert 0 <= code < 16
    except InvalidStreamError:
        pass


def test_encoder_rejects_code_outside_cdf() -> None:
    cdf = build_stable_quantized_cdf(np.full(4, 0.25, dtype=np.float32))

    with pytest.raises(ValueError, match="code 4"):
        ArithmeticEncoder(BITS).push(4, cdf)


def test_encoder_rejects_cdf_above_total() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        ArithmeticEncoder(BITS).push(0, [2, (1 << BITS) + 1])


def test_encoder_rejects_empty_interval() -> None:
    # A code whose count is 0 has no interval.
    with pytest.raises(ValueError, match="empty interval"):
        ArithmeticEncoder(BITS).push(1, [1 << 23, 1 << 23, 1 << 24])


def test_encoder_rejects_push_after_finish() -> None:
    encoder = ArithmeticEncoder(BITS)
    encoder.finish()

    with pytest.raises(RuntimeError, match="after finish"):
        encoder.push(0, [2, 4])


def test_empty_encoder_writes_nothing() -> None:
    assert ArithmeticEncoder(BITS).finish() == b""
