"""`ecdc-stream receive URL OUT.wav`: receive an acv=4 stream over UDP, TCP or a pipe and decode it.

The receiver waits for the stream header (senders repeat it, so a receiver that starts late or
loses the first datagram still decodes), loads the model it names, and runs

    transport -> jitter buffer -> acv=4 chunk decoding -> EnCodec decoder -> concealment -> WAV / speakers

Chunks that never arrive, arrive too late or fail their CRC become faded silence of exactly
their duration. The output covers the stream from chunk 0 to the end announced by the sender's
end message (or the header's total length). If every end message is lost, it ends with the last
chunk that arrived. `receive_stream` is the same receiver for Python callers and `simulate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.commands.common import add_runtime_options, weights_dir
from ecdc_stream.container.acv4 import DECODE_BATCH, ChunkCoder, CorruptChunkError, StreamParams, chunk_duration
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.transport import Arrival, LinkDecoder, StreamEnd, StreamHeader, TransportError, parse_url, pipe_source
from ecdc_stream.pipeline.concealment import conceal_stage
from ecdc_stream.pipeline.core import NamedStage, Pipeline, Stage
from ecdc_stream.pipeline.jitter import DEFAULT_WINDOW_MS, JitterBuffer
from ecdc_stream.pipeline.records import AudioBlock, CodeChunk, Gap, Packet
from ecdc_stream.pipeline.report import LinkReport, LinkStats, snr_db
from ecdc_stream.pipeline.stages import ChunkDecoder, DecoderStage

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger(__name__)

# Link events held while waiting for the stream header; older ones are dropped beyond this.
MAX_EVENTS_BEFORE_HEADER = 256


@dataclass
class ReceiveResult:
    """Output of a receiver.

    audio: the decoded audio `[C, n]` float32 when it was kept, else None.
    chunks: the codes of every chunk that arrived intact, by sequence number, when kept.
    gaps: every concealed chunk, in order.
    header_received: False when no header arrived and a simulation's fallback header was used.
    """

    params: StreamParams
    stats: LinkStats
    audio: np.ndarray | None
    chunks: dict[int, CodeChunk] | None
    gaps: list[Gap]
    header_received: bool = True

    def report(self, reference: np.ndarray | None = None, extra: dict[str, Any] | None = None) -> LinkReport:
        """Return the link report, with the SNR against `reference` `[C, n]` when given."""
        snr, identical = None, False
        if reference is not None and self.audio is not None:
            if reference.shape != self.audio.shape:
                raise InvalidArgumentError(
                    f"the reference has shape {list(reference.shape)} but the received audio "
                    f"{list(self.audio.shape)}: give a clean decode of the same stream"
                )
            snr, identical = snr_db(reference, self.audio)
        return self.stats.report(snr, identical, extra)


def stream_chunk_samples(params: StreamParams) -> Callable[[int, int | None], int]:
    """Return `(sequence, total samples or None) -> samples` of a chunk of this stream."""

    def samples(sequence: int, total: int | None) -> int:
        total = params.total_samples if total is None else total
        if total is not None and sequence * params.chunk_samples >= total:
            return 0
        return chunk_duration(dataclasses.replace(params, total_samples=total), sequence)

    return samples


class ChunkDecodeStage:
    """Pipeline stage: `Packet | Gap` in sequence order in, `CodeChunk | Gap` out.

    Decodes the packets that are waiting together as one batch of the exact LM, in a worker
    thread. A packet that fails to decode, or whose payload disagrees with its sequence number
    or duration, becomes a corrupt gap, and the stats are corrected.
    """

    def __init__(
        self,
        coder: ChunkCoder,
        stats: LinkStats,
        total_samples: Callable[[], int | None],
        keep: dict[int, CodeChunk] | None = None,
    ):
        self.coder = coder
        self.stats = stats
        self.total_samples = total_samples
        self.keep = keep
        self.samples = stream_chunk_samples(coder.params)
        self.gaps: list[Gap] = []

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for first in receive:
                batch = [first]
                while len(batch) < DECODE_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for item in await self._decode(batch):
                    await send.send(item)

    async def _decode(self, batch: list[Packet | Gap]) -> list[CodeChunk | Gap]:
        packets = [item for item in batch if isinstance(item, Packet)]
        decoded = await anyio.to_thread.run_sync(self.coder.decode_batch, [p.data for p in packets]) if packets else []
        results = iter(decoded)

        out: list[CodeChunk | Gap] = []
        for item in batch:
            result = item if isinstance(item, Gap) else self._check(item, next(results))
            if isinstance(result, Gap):
                self.gaps.append(result)
            out.append(result)
        return out

    def _check(self, packet: Packet, result: CodeChunk | CorruptChunkError) -> CodeChunk | Gap:
        total = self.total_samples()
        expected = self.samples(packet.sequence, total)
        problem = None
        if isinstance(result, CorruptChunkError):
            problem = str(result)
        elif result.sequence != packet.sequence:
            problem = f"its payload says chunk {result.sequence}"
        elif total is not None and result.num_samples != expected:
            problem = f"it covers {result.num_samples} samples, not {expected}"
        elif not 0 < result.num_samples <= self.coder.params.chunk_samples:
            problem = f"it covers {result.num_samples} samples"

        if problem is None:
            if self.keep is not None:
                self.keep[packet.sequence] = result
            return result

        logger.warning("chunk %d cannot be decoded: %s", packet.sequence, problem)
        self.stats.received -= 1
        self.stats.corrupt += 1
        self.stats.concealed_samples += expected
        return Gap(packet.sequence, expected, "corrupt")


class AudioTap:
    """Pipeline stage that counts the samples passing through and keeps a copy when asked."""

    def __init__(self, keep: bool):
        self.samples = 0
        self.blocks: list[np.ndarray] | None = [] if keep else None

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for block in receive:
                self.samples += block.num_samples
                if self.blocks is not None:
                    self.blocks.append(block.samples)
                await send.send(block)

    def audio(self, channels: int) -> np.ndarray | None:
        """Return the kept audio `[C, n]`, or None when the tap keeps none."""
        if self.blocks is None:
            return None
        if not self.blocks:
            return np.zeros((channels, 0), dtype=np.float32)
        return np.concatenate(self.blocks, axis=1)


async def _discard(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
    async with receive, send:
        async for _ in receive:
            pass


def first_error(group: BaseExceptionGroup) -> BaseException:
    """Return the first ordinary exception inside a task group's error, else its first one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        else:
            leaves.append(error)
    ordinary = [error for error in leaves if isinstance(error, Exception)]
    return (ordinary or leaves or [group])[0]


