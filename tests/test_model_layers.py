"""The building blocks of the EnCodec networks: padding arithmetic, convolutions, norms, RVQ."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.model.conv import (
    PaddedConv1d,
    TimeGroupNorm,
    TrimmedConvTranspose1d,
    WeightNormConv1d,
    WeightNormConvTranspose1d,
    extra_padding_for_conv1d,
    pad1d,
)
from ecdc_stream.model.lstm import SkipLSTM
from ecdc_stream.model.quantizer import ResidualVectorQuantizer
from ecdc_stream.model.seanet import ResidualBlock


def float_extra_padding(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """The reference's float formula, valid while the numbers stay far below 2**53."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


@given(
    length=st.integers(1, 200_000),
    stride=st.integers(1, 10),
    kernel_extra=st.integers(0, 12),
)
def test_extra_padding_matches_float_formula(length, stride, kernel_extra):
    kernel_size = stride + kernel_extra
    padding_total = kernel_size - stride
    extra = extra_padding_for_conv1d(length, kernel_size, stride, padding_total)
    assert extra == float_extra_padding(length, kernel_size, stride, padding_total)
    assert extra >= 0


def test_reflect_pad_wider_than_input():
    x = torch.tensor([[[5.0]]])
    padded = pad1d(x, 3, 3, mode="reflect")
    # The input is zero-extended to [5, 0, 0, 0], reflected, and the extension cut off again.
    assert padded.flatten().tolist() == [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]


def test_reflect_pad_short_input_keeps_values():
    x = torch.tensor([[[1.0, 2.0]]])
    assert pad1d(x, 1, 1).flatten().tolist() == [2.0, 1.0, 2.0, 1.0]
    # [1, 2] is extended to [1, 2, 0], reflected to [1, 2, 0, 2, 1], and cut by one.
    assert pad1d(x, 0, 2).flatten().tolist() == [1.0, 2.0, 0.0, 2.0]


def test_pad1d_rejects_negative_padding():
    with pytest.raises(ValueError):
        pad1d(torch.zeros(1, 1, 4), -1, 0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5, 8])
def test_strided_conv_frame_count(causal, stride):
    conv = PaddedConv1d(2, 3, 2 * stride if stride > 1 else 7, stride=stride, causal=causal)
    for length in [1, 2, stride - 1, stride, stride + 1, 5 * stride + 3, 97]:
        if length < 1:
            continue
        out = conv(torch.randn(1, 2, length))
        assert out.shape == (1, 3, -(-length // stride)), length


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_dilated_conv_keeps_length(dilation):
    conv = PaddedConv1d(2, 2, 3, dilation=dilation, causal=False)
    for length in [1, 2, 3, 10]:
        assert conv(torch.randn(1, 2, length)).shape[-1] == length


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_transposed_conv_sample_count(causal, stride):
    conv = TrimmedConvTranspose1d(3, 2, 2 * stride, stride=stride, causal=causal)
    for frames in [1, 2, 7]:
        assert conv(torch.randn(1, 3, frames)).shape == (1, 2, frames * stride)


def test_causal_conv_ignores_future_samples():
    torch.manual_seed(0)
    conv = PaddedConv1d(1, 4, 8, stride=4, causal=True, norm="weight_norm")
    x = torch.randn(1, 1, 64)
    changed = x.clone()
    changed[..., 40:] = torch.randn(1, 1, 24)
    # Frames 0..9 cover samples up to 39 only.
    assert torch.equal(conv(x)[..., :10], conv(changed)[..., :10])
    assert not torch.equal(conv(x)[..., 10:], conv(changed)[..., 10:])


def test_weight_norm_conv_matches_torch_parametrization():
    torch.manual_seed(0)
    ours = WeightNormConv1d(3, 5, 4, 2)
    reference = nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 5, 4, 2))
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2.0)
        reference.parametrizations.weight.original0.copy_(ours.weight_g)
        reference.parametrizations.weight.original1.copy_(ours.weight_v)
        reference.bias.copy_(ours.bias)
    x = torch.randn(2, 3, 21)
    assert torch.equal(ours(x), reference(x))
    assert list(ours.state_dict()) == ["bias", "weight_g", "weight_v"]


def test_weight_norm_transposed_gain_per_input_channel():
    conv = WeightNormConvTranspose1d(6, 3, 4, 2)
    assert conv.weight_g.shape == (6, 1, 1)
    assert conv.weight_v.shape == (6, 3, 4)
    assert conv(torch.randn(1, 6, 5)).shape == (1, 3, 12)


