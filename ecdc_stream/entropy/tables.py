"""Lookup tables for the exact LM, generated with exact arithmetic.

The exact LM replaces every transcendental function (exp in both softmaxes, the GELU's normal
CDF, the sine and cosine of the position embedding) by integer tables. The tables are computed
here with Python integers and `decimal`, never with libm, numpy or torch, so they are the same
on every machine and every Python version. Each table is an int64 numpy array, generated once
per process and cached; `table_sha256` gives the digest that the tests pin.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import threading
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np

# Decimal digits carried while generating. Every table entry is at most 2^40, so 60 digits leave
# more than 40 digits of margin for the series below.
_DIGITS = 60

# The normal CDF table (for GELU) covers [-PHI_RANGE, PHI_RANGE] in steps of 2^-PHI_STEP_BITS.
# Outside it the normal CDF is within 7e-16 of 0 or 1, below the table's resolution of 2^-30.
PHI_RANGE = 8
PHI_STEP_BITS = 6
PHI_BITS = 30

# Fixed-point precision of the rotation that generates the sinusoid table, in bits.
_ROTATION_BITS = 96


def _context() -> decimal.Context:
    return decimal.Context(prec=_DIGITS, rounding=ROUND_HALF_EVEN)


def _round_to_int(value: Decimal) -> int:
    """Round half to even to a Python int."""
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def _arctan_inverse(x: int, ctx: decimal.Context) -> Decimal:
    """Return arctan(1/x) for an integer x > 1, by its alternating power series."""
    total = Decimal(0)
    power = ctx.divide(Decimal(1), Decimal(x))
    x_squared = Decimal(x * x)
    n = 0
    epsilon = Decimal(10) ** (-_DIGITS - 2)
    while power > epsilon:
        term = ctx.divide(power, Decimal(2 * n + 1))
        total = ctx.add(total, term) if n % 2 == 0 else ctx.subtract(total, term)
        power = ctx.divide(power, x_squared)
        n += 1
    return total


@functools.lru_cache(maxsize=None)
def _pi() -> Decimal:
    """Return pi by Machin's formula, pi = 16 arctan(1/5) - 4 arctan(1/239)."""
    ctx = _context()
    return ctx.subtract(ctx.multiply(16, _arctan_inverse(5, ctx)), ctx.multiply(4, _arctan_inverse(239, ctx)))


def _erf(z: Decimal, ctx: decimal.Context) -> Decimal:
    """Return erf(z) for z >= 0.

    Uses erf(z) = 2/sqrt(pi) * exp(-z^2) * sum_n (2 z^2)^n z / (1 * 3 * ... * (2n + 1)), whose
    terms are all positive, so nothing cancels.
    """
    if z == 0:
        return Decimal(0)
    two_z_squared = ctx.multiply(2, ctx.multiply(z, z))
    term = z
    total = z
    n = 0
    epsilon = Decimal(10) ** (-_DIGITS)
    while True:
        n += 1
        term = ctx.divide(ctx.multiply(term, two_z_squared), Decimal(2 * n + 1))
        total = ctx.add(total, term)
        if 2 * n + 1 > two_z_squared and term < ctx.multiply(total, epsilon):
            break
    scale = ctx.divide(2, ctx.sqrt(_pi()))
    return ctx.multiply(ctx.multiply(scale, ctx.exp(-ctx.multiply(z, z))), total)


def _sin_cos(x: Decimal, ctx: decimal.Context) -> tuple[Decimal, Decimal]:
    """Return (sin x, cos x) for |x| <= 2 by their Taylor series."""
    sin_total = Decimal(0)
    cos_total = Decimal(0)
    term = Decimal(1)  # x^n / n!
    n = 0
    epsilon = Decimal(10) ** (-_DIGITS - 2)
    while n < 4 or abs(term) > epsilon:
        sign = -1 if (n // 2) % 2 else 1
        if n % 2 == 0:
            cos_total = ctx.add(cos_total, ctx.multiply(sign, term))
        else:
            sin_total = ctx.add(sin_total, ctx.multiply(sign, term))
        n += 1
        term = ctx.divide(ctx.multiply(term, x), Decimal(n))
    return sin_total, cos_total


@functools.lru_cache(maxsize=None)
def exp_table(frac_bits: int, out_bits: int) -> np.ndarray:
    """Build round(2^out_bits * exp(-u / 2^frac_bits)) for u = 0, 1, ... as an int64 array.

    The table ends at the first entry that rounds to 0, so looking up an index clamped to the
    last entry gives 0 for every larger u. Entry 0 is exactly 2^out_bits.
    """
    ctx = _context()
    scale = Decimal(1 << out_bits)
    step = ctx.divide(Decimal(-1), Decimal(1 << frac_bits))
    values = []
    u = 0
    while True:
        value = _round_to_int(ctx.multiply(scale, ctx.exp(ctx.multiply(step, u))))
        values.append(value)
        if value == 0:
            break
        u += 1
    table = np.array(values, dtype=np.int64)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=None)
