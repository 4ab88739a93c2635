"""The link report: what a receiver saw of a stream of chunks, and how much audio it concealed.

Every chunk of the stream ends in exactly one of four counts: received (arrived intact and in
time, decoded), lost (never arrived), corrupt (arrived damaged: failed its CRC or was cut
short) or late (its first copy arrived after the jitter buffer had concealed it). Duplicated
and reordered count events on top of that: extra copies of a chunk, and chunks whose first copy
arrived after one with a higher sequence number but still in time.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LinkStats:
    """Counters that the link decoder and the jitter buffer update while a stream runs.

    sample_rate: in Hz, to convert `concealed_samples` to seconds.
    chunks_expected: the chunk count announced by the sender's end message or header, or None.
    first_sequence: sequence number of the first chunk in the output.
    rejected: messages dropped before they reached the jitter buffer, by reason.
    started_at: when the jitter buffer started (s, anyio clock), after the model was loaded.
    """

    sample_rate: int = 0
    chunks_expected: int | None = None
    received: int = 0
    lost: int = 0
    corrupt: int = 0
    late: int = 0
    duplicated: int = 0
    reordered: int = 0
    concealed_samples: int = 0
    output_samples: int = 0
    first_sequence: int = 0
    end_received: bool = False
    rejected: Counter[str] = field(default_factory=Counter)
    started_at: float | None = None

    def report(self, snr_db: float | None = None, identical: bool = False, extra: dict[str, Any] | None = None) -> "LinkReport":
        """Freeze the counters into a `LinkReport`, with the SNR against a clean decode if measured."""
        seconds = self.concealed_samples / self.sample_rate if self.sample_rate else 0.0
        return LinkReport(
            chunks_sent=self.chunks_expected,
            chunks_received=self.received,
            chunks_lost=self.lost,
            chunks_corrupt=self.corrupt,
            chunks_duplicated=self.duplicated,
            chunks_reordered=self.reordered,
            chunks_late=self.late,
            seconds_concealed=seconds,
            seconds_output=self.output_samples / self.sample_rate if self.sample_rate else 0.0,
            snr_db=snr_db,
            identical_to_reference=identical,
            end_marker_received=self.end_received,
            first_sequence=self.first_sequence,
            messages_rejected=dict(sorted(self.rejected.items())),
            extra=dict(extra or {}),
        )


@dataclass(frozen=True)
class LinkReport:
    """The final report of a receiver (see the module docstring for what each count means).

    snr_db: SNR of the received audio against a clean decode, in dB, or None when no reference
    was given or the two are identical (`identical_to_reference` tells the two cases apart).
    extra: further JSON-ready facts, such as the injector's own summary in `simulate`.
    """

    chunks_sent: int | None
    chunks_received: int
    chunks_lost: int
    chunks_corrupt: int
    chunks_duplicated: int
    chunks_reordered: int
    chunks_late: int
    seconds_concealed: float
    seconds_output: float
    snr_db: float | None
    identical_to_reference: bool
    end_marker_received: bool
    first_sequence: int
    messages_rejected: dict[str, int]
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        return {
            "chunks_sent": self.chunks_sent,
            "chunks_received": self.chunks_received,
            "chunks_lost": self.chunks_lost,
            "chunks_corrupt": self.chunks_corrupt,
            "chunks_duplicated": self.chunks_duplicated,
            "chunks_reordered": self.chunks_reordered,
            "chunks_late": self.chunks_late,
            "seconds_concealed": round(self.seconds_concealed, 6),
            "seconds_output": round(self.seconds_output, 6),
            "snr_db": None if self.snr_db is None else round(self.snr_db, 3),
            "identical_to_reference": self.identical_to_reference,
            "end_marker_received": self.end_marker_received,
            "first_sequence": self.first_sequence,
            "messages_rejected": self.messages_rejected,
            **self.extra,
        }

    def to_json(self) -> str:
        """Return the report as one JSON object (strict JSON: no NaN or Infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False)

    def format_text(self) -> str:
        """Format the report as aligned lines for a terminal."""
        sent = "unknown (end marker lost)" if self.chunks_sent is None else str(self.chunks_sent)
        if self.identical_to_reference:
            snr = "identical to the clean decode"
        elif self.snr_db is None:
            snr = "not measured (no clean reference)"
        else:
            snr = f"{self.snr_db:.2f} dB against the clean decode"
        lines = [
            f"chunks sent        {sent}",
            f"chunks received    {self.chunks_received}",
            f"chunks lost        {self.chunks_lost}",
            f"chunks corrupt     {self.chunks_corrupt}",
            f"chunks duplicated  {self.chunks_duplicated}",
            f"chunks reordered   {self.chunks_reordered}",
            f"chunks late        {self.chunks_late}",
            f"seconds concealed  {self.seconds_concealed:.3f} of {self.seconds_output:.3f}",
            f"SNR                {snr}",
        ]
        if self.messages_rejected:
            rejected = ", ".join(f"{reason} {count}" for reason, count in self.messages_rejected.items())
            lines.append(f"messages rejected  {rejected}")
        return "\n".join(lines)


def snr_db(reference: np.ndarray, received: np.ndarray) -> tuple[float | None, bool]:
    """Return the SNR of `received` against `reference` in dB, and whether they are identical.

    Both are float arrays `[C, n]` of the same shape. The SNR is None when they are identical
    (infinite SNR) or the reference is silent.
    """
    if reference.shape != received.shape:
        raise ValueError(f"reference shape {reference.shape} differs from received shape {received.shape}")
    reference = reference.astype(np.float64)
    noise = float(np.sum((reference - received.astype(np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return None, True
    if signal == 0.0:
        return None, False
    return 10.0 * math.log10(signal / noise), False