async def receive_stream(
    source: Stage,
    link: LinkDecoder,
    *,
    output: str | Path | None = None,
    play: bool = False,
    audio_device: Any = None,
    window_ms: float = DEFAULT_WINDOW_MS,
    weights: str | Path | None = None,
    torch_device: str = "cpu",
    virtual_clock: bool = False,
    keep_audio: bool = False,
    keep_chunks: bool = False,
    fallback_header: Callable[[], tuple[StreamHeader, StreamEnd]] | None = None,
) -> ReceiveResult:
    """Run a receiver on `source` (a stage that sends link events) until the stream ends.

    output: WAV (or any soundfile format) to write; play: play on `audio_device` as well.
    window_ms: how long the jitter buffer waits for a missing chunk once a later one arrived.
    weights: folder of the checkpoints; torch_device: where the decoder network runs.
    virtual_clock: take arrival times from `Arrival` stamps (a simulation).
    fallback_header: only for a simulation, whose sender runs in this process. When the stream
    ends before any header arrived, it is called for the header and end message that the sender
    sent, and every event that did arrive is decoded as if those two had arrived last.
    Raises TransportError when the stream ends before any header arrived and there is no
    `fallback_header`, because a real receiver cannot decode without one.
    """
    try:
        return await _receive_stream(
            source, link, output, play, audio_device, window_ms, weights, torch_device, virtual_clock, keep_audio, keep_chunks,
            fallback_header,
        )
    except BaseExceptionGroup as group:
        raise first_error(group) from None


