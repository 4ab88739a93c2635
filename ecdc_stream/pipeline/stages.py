"""The model stages: audio to code chunks (encoder) and code chunks to audio (decoder).

The networks run in worker threads, so the event loop keeps serving audio devices and sockets
while a chunk is being computed. Chunk boundaries follow the stream parameters: a chunk of the
causal model is `chunk_frames` frames (`chunk_frames * hop_length` samples), a chunk of a
segmented model is a whole number of segments. Every chunk records how many samples it covers,
so a stream of unknown length needs no total in its header.
"""

from __future__ import annotations

import logging

import anyio
import numpy as np
import torch
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.model.streaming import (
    DEFAULT_GRID_FRAMES,
    SegmentDecoder,
    SegmentEncoder,
    StreamingDecoder,
    StreamingEncoder,
)
from ecdc_stream.pipeline.records import AudioBlock, CodeChunk, Gap

log = logging.getLogger(__name__)


def is_segmented(model: torch.nn.Module) -> bool:
    """Return True for a model that codes fixed segments (48 kHz), False for a causal stream (24 kHz)."""
    return model.segment_length is not None


def segments_per_chunk(model: torch.nn.Module, chunk_frames: int) -> int:
    """Return how many segments a chunk of `chunk_frames` frames of a segmented model holds."""
    frames_per_segment = model.frames_for_samples(model.segment_length)
    if chunk_frames % frames_per_segment:
        raise ValueError(
            f"a chunk of model {model.name} must be a whole number of {frames_per_segment}-frame segments, "
            f"got {chunk_frames} frames"
        )
    return chunk_frames // frames_per_segment


