"""The bit packing of the original EnCodec raw streams: fixed-width values, least significant bit first.

Value i of a stream of `bits`-bit values occupies bits `i * bits` to `(i + 1) * bits - 1` of the
byte string read as one little-endian integer. So the first value fills the low bits of the first
byte, and a value that does not fit in the current byte continues in the low bits of the next.
`flush` pads the last partial byte with zero bits. A reader therefore sees up to `7 // bits`
padding values after the real ones, and must know how many values to expect.

`BitPacker` and `BitUnpacker` work one value at a time on a file object, as the reference does.
`pack_values` and `unpack_values` do the same for a whole array at once with numpy.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable

import numpy as np

# Values wider than this would not fit the uint64 arithmetic of `unpack_values`. EnCodec uses at
# most 10 bits per code (1024 bins).
MAX_BITS = 32


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be between 1 and {MAX_BITS}, got {bits}")


class BitPacker:
    """Writes `bits`-bit values to `fo`, each whole byte as soon as it is complete."""

    def __init__(self, bits: int, fo: BinaryIO) -> None:
        _check_bits(bits)
        self.bits = bits
        self.fo = fo
        self._pending_value = 0
        self._pending_bits = 0

    def push(self, value: int) -> None:
        """Append `value` (0 <= value < 2**bits) to the stream."""
        if not 0 <= value < (1 << self.bits):
            raise ValueError(f"value {value} does not fit in {self.bits} bits")

        self._pending_value |= value << self._pending_bits
        self._pending_bits += self.bits

        while self._pending_bits >= 8:
            self.fo.write(bytes([self._pending_value & 0xFF]))
            self._pending_value >>= 8
            self._pending_bits -= 8

    def flush(self) -> None:
        """Write the last partial byte, padded with zero bits, and start a fresh byte."""
        if self._pending_bits:
            self.fo.write(bytes([self._pending_value]))
            self._pending_value = 0
            self._pending_bits = 0


class BitUnpacker:
    """Reads `bits`-bit values from `fo`, reading a byte only when the next value needs it."""

    def __init__(self, bits: int, fo: BinaryIO) -> None:
        _check_bits(bits)
        self.bits = bits
        self.fo = fo
        self._mask = (1 << bits) - 1
        self._pending_value = 0
        self._pending_bits = 0

    def pull(self) -> int | None:
        """Return the next value, or None if the file ends before it is complete."""
        while self._pending_bits < self.bits:
            byte = self.fo.read(1)
            if not byte:
                return None
            self._pending_value |= byte[0] << self._pending_bits
            self._pending_bits += 8

        value = self._pending_value & self._mask
        self._pending_value >>= self.bits
        self._pending_bits -= self.bits
        return value


def packed_size(count: int, bits: int) -> int:
    """Return the number of bytes that `count` values of `bits` bits take once flushed."""
    return (count * bits + 7) // 8


def pack_values(values: Iterable[int] | np.ndarray, bits: int) -> bytes:
    """Pack `values` as `BitPacker` followed by one `flush` would, and return the bytes.

    Raises ValueError if a value is negative or does not fit in `bits` bits.
    """
    _check_bits(bits)
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= (1 << bits)):
        raise ValueError(f"values must lie in [0, {1 << bits}) to fit in {bits} bits")

    # One row of `bits` bits per value, least significant first, laid end to end.
    shifts = np.arange(bits, dtype=np.int64)
    bit_rows = ((array[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_rows.reshape(-1), bitorder="little").tobytes()


def unpack_values(data: bytes, bits: int, count: int) -> np.ndarray:
    """Unpack the first `count` values of `bits` bits from `data`, as `BitUnpacker` would.

    Returns an int64 array of shape [count]. Raises ValueError if `data` contains fewer than
    `count * bits` bits.
    """
    _check_bits(bits)
    if count < 0:
        raise ValueError(f"value count must be non-negative, got {count}")
    if len(data) * 8 < count * bits:
        raise ValueError(f"{len(data)} bytes contain fewer than {count} values of {bits} bits")

    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    bit_rows = stream[: count * bits].reshape(count, bits).astype(np.uint64)
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return (bit_rows @ weights).astype(np.int64)
