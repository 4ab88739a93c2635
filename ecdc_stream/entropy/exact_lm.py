"""The EnCodec LM in exact integer arithmetic.

It has the architecture and checkpoint of the reference LM. The input of a frame is the sum of
one embedding per codebook of the previous frame's codes (1 + code, 0 at the first frame). A
LayerNorm and a sinusoidal position embedding follow, then post-norm transformer layers (8
heads, GELU, attention to the frame itself and at most `past_context` previous frames), and one
linear output per codebook. Like the reference, a stream also attends to one all-zero frame
before its first frame, until that frame leaves the past context.

Every value that reaches a logit is an exact function of the checkpoint and the previous codes:

- Weights are fixed-point integers, round half to even of w * 2^WEIGHT_FRAC_BITS, computed in
  float64, where scaling a float32 by a power of two is exact.
- Activations are int64. Matrix products run in float64 on integers, clamped beforehand so
  that the sum of the absolute products stays below 2^53: then every partial sum is an exact
  integer, whatever order the BLAS, the thread count or the device uses. Every product goes
  through `integer_matmul`, so that a test can replace it by one that sums in another order.
- LayerNorm divides by an integer square root; exp, GELU, sine and cosine come from the exact
  tables of `ecdc_stream.entropy.tables`. Divisions are integer floor divisions; the only float
  operations besides the products are sqrt and frexp of integers, whose results are corrected or
  used only to pick a power of two.

The arithmetic is written once and runs on torch tensors or numpy arrays, which give the same
integers. Teacher forcing runs in torch, on the LM's device. Stepping one frame at a time runs
in numpy when the device is the CPU, because a step is a few hundred operations on small arrays
and numpy calls cost a fraction of torch's there.

`NUMERICS_VERSION` names this arithmetic. Any change to a constant, a table or an operation
order that can change a logit needs a new version, because streams record the version that
coded them.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Union

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from ecdc_stream.entropy import tables
from ecdc_stream.entropy.cdf import LOGIT_FRAC_BITS
from ecdc_stream.errors import ModelNotFoundError

NUMERICS_VERSION = 1
SUPPORTED_NUMERICS = (1,)

# Fixed-point formats: a value v is stored as the integer v * 2^bits.
WEIGHT_FRAC_BITS = 16  # weights and LayerNorm gains
ACT_FRAC_BITS = 12  # activations, queries, keys, values, position embeddings
NORM_FRAC_BITS = 16  # LayerNorm output before its gain
SCORE_FRAC_BITS = 8  # attention scores, in units of 2^-8 (the scale factor included)
ATTENTION_EXP_BITS = 20  # attention weights are round(2^20 * exp(-score difference))
QUERY_SCALE_BITS = 20  # 1/sqrt(head_dim) as an integer over 2^20
TEMPERATURE_BITS = 16  # 1/temperature as an integer over 2^16

# A product of activations and weights carries this many fractional bits.
PRODUCT_FRAC_BITS = ACT_FRAC_BITS + WEIGHT_FRAC_BITS

# Every float64 product keeps the sum of its absolute terms below this, so it is exact.
EXACT_SUM_LIMIT = (1 << 53) - 1

# LayerNorm inputs are clamped to +-4096 (2^24 at 12 fractional bits): centred values then stay
# below 2^25 and their squared sum over at most 2^10 channels below 2^60.
NORM_INPUT_LIMIT = 1 << (ACT_FRAC_BITS + 12)
MAX_DIM = 1024

# Pre-activation values (before the query scale, temperature and GELU) are clamped to +-2^12
# in value, so that multiplying them by a 20-bit factor stays inside int64.
PRE_SCALE_LIMIT = 1 << (PRODUCT_FRAC_BITS + 12)
GELU_INPUT_LIMIT = 1 << (ACT_FRAC_BITS + 20)
LOGIT_LIMIT = 1 << (LOGIT_FRAC_BITS + 24)

# Finite float32 gains beyond 2^10 cannot come from training; clamping them keeps products in int64.
GAIN_LIMIT = 1 << (WEIGHT_FRAC_BITS + 10)

LAYER_NORM_EPS = 1e-5

# The LayerNorm gain multiplies a value at 2^NORM_FRAC_BITS; this shift brings it to 2^ACT_FRAC_BITS.
AFFINE_SHIFT = NORM_FRAC_BITS + WEIGHT_FRAC_BITS - ACT_FRAC_BITS
MAX_PERIOD = 10000

# Queries of a teacher-forced pass are processed in blocks of this many frames, which bounds the
# attention matrix to [batch, heads, block, block + past_context + 1].
QUERY_BLOCK = 256


Array = Union[torch.Tensor, np.ndarray]


def integer_matmul(a: Array, b: Array) -> Array:
    """Multiply float64 matrices that hold integers: `[..., n, k] @ [..., k, m]`.

    Both arguments are torch tensors or both are numpy arrays. Exact in any summation order as
    long as, for every output, the sum of |a_ik * b_kj| is below 2^53; every caller clamps its
    inputs to guarantee it. This is the only place where the exact LM multiplies matrices.
    """
    return a @ b


class _TorchOps:
    """The array operations whose spelling differs between torch and numpy, for torch tensors."""

    @staticmethod
    def clamp(x: torch.Tensor, low: int | None, high: int | None) -> torch.Tensor:
        return torch.clamp(x, low, high)

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)

    @staticmethod
    def to_int(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.int64)

    @staticmethod
    def sum_last(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1, keepdim=True)

    @staticmethod
    def max_last(x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=-1, keepdim=True)

    @staticmethod
    def exponent(x: torch.Tensor) -> torch.Tensor:
        """Return the binary exponent e of float64 x = m * 2^e with 0.5 <= |m| < 1, as int32."""
        return torch.frexp(x)[1]

    @staticmethod
    def sqrt(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    @staticmethod
    def where(condition: torch.Tensor, x: torch.Tensor | int, y: torch.Tensor | int) -> torch.Tensor:
        return torch.where(condition, x, y)

    @staticmethod
    def permute(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return x.permute(*dims)

    @staticmethod
    def swap_last(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


class _NumpyOps:
    """The same operations as `_TorchOps`, for numpy arrays."""

    @staticmethod
    def clamp(x: np.ndarray, low: int | None, high: int | None) -> np.ndarray:
        # Two ufuncs instead of np.clip, whose argument checks cost more than the clamp itself
        # on the small arrays of a step.
        if low is not None:
            x = np.maximum(x, low)
        return x if high is None else np.minimum(x, high)

    @staticmethod
    def to_float(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def to_int(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    @staticmethod
    def sum_last(x: np.ndarray) -> np.ndarray:
        return x.sum(axis=-1, keepdims=True)

    @staticmethod
    def max_last(x: np.ndarray) -> np.ndarray:
        return x.max(axis=-1, keepdims=True)

    @staticmethod
    def exponent(x: np.ndarray) -> np.ndarray:
        """Return the binary exponent e of float64 x = m * 2^e with 0.5 <= |m| < 1, as int32."""
        return np.frexp(x)[1]

    @staticmethod
    def sqrt(x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    @staticmethod
    def where(condition: np.ndarray, x: np.ndarray | int, y: np.ndarray | int) -> np.ndarray:
        return np.where(condition, x, y)

    @staticmethod
    def permute(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return x.transpose(dims)

    @staticmethod
    def swap_last(x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, -1, -2)


class _SingleThreadedBlas:
    """A context that runs numpy's BLAS on one thread, shared by every thread of the process.

    A step's products are too small to share between threads: on two cores, OpenBLAS's second
    thread made a step slower and doubled its CPU time. The BLAS thread count is one setting of
    the whole process, so the first step to enter lowers it and the last to leave restores it.
    In between, numpy in other threads also runs BLAS on one thread. The threadpoolctl
    controller is created once, because looking up the loaded libraries takes milliseconds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._controller: ThreadpoolController | None = None
        self._limiter = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                if self._controller is None:
                    self._controller = ThreadpoolController()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_single_threaded_blas = _SingleThreadedBlas()


