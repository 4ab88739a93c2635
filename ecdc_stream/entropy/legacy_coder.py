"""The arithmetic coder of the original EnCodec LM streams, bit-exact, on Python integers.

The coder keeps an interval [low, high] of integers whose common leading bits have already gone to
the output. Before each code it doubles the interval (appending a 0 to `low` and a 1 to `high`)
until its width `delta = high - low + 1` is at least `2**bits` (bits = 24 in EnCodec). It then
narrows the interval to the code's share of the CDF:

    low' = low + ceil(cdf[s - 1] * delta / 2**bits)
    high' = low + floor((cdf[s] - 1) * delta / 2**bits)

and emits the leading bits that `low'` and `high'` now share. At the end, the remaining bits of
`low` follow. Bits are packed into bytes least significant bit first (see `bitpack`).

The reference (encodec 0.1.2a3, `quantization/ac.py`) evaluates the scaled bounds in float64, as
`ceil(cdf_value * (delta / 2**bits))`. Here they are exact integer divisions, which give the same
numbers: `delta / 2**bits` is exact in float64, and the product has a numerator below
`2**bits * 2**(bits + 1)`, which float64 represents exactly while `bits <= 26`. So the float result is
never rounded and equals the integer one.

Invariants, each enforced where noted:
- The CDF is non-decreasing with `cdf[-1] <= 2**bits` (`build_stable_quantized_cdf` produces
  such CDFs, and `_code_bounds` rejects a last entry above `2**bits`). With `delta >= 2**bits`,
  every code's bounds then lie inside [0, delta - 1], so the interval only ever shrinks.
- A code with a count of at least 2 gets a non-empty interval: the unscaled bounds are at least 1
  apart, the scale `delta / 2**bits` is at least 1, so `floor` of the upper reaches `ceil` of the
  lower. `ArithmeticEncoder.push` raises ValueError for an empty interval instead of writing a
  stream that cannot be decoded.
- The decoder performs exactly the encoder's interval updates, so it reads exactly as many bits
  as the encoder wrote, and the byte after an encoder's flushed output is the first byte the
  decoder has not read. Segments of a legacy stream rely on this.
"""

from __future__ import annotations

from typing import BinaryIO, Sequence

from ecdc_stream.errors import InvalidStreamError

TOTAL_RANGE_BITS = 24


def _code_bounds(cdf: Sequence[int], symbol: int, total_range_bits: int) -> tuple[int, int]:
    """Return the unscaled interval [cdf[symbol - 1], cdf[symbol] - 1] of `symbol`."""
    if int(cdf[-1]) > (1 << total_range_bits):
        raise ValueError(f"CDF total {int(cdf[-1])} exceeds 2**{total_range_bits}")
    range_low = int(cdf[symbol - 1]) if symbol > 0 else 0
    range_high = int(cdf[symbol]) - 1
    return range_low, range_high


class ArithmeticEncoder:
    """Encodes a sequence of codes, each with its own CDF, into bytes.

    Call `push` for each code, then `finish` once to get the bytes.
    """

    def __init__(self, total_range_bits: int = TOTAL_RANGE_BITS) -> None:
        if not 1 <= total_range_bits <= 30:
            raise ValueError(f"total_range_bits must be between 1 and 30, got {total_range_bits}")
        self.total_range_bits = total_range_bits
        self._low = 0
        self._high = 0
        # Index of the highest bit of `low` and `high` not yet written (-1: none pending).
        self._max_bit = -1
        self._output = bytearray()
        self._pending_byte = 0
        self._pending_bits = 0
        self._finished = False

    def _write_bit(self, bit: int) -> None:
        self._pending_byte |= bit << self._pending_bits
        self._pending_bits += 1
        if self._pending_bits == 8:
            self._output.append(self._pending_byte)
            self._pending_byte = 0
            self._pending_bits = 0

    def push(self, symbol: int, cdf: Sequence[int]) -> None:
        """Encode `symbol` (0 <= symbol < len(cdf)) with the cumulative counts `cdf`."""
        if self._finished:
            raise RuntimeError("push after finish: the encoder's output is complete")
        if not 0 <= symbol < len(cdf):
            raise ValueError(f"code {symbol} is outside the CDF's {len(cdf)} codes")
        range_low, range_high = _code_bounds(cdf, symbol, self.total_range_bits)
        bits = self.total_range_bits

        # Renormalise: widen the interval until it spans at least 2**bits integers.
        while self._high - self._low + 1 < (1 << bits):
            self._low <<= 1
            self._high = (self._high << 1) | 1
            self._max_bit += 1

        # Narrow to the code's share: exact integer ceil and floor of bound * delta / 2**bits.
        delta = self._high - self._low + 1
        scaled_low = (range_low * delta + (1 << bits) - 1) >> bits
        scaled_high = (range_high * delta) >> bits
        if scaled_high < scaled_low:
            raise ValueError(f"code {symbol} has an empty interval: its CDF count is below 2")
        self._high = self._low + scaled_high
        self._low = self._low + scaled_low

        # Emit the leading bits that low and high share; they can no longer change.
        while self._max_bit >= 0:
            low_bit = self._low >> self._max_bit
            if low_bit != self._high >> self._max_bit:
                break
            self._low -= low_bit << self._max_bit
            self._high -= low_bit << self._max_bit
            self._max_bit -= 1
            self._write_bit(low_bit)

    def finish(self) -> bytes:
        """Write the remaining bits of `low`, pad the last byte with zeros, and return all bytes."""
        if not self._finished:
            while self._max_bit >= 0:
                self._write_bit((self._low >> self._max_bit) & 1)
                self._max_bit -= 1
            if self._pending_bits:
                self._output.append(self._pending_byte)
                self._pending_byte = 0
                self._pending_bits = 0
            self._finished = True
        return bytes(self._output)


