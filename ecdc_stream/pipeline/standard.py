"""The two standard pipelines, built from stages in a few lines.

    encode: "source" -> "encoder" -> "entropy_coder" -> "sink"
            AudioBlock    CodeChunk      Packet
    decode: "source" -> "entropy_decoder" -> "decoder" -> "concealment" [-> "trim"] -> "sink"
            Packet|Gap    CodeChunk|Gap       AudioBlock|Gap  AudioBlock

Any stage can be replaced and custom stages inserted by name before the pipeline runs, for
example a fault injector between the entropy coder and the sink:

    pipeline = encode_pipeline(model, source, EcdcSink(fo, coder), coder)
    pipeline.insert_after("entropy_coder", "faults", FaultInjector(config))
    pipeline.run_sync()
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import anyio
import numpy as np
import torch
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.container import acv4
from ecdc_stream.io.audio_files import BlockConverter
from ecdc_stream.model.streaming import DEFAULT_GRID_FRAMES
from ecdc_stream.pipeline.concealment import conceal_stage
from ecdc_stream.pipeline.core import NamedStage, Pipeline, Stage
from ecdc_stream.pipeline.ecdc_stages import ChunkDecodeStage, ChunkEncodeStage, SeekRange
from ecdc_stream.pipeline.records import AudioBlock
from ecdc_stream.pipeline.stages import ChunkDecoder, ChunkEncoder, DecoderStage, EncoderStage

log = logging.getLogger(__name__)


def make_coder(
    model: torch.nn.Module,
    bandwidth: float,
    chunk_seconds: float = acv4.DEFAULT_CHUNK_SECONDS,
    *,
    tags: dict[str, str] | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> acv4.ChunkCoder:
    """Build the acv=4 chunk coder (stream parameters and exact LM) for encoding with `model`.

    bandwidth: kbps, one the model offers. chunk_seconds: rounded to whole frames (24 kHz) or
    whole segments (48 kHz). The total length stays unknown: chunks carry their own.
    """
    params = acv4.StreamParams.for_model(model, bandwidth, chunk_seconds, tags=tags)
    if lm_state_dict is None:
        from ecdc_stream.model import lm_state_dict as load_lm_state_dict

        lm_state_dict = load_lm_state_dict(model.name, weights_dir)
    return acv4.ChunkCoder(params, lm_state_dict)


def decoder_coder(
    params: acv4.StreamParams,
    *,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> acv4.ChunkCoder:
    """Build the chunk coder that decodes a stream with header parameters `params`."""
    if lm_state_dict is None:
        from ecdc_stream.model import lm_state_dict as load_lm_state_dict

        lm_state_dict = load_lm_state_dict(params.model, weights_dir)
    return acv4.ChunkCoder(params, lm_state_dict)


def encode_pipeline(
    model: torch.nn.Module,
    source: Stage,
    sink: Stage,
    coder: acv4.ChunkCoder,
    *,
    grid_frames: int = DEFAULT_GRID_FRAMES,
    buffer_size: int = 4,
) -> Pipeline:
    """Build source -> encoder -> entropy_coder -> sink.

    source: sends `AudioBlock`s at the model's rate and channel count (see `resample_stage`).
    sink: receives framed `Packet`s, for example `EcdcSink` or a network sender.
    After a run, `pipeline.get("encoder").encoder.samples_in` is the stream's length.
    """
    encoder = ChunkEncoder(model, coder.params.num_codebooks, coder.params.chunk_frames, grid_frames)
    return Pipeline(
        [
            NamedStage("source", source, buffer_size),
            NamedStage("encoder", EncoderStage(encoder), buffer_size),
            NamedStage("entropy_coder", ChunkEncodeStage(coder), buffer_size),
            NamedStage("sink", sink, buffer_size),
        ]
    )


def decode_pipeline(
    model: torch.nn.Module,
    source: Stage,
    sink: Stage,
    coder: acv4.ChunkCoder,
    *,
    seek: SeekRange | None = None,
    grid_frames: int | None = None,
    batch: int = 16,
    buffer_size: int = 4,
) -> Pipeline:
    """Build source -> entropy_decoder -> decoder -> concealment [-> trim] -> sink.

    source: sends `Packet`s and `Gap`s in sequence order (`EcdcSource`, a network receiver).
    sink: receives `AudioBlock`s at the model's rate (`AudioFileSink`, `Speakers`, `StreamSink`).
    seek: the chunk range the source reads; a "trim" stage then cuts the audio to it.
    batch: chunks entropy-decoded together when several are waiting; 1 for the least latency.
    grid_frames: the decoder network's block of frames; by default the stream's chunk length.
    """
    params = coder.params
    stages = [
        NamedStage("source", source, buffer_size),
        # The stream into the entropy decoder holds a whole batch, so a file decodes in full batches.
        NamedStage("entropy_decoder", ChunkDecodeStage(coder, batch), max(buffer_size, batch)),
        NamedStage("decoder", DecoderStage(ChunkDecoder(model, grid_frames or params.chunk_frames)), buffer_size),
        NamedStage(
            "concealment",
            functools.partial(conceal_stage, sample_rate=params.sample_rate, channels=params.channels),
            buffer_size,
        ),
    ]
    if seek is not None and (seek.skip or seek.length is not None):
        stages.append(NamedStage("trim", functools.partial(trim_stage, skip=seek.skip, length=seek.length), buffer_size))
    stages.append(NamedStage("sink", sink, buffer_size))
    return Pipeline(stages)


async def trim_stage(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    skip: int = 0,
    length: int | None = None,
) -> None:
    """Pipeline stage: drop the first `skip` samples, then pass at most `length` samples."""
    position = 0
    sent = 0
    async with receive, send:
        async for block in receive:
            samples = block.samples
            if position < skip:
                samples = samples[:, skip - position :]
            position += block.num_samples
            if length is not None:
                samples = samples[:, : length - sent]
            if samples.shape[1]:
                await send.send(AudioBlock(samples, block.sample_rate, sent))
                sent += samples.shape[1]
            if length is not None and sent >= length:
                break


async def resample_stage(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    sample_rate: int,
    channels: int,
) -> None:
    """Pipeline stage: convert `AudioBlock`s to `sample_rate` Hz and `channels` channels (soxr)."""
    converter: BlockConverter | None = None
    position = 0
    async with receive, send:
        async for block in receive:
            if converter is None:
                converter = BlockConverter(block.sample_rate, block.samples.shape[0], sample_rate, channels)
            samples = converter.convert(block.samples)
            if samples.shape[1]:
                await send.send(AudioBlock(samples, sample_rate, position))
                position += samples.shape[1]
        if converter is not None:
            samples = converter.convert(np.zeros((block.samples.shape[0], 0), dtype=np.float32), last=True)
            if samples.shape[1]:
                await send.send(AudioBlock(samples, sample_rate, position))


async def block_source(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream, blocks: Any) -> None:
    """Pipeline source over an iterable of `AudioBlock`s (or any items) already in memory."""
    async with receive, send:
        for block in blocks:
            await send.send(block)
            await anyio.lowlevel.checkpoint()


class CollectSink:
    """Pipeline sink that keeps every item it receives in `items` (for tests and small jobs)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for item in receive:
                self.items.append(item)

    def audio(self) -> np.ndarray:
        """Return the received `AudioBlock`s concatenated, `[C, n]`."""
        return np.concatenate([item.samples for item in self.items], axis=1)