async def _receive_stream(
    source: Stage,
    link: LinkDecoder,
    output: str | Path | None,
    play: bool,
    audio_device: Any,
    window_ms: float,
    weights: str | Path | None,
    torch_device: str,
    virtual_clock: bool,
    keep_audio: bool,
    keep_chunks: bool,
    fallback_header: Callable[[], tuple[StreamHeader, StreamEnd]] | None,
) -> ReceiveResult:
    from ecdc_stream.model import lm_state_dict, load_model

    events_send, events_receive = anyio.create_memory_object_stream[Any](64)
    empty_send, empty_receive = anyio.create_memory_object_stream[Any](0)
    empty_send.close()

    async with anyio.create_task_group() as group:
        group.start_soon(NamedStage("source", source).call, empty_receive, events_send)

        # Hold what arrives before the header, within a bound. With a fallback header every
        # event is held until the stream ends, because all of them are decoded if no header comes.
        held: list[Any] = []
        header: StreamHeader | None = None
        async for event in events_receive:
            item = event.item if isinstance(event, Arrival) else event
            if isinstance(item, StreamHeader):
                header = item
                break
            held.append(event)
            if fallback_header is None and len(held) > MAX_EVENTS_BEFORE_HEADER:
                held.pop(0)

        header_received = header is not None
        known_end: StreamEnd | None = None
        if header is None:
            if fallback_header is None:
                raise TransportError(
                    f"the stream ended before its header arrived ({link.messages} messages, "
                    f"{sum(link.rejected.values())} rejected): check that the sender sends to this address"
                )
            header, known_end = fallback_header()
            logger.warning(
                "no copy of the stream header arrived (%d other link events did): decoding with the sender's parameters",
                len(held),
            )
        else:
            # Once a header arrived, keep only what a receiver without a fallback would have held.
            del held[:-MAX_EVENTS_BEFORE_HEADER]

        params = StreamParams.from_metadata(header.metadata, "stream header")
        logger.info(
            "receiving %s at %g kbps, %d Hz, %d channels, chunks of %.3f s",
            params.model, params.bandwidth, params.sample_rate, params.channels, params.chunk_samples / params.sample_rate,
        )
        model = await anyio.to_thread.run_sync(lambda: load_model(params.model, weights, torch_device))
        lm = await anyio.to_thread.run_sync(lambda: lm_state_dict(params.model, weights))
        coder = ChunkCoder(params, lm)

        stats = LinkStats(sample_rate=params.sample_rate)
        stats.rejected.update(link.rejected)
        link.rejected = stats.rejected
        # The link decoder rejects end messages that come before any header, so with a fallback
        # header the sender's end message gives the length.
        num_chunks, total_samples = params.num_chunks, params.total_samples
        if known_end is not None:
            num_chunks, total_samples = known_end.num_chunks, known_end.total_samples
        # NOTE: the output always starts at chunk 0, so a receiver that joins a running stream
        # conceals everything it missed as lost (up to MAX_RESYNC_JUMP chunks), which keeps a
        # file's length exact but plays that much silence first with --play.
        jitter = JitterBuffer(
            stream_chunk_samples(params),
            window_ms=window_ms,
            stats=stats,
            virtual_clock=virtual_clock,
            num_chunks=num_chunks,
            total_samples=total_samples,
        )
        kept: dict[int, CodeChunk] | None = {} if keep_chunks else None
        chunk_decoder = ChunkDecodeStage(coder, stats, lambda: jitter.total_samples, kept)
        tap = AudioTap(keep_audio)

        async def replay(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
            async with receive, send, events_receive:
                for event in held:
                    await send.send(event)
                async for event in events_receive:
                    await send.send(event)

        pipeline = Pipeline()
        pipeline.append("link", replay, 64)
        pipeline.append("jitter", jitter)
        pipeline.append("chunks", chunk_decoder)
        pipeline.append("decoder", DecoderStage(ChunkDecoder(model, params.chunk_frames)))
        pipeline.append("conceal", lambda r, s: conceal_stage(r, s, params.sample_rate, params.channels))
        pipeline.append("tap", tap)
        # The file sink passes each block on, so it goes first when both write and play.
        if output is not None:
            from ecdc_stream.io.audio_files import AudioFileSink

            # The source is live and stopping it is the normal end, so a cancelled run (Ctrl-C,
            # SIGTERM) keeps a valid file with what arrived.
            sink = AudioFileSink(output, params.sample_rate, params.channels, keep_on_cancel=True)
            pipeline.append("output", sink)
        if play:
            from ecdc_stream.io.devices import Speakers

            pipeline.append("speakers", Speakers(params.sample_rate, params.channels, audio_device, live=True))
        if not play and output is None:
            pipeline.append("discard", _discard)
        await pipeline.run()

    stats.output_samples = tap.samples
    if stats.lost or stats.corrupt or stats.late:
        logger.info(
            "%d chunks lost, %d corrupt, %d late: %.2f s concealed",
            stats.lost, stats.corrupt, stats.late, stats.concealed_samples / params.sample_rate,
        )
    return ReceiveResult(coder.params, stats, tap.audio(params.channels), kept, chunk_decoder.gaps, header_received)


# ----------------------------------------------------------------------------------------------
# Command line


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `receive` subcommand."""
    parser = subparsers.add_parser(
        "receive",
        help="receive a stream over UDP, TCP or a pipe and decode it",
        description="Receive an acv=4 stream sent by `ecdc-stream send`, conceal what was lost, "
        "and write it to a sound file or play it. Prints a report of what arrived.",
    )
    parser.add_argument("url", help="where to listen: udp://HOST:PORT, tcp://HOST:PORT, or - for standard input")
    parser.add_argument(
        "output", nargs="?", default=None,
        help="sound file to write, in the format its extension names: .wav, .flac, .ogg, .aiff, "
        "or .mp3 with libsndfile 1.1 or later",
    )
    parser.add_argument("--play", action="store_true", help="play the stream on the speakers")
    parser.add_argument("--output-device", default=None, metavar="N", help="PortAudio output device for --play")
    parser.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW_MS, metavar="MS",
        help=f"how long to wait for a missing chunk once a later one arrived, in ms (default: {DEFAULT_WINDOW_MS:g})",
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=10.0, metavar="S",
        help="end the stream when nothing arrived for this long after it started, in s (default: 10)",
    )
    parser.add_argument(
        "--reference", default=None, metavar="WAV",
        help="clean decode of the same stream, to report the SNR of the received audio against it",
    )
    parser.add_argument("--expect-model", default=None, metavar="NAME", help="drop stream headers of any other model")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def read_reference(path: str, channels: int) -> np.ndarray:
    """Read a reference sound file as float32 `[C, n]`."""
    import soundfile as sf

    from ecdc_stream.io.audio_files import audio_info

    audio_info(path)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[1] != channels:
        raise InvalidArgumentError(
            f"reference {path!r} has {data.shape[1]} channels but the stream has {channels}: "
            "give a clean decode of the same stream"
        )
    return np.ascontiguousarray(data.T)


def make_source(url_text: str, idle_timeout_s: float, link: LinkDecoder) -> tuple[Stage, Callable[[], Any]]:
    """Return the source stage for `url_text` and an async function that binds it and returns the port."""
    url = parse_url(url_text)
    if url.scheme == "udp":
        from ecdc_stream.io.udp import UdpReceiver

        udp = UdpReceiver(url, link, idle_timeout_s=idle_timeout_s)
        return udp, udp.bind
    if url.scheme == "tcp":
        from ecdc_stream.io.tcp import TcpReceiver

        tcp = TcpReceiver(url, link, idle_timeout_s=idle_timeout_s)
        return tcp, tcp.bind

    async def no_bind() -> int:
        return 0

    stdin = sys.stdin.buffer
    return (lambda r, s: pipe_source(r, s, stdin, link)), no_bind


def print_report(report: LinkReport, as_json: bool, stream: Any = None) -> None:
    """Print a report as text or JSON on `stream` (standard output by default)."""
    stream = stream or sys.stdout
    print(report.to_json() if as_json else report.format_text(), file=stream, flush=True)


def run(args: argparse.Namespace) -> int:
    """Receive, decode, write or play, and print the report."""
    if args.output is None and not args.play:
        raise InvalidArgumentError("receive needs an output file or --play: give OUT.wav, --play, or both")
    if args.window < 0 or args.idle_timeout <= 0:
        raise InvalidArgumentError(f"--window {args.window} and --idle-timeout {args.idle_timeout} must be positive")
    if args.output is not None:
        from ecdc_stream.io.audio_files import writable_format

        writable_format(args.output)

    from ecdc_stream.api import resolve_model_name

    expected = resolve_model_name(args.expect_model) if args.expect_model else None
    link = LinkDecoder(expected_model=expected)
    source, bind = make_source(args.url, args.idle_timeout, link)

    async def main() -> ReceiveResult:
        port = await bind()
        if port:
            url = parse_url(args.url)
            logger.info("listening on %s", dataclasses.replace(url, port=port))
        return await receive_stream(
            source,
            link,
            output=args.output,
            play=args.play,
            audio_device=args.output_device,
            window_ms=args.window,
            weights=weights_dir(args),
            torch_device=args.device,
            keep_audio=args.reference is not None,
        )

    result = anyio.run(main)
    reference = read_reference(args.reference, result.params.channels) if args.reference else None
    print_report(result.report(reference), args.json)
    return 0
