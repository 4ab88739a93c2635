"""Convolutions of the EnCodec networks: normalisation, padding and trimming.

Every convolution of the SEANet encoder and decoder is wrapped twice, so that the published
state-dict keys come out as `<layer>.conv.conv.weight_g` (`PaddedConv1d` > `NormConv1d` >
`WeightNormConv1d`) or `<layer>.convtr.convtr.weight_v` for the transposed ones. The padding rules
are those of the reference implementation (encodec 0.1.2a3, `encodec/modules/conv.py`): a strided
convolution over n samples yields ceil(n / stride) frames, and a transposed convolution over T
frames yields T * stride samples. All length arithmetic is done on Python integers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError

# Normalisations these modules build. The reference also names 'spectral_norm', 'layer_norm' and
# 'time_layer_norm', but no published checkpoint uses them.
# NOTE: configurations with those three norms are rejected rather than built.
SUPPORTED_NORMS = ("none", "weight_norm", "time_group_norm")


def ceil_div(numerator: int, denominator: int) -> int:
    """Return ceil(numerator / denominator) for integers, exact for negative numerators too."""
    return -((-numerator) // denominator)


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Compute the right padding that makes the last window of a strided convolution complete.

    Without it, a convolution over `length` samples padded by `padding_total` would drop the
    samples after its last full window, and the transposed convolution could not restore them.
    With it, the convolution yields ceil(length / stride) frames when
    `padding_total = kernel_size - stride`. The result is never negative.
    """
    windows_after_first = ceil_div(length - kernel_size + padding_total, stride)
    ideal_length = windows_after_first * stride + kernel_size - padding_total
    return ideal_length - length


def pad1d(x: torch.Tensor, padding_left: int, padding_right: int, mode: str = "reflect") -> torch.Tensor:
    """Pad the last axis of `x` [..., T], allowing reflect padding wider than the input.

    `F.pad` rejects a reflect pad that is not shorter than the input. In that case the input is
    first extended with zeros on the right until it is one sample longer than the widest pad,
    then reflected, and then the zeros are cut off again. The reference does the same, so short
    inputs (down to 1 sample) give the reference's values.
    """
    if padding_left < 0 or padding_right < 0:
        raise ValueError(f"padding must be non-negative, got ({padding_left}, {padding_right})")

    if mode != "reflect":
        return F.pad(x, (padding_left, padding_right), mode=mode)

    length = x.shape[-1]
    widest_pad = max(padding_left, padding_right)
    zero_extension = 0
    if length <= widest_pad:
        zero_extension = widest_pad - length + 1
        x = F.pad(x, (0, zero_extension))

    padded = F.pad(x, (padding_left, padding_right), mode="reflect")
    return padded[..., : padded.shape[-1] - zero_extension]


def unpad1d(x: torch.Tensor, padding_left: int, padding_right: int) -> torch.Tensor:
    """Remove `padding_left` and `padding_right` samples from the last axis of `x` [..., T]."""
    if padding_left < 0 or padding_right < 0 or padding_left + padding_right > x.shape[-1]:
        raise ValueError(f"cannot remove ({padding_left}, {padding_right}) samples from {x.shape[-1]}")
    return x[..., padding_left : x.shape[-1] - padding_right]


