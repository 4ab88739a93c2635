"""`ecdc-stream simulate IN OUT.wav [fault options]`: a sender, a bad link and a receiver in one process.

The sender encodes IN into acv=4 chunks; the chunks pass a seeded fault injector on a virtual
clock (chunk i leaves at i chunk durations, so delays and jitter are in real link time but the
run does not wait for them); link framing and decoding run exactly as for UDP, fragments
included; the receiver's jitter buffer, decoder and concealment write OUT. The report compares
what the receiver saw with what the injector did, and the received audio with a clean decode
of the same chunks.

Unlike a real receiver, the simulated one decodes even when the faults drop or damage every copy
of the stream header. It then takes the parameters and length from the sender in this process
and logs a warning, and its JSON report contains `"header_received": false`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.commands.common import (
    add_model_options,
    append_link_stages,
    check_fault_layer,
    check_output_is_not_input,
    weights_dir,
)
from ecdc_stream.commands.receive import ReceiveResult, first_error, print_report, receive_stream
from ecdc_stream.commands.send import Encoding, add_link_options, file_source_stage, load_sender_model, prepare_encoding
from ecdc_stream.container.acv4 import DEFAULT_CHUNK_SECONDS, StreamParams
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.faults import FaultConfig, FaultInjector, FaultRecord, add_fault_arguments, fault_config_from_args
from ecdc_stream.io.audio_files import writable_format
from ecdc_stream.io.temporary_files import create_beside
from ecdc_stream.io.transport import MAX_FRAGMENT_BYTES, Arrival, LinkDecoder, LinkFramer, StreamEnd, StreamHeader
from ecdc_stream.pipeline.jitter import DEFAULT_WINDOW_MS
from ecdc_stream.pipeline.records import CodeChunk
from ecdc_stream.pipeline.report import LinkReport
from ecdc_stream.pipeline.stages import ChunkDecoder

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """Everything a simulation produced.

    report: the receiver's link report, with the injector's summary under "injected".
    received: the receiver's audio `[C, n]`; clean: the decode of every chunk without faults.
    sent_chunks: the code chunks the sender produced, in order.
    record: what the injector did, by sequence number (chunks) or message index (wire layer).
    """

    report: LinkReport
    received: np.ndarray
    clean: np.ndarray
    sent_chunks: list[CodeChunk]
    receiver: ReceiveResult
    record: FaultRecord
    params: StreamParams


class StampClock:
    """Pipeline stage that stamps item i with the virtual send time i * interval_s."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            index = 0
            async for item in receive:
                await send.send(Arrival(item, index * self.interval_s))
                index += 1


def decode_clean(model: Any, chunks: list[CodeChunk], grid_frames: int) -> np.ndarray:
    """Decode every chunk with no loss, as the receiver's decoder does: audio `[C, n]` float32."""
    decoder = ChunkDecoder(model, grid_frames)
    parts: list[np.ndarray] = []
    for chunk in chunks:
        parts += decoder.push(chunk)
    parts += decoder.finish()
    if not parts:
        return np.zeros((model.channels, 0), dtype=np.float32)
    return np.concatenate(parts, axis=1)


