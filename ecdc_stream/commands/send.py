"""`ecdc-stream send IN URL`: encode a file or the microphone and send it over UDP, TCP or a pipe.

The sender runs

    audio source -> EnCodec encoder -> acv=4 chunk coder -> [fault injection] -> [pacing] -> link framing -> transport

Fault options (`--loss`, `--burst`, `--ber`, ...) damage the stream on its way out, so a
receiver on the same machine gets a bad link. With `--fault-layer chunk` (the default) the
faults hit framed chunks, and the receiver counts each damaged chunk as corrupt; with `wire`
they hit the link messages themselves (headers, fragments, length fields), as a real link does.
A file is sent at the pace of live audio unless `--speed` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.commands.common import FAULT_LAYERS, add_model_options, append_link_stages, weights_dir
from ecdc_stream.container.acv4 import DEFAULT_CHUNK_SECONDS, ChunkCoder, StreamParams
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.faults import FaultConfig, FaultInjector, add_fault_arguments, fault_config_from_args
from ecdc_stream.io.transport import (
    MAX_FRAGMENT_BYTES,
    LinkFramer,
    Pacer,
    TransportUrl,
    new_stream_id,
    parse_url,
    pipe_sink,
)
from ecdc_stream.pipeline.core import Pipeline, Stage
from ecdc_stream.pipeline.records import CodeChunk, Packet
from ecdc_stream.pipeline.stages import ChunkEncoder, EncoderStage

logger = logging.getLogger(__name__)


@dataclass
class ChunkCounter:
    """Pipeline stage that counts the code chunks and samples passing through, keeping them when asked."""

    keep: bool = False
    chunks: int = 0
    samples: int = 0
    kept: list[CodeChunk] = field(default_factory=list)

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for chunk in receive:
                self.chunks += 1
                self.samples += chunk.num_samples
                if self.keep:
                    self.kept.append(chunk)
                await send.send(chunk)

    def totals(self) -> tuple[int, int]:
        """Return `(chunks, samples)` counted so far."""
        return self.chunks, self.samples

    def reset(self, keep: bool) -> None:
        """Start counting afresh, for another run of the same encoding."""
        self.keep = keep
        self.chunks = 0
        self.samples = 0
        self.kept = []


class ChunkFramer:
    """Pipeline stage: `CodeChunk` in, `Packet` (the framed acv=4 chunk) out, coded in a worker thread."""

    def __init__(self, coder: ChunkCoder):
        self.coder = coder
        self.bytes_out = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for chunk in receive:
                data = await anyio.to_thread.run_sync(self.coder.encode, chunk)
                self.bytes_out += len(data)
                await send.send(Packet(chunk.sequence, data))


@dataclass
class Encoding:
    """The sender's model, stream parameters and coder, and the stages that produce framed chunks."""

    model: Any
    coder: ChunkCoder
    counter: ChunkCounter
    framer: ChunkFramer

    @property
    def params(self) -> StreamParams:
        """The stream parameters, with the LM fingerprint filled in."""
        return self.coder.params

    def stages(self, source: Stage) -> Pipeline:
        """Return source -> encoder -> counter -> framer as a pipeline to extend."""
        params = self.params
        encoder = ChunkEncoder(self.model, params.num_codebooks, params.chunk_frames)
        pipeline = Pipeline()
        pipeline.append("source", source)
        pipeline.append("encoder", EncoderStage(encoder))
        pipeline.append("counter", self.counter)
        pipeline.append("framer", self.framer)
        return pipeline


def load_sender_model(model_name: str, weights: Any = None, torch_device: str = "cpu") -> Any:
    """Load the EnCodec model named on the command line (`24khz`, `48khz` or a full name)."""
    from ecdc_stream.api import resolve_model_name
    from ecdc_stream.model import load_model

    return load_model(resolve_model_name(model_name), weights, torch_device)


def prepare_encoding(
    model: Any,
    bandwidth: float,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    *,
    weights: Any = None,
    total_samples: int | None = None,
    keep_chunks: bool = False,
) -> Encoding:
    """Build the stream parameters, the acv=4 coder (loading the LM) and the encoding stages' state."""
    from ecdc_stream.model import lm_state_dict

    params = StreamParams.for_model(model, bandwidth, chunk_seconds, total_samples=total_samples)
    coder = ChunkCoder(params, lm_state_dict(model.name, weights))
    return Encoding(model, coder, ChunkCounter(keep_chunks), ChunkFramer(coder))


