"""A byte-oriented range coder on Python integers.

Symbols are coded under integer distributions given as (cdf_low, frequency) pairs out of a
total of exactly 2^total_bits, with frequency >= 1 and cdf_low + frequency <= 2^total_bits.

Invariants of the encoder, after every `encode`:

- `low` is the bottom of the current interval within a 64-bit window. It is below 2^65, and a
  value of 2^64 or more means a carry into the bytes not yet written.
- `range` is the interval's width, in [2^56, 2^64). Before a symbol, r = range >> total_bits;
  the symbol narrows the interval to [low + r * cdf_low, low + r * (cdf_low + frequency)). Since
  r * 2^total_bits <= range, the part of the interval that no symbol uses is less than
  2^total_bits / 2^56 of it, which costs under 2^(total_bits - 56) / ln 2 bits per symbol.
- Renormalisation: while range < 2^56, the top byte of `low` moves out and both shift left by
  8 bits. A byte that is 0xFF could still change if a carry arrives later, so the encoder holds
  back one byte plus a run of 0xFF bytes, and writes them, carry added, once a byte that can no
  longer change arrives. The first interval [0, 2^64 - 1) lies below 1.0, so no carry ever
  reaches the front of the output.

The decoder mirrors the encoder with `code` = (value - low), always in [0, range) for a valid
stream. It reads bytes past the end of the data as zeros, which lets the encoder end on the
shortest value inside the final interval and drop its trailing zero bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

_WINDOW_BITS = 64
_WINDOW = 1 << _WINDOW_BITS
_WINDOW_MASK = _WINDOW - 1
_TOP_SHIFT = _WINDOW_BITS - 8
_RENORM_BELOW = 1 << _TOP_SHIFT

MAX_TOTAL_BITS = 40


class RangeCoderError(ValueError):
    """The coded bytes are not a valid stream for the distributions given."""


def _check_total_bits(total_bits: int) -> None:
    if not 1 <= total_bits <= MAX_TOTAL_BITS:
        raise ValueError(f"total bits {total_bits} is outside [1, {MAX_TOTAL_BITS}]")


class RangeEncoder:
    """Encode symbols into bytes; call `finish` once to get them."""

    def __init__(self, total_bits: int) -> None:
        _check_total_bits(total_bits)
        self.total_bits = total_bits
        self._low = 0
        self._range = _WINDOW_MASK
        self._pending_byte: int | None = None  # the byte held back for a possible carry
        self._pending_ff_count = 0  # the 0xFF bytes held back after it
        self._output = bytearray()
        self._finished = False

    def encode(self, cdf_low: int, frequency: int) -> None:
        """Narrow the interval to the symbol [cdf_low, cdf_low + frequency) of 2^total_bits."""
        if frequency < 1 or cdf_low < 0 or cdf_low + frequency > 1 << self.total_bits:
            raise ValueError(f"symbol [{cdf_low}, {cdf_low} + {frequency}) is outside [0, 2^{self.total_bits})")
        step = self._range >> self.total_bits
        self._low += step * cdf_low
        self._range = step * frequency
        while self._range < _RENORM_BELOW:
            self._shift_low()
            self._range <<= 8

    def encode_all(self, cdf_lows: Sequence[int], frequencies: Sequence[int]) -> None:
        """Encode many symbols; the same as calling `encode` for each pair, only faster."""
        total = 1 << self.total_bits
        bits = self.total_bits
        low = self._low
        width = self._range
        for cdf_low, frequency in zip(cdf_lows, frequencies):
            if frequency < 1 or cdf_low < 0 or cdf_low + frequency > total:
                self._low, self._range = low, width
                raise ValueError(f"symbol [{cdf_low}, {cdf_low} + {frequency}) is outside [0, 2^{bits})")
            step = width >> bits
            low += step * cdf_low
            width = step * frequency
            while width < _RENORM_BELOW:
                self._low = low
                self._shift_low()
                low = self._low
                width <<= 8
        self._low = low
        self._range = width

    def _shift_low(self) -> None:
        top = self._low >> _TOP_SHIFT  # in [0, 0x1FF]; 0x100 and above carry a 1
        if top == 0xFF:
            self._pending_ff_count += 1
        else:
            carry = top >> 8
            if self._pending_byte is not None:
                self._output.append((self._pending_byte + carry) & 0xFF)
            if self._pending_ff_count:
                self._output.extend(bytes([(0xFF + carry) & 0xFF]) * self._pending_ff_count)
                self._pending_ff_count = 0
            self._pending_byte = top & 0xFF
        self._low = (self._low << 8) & _WINDOW_MASK

    def finish(self) -> bytes:
        """Write out the final interval and return every byte coded.

        Picks the value in [low, low + range) with the most trailing zero bits, writes it, and
        drops trailing zero bytes, which the decoder reads back as padding.
        """
        if self._finished:
            raise RuntimeError("finish() was already called on this encoder")
        self._finished = True

        end = self._low + self._range
        for zero_bits in range(_WINDOW_BITS + 8, -1, -1):
            unit = 1 << zero_bits
            value = -(-self._low // unit) * unit
            if value < end:
                break
        self._low = value

        # Eight shifts move the eight bytes of the window out; the ninth writes the held byte.
        for _ in range(9):
            self._shift_low()
        return bytes(self._output).rstrip(b"\x00")


class RangeDecoder:
    """Decode the symbols that a `RangeEncoder` with the same total_bits coded into `data`."""

    def __init__(self, data: bytes, total_bits: int) -> None:
        _check_total_bits(total_bits)
        self.total_bits = total_bits
        self._data = data
        self._position = 8
        self._range = _WINDOW_MASK
        self._code = int.from_bytes(data[:8].ljust(8, b"\x00"), "big")
        self._step = 0

    def target(self) -> int:
        """Return the point in [0, 2^total_bits) that the next symbol's range contains.

        Raises RangeCoderError when the bytes cannot come from a valid stream.
        """
        self._step = self._range >> self.total_bits
        value = self._code // self._step
        if value >> self.total_bits:
            raise RangeCoderError("the coded bytes are corrupt: the decoder left the coding interval")
        return value

    def consume(self, cdf_low: int, frequency: int) -> None:
        """Remove the symbol that `target` fell into, [cdf_low, cdf_low + frequency)."""
        self._code -= self._step * cdf_low
        self._range = self._step * frequency
        while self._range < _RENORM_BELOW:
            position = self._position
            byte = self._data[position] if position < len(self._data) else 0
            self._position = position + 1
            self._code = (self._code << 8) | byte
            self._range <<= 8

    def decode(self, cdf: Sequence[int]) -> int:
        """Decode one symbol under the cumulative table `cdf` (length n + 1, from 0 to the total)."""
        value = self.target()
        low_index, high_index = 0, len(cdf) - 1
        while high_index - low_index > 1:
            middle = (low_index + high_index) // 2
            if cdf[middle] <= value:
                low_index = middle
            else:
                high_index = middle
        self.consume(cdf[low_index], cdf[low_index + 1] - cdf[low_index])
        return low_index

    @property
    def bytes_read(self) -> int:
        """How many bytes the decoder has consumed, counting the zero padding past the end."""
        return self._position