class SignalWatch:
    """Cancel a scope at the first SIGINT or SIGTERM, and record that one came."""

    def __init__(self) -> None:
        self.interrupted = False

    async def run(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("interrupted by %s: stopping the simulation", signal.Signals(signum).name)
                self.interrupted = True
                scope.cancel()
                return


def temporary_output(path: Path) -> Path:
    """Create an empty file beside `path` that ends in the same suffix, to write `path` under another name."""
    handle, temporary = create_beside(path, f".part{path.suffix}")
    os.close(handle)
    return temporary


def remove_temporary_output(path: Path) -> None:
    """Delete a file made by `temporary_output` and the `.partial` file that the sound file writer uses."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".partial").unlink(missing_ok=True)


async def simulate(
    input_path: str | Path,
    model: Any,
    faults: FaultConfig,
    *,
    bandwidth: float = 6.0,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    output: str | Path | None = None,
    window_ms: float = DEFAULT_WINDOW_MS,
    fault_layer: str = "chunk",
    header_every: int = 4,
    weights: Any = None,
    encoding: Encoding | None = None,
    handle_signals: bool = False,
) -> SimulationResult:
    """Send `input_path` through `faults` to a receiver in this process and return what happened.

    model: a loaded EncodecModel; encoding: a prepared `Encoding` to reuse between runs (its
    counter is reset), else one is built. The link uses UDP framing (fragments of at most
    `MAX_FRAGMENT_BYTES`) without a socket.
    output: sound file the receiver writes. It is written under a temporary name in the same
    folder and renamed when the simulation completes, so a failed or interrupted run leaves
    `output` as it was.
    handle_signals: on the main thread, the first SIGINT or SIGTERM cancels the run, which then
    raises KeyboardInterrupt.
    """
    check_fault_layer(fault_layer)
    target = None if output is None else Path(output)
    if target is not None:
        # Check the real name: the temporary one would show up in the error.
        writable_format(target)
    temporary = None if target is None else temporary_output(target)
    watch = SignalWatch()
    result: SimulationResult | None = None
    try:
        async with anyio.create_task_group() as group:
            if handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(watch.run, group.cancel_scope)
            result = await _simulate(
                input_path, model, faults, bandwidth, chunk_seconds, temporary, window_ms, fault_layer, header_every,
                weights, encoding,
            )
            # Stop the signal watch: the simulation is complete.
            group.cancel_scope.cancel()
        # A signal after the last checkpoint of the run still counts as an interrupt.
        if watch.interrupted:
            raise KeyboardInterrupt
        assert result is not None
        if temporary is not None and target is not None:
            os.replace(temporary, target)
        return result
    except BaseExceptionGroup as group_error:
        # A stage can fail while the run is being cancelled, for example when its input ends
        # early. The signal is then the cause to report.
        if watch.interrupted:
            raise KeyboardInterrupt from None
        raise first_error(group_error) from None
    finally:
        # After the rename the temporary file no longer exists, so this removes only leftovers.
        if temporary is not None:
            remove_temporary_output(temporary)


async def _simulate(
    input_path: str | Path,
    model: Any,
    faults: FaultConfig,
    bandwidth: float,
    chunk_seconds: float,
    output: Path | None,
    window_ms: float,
    fault_layer: str,
    header_every: int,
    weights: Any,
    encoding: Encoding | None,
) -> SimulationResult:
    source, total = file_source_stage(str(input_path), model)
    if encoding is None or encoding.params.total_samples != total:
        encoding = prepare_encoding(model, bandwidth, chunk_seconds, weights=weights, total_samples=total, keep_chunks=True)
    encoding.counter.reset(keep=True)
    params = encoding.params

    interval_s = params.chunk_samples / params.sample_rate
    injector = FaultInjector(faults, interval_ms=interval_s * 1000.0)
    # The stream id comes from the seed, so that a simulation is repeatable byte for byte.
    stream_id = int(np.random.default_rng(faults.seed).integers(0, 2**32))
    framer = LinkFramer(stream_id, params.to_metadata(), encoding.counter.totals, header_every, MAX_FRAGMENT_BYTES)
    link = LinkDecoder()
    wire_send, wire_receive = anyio.create_memory_object_stream[Any](64)

    async def into_link(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send, wire_send:
            async for item in receive:
                await wire_send.send(item)

    async def out_of_link(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send, wire_receive:
            time_s = 0.0
            async for item in wire_receive:
                # The framer stamps its closing header and end messages only when a chunk reached
                # it. When chunk-layer faults drop every chunk, they come unstamped and arrive
                # with the last stamped message, or at 0 s.
                if isinstance(item, Arrival):
                    time_s, message = item.time_s, item.item
                else:
                    message = item
                for event in link.feed_datagram(message):
                    await send.send(Arrival(event, time_s))

    counter = encoding.counter

    def sent_header_and_end() -> tuple[StreamHeader, StreamEnd]:
        # The receiver calls this only after the link has ended, so the counter's totals are final.
        return StreamHeader(stream_id, params.to_metadata()), StreamEnd(*counter.totals())

    sender = encoding.stages(source)
    sender.append("clock", StampClock(interval_s))
    append_link_stages(sender, framer, injector, fault_layer)
    sender.append("wire", into_link)

    result: ReceiveResult | None = None

    async def run_receiver() -> None:
        nonlocal result
        result = await receive_stream(
            out_of_link,
            link,
            output=output,
            window_ms=window_ms,
            weights=weights,
            virtual_clock=True,
            keep_audio=True,
            keep_chunks=True,
            fallback_header=sent_header_and_end,
        )

    logger.info(
        "sending %s at %g kbps through the simulated link, faults on the %s layer", params.model, params.bandwidth, fault_layer
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run_receiver)
            await sender.run()
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None

    assert result is not None and result.audio is not None
    clean = await anyio.to_thread.run_sync(decode_clean, model, encoding.counter.kept, encoding.params.chunk_frames)
    extra = {
        "injected": injector.record.summary(),
        "fault_layer": fault_layer,
        "faults": faults.to_dict(),
        "window_ms": window_ms,
        "header_received": result.header_received,
    }
    report = result.report(clean, extra)
    return SimulationResult(report, result.audio, clean, list(encoding.counter.kept), result, injector.record, params)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `simulate` subcommand."""
    parser = subparsers.add_parser(
        "simulate",
        help="send a file through a simulated bad link to a receiver, in one process",
        description="Encode IN, pass its chunks through seeded faults, receive, conceal and decode "
        "them into OUT, and report what was lost and the SNR against a clean decode.",
    )
    parser.add_argument("input", help="sound file to send")
    parser.add_argument("output", help="sound file the receiver writes")
    add_model_options(parser)
    add_link_options(parser)
    parser.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW_MS, metavar="MS",
        help=f"the receiver's jitter buffer window, in ms (default: {DEFAULT_WINDOW_MS:g})",
    )
    add_fault_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the simulation and print the report."""
    faults = fault_config_from_args(args)
    if args.window < 0:
        raise InvalidArgumentError(f"--window is {args.window} ms: give 0 or more")
    check_output_is_not_input(args.input, args.output)
    writable_format(args.output)
    model = load_sender_model(args.model, weights_dir(args), args.device)
    result = anyio.run(
        lambda: simulate(
            args.input,
            model,
            faults,
            bandwidth=args.bandwidth,
            chunk_seconds=args.chunk_seconds,
            output=args.output,
            window_ms=args.window,
            fault_layer=args.fault_layer,
            header_every=args.header_every,
            weights=weights_dir(args),
            handle_signals=True,
        )
    )
    print_report(result.report, args.json)
    return 0
