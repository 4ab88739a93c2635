"""SEANet encoder and decoder: the convolutional halves of EnCodec.

The encoder maps audio [B, channels, n] to embeddings [B, dimension, ceil(n / hop_length)], with
hop_length the product of the ratios; the decoder maps [B, dimension, T] back to
[B, channels, T * hop_length]. Layer order and indices follow the reference SEANet classes of
encodec 0.1.2a3, so that the state-dict keys are `encoder.model.N...` and `decoder.model.N...`
exactly as in the published checkpoints.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .conv import PaddedConv1d, TrimmedConvTranspose1d
from .lstm import SkipLSTM


def make_activation(name: str, params: dict | None) -> nn.Module:
    """Build the `torch.nn` activation module called `name` (for example "ELU") with `params`."""
    activation_class = getattr(nn, name, None)
    if not (isinstance(activation_class, type) and issubclass(activation_class, nn.Module)):
        raise InvalidArgumentError(f"unknown activation {name!r}: use the name of a torch.nn module such as 'ELU'")
    return activation_class(**(params or {}))


class ResidualBlock(nn.Module):
    """SEANet residual unit: `shortcut(x) + block(x)`, shape-preserving on [B, dim, T].

    `block` is, for each (kernel size, dilation) pair, an activation and a padded convolution:
    dim -> dim // compress channels for all but the last, which returns to dim. The shortcut is
    the identity when `true_skip`, otherwise a 1x1 convolution.
    """

    def __init__(
        self,
        dim: int,
        kernel_sizes: Sequence[int] = (3, 1),
        dilations: Sequence[int] = (1, 1),
        *,
        activation: str = "ELU",
        activation_params: dict | None = None,
        norm: str = "weight_norm",
        norm_params: dict | None = None,
        causal: bool = False,
        pad_mode: str = "reflect",
        compress: int = 2,
        true_skip: bool = True,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(dilations):
            raise InvalidArgumentError(f"{len(kernel_sizes)} kernel sizes but {len(dilations)} dilations")

        hidden = dim // compress
        conv_options = dict(norm=norm, norm_params=norm_params, causal=causal, pad_mode=pad_mode)
        layers: list[nn.Module] = []
        for index, (kernel_size, dilation) in enumerate(zip(kernel_sizes, dilations)):
            in_channels = dim if index == 0 else hidden
            out_channels = dim if index == len(kernel_sizes) - 1 else hidden
            layers.append(make_activation(activation, activation_params))
            layers.append(PaddedConv1d(in_channels, out_channels, kernel_size, dilation=dilation, **conv_options))
        self.block = nn.Sequential(*layers)

        if true_skip:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PaddedConv1d(dim, dim, 1, **conv_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SEANetEncoder(nn.Module):
    """Encoder: audio [B, channels, n] -> embeddings [B, dimension, ceil(n / hop_length)].

    Layers: a convolution to n_filters channels; for each ratio, taken from the last to the first,
    `n_residual_layers` residual blocks, an activation and a strided convolution (kernel
    2 * ratio, stride ratio) that doubles the channels; an LSTM when `lstm` > 0; an activation
    and a convolution to `dimension` channels.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        n_residual_layers: int = 1,
        ratios: Sequence[int] = (8, 5, 4, 2),
        activation: str = "ELU",
        activation_params: dict | None = None,
        norm: str = "weight_norm",
        norm_params: dict | None = None,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = False,
        pad_mode: str = "reflect",
        true_skip: bool = False,
        compress: int = 2,
        lstm: int = 2,
    ) -> None:
        super().__init__()
        if activation_params is None:
            activation_params = {"alpha": 1.0}
        self.channels = channels
        self.dimension = dimension
        self.ratios = list(reversed(ratios))
        self.hop_length = math.prod(self.ratios)

        conv_options = dict(norm=norm, norm_params=norm_params, causal=causal, pad_mode=pad_mode)
        block_options = dict(
            activation=activation,
            activation_params=activation_params,
            compress=compress,
            true_skip=true_skip,
            **conv_options,
        )

        mult = 1
        layers: list[nn.Module] = [PaddedConv1d(channels, n_filters, kernel_size, **conv_options)]
        for ratio in self.ratios:
            width = mult * n_filters
            for j in range(n_residual_layers):
                layers.append(
                    ResidualBlock(width, (residual_kernel_size, 1), (dilation_base**j, 1), **block_options)
                )
            layers.append(make_activation(activation, activation_params))
            layers.append(PaddedConv1d(width, 2 * width, 2 * ratio, stride=ratio, **conv_options))
            mult *= 2

        if lstm:
            layers.append(SkipLSTM(mult * n_filters, num_layers=lstm))
        layers.append(make_activation(activation, activation_params))
        layers.append(PaddedConv1d(mult * n_filters, dimension, last_kernel_size, **conv_options))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Decoder: embeddings [B, dimension, T] -> audio [B, channels, T * hop_length].

    The mirror of `SEANetEncoder`: a convolution to n_filters * 2 ** len(ratios) channels, an LSTM
    when `lstm` > 0, then for each ratio in order an activation, a transposed convolution that
    halves the channels and upsamples by the ratio, and residual blocks; finally an activation, a
    convolution to `channels` and the optional `final_activation`.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        n_residual_layers: int = 1,
        ratios: Sequence[int] = (8, 5, 4, 2),
        activation: str = "ELU",
        activation_params: dict | None = None,
        final_activation: str | None = None,
        final_activation_params: dict | None = None,
        norm: str = "weight_norm",
        norm_params: dict | None = None,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = False,
        pad_mode: str = "reflect",
        true_skip: bool = False,
        compress: int = 2,
        lstm: int = 2,
        trim_right_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if activation_params is None:
            activation_params = {"alpha": 1.0}
        self.channels = channels
        self.dimension = dimension
        self.ratios = list(ratios)
        self.hop_length = math.prod(self.ratios)

        conv_options = dict(norm=norm, norm_params=norm_params, causal=causal, pad_mode=pad_mode)
        block_options = dict(
            activation=activation,
            activation_params=activation_params,
            compress=compress,
            true_skip=true_skip,
            **conv_options,
        )

        mult = 2 ** len(self.ratios)
        layers: list[nn.Module] = [PaddedConv1d(dimension, mult * n_filters, kernel_size, **conv_options)]
        if lstm:
            layers.append(SkipLSTM(mult * n_filters, num_layers=lstm))

        for ratio in self.ratios:
            width = mult * n_filters
            layers.append(make_activation(activation, activation_params))
            layers.append(
                TrimmedConvTranspose1d(
                    width,
                    width // 2,
                    2 * ratio,
                    stride=ratio,
                    causal=causal,
                    norm=norm,
                    norm_params=norm_params,
                    trim_right_ratio=trim_right_ratio,
                )
            )
            for j in range(n_residual_layers):
                layers.append(
                    ResidualBlock(width // 2, (residual_kernel_size, 1), (dilation_base**j, 1), **block_options)
                )
            mult //= 2

        layers.append(make_activation(activation, activation_params))
        layers.append(PaddedConv1d(n_filters, channels, last_kernel_size, **conv_options))
        if final_activation is not None:
            layers.append(make_activation(final_activation, final_activation_params))
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
