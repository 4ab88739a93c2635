"""The original raw streams' bit packing: LSB first, fixed width, padded per flush."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdc_stream.entropy.bitpack import BitPacker, BitUnpacker, pack_values, packed_size, unpack_values


@st.composite
def widths_and_values(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.integers(min_value=1, max_value=16))
    values = draw(st.lists(st.integers(min_value=0, max_value=(1 << bits) - 1), max_size=300))
    return bits, values


def pack_streaming(values: list[int], bits: int) -> bytes:
    buffer = io.BytesIO()
    packer = BitPacker(bits, buffer)
    for value in values:
        packer.push(value)
    packer.flush()
    return buffer.getvalue()


@given(widths_and_values())
def test_bitpacker_round_trip(case: tuple[int, list[int]]) -> None:
    bits, values = case
    data = pack_streaming(values, bits)

    unpacker = BitUnpacker(bits, io.BytesIO(data))
    decoded = []
    while (value := unpacker.pull()) is not None:
        decoded.append(value)

    assert len(data) == packed_size(len(values), bits)
    assert decoded[: len(values)] == values
    # Flush padding can show up as at most 7 // bits extra zero values.
    assert len(decoded) - len(values) <= 7 // bits
    assert all(value == 0 for value in decoded[len(values) :])


@given(widths_and_values())
def test_pack_values_equals_streaming_packer(case: tuple[int, list[int]]) -> None:
    bits, values = case

    assert pack_values(values, bits) == pack_streaming(values, bits)
    assert pack_values(np.array(values, dtype=np.int64), bits) == pack_streaming(values, bits)


@given(widths_and_values())
def test_unpack_values_round_trip(case: tuple[int, list[int]]) -> None:
    bits, values = case

    decoded = unpack_values(pack_values(values, bits), bits, len(values))

    assert decoded.dtype == np.int64
    assert decoded.tolist() == values


def test_bitpacker_known_bytes() -> None:
    # 10-bit values 1, 2, 1023: bits 0-9, 10-19, 20-29 of a little-endian integer.
    expected = (1 | 2 << 10 | 1023 << 20).to_bytes(4, "little")

    assert pack_streaming([1, 2, 1023], 10) == expected
    assert pack_values([1, 2, 1023], 10) == expected


def test_bitpacker_writes_each_complete_byte() -> None:
    buffer = io.BytesIO()
    packer = BitPacker(4, buffer)

    packer.push(0x3)
    assert buffer.getvalue() == b""
    packer.push(0xA)
    assert buffer.getvalue() == bytes([0xA3])


def test_bitpacker_rejects_value_too_wide() -> None:
    packer = BitPacker(4, io.BytesIO())

    with pytest.raises(ValueError, match="16"):
        packer.push(16)
    with pytest.raises(ValueError, match="-1"):
        packer.push(-1)


def test_pack_values_rejects_value_too_wide() -> None:
    with pytest.raises(ValueError, match="4 bits"):
        pack_values([3, 16], 4)


def test_unpack_values_rejects_short_data() -> None:
    with pytest.raises(ValueError, match="fewer than 3 values"):
        unpack_values(b"\x00\x00", 10, 3)


def test_bitunpacker_returns_none_at_end() -> None:
    unpacker = BitUnpacker(10, io.BytesIO(b"\xff"))

    assert unpacker.pull() is None


def test_bit_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bit width"):
        BitPacker(0, io.BytesIO())