def test_group_norm_single_value_gives_bias():
    norm = TimeGroupNorm(1, 1)
    with torch.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(0.25)
    x = torch.tensor([[[7.0]]])
    with pytest.raises(ValueError):
        nn.GroupNorm(1, 1)(x)
    assert norm(x).tolist() == [[[0.25]]]


def test_group_norm_single_value_matches_batch_of_two():
    torch.manual_seed(0)
    norm = TimeGroupNorm(1, 1)
    with torch.no_grad():
        norm.bias.fill_(-0.5)
    x = torch.randn(2, 1, 1)
    plain = nn.GroupNorm(1, 1)
    plain.load_state_dict(norm.state_dict())
    # F.group_norm folds mean and 1/sqrt(eps) into a scale and shift, so it is off by rounding.
    assert torch.allclose(norm(x[:1]), plain(x)[:1], rtol=0, atol=1e-4)
    assert torch.equal(norm(x[:1]), torch.full((1, 1, 1), -0.5))


def test_group_norm_regular_input_unchanged():
    torch.manual_seed(0)
    norm = TimeGroupNorm(1, 4)
    plain = nn.GroupNorm(1, 4)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(1, 4, 9)
    assert torch.equal(norm(x), plain(x))


def test_time_group_norm_cannot_be_causal():
    with pytest.raises(InvalidArgumentError, match="causal"):
        PaddedConv1d(2, 2, 3, causal=True, norm="time_group_norm")


def test_unsupported_norm_rejected():
    with pytest.raises(InvalidArgumentError, match="spectral_norm"):
        PaddedConv1d(2, 2, 3, norm="spectral_norm")


def test_residual_block_keys_and_shape():
    block = ResidualBlock(8, compress=2, true_skip=False, norm="weight_norm", causal=True)
    keys = list(block.state_dict())
    assert "block.1.conv.conv.weight_v" in keys
    assert "block.3.conv.conv.weight_v" in keys
    assert "shortcut.conv.conv.weight_v" in keys
    assert block.block[1].conv.conv.weight_v.shape == (4, 8, 3)
    assert block(torch.randn(2, 8, 13)).shape == (2, 8, 13)
    assert isinstance(ResidualBlock(8, true_skip=True).shortcut, nn.Identity)


def test_skip_lstm_adds_input():
    torch.manual_seed(0)
    lstm = SkipLSTM(4, num_layers=2)
    x = torch.randn(2, 4, 6)
    y, _ = lstm.lstm(x.permute(2, 0, 1))
    assert torch.allclose(lstm(x), (y + x.permute(2, 0, 1)).permute(1, 2, 0))


def make_quantizer(seed: int = 0) -> ResidualVectorQuantizer:
    generator = torch.Generator().manual_seed(seed)
    quantizer = ResidualVectorQuantizer(dimension=6, n_q=3, bins=16)
    for level, layer in enumerate(quantizer.vq.layers):
        layer._codebook.embed.copy_(torch.randn(16, 6, generator=generator) / (level + 1))
    return quantizer


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_codebook_picks_nearest_codeword(seed):
    quantizer = make_quantizer()
    x = torch.randn(1, 6, 11, generator=torch.Generator().manual_seed(seed))
    codes = quantizer.encode(x, 1)
    embed = quantizer.vq.layers[0]._codebook.embed
    distances = torch.cdist(x[0].t().double(), embed.double())
    best = distances.min(dim=1).values
    chosen = distances.gather(1, codes[0, 0].unsqueeze(1)).squeeze(1)
    assert torch.allclose(chosen, best, rtol=1e-5, atol=1e-6)


def test_residual_quantizer_round_trip():
    quantizer = make_quantizer()
    x = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(1))
    codes = quantizer.encode(x, 3)
    assert codes.shape == (3, 2, 9)
    assert codes.dtype == torch.int64

    expected = torch.zeros_like(x)
    residual = x
    for level in range(3):
        embed = quantizer.vq.layers[level]._codebook.embed
        chosen = embed[codes[level]].transpose(1, 2)
        expected = expected + chosen
        residual = residual - chosen
    assert torch.allclose(quantizer.decode(codes), expected)
    # Each level lowers (or keeps) the error of the reconstruction on average.
    error_one = (x - quantizer.decode(codes[:1])).pow(2).mean()
    error_three = (x - quantizer.decode(codes)).pow(2).mean()
    assert error_three < error_one


def test_quantizer_buffer_names():
    keys = list(ResidualVectorQuantizer(4, 2, 8).state_dict())
    assert keys[:4] == [
        "vq.layers.0._codebook.inited",
        "vq.layers.0._codebook.cluster_size",
        "vq.layers.0._codebook.embed",
        "vq.layers.0._codebook.embed_avg",
    ]
