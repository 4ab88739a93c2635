"""Live recording and playback: microphone to .ecdc, .ecdc (or a pipe) to speakers.

`record` writes the stream directly under its final name, each chunk flushed as it is framed,
because a recording must survive its recorder: killed at any moment, the file decodes up to its
last complete chunk. `play` starts the sound after the first chunk, not after the whole input.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import anyio
import numpy as np
import torch
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.container import acv4
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import read_blocks
from ecdc_stream.io.devices import Microphone, Speakers
from ecdc_stream.model.streaming import DEFAULT_GRID_FRAMES
from ecdc_stream.pipeline.core import Pipeline, Stage
from ecdc_stream.pipeline.ecdc_stages import EcdcSink
from ecdc_stream.pipeline.files import EncodeReport, _load, decode_pipeline_for, open_ecdc_input
from ecdc_stream.pipeline.records import AudioBlock
from ecdc_stream.pipeline.standard import encode_pipeline, make_coder

log = logging.getLogger(__name__)


async def paced_file_source(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    path: str | os.PathLike,
    sample_rate: int,
    channels: int,
    block_seconds: float = 0.05,
    loop: bool = False,
) -> None:
    """Pipeline source: an audio file sent in real time, as a microphone would deliver it.

    loop: start again at the end, for an endless live source.
    """
    block_samples = max(1, int(block_seconds * sample_rate))
    started = time.monotonic()
    position = 0
    async with receive, send:
        while True:
            for block in read_blocks(path, sample_rate, channels):
                for first in range(0, block.num_samples, block_samples):
                    samples = block.samples[:, first : first + block_samples]
                    position += samples.shape[1]
                    # Wait until the block's last sample would have been captured.
                    delay = started + position / sample_rate - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                    await send.send(AudioBlock(samples, sample_rate, position - samples.shape[1]))
            if not loop:
                break


class LevelMeter:
    """Pipeline stage passing `AudioBlock`s through and showing level, elapsed time and bitrate.

    The status line goes to `stream` (standard error) at most every `interval` seconds.
    bitrate: callable returning the kbps so far, or None.
    """

    def __init__(
        self,
        sample_rate: int,
        bitrate: Callable[[float], float | None] | None = None,
        stream: Any = None,
        interval: float = 0.25,
    ) -> None:
        self.sample_rate = sample_rate
        self.bitrate = bitrate
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.samples = 0
        self.peak = 0.0
        self._last_shown = 0.0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            try:
                async for block in receive:
                    self.samples += block.num_samples
                    if block.num_samples:
                        self.peak = max(self.peak, float(np.abs(block.samples).max()))
                    now = time.monotonic()
                    if now - self._last_shown >= self.interval:
                        self._show()
                        self._last_shown = now
                        self.peak = 0.0
                    await send.send(block)
            finally:
                self._show()
                self.stream.write("\n")
                self.stream.flush()

    def _show(self) -> None:
        seconds = self.samples / self.sample_rate
        level = 20 * math.log10(self.peak) if self.peak > 1e-6 else -120.0
        bars = int(max(0.0, min(1.0, (level + 60) / 60)) * 20)
        kbps = self.bitrate(seconds) if self.bitrate is not None else None
        rate = f"{kbps:6.2f} kbps" if kbps is not None else ""
        minutes, rest = divmod(seconds, 60)
        self.stream.write(
            f"\rrecording {int(minutes):02d}:{rest:04.1f}  [{'#' * bars}{' ' * (20 - bars)}] {level:6.1f} dBFS  {rate}"
        )
        self.stream.flush()


@dataclass
class RecordSetup:
    """A recording pipeline ready to run, with the parts a caller reads afterwards."""

    pipeline: Pipeline
    sink: EcdcSink
    coder: acv4.ChunkCoder
    model: torch.nn.Module


def record_pipeline(
    fo: BinaryIO,
    *,
    model: str | torch.nn.Module = "24khz",
    bandwidth: float = 6.0,
    chunk_seconds: float = acv4.DEFAULT_CHUNK_SECONDS,
    device: int | str | None = None,
    duration_seconds: float | None = None,
    input_path: str | os.PathLike | None = None,
    fsync: bool = False,
    tags: dict[str, str] | None = None,
    meter: bool = False,
    weights_dir: str | os.PathLike | None = None,
    torch_device: str | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    grid_frames: int = DEFAULT_GRID_FRAMES,
) -> RecordSetup:
    """Build microphone (or `input_path` in real time) -> encoder -> entropy coder -> .ecdc on `fo`."""
    model = _load(model, weights_dir, torch_device)
    coder = make_coder(model, bandwidth, chunk_seconds, tags=tags, lm_state_dict=lm_state_dict, weights_dir=weights_dir)

    if input_path is not None:
        source: Stage = functools.partial(paced_file_source, path=input_path, sample_rate=model.sample_rate, channels=model.channels)
    else:
        source = Microphone(model.sample_rate, model.channels, device, duration_seconds)
    sink = EcdcSink(fo, coder, fsync=fsync)
    pipeline = encode_pipeline(model, source, sink, coder, grid_frames=grid_frames)
    if input_path is not None and duration_seconds is not None:
        pipeline.insert_after("source", "duration", functools.partial(_limit_stage, num_samples=int(duration_seconds * model.sample_rate)))

    if meter:
        def bitrate(seconds: float) -> float | None:
            covered = sink.samples_written / model.sample_rate
            return sink.bytes_written * 8 / covered / 1000 if covered > 0 else None

        pipeline.insert_after("source", "meter", LevelMeter(model.sample_rate, bitrate))
    return RecordSetup(pipeline, sink, coder, model)


async def _limit_stage(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream, num_samples: int) -> None:
    sent = 0
    async with receive, send:
        async for block in receive:
            samples = block.samples[:, : num_samples - sent]
            if samples.shape[1]:
                await send.send(AudioBlock(samples, block.sample_rate, block.start))
                sent += samples.shape[1]
            if sent >= num_samples:
                break


def record(output_path: str | os.PathLike, **options: Any) -> EncodeReport:
    """Record to an .ecdc file (or "-" for standard output) until `duration_seconds` or Ctrl-C.

    Options as `record_pipeline`. The first Ctrl-C stops the input and lets the last chunk be
    written and the header completed. A second one aborts, and the file stays valid up to its
    last complete chunk.
    """
    to_stdout = str(output_path) == "-"
    path = Path(output_path)
    if not to_stdout and path.parent != Path("") and not path.parent.is_dir():
        raise InvalidArgumentError(f"output folder {str(path.parent)!r} does not exist")

    setup: RecordSetup | None = None
    with ExitStack() as stack:
        fo: BinaryIO = sys.stdout.buffer if to_stdout else stack.enter_context(open(path, "wb"))
        try:
            setup = record_pipeline(fo, **options)
            setup.pipeline.run_sync(handle_signals=True)
        except BaseException:
            # A recording that failed before its first chunk is only a header: remove it. One
            # with chunks stays, because everything up to its last complete chunk decodes.
            nothing_written = setup is None or setup.sink.writer is None or setup.sink.writer.chunks_written == 0
            if not to_stdout and nothing_written:
                fo.close()
                path.unlink(missing_ok=True)
            raise

    encoder = setup.pipeline.get("encoder").encoder
    return EncodeReport(encoder.samples_in, setup.model.sample_rate, encoder.sequence, setup.sink.bytes_written, setup.coder.params)


@dataclass
class PlayReport:
    """Playback statistics: samples played, underruns, audio dropped to catch up, gaps concealed."""

    samples: int
    sample_rate: int
    underruns: int
    dropped_samples: int
    gaps: int
    first_sound_seconds: float | None


def play(
    input_path: str | os.PathLike,
    *,
    device: int | str | None = None,
    start_seconds: float = 0.0,
    start_after_seconds: float = 0.1,
    max_latency_seconds: float = 1.0,
    live: bool = False,
    weights_dir: str | os.PathLike | None = None,
    torch_device: str | None = None,
    model: torch.nn.Module | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    stdin: BinaryIO | None = None,
) -> PlayReport:
    """Decode an acv=4 .ecdc file (or "-" for standard input) and play it on the speakers.

    Sound starts as soon as the first chunk is decoded. live: the input arrives in real time
    (a recorder or a network link writing to standard input), so audio that piles up after a
    stall is dropped to keep the latency within `max_latency_seconds`. Otherwise the input is
    read only as fast as it plays.
    """
    begun = time.monotonic()
    with ExitStack() as stack:
        fo, params = open_ecdc_input(input_path, stack, stdin)
        speakers: list[Speakers] = []

        def sink_factory(sample_rate: int, channels: int) -> Speakers:
            speakers.append(
                Speakers(sample_rate, channels, device, start_after_seconds, max_latency_seconds, live=live)
            )
            return speakers[0]

        pipeline = decode_pipeline_for(
            fo, params, sink_factory, start_seconds=start_seconds, model=model, weights_dir=weights_dir,
            device=torch_device, lm_state_dict=lm_state_dict, batch=1 if live else 4,
        )
        length = "unknown length" if params.total_samples is None else f"{params.total_samples / params.sample_rate:.2f} s"
        log.info("playing %s: model %s, %s (Ctrl-C stops)", input_path, params.model, length)
        pipeline.run_sync(handle_signals=True, drain_on_signal=False)

    buffer = speakers[0].buffer
    first = speakers[0].first_sound_time
    return PlayReport(
        samples=buffer.samples_played,
        sample_rate=params.sample_rate,
        underruns=buffer.underruns,
        dropped_samples=buffer.dropped_samples,
        gaps=pipeline.get("source").gaps + pipeline.get("entropy_decoder").corrupt,
        first_sound_seconds=None if first is None else first - begun,
    )
