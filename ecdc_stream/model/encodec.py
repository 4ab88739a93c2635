"""The EnCodec model: SEANet encoder, residual vector quantizer, SEANet decoder, segments.

`EncodecModel.encode` turns audio [B, C, n] into one `(codes, scale)` pair per segment, and
`decode` turns them back into audio, overlap-adding the segments of models that have them. Codes
and scales equal those of the reference implementation (encodec 0.1.2a3) for the same weights.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidAudioError
from .config import EncodecConfig
from .quantizer import ResidualVectorQuantizer
from .seanet import SEANetDecoder, SEANetEncoder

# One encoded segment: codes [B, K, T] int64 and, for normalising models, its scale [B, 1].
EncodedSegment = tuple[torch.Tensor, torch.Tensor | None]


def linear_overlap_add(segments: Sequence[torch.Tensor], stride: int) -> torch.Tensor:
    """Overlap-add decoded segments [..., L_i] placed `stride` samples apart.

    Every segment is weighted by the same triangle, L_0 samples long (the first segment's
    length), near 0 at both ends and 0.5 in the middle. A shorter last segment uses the first
    L_i weights. The weighted sum is divided by the sum of the weights, and the result is
    [..., stride * (S - 1) + L_last].
    """
    if not segments:
        raise ValueError("overlap-add needs at least one segment")

    first = segments[0]
    full_length = first.shape[-1]
    total = stride * (len(segments) - 1) + segments[-1].shape[-1]

    # linspace(0, 1, L + 2) without its two ends: every weight is strictly positive.
    position = torch.linspace(0, 1, full_length + 2, device=first.device, dtype=first.dtype)[1:-1]
    weight = 0.5 - (position - 0.5).abs()

    weight_sum = torch.zeros(total, device=first.device, dtype=first.dtype)
    out = torch.zeros(*first.shape[:-1], total, device=first.device, dtype=first.dtype)
    offset = 0
    for segment in segments:
        length = segment.shape[-1]
        out[..., offset : offset + length] += weight[:length] * segment
        weight_sum[offset : offset + length] += weight[:length]
        offset += stride

    return out / weight_sum


class EncodecModel(nn.Module):
    """EnCodec networks of one configuration, built untrained; load a state dict to use it.

    Attributes mirror the configuration: `name`, `sample_rate`, `channels`, `frame_rate` (frames
    per second), `hop_length` (samples per frame), `segment_length` and `segment_stride`
    (samples, None without segments), `normalize`, `bins`, `bits_per_codebook`,
    `target_bandwidths` (kbps).
    """

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.config = config
        seanet_options = dict(
            channels=config.channels,
            dimension=config.dimension,
            n_filters=config.n_filters,
            n_residual_layers=config.n_residual_layers,
            ratios=config.ratios,
            activation=config.activation,
            activation_params=dict(config.activation_params),
            norm=config.norm,
            norm_params=dict(config.norm_params),
            kernel_size=config.kernel_size,
            last_kernel_size=config.last_kernel_size,
            residual_kernel_size=config.residual_kernel_size,
            dilation_base=config.dilation_base,
            causal=config.causal,
            pad_mode=config.pad_mode,
            true_skip=config.true_skip,
            compress=config.compress,
            lstm=config.lstm,
        )
        self.encoder = SEANetEncoder(**seanet_options)
        self.quantizer = ResidualVectorQuantizer(config.dimension, config.n_q, config.bins)
        self.decoder = SEANetDecoder(
            **seanet_options,
            final_activation=config.final_activation,
            final_activation_params=(
                dict(config.final_activation_params) if config.final_activation_params is not None else None
            ),
            trim_right_ratio=config.trim_right_ratio,
        )

        self.name = config.name
        self.sample_rate = config.sample_rate
        self.channels = config.channels
        self.hop_length = config.hop_length
        self.frame_rate = config.frame_rate
        self.segment_length = config.segment_length
        self.segment_stride = config.segment_stride
        self.normalize = config.normalize
        self.bins = config.bins
        self.bits_per_codebook = config.bins.bit_length() - 1
        self.target_bandwidths = list(config.target_bandwidths)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def num_codebooks(self, bandwidth: float) -> int:
        """Return the number of codebooks K used at `bandwidth` kbps, one of `target_bandwidths`.

        K = max(1, floor(bandwidth * 1000 / (bits_per_codebook * frame_rate))), at most n_q.
        """
        offered = next((b for b in self.target_bandwidths if math.isclose(b, bandwidth, rel_tol=1e-9)), None)
        if offered is None:
            choices = ", ".join(f"{b:g}" for b in self.target_bandwidths)
            raise InvalidArgumentError(
                f"bandwidth {bandwidth:g} kbps is not offered by model {self.name}: use one of {choices}"
            )
        bits_per_second = Fraction(str(offered)) * 1000
        count = math.floor(bits_per_second / (self.bits_per_codebook * self.frame_rate))
        return min(self.config.n_q, max(1, count))

    def frames_for_samples(self, num_samples: int) -> int:
        """Return the frames a segment of `num_samples` samples is coded in.

        ceil(num_samples * frame_rate / sample_rate) in integers, the count the reference's
        stream reader uses. It equals the encoder's ceil(num_samples / hop_length) whenever
        hop_length divides the sample rate, as in every published and test configuration.
        """
        # NOTE: for a configuration whose hop_length does not divide its sample rate the two
        # counts differ, and raw streams of such a model would be misread.
        return -(-num_samples * self.frame_rate // self.sample_rate)

    def segment_offsets(self, num_samples: int) -> list[int]:
        """Return the first sample of each segment that `encode` cuts `num_samples` samples into."""
        if self.segment_stride is None:
            return [0]
        return list(range(0, num_samples, self.segment_stride))

    def _check_audio(self, wav: torch.Tensor) -> None:
        if not isinstance(wav, torch.Tensor) or wav.dim() != 3:
            shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
            raise InvalidAudioError(f"audio must be a tensor [batch, channels, samples], got {shape}")
        if wav.shape[1] != self.channels:
            raise InvalidAudioError(
                f"model {self.name} takes {self.channels} channel(s), the audio has {wav.shape[1]}: "
                "convert the channel count first"
            )
        if wav.shape[-1] < 1 or wav.shape[0] < 1:
            raise InvalidAudioError("audio is empty: it must hold at least one sample")
        if not wav.is_floating_point():
            raise InvalidAudioError(f"audio must be floating point, got {wav.dtype}")
        if not torch.isfinite(wav).all():
            raise InvalidAudioError("audio contains NaN or infinite samples: clean the input first")

    @torch.no_grad()
    def encode_segment(self, wav: torch.Tensor, num_codebooks: int) -> EncodedSegment:
        """Encode one segment [B, C, n] (n at most segment_length) into (codes [B, K, T], scale).

        With `normalize`, the segment is divided by scale = 1e-8 + RMS of its channel mean, and
        scale [B, 1] is returned with the codes; otherwise scale is None. T = ceil(n / hop_length).
        """
        if self.normalize:
            mono = wav.mean(dim=1, keepdim=True)
            volume = mono.pow(2).mean(dim=2, keepdim=True).sqrt()
            scale = 1e-8 + volume
            wav = wav / scale
            scale = scale.view(-1, 1)
        else:
            scale = None

        embeddings = self.encoder(wav)
        codes = self.quantizer.encode(embeddings, num_codebooks)
        return codes.transpose(0, 1), scale

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, bandwidth: float) -> list[EncodedSegment]:
        """Encode audio [B, C, n] at `bandwidth` kbps into one (codes, scale) pair per segment.

        Without segments there is one pair covering all n samples. With segments, segment i
        covers samples [i * segment_stride, i * segment_stride + segment_length), cut at n.
        The audio is moved to the model's device as float32, and the codes and scales are
        returned on that device.
        """
        self._check_audio(wav)
        num_codebooks = self.num_codebooks(bandwidth)
        wav = wav.to(self.device, torch.float32)
        length = wav.shape[-1]
        segment_length = self.segment_length if self.segment_length is not None else length

        return [
            self.encode_segment(wav[:, :, offset : offset + segment_length], num_codebooks)
            for offset in self.segment_offsets(length)
        ]

    def _check_segment(self, segment: EncodedSegment) -> None:
        codes, scale = segment
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.dtype.is_floating_point:
            raise InvalidArgumentError("codes must be an integer tensor [batch, codebooks, frames]")
        if not 1 <= codes.shape[1] <= self.config.n_q:
            raise InvalidArgumentError(
                f"codes contain {codes.shape[1]} codebooks, model {self.name} has 1 to {self.config.n_q}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.bins):
            raise InvalidArgumentError(f"codes must lie in [0, {self.bins}) for model {self.name}")
        if self.normalize and scale is None:
            raise InvalidArgumentError(f"model {self.name} normalises its input, so every segment needs a scale")

    @torch.no_grad()
    def decode_segment(self, codes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Decode one segment's codes [B, K, T] (and scale [B, 1]) into audio [B, C, T * hop_length]."""
        embeddings = self.quantizer.decode(codes.transpose(0, 1))
        out = self.decoder(embeddings)
        if scale is not None:
            out = out * scale.view(-1, 1, 1)
        return out

    @torch.no_grad()
    def decode(self, segments: Sequence[EncodedSegment], length: int | None = None) -> torch.Tensor:
        """Decode the segments of `encode` into audio [B, C, n'].

        n' is the span the segments cover. It is at least the encoded length and exceeds it by
        less than hop_length samples, because only the last frame of the last segment is partial. With `length`, the output is cut to exactly `length`
        samples, which must not exceed n'. Codes and scales are moved to the model's device, and
        the audio is returned on it.
        """
        if not segments:
            raise InvalidArgumentError("there are no segments to decode")
        for segment in segments:
            self._check_segment(segment)
        device = self.device
        segments = [
            (codes.to(device), scale.to(device, torch.float32) if scale is not None else None)
            for codes, scale in segments
        ]

        if self.segment_length is None:
            if len(segments) != 1:
                raise InvalidArgumentError(f"model {self.name} has no segments, got {len(segments)} to decode")
            out = self.decode_segment(*segments[0])
        else:
            decoded = [self.decode_segment(codes, scale) for codes, scale in segments]
            out = linear_overlap_add(decoded, self.segment_stride or 1)

        if length is not None:
            if not 0 <= length <= out.shape[-1]:
                raise InvalidArgumentError(f"cannot cut {out.shape[-1]} decoded samples to {length}")
            out = out[..., :length]
        return out