def _ops_of(x: Array) -> type[_TorchOps] | type[_NumpyOps]:
    return _NumpyOps if isinstance(x, np.ndarray) else _TorchOps


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """Return a CPU tensor as a numpy array that shares its memory."""
    return x.detach().numpy()


def _round_shift(x: Array, bits: int) -> Array:
    """Divide int64 values by 2^bits, rounding halves up."""
    return (x + (1 << (bits - 1))) >> bits


def _round_divide(numerator: Array, denominator: Array) -> Array:
    """Divide int64 values by a positive denominator, rounding halves up.

    floor((n + floor(d / 2)) / d) equals floor((2n + d) / 2d) for integers. `//` floors in
    torch and numpy alike.
    """
    return (numerator + (denominator >> 1)) // denominator


def _isqrt(n: Array) -> Array:
    """Return floor(sqrt(n)) of int64 values with 0 <= n < 2^62.

    The float64 estimate is within one of the result (its error is below 2^-20 at roots below
    2^31), and one integer comparison in each direction corrects it.
    """
    ops = _ops_of(n)
    root = ops.to_int(ops.sqrt(ops.to_float(n)))  # truncation is floor here
    root = ops.where(root * root > n, root - 1, root)
    above = root + 1
    return ops.where(above * above <= n, above, root)


def _fixed_point(tensor: torch.Tensor, bits: int, name: str) -> torch.Tensor:
    """Round half to even tensor * 2^bits to int64, on the CPU."""
    values = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(values).all():
        raise ModelNotFoundError(f"LM checkpoint tensor {name!r} contains NaN or infinite values: the file is corrupt, replace it")
    scaled = values * (1 << bits)
    if scaled.abs().max() >= 2.0**62:
        raise ModelNotFoundError(f"LM checkpoint tensor {name!r} contains values too large for the exact LM: it is not an EnCodec LM")
    return torch.round(scaled).to(torch.int64)