class ChunkEncoder:
    """Audio blocks in, `CodeChunk`s out, synchronously (the encoder stage runs it in a thread).

    `push(samples [C, n])` returns the chunks completed so far, `finish()` the last, shorter one.
    samples_in: total samples received, at the model's rate.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        num_codebooks: int,
        chunk_frames: int,
        grid_frames: int = DEFAULT_GRID_FRAMES,
    ) -> None:
        self.model = model
        self.num_codebooks = num_codebooks
        self.chunk_frames = chunk_frames
        self.segmented = is_segmented(model)
        self.sequence = 0
        self.samples_in = 0
        self.samples_chunked = 0
        if self.segmented:
            self.per_chunk = segments_per_chunk(model, chunk_frames)
            self._segment_encoder = SegmentEncoder(model, num_codebooks)
            self._segments: list[tuple[torch.Tensor, float | None, int]] = []
        else:
            self._encoder = StreamingEncoder(model, num_codebooks, grid_frames)
            self._codes = torch.zeros((num_codebooks, 0), dtype=torch.int64)

    def push(self, samples: np.ndarray | torch.Tensor) -> list[CodeChunk]:
        """Encode the next block [C, n]; return the chunks it completed."""
        samples = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        self.samples_in += samples.shape[-1]
        if self.segmented:
            self._segments += self._segment_encoder.push(samples)
            return self._segment_chunks(final=False)
        self._codes = torch.cat([self._codes, self._encoder.push(samples)], dim=-1)
        return self._frame_chunks(final=False)

    def finish(self) -> list[CodeChunk]:
        """End the stream; return its remaining chunks (none for an empty stream)."""
        if self.segmented:
            self._segments += self._segment_encoder.finish()
            return self._segment_chunks(final=True)
        self._codes = torch.cat([self._codes, self._encoder.finish()], dim=-1)
        return self._frame_chunks(final=True)

    def _frame_chunks(self, final: bool) -> list[CodeChunk]:
        chunks = []
        hop = self.model.hop_length
        while self._codes.shape[-1] >= self.chunk_frames or (final and self._codes.shape[-1] > 0):
            frames = min(self.chunk_frames, self._codes.shape[-1])
            codes, self._codes = self._codes[:, :frames], self._codes[:, frames:]
            num_samples = frames * hop
            if final and self._codes.shape[-1] == 0:
                num_samples = self.samples_in - self.samples_chunked
            chunks.append(self._chunk(codes, num_samples, ()))
        return chunks

    def _segment_chunks(self, final: bool) -> list[CodeChunk]:
        chunks = []
        while len(self._segments) >= self.per_chunk or (final and self._segments):
            group, self._segments = self._segments[: self.per_chunk], self._segments[self.per_chunk :]
            codes = torch.cat([codes for codes, _, _ in group], dim=-1)
            scales = tuple(1.0 if scale is None else scale for _, scale, _ in group)
            chunks.append(self._chunk(codes, sum(covered for _, _, covered in group), scales))
        return chunks

    def _chunk(self, codes: torch.Tensor, num_samples: int, scales: tuple[float, ...]) -> CodeChunk:
        chunk = CodeChunk(self.sequence, codes.numpy().astype(np.int64), num_samples, scales)
        self.sequence += 1
        self.samples_chunked += num_samples
        return chunk


class ChunkDecoder:
    """`CodeChunk`s and `Gap`s in, audio `[C, n]` and `Gap`s out, synchronously.

    The output covers exactly the samples the chunks and gaps cover. A causal model's decoder
    runs across chunk boundaries with its state; at a gap it is flushed (so the audio before
    the gap is complete) and a fresh one starts after it. A segmented model's overlap with the
    lost segment is emitted as it is and the gap shortened by as much.

    grid_frames: the block of frames a causal model's decoder network runs on. A stream's
    chunk length (`StreamParams.chunk_frames`) decodes each chunk in one block: it adds no
    latency, since a chunk's codes arrive together, and runs about twice as fast as 10-frame
    blocks. The audio depends on the grid in its float rounding only, so every decoder of the
    same stream should use the same grid.

    NOTE: the rounding also depends on torch's thread count. `decode` and `play` run the decoder
    network on one thread; the API, `receive` and `simulate` use torch's default, so their audio
    can differ from `decode`'s in the last bits (at most 1e-6 measured).
    """

    def __init__(self, model: torch.nn.Module, grid_frames: int = DEFAULT_GRID_FRAMES) -> None:
        self.model = model
        self.grid_frames = grid_frames
        self.segmented = is_segmented(model)
        self.samples_expected = 0
        self.samples_out = 0
        self._new_decoder()

    def _new_decoder(self) -> None:
        if self.segmented:
            self._decoder: SegmentDecoder | StreamingDecoder = SegmentDecoder(self.model)
        else:
            self._decoder = StreamingDecoder(self.model, self.grid_frames)

    def push(self, item: CodeChunk | Gap) -> list[np.ndarray | Gap]:
        """Decode the next chunk or pass on a gap; return the audio and gaps now ready, in order."""
        if isinstance(item, Gap):
            return self._gap(item)

        self.samples_expected += item.num_samples
        if not self.segmented:
            return self._audio(self._decoder.push(torch.from_numpy(item.codes)))

        out = []
        codes = torch.from_numpy(np.ascontiguousarray(item.codes, dtype=np.int64))
        start = 0
        for count, scale in zip(self._segment_frames(item), item.scales):
            out += self._audio(self._decoder.push(codes[:, start : start + count], scale))
            start += count
        return out

    def _segment_frames(self, chunk: CodeChunk) -> list[int]:
        """Split a chunk's frames among its segments: each but the last codes
        min(segment_length, samples left) samples, the last has the remaining frames."""
        model = self.model
        counts = []
        for index in range(len(chunk.scales) - 1):
            length = min(model.segment_length, chunk.num_samples - index * model.segment_stride)
            counts.append(-(-length // model.hop_length))
        return counts + [chunk.num_frames - sum(counts)]

    def finish(self) -> list[np.ndarray | Gap]:
        """End the stream; return the rest of the audio, cut to exactly the samples covered."""
        return self._audio(self._decoder.finish())

    def _gap(self, gap: Gap) -> list[np.ndarray | Gap]:
        # Flushing the decoder completes the audio before the gap. A segmented model also
        # yields its overlap with the lost segment, which lies inside the gap's span, so the
        # silence is shortened by as much.
        self.samples_expected += gap.num_samples
        out = self._audio(self._decoder.finish())
        self._new_decoder()
        silence = self.samples_expected - self.samples_out
        if silence > 0:
            self.samples_out += silence
            out.append(Gap(gap.sequence, silence, gap.reason))
        return out

    def _audio(self, audio: torch.Tensor) -> list[np.ndarray | Gap]:
        # Never emit beyond the samples covered by the chunks so far: the decoder's output is
        # a whole number of frames, and the last chunk covers fewer samples.
        room = self.samples_expected - self.samples_out
        if audio.shape[-1] > room:
            audio = audio[..., : max(0, room)]
        if audio.shape[-1] == 0:
            return []
        self.samples_out += audio.shape[-1]
        return [np.ascontiguousarray(audio.numpy(), dtype=np.float32)]


class EncoderStage:
    """Pipeline stage: `AudioBlock`s at the model's rate in, `CodeChunk`s out.

    The encoder network runs in a worker thread, one block at a time. After the run,
    `encoder.samples_in` is the stream's length in samples.
    """

    def __init__(self, encoder: ChunkEncoder) -> None:
        self.encoder = encoder

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for block in receive:
                if block.sample_rate != self.encoder.model.sample_rate:
                    raise ValueError(
                        f"the encoder takes audio at {self.encoder.model.sample_rate} Hz, got {block.sample_rate} Hz"
                    )
                for chunk in await anyio.to_thread.run_sync(self.encoder.push, block.samples):
                    await send.send(chunk)
            # The input ended, by itself or because the source was stopped: encode the rest.
            with anyio.CancelScope(shield=True):
                chunks = await anyio.to_thread.run_sync(self.encoder.finish)
            for chunk in chunks:
                await send.send(chunk)


class DecoderStage:
    """Pipeline stage: `CodeChunk | Gap` in, `AudioBlock | Gap` out (concealment comes next)."""

    def __init__(self, decoder: ChunkDecoder) -> None:
        self.decoder = decoder
        self.sample_rate = decoder.model.sample_rate
        self._position = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for item in receive:
                for out in await anyio.to_thread.run_sync(self.decoder.push, item):
                    await send.send(self._record(out))
            for out in await anyio.to_thread.run_sync(self.decoder.finish):
                await send.send(self._record(out))

    def _record(self, out: np.ndarray | Gap) -> AudioBlock | Gap:
        if isinstance(out, Gap):
            self._position += out.num_samples
            return out
        block = AudioBlock(out, self.sample_rate, self._position)
        self._position += out.shape[-1]
        return block