class ArithmeticDecoder:
    """Decodes codes from `fo`, reading one byte at a time and only when the next bit is needed.

    The CDFs passed to `pull` must equal, code by code, those the encoder used.
    """

    def __init__(self, fo: BinaryIO, total_range_bits: int = TOTAL_RANGE_BITS, source: str = "input") -> None:
        if not 1 <= total_range_bits <= 30:
            raise ValueError(f"total_range_bits must be between 1 and 30, got {total_range_bits}")
        self.total_range_bits = total_range_bits
        self.source = source
        self._fo = fo
        self._low = 0
        self._high = 0
        self._current = 0
        self._max_bit = -1
        self._byte = 0
        self._bits_left_in_byte = 0

    def _read_bit(self) -> int:
        if self._bits_left_in_byte == 0:
            data = self._fo.read(1)
            if not data:
                raise InvalidStreamError(f"{self.source} ends inside arithmetic-coded data: the file is truncated")
            self._byte = data[0]
            self._bits_left_in_byte = 8
        bit = self._byte & 1
        self._byte >>= 1
        self._bits_left_in_byte -= 1
        return bit

    def pull(self, cdf: Sequence[int]) -> int:
        """Decode the next code with the cumulative counts `cdf` and return it.

        Raises InvalidStreamError if the data ends first, or if the bits read fall between
        the intervals of two codes, which no encoder output does.
        """
        bits = self.total_range_bits
        if int(cdf[-1]) > (1 << bits):
            raise ValueError(f"CDF total {int(cdf[-1])} exceeds 2**{bits}")

        # Renormalise exactly as the encoder did, reading one new bit per doubling.
        while self._high - self._low + 1 < (1 << bits):
            self._low <<= 1
            self._high = (self._high << 1) | 1
            self._current = (self._current << 1) | self._read_bit()
            self._max_bit += 1

        # Binary search for the code whose scaled interval contains `current`. The intervals are
        # disjoint and ordered, so the result is the code the encoder narrowed to.
        delta = self._high - self._low + 1
        first, last = 0, len(cdf) - 1
        while first <= last:
            middle = (first + last) // 2
            range_low = int(cdf[middle - 1]) if middle > 0 else 0
            range_high = int(cdf[middle]) - 1
            code_low = self._low + ((range_low * delta + (1 << bits) - 1) >> bits)
            code_high = self._low + ((range_high * delta) >> bits)
            if self._current < code_low:
                last = middle - 1
            elif self._current > code_high:
                first = middle + 1
            else:
                break
        else:
            raise InvalidStreamError(f"{self.source} has corrupt arithmetic-coded data: no code matches the bits read")
        self._low, self._high = code_low, code_high

        # Drop the leading bits shared by low and high, as the encoder emitted them.
        while self._max_bit >= 0:
            low_bit = self._low >> self._max_bit
            if low_bit != self._high >> self._max_bit:
                break
            self._low -= low_bit << self._max_bit
            self._high -= low_bit << self._max_bit
            self._current -= low_bit << self._max_bit
            self._max_bit -= 1
        return middle