@dataclass(frozen=True)
class _Linear:
    """A linear layer: `weight` float64 `[n_in, n_out]` of integers at 2^WEIGHT_FRAC_BITS,
    `bias` int64 `[n_out]` at 2^PRODUCT_FRAC_BITS, and the clamp `input_limit` of its input."""

    weight: Array
    bias: Array
    rounding_bias: Array  # bias + 2^(WEIGHT_FRAC_BITS - 1), for a fused rounding
    input_limit: int

    def __call__(self, x: Array) -> Array:
        """Apply to int64 `[..., n_in]` at 2^ACT_FRAC_BITS; returns int64 at 2^PRODUCT_FRAC_BITS."""
        return self._product(x) + self.bias

    def rounded(self, x: Array) -> Array:
        """Apply and round to 2^ACT_FRAC_BITS: the same as _round_shift(self(x), WEIGHT_FRAC_BITS)."""
        return (self._product(x) + self.rounding_bias) >> WEIGHT_FRAC_BITS

    def _product(self, x: Array) -> Array:
        # The product runs on a 2-D view [rows, n_in], which numpy hands to BLAS in one call.
        ops = _ops_of(x)
        clamped = ops.to_float(ops.clamp(x.reshape(-1, x.shape[-1]), -self.input_limit, self.input_limit))
        return ops.to_int(integer_matmul(clamped, self.weight)).reshape(*x.shape[:-1], self.weight.shape[-1])

    def to_numpy(self) -> _Linear:
        return replace(self, weight=_to_numpy(self.weight), bias=_to_numpy(self.bias), rounding_bias=_to_numpy(self.rounding_bias))


def _make_linear(weight: torch.Tensor, bias: torch.Tensor, name: str, device: torch.device) -> _Linear:
    fixed_weight = _fixed_point(weight, WEIGHT_FRAC_BITS, f"{name}.weight")
    fixed_bias = _fixed_point(bias, PRODUCT_FRAC_BITS, f"{name}.bias")

    # The largest sum of |w| over one output bounds every output's sum of |x * w|.
    row_sum = int(fixed_weight.abs().sum(dim=1).max())
    input_limit = EXACT_SUM_LIMIT // max(row_sum, 1)
    if input_limit < 1 << (ACT_FRAC_BITS + 8):
        raise ModelNotFoundError(
            f"LM checkpoint tensor {name + '.weight'!r} has rows summing to {row_sum / 2**WEIGHT_FRAC_BITS:.0f} "
            "in absolute value, too large for the exact LM"
        )
    return _Linear(
        weight=fixed_weight.t().contiguous().to(device, torch.float64),
        bias=fixed_bias.to(device),
        rounding_bias=(fixed_bias + (1 << (WEIGHT_FRAC_BITS - 1))).to(device),
        input_limit=input_limit,
    )


