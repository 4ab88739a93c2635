"""A pass-through stage that shows a progress bar of the audio flowing through a pipeline."""

from __future__ import annotations

from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tqdm import tqdm

from ecdc_stream.pipeline.records import AudioBlock

# The bar appears only once a run has taken this long, so short runs print nothing.
SHOW_AFTER_SECONDS = 1.0


class ProgressStage:
    """Pass every item on unchanged and advance a bar by the seconds of audio in `AudioBlock`s.

    total_seconds: the expected length of the audio, or None when unknown (the bar then counts
    up without a percentage). Blocks at any sample rate count by their own rate.
    """

    def __init__(self, description: str, total_seconds: float | None = None) -> None:
        self.description = description
        self.total_seconds = total_seconds

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        total = None if self.total_seconds is None else round(self.total_seconds, 2)
        with tqdm(
            total=total,
            desc=self.description,
            unit="s",
            unit_scale=False,
            delay=SHOW_AFTER_SECONDS,
            leave=False,
            # None hides the bar when standard error is not a terminal (a log file, say).
            disable=None,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
            if total
            else "{desc}: {n:.1f} s [{elapsed}]",
        ) as bar:
            async with receive, send:
                async for item in receive:
                    if isinstance(item, AudioBlock):
                        bar.update(round(item.num_samples / item.sample_rate, 6))
                    await send.send(item)
