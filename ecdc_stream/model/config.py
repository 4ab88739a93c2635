"""Hyperparameters of an EnCodec model and its language model, and the two published sets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

from ..errors import InvalidArgumentError, ModelNotFoundError


@dataclass(frozen=True)
class EncodecConfig:
    """Every hyperparameter of an EnCodec model (networks, quantizer, segments) and of its LM.

    The SEANet fields take the reference's defaults (encodec 0.1.2a3 `SEANetEncoder` and
    `SEANetDecoder`). `segment` is the segment duration in seconds (None: the whole input is one
    segment) and `overlap` the fraction of a segment shared with the next one. `lm_past_context`
    None means int(3.5 * frame_rate) frames, the published LMs' value.
    """

    name: str
    sample_rate: int
    channels: int
    target_bandwidths: tuple[float, ...]
    n_q: int
    bins: int = 1024
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    activation: str = "ELU"
    activation_params: Mapping[str, Any] = field(default_factory=lambda: {"alpha": 1.0})
    final_activation: str | None = None
    final_activation_params: Mapping[str, Any] | None = None
    norm: str = "weight_norm"
    norm_params: Mapping[str, Any] = field(default_factory=dict)
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = True
    pad_mode: str = "reflect"
    true_skip: bool = False
    compress: int = 2
    lstm: int = 2
    trim_right_ratio: float = 1.0
    normalize: bool = False
    segment: float | None = None
    overlap: float = 0.01
    lm_dim: int = 200
    lm_layers: int = 5
    lm_num_heads: int = 8
    lm_hidden_scale: float = 4.0
    lm_past_context: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        object.__setattr__(self, "target_bandwidths", tuple(float(b) for b in self.target_bandwidths))
        self._validate()

    def _validate(self) -> None:
        positive = {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "n_q": self.n_q,
            "bins": self.bins,
            "dimension": self.dimension,
            "n_filters": self.n_filters,
            "kernel_size": self.kernel_size,
            "last_kernel_size": self.last_kernel_size,
            "residual_kernel_size": self.residual_kernel_size,
            "dilation_base": self.dilation_base,
            "compress": self.compress,
        }
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"model {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.bins < 2 or self.bins & (self.bins - 1):
            raise InvalidArgumentError(f"model {self.name!r}: bins must be a power of 2, got {self.bins}")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise InvalidArgumentError(f"model {self.name!r}: ratios must be positive integers, got {self.ratios}")
        if not self.target_bandwidths or any(b <= 0 for b in self.target_bandwidths):
            raise InvalidArgumentError(
                f"model {self.name!r}: target_bandwidths must be positive kbps values, got {self.target_bandwidths}"
            )
        if self.segment is not None and self.segment <= 0:
            raise InvalidArgumentError(f"model {self.name!r}: segment must be positive seconds or None, got {self.segment}")
        if not 0 <= self.overlap < 1:
            raise InvalidArgumentError(f"model {self.name!r}: overlap must be in [0, 1), got {self.overlap}")
        if self.n_residual_layers < 0 or self.lstm < 0:
            raise InvalidArgumentError(f"model {self.name!r}: n_residual_layers and lstm must not be negative")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, ignore_unknown: bool = False) -> EncodecConfig:
        """Build a configuration from a mapping such as a parsed `config.json`.

        Keys that are not fields raise `InvalidArgumentError` unless `ignore_unknown` is set.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown and not ignore_unknown:
            raise InvalidArgumentError(f"unknown model configuration keys: {', '.join(unknown)}")
        try:
            return cls(**{key: value for key, value in values.items() if key in names})
        except TypeError as error:
            raise InvalidArgumentError(f"invalid model configuration: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-compatible values."""
        values = dataclasses.asdict(self)
        values["ratios"] = list(self.ratios)
        values["target_bandwidths"] = list(self.target_bandwidths)
        values["activation_params"] = dict(self.activation_params)
        values["norm_params"] = dict(self.norm_params)
        if self.final_activation_params is not None:
            values["final_activation_params"] = dict(self.final_activation_params)
        return values

    @property
    def hop_length(self) -> int:
        """Audio samples per frame: the product of the ratios."""
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> int:
        """Frames per second, ceil(sample_rate / hop_length)."""
        return -(-self.sample_rate // self.hop_length)

    @property
    def segment_length(self) -> int | None:
        """Samples per segment, floor(segment * sample_rate), or None without segments."""
        if self.segment is None:
            return None
        # Fraction(str(x)) is the decimal value the configuration states, so 1.0 s at 48 kHz is
        # exactly 48000 samples, without float rounding.
        return int(Fraction(str(self.segment)) * self.sample_rate)

    @property
    def segment_stride(self) -> int | None:
        """Samples between the starts of consecutive segments, at least 1, or None without segments."""
        length = self.segment_length
        if length is None:
            return None
        return max(1, int((1 - Fraction(str(self.overlap))) * length))

    @property
    def resolved_lm_past_context(self) -> int:
        """Frames the LM attends back to: `lm_past_context`, else int(3.5 * frame_rate)."""
        if self.lm_past_context is not None:
            return self.lm_past_context
        return (7 * self.frame_rate) // 2


PUBLISHED_CONFIGS = {
    "encodec_24khz": EncodecConfig(
        name="encodec_24khz",
        sample_rate=24_000,
        channels=1,
        target_bandwidths=(1.5, 3.0, 6.0, 12.0, 24.0),
        n_q=32,
        norm="weight_norm",
        causal=True,
        normalize=False,
        segment=None,
    ),
    "encodec_48khz": EncodecConfig(
        name="encodec_48khz",
        sample_rate=48_000,
        channels=2,
        target_bandwidths=(3.0, 6.0, 12.0, 24.0),
        n_q=16,
        norm="time_group_norm",
        causal=False,
        normalize=True,
        segment=1.0,
    ),
}


def published_config(name: str) -> EncodecConfig:
    """Return the configuration of a published model, "encodec_24khz" or "encodec_48khz"."""
    try:
        return PUBLISHED_CONFIGS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}: the published models are {', '.join(PUBLISHED_CONFIGS)}"
        ) from None