@dataclass(frozen=True)
class _Norm:
    """A LayerNorm: `gain` int64 `[dim]` at 2^WEIGHT_FRAC_BITS, `bias` int64 at 2^ACT_FRAC_BITS,
    and `eps_term` = eps * dim * 2^(2 ACT_FRAC_BITS), the epsilon in the units of the squared sum."""

    gain: Array
    bias: Array
    eps_term: int
    rounding_bias: Array  # bias * 2^AFFINE_SHIFT + 2^(AFFINE_SHIFT - 1), for a fused rounding

    def __call__(self, x: Array) -> Array:
        """Normalise int64 `[..., dim]` at 2^ACT_FRAC_BITS over its last axis."""
        ops = _ops_of(x)
        dim = x.shape[-1]
        x = ops.clamp(x, -NORM_INPUT_LIMIT, NORM_INPUT_LIMIT)

        # Centre on the floored mean: |centred| < 2^25, so the squared sum is below 2^60.
        mean = ops.sum_last(x) // dim
        centred = x - mean
        energy = ops.sum_last(centred * centred) + self.eps_term

        # Scale the energy by 4^shift into [2^58, 2^61), where its root keeps 24 bits or more.
        # frexp of the rounded float gives the bit length or one more, both safe here.
        # The energy is below 2^61, so the exponent is at most 61 and the shift is not negative.
        shift = (61 - ops.exponent(ops.to_float(energy))) >> 1  # int32, which shifts int64 values as int64
        root = _isqrt((energy << (shift << 1)) // dim)

        # root ~ std * 2^(ACT_FRAC_BITS + shift), so centred * 2^(NORM_FRAC_BITS + shift) / root
        # is the normalised value at 2^NORM_FRAC_BITS. |centred| * 2^shift < 2^31 bounds the numerator.
        normalised = _round_divide(centred << (shift + NORM_FRAC_BITS), root)

        # round(normalised * gain / 2^AFFINE_SHIFT) + bias, in one shift: the bias is a multiple of 2^AFFINE_SHIFT there.
        return (normalised * self.gain + self.rounding_bias) >> AFFINE_SHIFT

    def to_numpy(self) -> _Norm:
        return replace(self, gain=_to_numpy(self.gain), bias=_to_numpy(self.bias), rounding_bias=_to_numpy(self.rounding_bias))


def _make_norm(weight: torch.Tensor, bias: torch.Tensor, name: str, device: torch.device) -> _Norm:
    dim = int(weight.shape[0])
    gain = torch.clamp(_fixed_point(weight, WEIGHT_FRAC_BITS, f"{name}.weight"), -GAIN_LIMIT, GAIN_LIMIT)
    fixed_bias = torch.clamp(_fixed_point(bias, ACT_FRAC_BITS, f"{name}.bias"), -NORM_INPUT_LIMIT, NORM_INPUT_LIMIT)
    eps_term = max(1, round(Fraction(LAYER_NORM_EPS) * dim * (1 << (2 * ACT_FRAC_BITS))))
    rounding_bias = (fixed_bias << AFFINE_SHIFT) + (1 << (AFFINE_SHIFT - 1))
    return _Norm(gain=gain.to(device), bias=fixed_bias.to(device), eps_term=eps_term, rounding_bias=rounding_bias.to(device))


@dataclass(frozen=True)
class _Layer:
    in_proj: _Linear
    out_proj: _Linear
    linear1: _Linear
    linear2: _Linear
    norm1: _Norm
    norm2: _Norm

    def to_numpy(self) -> _Layer:
        return _Layer(*(part.to_numpy() for part in (self.in_proj, self.out_proj, self.linear1, self.linear2, self.norm1, self.norm2)))


@dataclass(frozen=True)
class _Network:
    """The integer weights and tables of the LM in one array library, and the arithmetic of its layers.

    Every array is a torch tensor on one device, or every array is a numpy array. The methods
    take and return the same kind. `embeddings` is int64 `[K, card + 1, dim]` at
    2^ACT_FRAC_BITS, and `output` maps `dim` to the K * card logits of all codebooks.
    """

    norm_in: _Norm
    layers: tuple[_Layer, ...]
    embeddings: Array
    output: _Linear
    exp_table: Array  # round(2^ATTENTION_EXP_BITS * exp(-d / 2^SCORE_FRAC_BITS)) for d = 0, 1, ...
    phi: Array  # the normal CDF table of `tables.normal_cdf_table`
    phi_slope: Array  # phi[i + 1] - phi[i]
    num_heads: int
    query_scale: int
    query_key_limit: int
    value_limit: int
    temperature_factor: int

    def to_numpy(self) -> _Network:
        """Return the same network as numpy arrays sharing memory with these CPU tensors."""
        return replace(
            self,
            norm_in=self.norm_in.to_numpy(),
            layers=tuple(layer.to_numpy() for layer in self.layers),
            embeddings=_to_numpy(self.embeddings),
            output=self.output.to_numpy(),
            exp_table=_to_numpy(self.exp_table),
            phi=_to_numpy(self.phi),
            phi_slope=_to_numpy(self.phi_slope),
        )

    @property
    def num_codebooks(self) -> int:
        return self.embeddings.shape[0]

    @property
    def card(self) -> int:
        return self.embeddings.shape[1] - 1

    @property
    def dim(self) -> int:
        return self.embeddings.shape[2]

    def embed(self, inputs: Array, positions: Array) -> Array:
        """Embed input indices `[B, K, T]` (1 + previous code, 0 first); positions: int64 `[T, dim]`."""
        summed = self.embeddings[0][inputs[:, 0]]
        for k in range(1, self.num_codebooks):
            summed = summed + self.embeddings[k][inputs[:, k]]
        return self.norm_in(summed) + positions

    def project(self, layer: _Layer, x: Array) -> tuple[Array, Array, Array]:
        """Return float64 queries, keys and values `[B, heads, T, head_dim]` for int64 `[B, T, dim]`."""
        ops = _ops_of(x)
        batch, frames, dim = x.shape
        projected = layer.in_proj(x).reshape(batch, frames, 3, self.num_heads, dim // self.num_heads)
        projected = ops.permute(projected, (2, 0, 3, 1, 4))
        queries = ops.clamp(projected[0], -PRE_SCALE_LIMIT, PRE_SCALE_LIMIT) * self.query_scale
        queries = _round_shift(queries, PRODUCT_FRAC_BITS + QUERY_SCALE_BITS - ACT_FRAC_BITS)
        keys_values = _round_shift(projected[1:], PRODUCT_FRAC_BITS - ACT_FRAC_BITS)
        limit = self.query_key_limit
        return (
            ops.to_float(ops.clamp(queries, -limit, limit)),
            ops.to_float(ops.clamp(keys_values[0], -limit, limit)),
            ops.to_float(ops.clamp(keys_values[1], -self.value_limit, self.value_limit)),
        )

    def attend(self, queries: Array, keys: Array, values: Array, mask: Array | None) -> Array:
        """Attention of float64 queries `[B, H, Tq, hd]` over keys and values `[B, H, Tk, hd]`.

        mask: bool `[Tq, Tk]`, True where a query may attend, or None for all. Returns int64
        `[B, Tq, H * hd]` at 2^ACT_FRAC_BITS.
        """
        ops = _ops_of(queries)

        # Scores: queries and keys are below query_key_limit, so the products are exact. The
        # query scale makes them scores * 2^(2 ACT_FRAC_BITS).
        scores = _round_shift(ops.to_int(integer_matmul(queries, ops.swap_last(keys))), 2 * ACT_FRAC_BITS - SCORE_FRAC_BITS)
        last = self.exp_table.shape[0] - 1
        if mask is None:
            offsets = ops.max_last(scores) - scores
        else:
            lowest = np.iinfo(np.int64).min // 2
            scores = ops.where(mask, scores, lowest)
            offsets = ops.where(mask, ops.max_last(scores) - scores, last)
        weights = self.exp_table[ops.clamp(offsets, None, last)]

        # Each row has a weight of 2^ATTENTION_EXP_BITS (its maximum) and at most past_context + 1
        # nonzero weights, and values are below value_limit, so the weighted sum is exact.
        numerators = ops.to_int(integer_matmul(ops.to_float(weights), values))
        attended = _round_divide(numerators, ops.sum_last(weights))
        batch, heads, frames, head_dim = attended.shape
        return ops.permute(attended, (0, 2, 1, 3)).reshape(batch, frames, heads * head_dim)

    def finish_layer(self, layer: _Layer, x: Array, attended: Array) -> Array:
        """Apply the output projection, both residual connections, norms and the feed-forward."""
        ops = _ops_of(x)
        x = layer.norm1(x + layer.out_proj.rounded(attended))
        hidden = self.gelu(ops.clamp(layer.linear1.rounded(x), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT))
        return layer.norm2(x + layer.linear2.rounded(hidden))

    def gelu(self, x: Array) -> Array:
        """GELU of int64 at 2^ACT_FRAC_BITS: x * Phi(x), Phi linearly interpolated in its table."""
        ops = _ops_of(x)
        reach = tables.PHI_RANGE << ACT_FRAC_BITS
        step_shift = ACT_FRAC_BITS - tables.PHI_STEP_BITS
        inside = ops.clamp(x, -reach, reach - 1) + reach
        index = inside >> step_shift
        fraction = inside & ((1 << step_shift) - 1)
        phi = self.phi[index] + ((self.phi_slope[index] * fraction) >> step_shift)
        return _round_shift(x * phi, tables.PHI_BITS)

    def output_logits(self, hidden: Array) -> Array:
        """Map final hidden states int64 `[B, T, dim]` to logits int64 `[B, T, K, card]`.

        Logits are in units of 2^-LOGIT_FRAC_BITS nats, divided by the temperature.
        """
        ops = _ops_of(hidden)
        batch, frames, _ = hidden.shape
        raw = ops.clamp(self.output(hidden), -PRE_SCALE_LIMIT, PRE_SCALE_LIMIT) * self.temperature_factor
        logits = _round_shift(raw, PRODUCT_FRAC_BITS + TEMPERATURE_BITS - LOGIT_FRAC_BITS)
        return ops.clamp(logits, -LOGIT_LIMIT, LOGIT_LIMIT).reshape(batch, frames, self.num_codebooks, self.card)


@dataclass
class ExactLMState:
    """The key/value cache of a batch of streams decoded step by step.

    keys, values: one float64 array `[B, heads, capacity, head_dim]` of integers per layer, a
    numpy array when the LM steps on the CPU and a torch tensor on its device otherwise.
    Slot 0 is the all-zero frame before the stream, and slot t + 1 is frame t.
    frames: how many frames have been stepped (the next frame's position).
    """

    keys: list[Array]
    values: list[Array]
    frames: int = 0


class ExactLM:
    """The EnCodec LM in exact integer arithmetic, for the first `num_codebooks` codebooks.

    state_dict: the reference LM's state dict (float tensors; any device).
    num_codebooks: K, how many codebooks are coded (at most the checkpoint's).
    past_context: how many previous frames a frame attends to (the reference uses
        int(3.5 * frame_rate): 262 at 24 kHz, 525 at 48 kHz).
    temperature: the logits are divided by it; quantized to a multiple of 2^-16 of its inverse.
    device: where teacher forcing runs, and stepping too unless the device is the CPU, where
        stepping runs in numpy. The logits are the same integers everywhere.
    Raises ModelNotFoundError when the state dict lacks a key, has inconsistent shapes, or contains
    values the integer arithmetic cannot represent.
    """

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        num_codebooks: int,
        past_context: int,
        num_heads: int = 8,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self._read_shapes(state_dict, num_codebooks, num_heads)
        if past_context < 1:
            raise ValueError(f"past context {past_context} must be at least 1 frame")
        if not 0.25 <= temperature <= 4.0:
            raise ValueError(f"temperature {temperature} is outside [0.25, 4]")
        self.past_context = past_context
        self.temperature = temperature

        self.network = self._convert(state_dict, round(Fraction(1 << TEMPERATURE_BITS) / Fraction(temperature)))
        self._step_network = self.network.to_numpy() if self.device.type == "cpu" else self.network
        self._position_lock = threading.Lock()
        self._position_table = np.zeros((0, self.dim), dtype=np.int64)
        self._positions: Array = torch.zeros(0, self.dim, dtype=torch.int64, device=self.device)
        self._fingerprint: str | None = None

    def _read_shapes(self, state_dict: dict[str, torch.Tensor], num_codebooks: int, num_heads: int) -> None:
        try:
            self.dim = int(state_dict["transformer.norm_in.weight"].shape[0])
            self.card = int(state_dict["emb.0.weight"].shape[0]) - 1
        except KeyError as exc:
            raise ModelNotFoundError(f"LM checkpoint lacks the key {exc.args[0]!r}: it is not an EnCodec LM") from None

        layer_numbers = {int(m.group(1)) for key in state_dict if (m := re.match(r"transformer\.layers\.(\d+)\.", key))}
        codebooks = {int(m.group(1)) for key in state_dict if (m := re.match(r"emb\.(\d+)\.weight$", key))}
        self.num_layers = len(layer_numbers)
        self.checkpoint_codebooks = len(codebooks)
        if layer_numbers != set(range(self.num_layers)) or codebooks != set(range(self.checkpoint_codebooks)):
            raise ModelNotFoundError("LM checkpoint has gaps in its layer or codebook numbering: it is corrupt")
        if not 1 <= num_codebooks <= self.checkpoint_codebooks:
            raise ValueError(f"{num_codebooks} codebooks requested, the LM checkpoint has {self.checkpoint_codebooks}")
        if self.dim > MAX_DIM or self.dim % num_heads or (self.dim // 2) < 2:
            raise ModelNotFoundError(
                f"LM dimension {self.dim} is not supported: it must be at most {MAX_DIM}, "
                f"at least 4 and a multiple of {num_heads} heads"
            )
        self.num_codebooks = num_codebooks
        self.num_heads = num_heads
        self.head_dim = self.dim // num_heads

    def _convert(self, state_dict: dict[str, torch.Tensor], temperature_factor: int) -> _Network:
        """Return the integer network of the checkpoint, as torch tensors on the LM's device."""

        def tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
            if key not in state_dict:
                raise ModelNotFoundError(f"LM checkpoint lacks the key {key!r}")
            value = state_dict[key]
            if tuple(value.shape) != shape:
                raise ModelNotFoundError(f"LM checkpoint tensor {key!r} has shape {tuple(value.shape)}, expected {shape}")
            return value

        dim, card, device = self.dim, self.card, self.device
        norm_in = _make_norm(tensor("transformer.norm_in.weight", (dim,)), tensor("transformer.norm_in.bias", (dim,)), "transformer.norm_in", device)

        layers = []
        for index in range(self.num_layers):
            prefix = f"transformer.layers.{index}."
            hidden = int(tensor(prefix + "linear1.weight", tuple(state_dict[prefix + "linear1.weight"].shape)).shape[0]) if prefix + "linear1.weight" in state_dict else 0

            def linear(name: str, n_out: int, n_in: int) -> _Linear:
                weight_key = prefix + (name + "_weight" if name == "self_attn.in_proj" else name + ".weight")
                bias_key = prefix + (name + "_bias" if name == "self_attn.in_proj" else name + ".bias")
                return _make_linear(tensor(weight_key, (n_out, n_in)), tensor(bias_key, (n_out,)), prefix + name, device)

            def norm(name: str) -> _Norm:
                return _make_norm(tensor(prefix + name + ".weight", (dim,)), tensor(prefix + name + ".bias", (dim,)), prefix + name, device)

            layers.append(
                _Layer(
                    in_proj=linear("self_attn.in_proj", 3 * dim, dim),
                    out_proj=linear("self_attn.out_proj", dim, dim),
                    linear1=linear("linear1", hidden, dim),
                    linear2=linear("linear2", dim, hidden),
                    norm1=norm("norm1"),
                    norm2=norm("norm2"),
                )
            )

        embeddings = [_fixed_point(tensor(f"emb.{k}.weight", (card + 1, dim)), ACT_FRAC_BITS, f"emb.{k}.weight") for k in range(self.num_codebooks)]
        weights = [tensor(f"linears.{k}.weight", (card, dim)) for k in range(self.num_codebooks)]
        biases = [tensor(f"linears.{k}.bias", (card,)) for k in range(self.num_codebooks)]
        phi = torch.from_numpy(tables.normal_cdf_table().copy()).to(device)

        return _Network(
            norm_in=norm_in,
            layers=tuple(layers),
            embeddings=torch.stack(embeddings).clamp(-NORM_INPUT_LIMIT, NORM_INPUT_LIMIT).to(device),
            output=_make_linear(torch.cat(weights), torch.cat(biases), "linears", device),
            exp_table=torch.from_numpy(tables.exp_table(SCORE_FRAC_BITS, ATTENTION_EXP_BITS).copy()).to(device),
            phi=phi,
            phi_slope=phi[1:] - phi[:-1],
            num_heads=self.num_heads,
            # 1/sqrt(head_dim) as an integer over 2^QUERY_SCALE_BITS, by integer square root.
            query_scale=math.isqrt((1 << (2 * QUERY_SCALE_BITS)) // self.head_dim),
            query_key_limit=math.isqrt(EXACT_SUM_LIMIT // self.head_dim),
            value_limit=self.value_limit,
            temperature_factor=temperature_factor,
        )

    @property
    def value_limit(self) -> int:
        """The clamp of values, so that sum(weight * |value|) over the window stays below 2^53."""
        return EXACT_SUM_LIMIT // ((self.past_context + 1) << ATTENTION_EXP_BITS)

    def fingerprint(self) -> str:
        """Return a SHA-256 hex digest of the integer weights and the numerics version.

        Two LMs with the same fingerprint give the same logits. Streams record it, so that a
        decoder with another checkpoint reports the mismatch instead of decoding garbage.
        """
        if self._fingerprint is None:
            network = self.network
            digest = hashlib.sha256(f"exact-lm numerics {NUMERICS_VERSION} heads {self.num_heads}".encode())
            tensors = [network.norm_in.gain, network.norm_in.bias]
            for layer in network.layers:
                for linear in (layer.in_proj, layer.out_proj, layer.linear1, layer.linear2):
                    tensors += [linear.weight, linear.bias]
                for norm in (layer.norm1, layer.norm2):
                    tensors += [norm.gain, norm.bias]
            tensors += [network.embeddings, network.output.weight, network.output.bias]
            for value in tensors:
                array = value.detach().to("cpu", torch.int64).numpy()
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def weight_bytes(self) -> int:
        """Return the bytes of float64 weights that one step reads: every linear layer once."""
        linears = [self.network.output]
        for layer in self.network.layers:
            linears += [layer.in_proj, layer.out_proj, layer.linear1, layer.linear2]
        return sum(linear.weight.numel() * linear.weight.element_size() for linear in linears)

    def _position_rows(self, start: int, stop: int, as_numpy: bool) -> Array:
        """Return the sinusoidal position embeddings of positions start..stop, int64 `[T, dim]`."""
        # Threads may share one LM (the API caches coders), so growing the table and reading it
        # happen under a lock: otherwise a shorter table made at the same time could replace it.
        with self._position_lock:
            if self._position_table.shape[0] < stop:
                length = max(stop, 2 * self._position_table.shape[0], 256)
                self._position_table = tables.sinusoid_table(self.dim, length, ACT_FRAC_BITS, MAX_PERIOD).copy()
                self._positions = torch.from_numpy(self._position_table).to(self.device)
            table = self._position_table if as_numpy else self._positions
            return table[start:stop]

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map final hidden states int64 `[B, T, dim]` to logits int64 `[B, T, K, card]`.

        Logits are in units of 2^-LOGIT_FRAC_BITS nats, divided by the temperature.
        """
        return self.network.output_logits(hidden)

    # Teacher forcing: every frame of a chunk at once.

    def hidden_states(self, codes: torch.Tensor) -> torch.Tensor:
        """Run the transformer over whole chunks of codes int64 `[B, K, T]`, causally.

        Returns int64 `[B, T, dim]`: the state at frame t depends on codes before frame t only.
        """
        network = self.network
        codes = self._check_codes(codes)
        batch, _, frames = codes.shape
        inputs = torch.zeros_like(codes)
        inputs[:, :, 1:] = codes[:, :, :-1] + 1
        x = network.embed(inputs, self._position_rows(0, frames, as_numpy=False))
        zero_frame = torch.zeros(batch, 1, self.dim, dtype=torch.int64, device=self.device)

        for layer in network.layers:
            queries, keys, values = network.project(layer, x)
            _, zero_keys, zero_values = network.project(layer, zero_frame)
            keys = torch.cat([zero_keys, keys], dim=2)
            values = torch.cat([zero_values, values], dim=2)

            # Query frame t sits at key position t + 1 and attends to key positions
            # t + 1 - past_context .. t + 1.
            blocks = []
            for start in range(0, frames, QUERY_BLOCK):
                stop = min(start + QUERY_BLOCK, frames)
                first_key = max(0, start + 1 - self.past_context)
                query_positions = torch.arange(start + 1, stop + 1, device=self.device).view(-1, 1)
                key_positions = torch.arange(first_key, stop + 1, device=self.device).view(1, -1)
                delta = query_positions - key_positions
                mask = (delta >= 0) & (delta <= self.past_context)
                blocks.append(
                    network.attend(queries[:, :, start:stop], keys[:, :, first_key : stop + 1], values[:, :, first_key : stop + 1], mask)
                )
            x = network.finish_layer(layer, x, torch.cat(blocks, dim=1) if len(blocks) != 1 else blocks[0])
        return x

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the logits of every frame of chunks `[B, K, T]` as int64 `[B, T, K, card]`."""
        return self.output_logits(self.hidden_states(codes))

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.int64, device=self.device)
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes have shape {tuple(codes.shape)}, expected [batch, {self.num_codebooks}, frames]")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.card):
            raise ValueError(f"codes must be in [0, {self.card}), got values in [{int(codes.min())}, {int(codes.max())}]")
        return codes

    # Stepping: one frame of a batch of streams at a time, with a key/value cache.

    @property
    def _steps_in_numpy(self) -> bool:
        return self._step_network is not self.network

    def _step_zeros(self, shape: tuple[int, ...], integer: bool) -> Array:
        if self._steps_in_numpy:
            return np.zeros(shape, dtype=np.int64 if integer else np.float64)
        return torch.zeros(shape, dtype=torch.int64 if integer else torch.float64, device=self.device)

    def start(self, batch_size: int, max_frames: int = 0) -> ExactLMState:
        """Return the state before the first frame of `batch_size` streams.

        max_frames: how many frames the streams are expected to run, to size the cache; it grows
        past that when needed.
        """
        network = self._step_network
        capacity = max(max_frames, 1) + 1
        zero_frame = self._step_zeros((batch_size, 1, self.dim), integer=True)
        keys, values = [], []
        for layer in network.layers:
            _, zero_keys, zero_values = network.project(layer, zero_frame)
            key_cache = self._step_zeros((batch_size, self.num_heads, capacity, self.head_dim), integer=False)
            value_cache = self._step_zeros((batch_size, self.num_heads, capacity, self.head_dim), integer=False)
            key_cache[:, :, :1] = zero_keys
            value_cache[:, :, :1] = zero_values
            keys.append(key_cache)
            values.append(value_cache)
        return ExactLMState(keys=keys, values=values, frames=0)

    def step(self, state: ExactLMState, previous_codes: torch.Tensor | None, check: bool = True) -> torch.Tensor:
        """Advance every stream by one frame and return that frame's logits int64 `[B, K, card]`.

        previous_codes: int64 `[B, K]`, the codes of the frame before, or None at the first frame.
        check: validate previous_codes; a caller that decoded them itself may skip it.
        The logits are a tensor on the LM's device.
        """
        # NOTE: every step reads all float64 weights from memory (32 MB for the published 24 kHz
        # LM at 8 codebooks), which bounds how fast one stream decodes; a batch shares the reads.
        network = self._step_network
        batch = state.keys[0].shape[0]
        if previous_codes is None:
            if state.frames != 0:
                raise ValueError(f"previous codes are needed after the first frame (at frame {state.frames})")
            inputs = self._step_zeros((batch, self.num_codebooks, 1), integer=True)
        else:
            inputs = torch.as_tensor(previous_codes, device=self.device).view(batch, self.num_codebooks, 1)
            inputs = (self._check_codes(inputs) if check else inputs) + 1
            if self._steps_in_numpy:
                inputs = _to_numpy(inputs.to(torch.int64))

        frame = state.frames
        slot = frame + 1
        if slot >= state.keys[0].shape[2]:
            self._grow(state)
        first_key = max(0, slot - self.past_context)

        with _single_threaded_blas:
            x = network.embed(inputs, self._position_rows(frame, frame + 1, as_numpy=self._steps_in_numpy))
            for index, layer in enumerate(network.layers):
                queries, keys, values = network.project(layer, x)
                state.keys[index][:, :, slot : slot + 1] = keys
                state.values[index][:, :, slot : slot + 1] = values
                window_keys = state.keys[index][:, :, first_key : slot + 1]
                window_values = state.values[index][:, :, first_key : slot + 1]
                x = network.finish_layer(layer, x, network.attend(queries, window_keys, window_values, None))
            logits = network.output_logits(x)[:, 0]

        state.frames = frame + 1
        return torch.from_numpy(logits) if self._steps_in_numpy else logits

    def _grow(self, state: ExactLMState) -> None:
        """Double the capacity of the key/value cache."""
        for caches in (state.keys, state.values):
            for index, cache in enumerate(caches):
                grown = self._step_zeros((cache.shape[0], cache.shape[1], 2 * cache.shape[2], cache.shape[3]), integer=False)
                grown[:, :, : cache.shape[2]] = cache
                caches[index] = grown