def file_source_stage(path: str, model: Any) -> tuple[Stage, int | None]:
    """Return a source stage reading `path` at the model's rate, and its length in samples when exact.

    The length is exact only when the file is at the model's sample rate already.
    """
    from ecdc_stream.io.audio_files import audio_info, file_source

    info = audio_info(path)
    total = info.frames if info.samplerate == model.sample_rate and info.frames > 0 else None

    async def source(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        await file_source(receive, send, path, model.sample_rate, model.channels)

    return source, total


def transport_sink(url: TransportUrl, connect_timeout_s: float) -> tuple[Stage, int | None]:
    """Return the sink stage for `url` and the fragment size its link framer needs."""
    if url.scheme == "udp":
        from ecdc_stream.io.udp import UdpSender

        return UdpSender(url), MAX_FRAGMENT_BYTES
    if url.scheme == "tcp":
        from ecdc_stream.io.tcp import TcpSender

        return TcpSender(url, connect_timeout_s), None
    stdout = sys.stdout.buffer
    return (lambda r, s: pipe_sink(r, s, stdout)), None


def add_link_options(parser: argparse.ArgumentParser) -> None:
    """Add the options shared by `send` and `simulate`: chunk length, header interval, fault layer."""
    parser.add_argument(
        "--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, metavar="S",
        help=f"audio per chunk, the unit of loss, in s (default: {DEFAULT_CHUNK_SECONDS:g})",
    )
    parser.add_argument(
        "--header-every", type=int, default=4, metavar="N",
        help="repeat the stream header every N chunks, for receivers that start late (default: 4)",
    )
    parser.add_argument(
        "--fault-layer", choices=FAULT_LAYERS, default="chunk",
        help="where faults hit: framed chunks (the receiver counts them exactly) or link messages (default: chunk)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `send` subcommand."""
    parser = subparsers.add_parser(
        "send",
        help="encode a file or the microphone and send it over UDP, TCP or a pipe",
        description="Encode audio to acv=4 chunks and send them to `ecdc-stream receive`, "
        "optionally through injected faults. Prints a report of what was sent and what the faults did.",
    )
    parser.add_argument("input", help="sound file to send, or mic for the microphone")
    parser.add_argument("url", help="where to send: udp://HOST:PORT, tcp://HOST:PORT, or - for standard output")
    add_model_options(parser)
    add_link_options(parser)
    parser.add_argument(
        "--speed", type=float, default=1.0, metavar="X",
        help="send a file at X times the pace of live audio; 0 sends as fast as possible (default: 1)",
    )
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="with mic: stop after S seconds")
    parser.add_argument("--input-device", default=None, metavar="N", help="with mic: PortAudio input device")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S",
        help="with tcp://: keep trying to connect for this long, in s (default: 10)",
    )
    add_fault_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Encode, inject faults, send, and print the report."""
    url = parse_url(args.url)
    faults = fault_config_from_args(args)
    if args.speed < 0:
        raise InvalidArgumentError(f"--speed is {args.speed}: give 0 (no pacing) or a positive factor")

    model = load_sender_model(args.model, weights_dir(args), args.device)
    total = None
    if args.input == "mic":
        from ecdc_stream.io.devices import Microphone

        source: Stage = Microphone(model.sample_rate, model.channels, args.input_device, args.duration)
        pace = 0.0
    else:
        source, total = file_source_stage(args.input, model)
        pace = args.speed
    encoding = prepare_encoding(model, args.bandwidth, args.chunk_seconds, weights=weights_dir(args), total_samples=total)

    report = anyio.run(send_stream, encoding, source, url, faults, args.fault_layer, args.header_every, pace, args.connect_timeout)
    # With a pipe, standard output carries the stream, so the report goes to standard error.
    out = sys.stderr if url.scheme == "pipe" else sys.stdout
    if args.json:
        print(json.dumps(report), file=out, flush=True)
    else:
        print(format_send_report(report), file=out, flush=True)
    return 0


async def send_stream(
    encoding: Encoding,
    source: Stage,
    url: TransportUrl,
    faults: FaultConfig,
    fault_layer: str = "chunk",
    header_every: int = 4,
    speed: float = 1.0,
    connect_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Run the sender until the source ends; return the report as JSON-ready values."""
    params = encoding.params
    sink, fragment = transport_sink(url, connect_timeout_s)
    link = LinkFramer(new_stream_id(), params.to_metadata(), encoding.counter.totals, header_every, fragment)
    injector = None if faults.is_clean else FaultInjector(faults)

    pipeline = encoding.stages(source)
    if speed > 0:
        pipeline.append("pace", Pacer(params.chunk_samples / params.sample_rate, speed))
    append_link_stages(pipeline, link, injector, fault_layer)
    pipeline.append("transport", sink)
    logger.info("sending %s at %g kbps to %s", params.model, params.bandwidth, url)
    await pipeline.run(handle_signals=True)

    report: dict[str, Any] = {
        "chunks_sent": encoding.counter.chunks,
        "seconds_sent": round(encoding.counter.samples / params.sample_rate, 6),
        "chunk_bytes": encoding.framer.bytes_out,
        "link_messages": link.messages,
        "fault_layer": fault_layer,
        "faults": faults.to_dict(),
    }
    if injector is not None:
        report["injected"] = injector.record.summary()
    return report


def format_send_report(report: dict[str, Any]) -> str:
    """Format the sender's report as aligned lines for a terminal."""
    lines = [
        f"chunks sent        {report['chunks_sent']}",
        f"seconds sent       {report['seconds_sent']:.3f}",
        f"chunk bytes        {report['chunk_bytes']}",
        f"link messages      {report['link_messages']}",
    ]
    injected = report.get("injected")
    if injected:
        unit = "chunks" if report["fault_layer"] == "chunk" else "messages"
        lines.append(
            f"faults injected    on {unit}: {injected['dropped']} dropped, {injected['corrupted']} corrupted "
            f"({injected['bit_errors']} bits, {injected['truncated']} truncated), {injected['duplicated']} duplicated, "
            f"{injected['reordered']} reordered"
        )
    return "\n".join(lines)
