"""Immutable records that travel between pipeline stages.

Shapes use C for audio channels, K for codebooks and T for frames. Sample counts are at the
model's sample rate unless a record states otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AudioBlock:
    """A block of audio.

    samples: float32 array `[C, n]`.
    sample_rate: in Hz.
    start: index of the first sample of the block in its stream.
    """

    samples: np.ndarray
    sample_rate: int
    start: int

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[-1])


@dataclass(frozen=True)
class CodeChunk:
    """The codes of one chunk, the unit of framing, LM reset and loss.

    sequence: chunk sequence number, counting from 0.
    codes: int64 array `[K, T]`, one code per codebook and frame.
    num_samples: how many audio samples the chunk covers at the model's rate.
    scales: the segment scale for each 1 s segment of a normalising model, else empty.
    """

    sequence: int
    codes: np.ndarray
    num_samples: int
    scales: tuple[float, ...] = ()

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[-1])


@dataclass(frozen=True)
class Packet:
    """One framed acv=4 chunk: `[u32 payload length][u32 CRC-32][payload]`."""

    sequence: int
    data: bytes


@dataclass(frozen=True)
class Gap:
    """A chunk that was lost or failed its CRC, to be concealed.

    sequence: the missing chunk's sequence number.
    num_samples: how many audio samples it would have covered.
    reason: "lost", "corrupt" or "late".
    """

    sequence: int
    num_samples: int
    reason: str = "lost"