def normal_cdf_table() -> np.ndarray:
    """Build round(2^PHI_BITS * Phi(j / 2^PHI_STEP_BITS)) for j covering [-PHI_RANGE, PHI_RANGE].

    Phi is the standard normal CDF, Phi(x) = (1 + erf(x / sqrt(2))) / 2. Entry i is for
    x = i / 2^PHI_STEP_BITS - PHI_RANGE. The negative half is 2^PHI_BITS minus the mirrored
    positive entry, so the table is exactly antisymmetric about 2^(PHI_BITS - 1).
    """
    ctx = _context()
    steps = PHI_RANGE << PHI_STEP_BITS
    scale = Decimal(1 << PHI_BITS)
    inverse_sqrt2 = ctx.divide(1, ctx.sqrt(Decimal(2)))
    positive = []
    for j in range(steps + 1):
        z = ctx.multiply(ctx.divide(Decimal(j), Decimal(1 << PHI_STEP_BITS)), inverse_sqrt2)
        phi = ctx.divide(ctx.add(1, _erf(z, ctx)), 2)
        positive.append(_round_to_int(ctx.multiply(scale, phi)))
    negative = [(1 << PHI_BITS) - value for value in reversed(positive[1:])]
    table = np.array(negative + positive, dtype=np.int64)
    table.flags.writeable = False
    return table


class _SinusoidCache:
    """Rows of the sinusoid table for one (dim, max_period, frac_bits), extended on demand.

    Row p is the position embedding of position p: cos(p * w_i) for i < dim/2, then sin(p * w_i),
    with w_i = max_period^(-i / (dim/2 - 1)), each rounded to frac_bits fractional bits. The rows
    come from an exact integer rotation, so a longer table starts with the rows of a shorter one.
    """

    def __init__(self, dim: int, max_period: int, frac_bits: int) -> None:
        ctx = _context()
        half = dim // 2
        log_period = ctx.ln(Decimal(max_period))
        self._frac_bits = frac_bits
        self._steps: list[tuple[int, int]] = []
        for i in range(half):
            omega = ctx.exp(-ctx.divide(ctx.multiply(log_period, i), Decimal(half - 1)))
            sine, cosine = _sin_cos(omega, ctx)
            self._steps.append((_round_to_int(cosine * (1 << _ROTATION_BITS)), _round_to_int(sine * (1 << _ROTATION_BITS))))
        self._state = [(1 << _ROTATION_BITS, 0)] * half
        self._rows: list[list[int]] = []
        self._lock = threading.Lock()

    def rows(self, length: int) -> np.ndarray:
        with self._lock:
            while len(self._rows) < length:
                self._append_row()
            table = np.array(self._rows[:length], dtype=np.int64)
        table.flags.writeable = False
        return table

    def _append_row(self) -> None:
        shift = _ROTATION_BITS - self._frac_bits
        half_unit = 1 << (shift - 1)
        cos_row = [(c + half_unit) >> shift for c, _ in self._state]
        sin_row = [(s + half_unit) >> shift for _, s in self._state]
        self._rows.append(cos_row + sin_row)

        # Rotate every (cos, sin) pair by its angle w_i, rounding half up at 2^-_ROTATION_BITS.
        rounding = 1 << (_ROTATION_BITS - 1)
        next_state = []
        for (c, s), (step_cos, step_sin) in zip(self._state, self._steps):
            next_c = (c * step_cos - s * step_sin + rounding) >> _ROTATION_BITS
            next_s = (s * step_cos + c * step_sin + rounding) >> _ROTATION_BITS
            next_state.append((next_c, next_s))
        self._state = next_state


_sinusoid_caches: dict[tuple[int, int, int], _SinusoidCache] = {}
_sinusoid_lock = threading.Lock()


def sinusoid_table(dim: int, length: int, frac_bits: int, max_period: int = 10000) -> np.ndarray:
    """Return the position embeddings of positions 0 .. length-1 as int64 `[length, dim]`.

    Values have `frac_bits` fractional bits. `dim` must be even and at least 4, because the
    frequencies divide by dim/2 - 1.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"the sinusoid embedding needs an even dimension of at least 4, got {dim}")
    key = (dim, max_period, frac_bits)
    with _sinusoid_lock:
        cache = _sinusoid_caches.get(key)
        if cache is None:
            cache = _SinusoidCache(dim, max_period, frac_bits)
            _sinusoid_caches[key] = cache
    return cache.rows(length)


def table_sha256(table: np.ndarray) -> str:
    """Return the SHA-256 hex digest of a table's values as little-endian int64, row-major."""
    data = np.ascontiguousarray(table, dtype="<i8").tobytes()
    return hashlib.sha256(data).hexdigest()