class _WeightNorm:
    """Weight normalisation over dim 0 for a convolution class, computed once per weight version.

    `torch._weight_norm` is the kernel torch's own weight-norm utilities call, so the effective
    weight is bit-identical to the reference's. Without autograd, the result is cached and reused
    until `weight_v` or `weight_g` changes: in place (`load_state_dict`, optimiser steps) or by
    being replaced (`.to()`, `.half()`). Recomputing it on every call took as long as some of the
    convolutions themselves.
    """

    weight_v: nn.Parameter
    weight_g: nn.Parameter

    def _init_weight_norm(self) -> None:
        direction = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(torch.norm_except_dim(direction, 2, 0))
        self.weight_v = nn.Parameter(direction)
        self._cached_weight: tuple[tuple, torch.Tensor] | None = None

    def normalized_weight(self) -> torch.Tensor:
        """Return `weight_g * weight_v / ||weight_v||`, the norms taken per slice of dim 0."""
        v, g = self.weight_v, self.weight_g
        if torch.is_grad_enabled() and (v.requires_grad or g.requires_grad):
            # Training: autograd needs the graph from the parameters to the weight.
            return torch._weight_norm(v, g, 0)

        # A tensor's version counts its in-place changes, and its storage changes when a
        # module method such as `.to()` replaces its data. The thread count is in the key too,
        # so the weight is what a fresh computation would give under the current setting.
        # NOTE: an edit through `param.data` in place bumps no version and goes unnoticed.
        key = (v._version, g._version, v.data_ptr(), g.data_ptr(), v.dtype, v.device, torch.get_num_threads())
        if self._cached_weight is None or self._cached_weight[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                weight = torch._weight_norm(v, g, 0)
            self._cached_weight = (key, weight)
        return self._cached_weight[1]


class WeightNormConv1d(_WeightNorm, nn.Conv1d):
    """`nn.Conv1d` whose weight is `weight_g * weight_v / ||weight_v||`, norms taken per output channel.

    Parameters: `bias` [C_out], `weight_g` [C_out, 1, 1], `weight_v` [C_out, C_in, K], in the
    order and with the names of `torch.nn.utils.weight_norm`, which is deprecated.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class WeightNormConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` with weight normalisation over dim 0.

    Dim 0 of a transposed weight [C_in, C_out, K] is the input channel, so `weight_g` is
    [C_in, 1, 1], as in the published checkpoints.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.conv_transpose1d(
            x,
            self.normalized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class TimeGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` over [B, C, T] that also accepts a group of a single value.

    `F.group_norm` raises when each group of a batch of one contains one value (one channel per
    group and T = 1). The 48 kHz model meets that when it encodes a last segment of 1 sample
    with a configuration whose residual blocks have one hidden channel, which made the reference
    fail on inputs of 1, 47521 or 95041 samples. Normalising a single value is well defined: the
    value minus its own mean is 0, so the output is the bias, and that is what this returns.
    `F.group_norm` returns the same for such a group in a larger batch, up to float rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values_per_group = (x.shape[1] // self.num_groups) * x[0, 0].numel()
        if values_per_group == 1:
            shape = [1, -1] + [1] * (x.dim() - 2)
            bias = self.bias.view(shape) if self.bias is not None else x.new_zeros(shape[:2])
            return bias.expand_as(x).to(x.dtype).clone()
        return super().forward(x)


def _check_norm(norm: str, causal: bool) -> None:
    if norm not in SUPPORTED_NORMS:
        raise InvalidArgumentError(f"unsupported convolution norm {norm!r}: use one of {', '.join(SUPPORTED_NORMS)}")
    if norm == "time_group_norm" and causal:
        raise InvalidArgumentError("norm 'time_group_norm' needs the whole segment, so it cannot be causal")


def _norm_module(norm: str, channels: int, norm_params: dict | None) -> nn.Module:
    if norm == "time_group_norm":
        return TimeGroupNorm(1, channels, **(norm_params or {}))
    return nn.Identity()


class NormConv1d(nn.Module):
    """Convolution followed by its normalisation: `conv` (weight-normed or plain) then `norm`.

    Input [B, C_in, T], output [B, C_out, T'] with T' given by the usual convolution arithmetic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        causal: bool = False,
        norm: str = "none",
        norm_params: dict | None = None,
    ) -> None:
        super().__init__()
        _check_norm(norm, causal)
        conv_class = WeightNormConv1d if norm == "weight_norm" else nn.Conv1d
        self.conv = conv_class(in_channels, out_channels, kernel_size, stride, dilation=dilation)
        self.norm = _norm_module(norm, out_channels, norm_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class NormConvTranspose1d(nn.Module):
    """Transposed convolution followed by its normalisation: `convtr` then `norm`.

    Input [B, C_in, T], output [B, C_out, (T - 1) * stride + kernel_size].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        causal: bool = False,
        norm: str = "none",
        norm_params: dict | None = None,
    ) -> None:
        super().__init__()
        _check_norm(norm, causal)
        conv_class = WeightNormConvTranspose1d if norm == "weight_norm" else nn.ConvTranspose1d
        self.convtr = conv_class(in_channels, out_channels, kernel_size, stride)
        self.norm = _norm_module(norm, out_channels, norm_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.convtr(x))


class PaddedConv1d(nn.Module):
    """Convolution that pads its input so that T samples give ceil(T / stride) frames.

    The total padding is (kernel_size - 1) * dilation - (stride - 1). A causal convolution puts it
    all on the left; otherwise the right gets half (rounded down) and the left the rest. The right
    side also gets the extra padding of `extra_padding_for_conv1d`. Input [B, C_in, T], output
    [B, C_out, ceil(T / stride)].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        causal: bool = False,
        norm: str = "none",
        norm_params: dict | None = None,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.conv = NormConv1d(
            in_channels, out_channels, kernel_size, stride, dilation, causal=causal, norm=norm, norm_params=norm_params
        )
        self.causal = causal
        self.pad_mode = pad_mode
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding_total = (kernel_size - 1) * dilation - (stride - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference passes the kernel size without dilation here. The two differ only for a
        # dilated strided convolution, which no configuration builds.
        extra = extra_padding_for_conv1d(x.shape[-1], self.kernel_size, self.stride, self.padding_total)

        if self.causal:
            x = pad1d(x, self.padding_total, extra, mode=self.pad_mode)
        else:
            padding_right = self.padding_total // 2
            padding_left = self.padding_total - padding_right
            x = pad1d(x, padding_left, padding_right + extra, mode=self.pad_mode)

        return self.conv(x)


class TrimmedConvTranspose1d(nn.Module):
    """Transposed convolution trimmed so that T frames give T * stride samples.

    It removes kernel_size - stride samples. Non-causal: half (rounded down) on the right, the
    rest on the left. Causal: ceil(total * trim_right_ratio) on the right, the rest on the left.
    Input [B, C_in, T], output [B, C_out, T * stride].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        causal: bool = False,
        norm: str = "none",
        norm_params: dict | None = None,
        trim_right_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= trim_right_ratio <= 1.0:
            raise InvalidArgumentError(f"trim_right_ratio {trim_right_ratio} is outside [0, 1]")
        if not causal and trim_right_ratio != 1.0:
            raise InvalidArgumentError(f"trim_right_ratio {trim_right_ratio} needs a causal model: use 1.0")
        self.convtr = NormConvTranspose1d(
            in_channels, out_channels, kernel_size, stride, causal=causal, norm=norm, norm_params=norm_params
        )
        padding_total = kernel_size - stride
        if causal:
            self.padding_right = math.ceil(padding_total * trim_right_ratio)
        else:
            self.padding_right = padding_total // 2
        self.padding_left = padding_total - self.padding_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unpad1d(self.convtr(x), self.padding_left, self.padding_right)
