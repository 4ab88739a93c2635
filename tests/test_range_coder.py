"""The range coder: lossless round trips, near-ideal length, and clean failure on bad bytes."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecdc_stream.entropy.range_coder import MAX_TOTAL_BITS, RangeCoderError, RangeDecoder, RangeEncoder


@st.composite
def coded_symbols(draw):
    """A total precision and a list of (cdf, symbol) pairs, cdf of length n + 1 from 0 to 2^bits."""
    total_bits = draw(st.integers(1, MAX_TOTAL_BITS))
    total = 1 << total_bits
    items = []
    for _ in range(draw(st.integers(0, 60))):
        num_symbols = draw(st.integers(1, min(12, total)))
        cuts = draw(st.lists(st.integers(1, total - 1), min_size=num_symbols - 1, max_size=num_symbols - 1, unique=True)) if num_symbols > 1 else []
        cdf = [0, *sorted(cuts), total]
        items.append((cdf, draw(st.integers(0, len(cdf) - 2))))
    return total_bits, items


def encode(total_bits: int, items) -> bytes:
    encoder = RangeEncoder(total_bits)
    for cdf, symbol in items:
        encoder.encode(cdf[symbol], cdf[symbol + 1] - cdf[symbol])
    return encoder.finish()


@settings(max_examples=400, deadline=None)
@given(coded_symbols())
def test_round_trip(case):
    total_bits, items = case
    data = encode(total_bits, items)
    decoder = RangeDecoder(data, total_bits)
    assert [decoder.decode(cdf) for cdf, _ in items] == [symbol for _, symbol in items]


@settings(max_examples=200, deadline=None)
@given(coded_symbols())
def test_encode_all_matches_encode(case):
    total_bits, items = case
    encoder = RangeEncoder(total_bits)
    encoder.encode_all([cdf[s] for cdf, s in items], [cdf[s + 1] - cdf[s] for cdf, s in items])
    assert encoder.finish() == encode(total_bits, items)


def test_length_is_near_ideal():
    generator = random.Random(1)
    encoder = RangeEncoder(24)
    ideal = 0.0
    symbols = []
    for _ in range(20000):
        frequency = generator.randint(1, (1 << 24) - 1)
        low = generator.randint(0, (1 << 24) - frequency)
        symbols.append((low, frequency))
        ideal += 24 - math.log2(frequency)
        encoder.encode(low, frequency)
    data = encoder.finish()
    assert len(data) * 8 <= ideal + 16

    decoder = RangeDecoder(data, 24)
    for low, frequency in symbols:
        assert low <= decoder.target() < low + frequency
        decoder.consume(low, frequency)


def test_carries_through_long_runs_of_ff():
    # Alternating the top and bottom symbol of 2^8 with frequency 1 drives low through long
    # runs of 0xFF bytes that a later carry must ripple through.
    generator = random.Random(2)
    choices = [generator.choice([(255, 1), (0, 1), (254, 2)]) for _ in range(5000)]
    encoder = RangeEncoder(8)
    for low, frequency in choices:
        encoder.encode(low, frequency)
    decoder = RangeDecoder(encoder.finish(), 8)
    for low, frequency in choices:
        assert low <= decoder.target() < low + frequency
        decoder.consume(low, frequency)


def test_empty_stream_is_empty():
    assert RangeEncoder(24).finish() == b""


def test_certain_symbols_cost_nothing():
    encoder = RangeEncoder(16)
    for _ in range(1000):
        encoder.encode(0, 1 << 16)
    assert encoder.finish() == b""


def test_invalid_symbol_is_rejected():
    encoder = RangeEncoder(8)
    with pytest.raises(ValueError):
        encoder.encode(200, 100)
    with pytest.raises(ValueError):
        encoder.encode(0, 0)
    with pytest.raises(ValueError):
        encoder.encode_all([10, 0], [1, 0])


def test_finish_twice_is_rejected():
    encoder = RangeEncoder(8)
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.finish()


@pytest.mark.parametrize("total_bits", [0, MAX_TOTAL_BITS + 1])
def test_invalid_precision_is_rejected(total_bits):
    with pytest.raises(ValueError):
        RangeEncoder(total_bits)
    with pytest.raises(ValueError):
        RangeDecoder(b"", total_bits)


def test_garbage_decodes_or_raises():
    # Random bytes under a distribution that leaves part of the range unused: decoding either
    # returns valid symbols or raises RangeCoderError, and always stops.
    generator = random.Random(3)
    cdf = [0, 100, 200, 250]
    raised = 0
    for _ in range(200):
        data = bytes(generator.randrange(256) for _ in range(generator.randint(0, 40)))
        decoder = RangeDecoder(data, 8)
        try:
            for _ in range(100):
                target = decoder.target()
                symbol = max(i for i in range(3) if cdf[i] <= target)
                if target >= cdf[-1]:
                    raise RangeCoderError("target past the last symbol")
                decoder.consume(cdf[symbol], cdf[symbol + 1] - cdf[symbol])
        except RangeCoderError:
            raised += 1
    assert raised > 0
