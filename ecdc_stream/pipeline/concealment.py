"""Concealment: a lost or corrupt chunk becomes silence of exactly its duration.

The audio on either side of the silence is faded (a raised-cosine ramp of a few milliseconds), so
that the jump to and from zero does not click. The total number of samples out always equals the
number in, gaps included, because a gap's `num_samples` is what the lost chunk would have covered.

`Concealer` is the synchronous core (the transports use it directly); `conceal_stage` wraps it as
a pipeline stage that receives `AudioBlock | Gap` in stream order and sends `AudioBlock`s.
"""

from __future__ import annotations

import logging

import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.pipeline.records import AudioBlock, Gap

log = logging.getLogger(__name__)

DEFAULT_FADE_SECONDS = 0.005


def fade_ramp(length: int) -> np.ndarray:
    """Return a raised-cosine ramp rising from near 0 to near 1 over `length` samples, float32 `[length]`."""
    if length <= 0:
        return np.zeros(0, dtype=np.float32)
    phase = (np.arange(length, dtype=np.float64) + 0.5) / length
    return (0.5 - 0.5 * np.cos(np.pi * phase)).astype(np.float32)


class Concealer:
    """Turn a stream of audio blocks and gaps into audio blocks of the same total length.

    The last `fade_samples` samples of audio are held back until the next item shows whether a
    gap follows them, so the output runs at most that many samples behind the input until `flush`.
    Output blocks are numbered by their position in the stream, gaps included.

    sample_rate: in Hz.  channels: C.  fade_samples: length of each fade, in samples.
    """

    def __init__(self, sample_rate: int, channels: int, fade_samples: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        if fade_samples is None:
            fade_samples = int(round(DEFAULT_FADE_SECONDS * sample_rate))
        self.fade_samples = max(0, int(fade_samples))
        self._ramp = fade_ramp(self.fade_samples)
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._pending_start = 0
        self._fade_in_left = 0
        self.position = 0
        self.gaps = 0
        self.concealed_samples = 0

    def push(self, item: AudioBlock | Gap) -> list[AudioBlock]:
        """Take the next block or gap and return the blocks now ready for output."""
        if isinstance(item, Gap):
            return self._push_gap(item)
        return self._push_audio(item.samples)

    def flush(self) -> list[AudioBlock]:
        """Return the audio still held back; call once at the end of the stream."""
        out = self._emit(self._pending)
        self._pending = np.zeros((self.channels, 0), dtype=np.float32)
        return out

    def _push_audio(self, samples: np.ndarray) -> list[AudioBlock]:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[0] != self.channels:
            raise ValueError(f"expected audio of shape [{self.channels}, n], got {list(samples.shape)}")

        # Fade in the first samples after a gap, which may span several short blocks.
        if self._fade_in_left > 0 and samples.shape[1] > 0:
            samples = samples.copy()
            done = self.fade_samples - self._fade_in_left
            count = min(self._fade_in_left, samples.shape[1])
            samples[:, :count] *= self._ramp[done : done + count]
            self._fade_in_left -= count

        joined = np.concatenate([self._pending, samples], axis=1)
        keep = min(self.fade_samples, joined.shape[1])
        ready, self._pending = joined[:, : joined.shape[1] - keep], joined[:, joined.shape[1] - keep :]
        return self._emit(ready)

    def _push_gap(self, gap: Gap) -> list[AudioBlock]:
        self.gaps += 1
        self.concealed_samples += gap.num_samples
        log.debug("concealing chunk %d (%s): %d samples of silence", gap.sequence, gap.reason, gap.num_samples)

        # Fade out the held-back tail of the audio before the gap, then emit the silence.
        tail = self._pending.copy()
        if tail.shape[1] > 0:
            tail *= self._ramp[::-1][self.fade_samples - tail.shape[1] :]
        self._pending = np.zeros((self.channels, 0), dtype=np.float32)
        out = self._emit(tail)
        out += self._emit(np.zeros((self.channels, gap.num_samples), dtype=np.float32))
        self._fade_in_left = self.fade_samples
        return out

    def _emit(self, samples: np.ndarray) -> list[AudioBlock]:
        if samples.shape[1] == 0:
            return []
        block = AudioBlock(np.ascontiguousarray(samples), self.sample_rate, self.position)
        self.position += samples.shape[1]
        return [block]


async def conceal_stage(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    sample_rate: int,
    channels: int,
    fade_samples: int | None = None,
) -> None:
    """Pipeline stage: `AudioBlock | Gap` in, `AudioBlock` out, gaps replaced by faded silence."""
    concealer = Concealer(sample_rate, channels, fade_samples)
    async with receive, send:
        async for item in receive:
            for block in concealer.push(item):
                await send.send(block)
        for block in concealer.flush():
            await send.send(block)
    if concealer.gaps:
        log.info(
            "concealed %d chunks: %.2f s of silence",
            concealer.gaps,
            concealer.concealed_samples / sample_rate,
        )
