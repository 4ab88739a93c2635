"""End-to-end latency and real-time load of the live pipeline, per model and chunk length.

    python benchmarks/bench_latency.py [--weights DIR] [--seconds S] [--chunks 0.25 0.5 1]

For each model and chunk length, a recording is fed to the encode pipeline in real time (as a
microphone delivers it) and the framed chunks go straight into the decode pipeline, with no
device and no network. A chunk is a whole number of frames (24 kHz) or of 1 s segments (48 kHz),
so the 48 kHz model's chunks are at least one segment long. Latency is measured per output block: the time its last sample leaves
the concealment stage minus the time the same sample entered the encoder. It is at least one
chunk (a chunk is coded once complete), plus the 48 kHz model's segment overlap, plus compute.

Load: the same loop runs again as fast as it can. Its wall time over the audio's duration is
the fraction of real time that the live pipeline needs on this machine, encode and decode
together; below 1 it keeps up. The busy time of each compute step is listed too.

Without --weights, seeded random checkpoints are written to a temporary folder: the timing of
the networks does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

from ecdc_stream.model import load_model
from ecdc_stream.pipeline.concealment import conceal_stage
from ecdc_stream.pipeline.core import NamedStage, Pipeline
from ecdc_stream.pipeline.ecdc_stages import ChunkDecodeStage, ChunkEncodeStage
from ecdc_stream.pipeline.live import paced_file_source
from ecdc_stream.pipeline.records import AudioBlock
from ecdc_stream.pipeline.stages import ChunkDecoder, ChunkEncoder, DecoderStage, EncoderStage
from ecdc_stream.pipeline.standard import decoder_coder, make_coder

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
RECORDINGS = {"encodec_24khz": AUDIO_DIR / "test_24k.wav", "encodec_48khz": AUDIO_DIR / "test_48k.wav"}


class Timed:
    """Wrap a callable and add up the seconds spent in it."""

    def __init__(self, function) -> None:
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args):
        started = time.perf_counter()
        try:
            return self.function(*args)
        finally:
            self.seconds += time.perf_counter() - started


async def file_blocks(receive, send, path, sample_rate, channels, seconds):
    """Unpaced source: the first `seconds` of a recording in 50 ms blocks."""
    from ecdc_stream.io.audio_files import read_blocks

    limit = int(seconds * sample_rate)
    sent = 0
    async with receive, send:
        for block in read_blocks(path, sample_rate, channels, block_samples=int(0.05 * sample_rate)):
            samples = block.samples[:, : limit - sent]
            if samples.shape[1] == 0:
                break
            await send.send(AudioBlock(samples, sample_rate, sent))
            sent += samples.shape[1]


def build_loop(model, chunk_seconds: float, weights, source, entry_times: dict | None, exit_log: list):
    """Return (pipeline, timers) for source -> encode -> decode -> concealment -> clock."""
    coder = make_coder(model, model.target_bandwidths[2], chunk_seconds, weights_dir=weights)
    decoding = decoder_coder(coder.params, weights_dir=weights)
    encoder = ChunkEncoder(model, coder.params.num_codebooks, coder.params.chunk_frames)
    decoder = ChunkDecoder(model, coder.params.chunk_frames)
    timers = {
        "encoder network": Timed(encoder.push),
        "entropy coding": Timed(coder.encode),
        "entropy decoding": Timed(decoding.decode_batch),
        "decoder network": Timed(decoder.push),
    }
    encoder.push = timers["encoder network"]
    coder.encode = timers["entropy coding"]
    decoding.decode_batch = timers["entropy decoding"]
    decoder.push = timers["decoder network"]

    async def entry_clock(receive, send):
        async with receive, send:
            async for block in receive:
                if entry_times is not None:
                    entry_times[block.start + block.num_samples] = time.monotonic()
                await send.send(block)

    async def exit_clock(receive, send):
        async with receive, send:
            async for block in receive:
                exit_log.append((block.start + block.num_samples, time.monotonic()))

    stages = [
        NamedStage("source", source),
        NamedStage("entry", entry_clock),
        NamedStage("encoder", EncoderStage(encoder)),
        NamedStage("entropy_coder", ChunkEncodeStage(coder)),
        NamedStage("entropy_decoder", ChunkDecodeStage(decoding, batch=1)),
        NamedStage("decoder", DecoderStage(decoder)),
        NamedStage("concealment", functools.partial(conceal_stage, sample_rate=model.sample_rate, channels=model.channels)),
        NamedStage("exit", exit_clock),
    ]
    return Pipeline(stages), timers, coder.params.chunk_samples / model.sample_rate


def latencies(entry_times: dict[int, float], exit_log: list[tuple[int, float]]) -> list[float]:
    """Seconds from each output block's last sample entering to it leaving."""
    ends = np.array(sorted(entry_times))
    times = np.array([entry_times[end] for end in ends])
    result = []
    for end, left in exit_log:
        # The input block holding sample end - 1 is the first whose end is >= end.
        index = int(np.searchsorted(ends, end))
        if index < len(ends):
            result.append(left - times[index])
    return result


def measure(name: str, chunk_seconds: float, seconds: float, weights) -> dict:
    model = load_model(name, weights_dir=weights)
    path = RECORDINGS[name]

    # Live: paced in real time.
    entry_times: dict[int, float] = {}
    exit_log: list = []
    paced = functools.partial(paced_file_source, path=path, sample_rate=model.sample_rate, channels=model.channels)
    pipeline, _, chunk_actual = build_loop(model, chunk_seconds, weights, paced, entry_times, exit_log)
    limit = int(seconds * model.sample_rate)

    async def run_live():
        async with anyio.create_task_group() as group:
            group.start_soon(pipeline.run)
            while not entry_times or max(entry_times) < limit:
                await anyio.sleep(0.05)
            pipeline.stop()

    anyio.run(run_live)
    values = latencies(entry_times, exit_log)

    # Load: as fast as it goes.
    exit_log = []
    unpaced = functools.partial(file_blocks, path=path, sample_rate=model.sample_rate, channels=model.channels, seconds=seconds)
    pipeline, timers, _ = build_loop(model, chunk_seconds, weights, unpaced, None, exit_log)
    started = time.perf_counter()
    anyio.run(pipeline.run)
    wall = time.perf_counter() - started

    return {
        "model": name,
        "chunk": chunk_actual,
        "median": statistics.median(values),
        "max": max(values),
        "load": wall / seconds,
        "steps": {step: timer.seconds / seconds for step, timer in timers.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="folder with the checkpoints (default: random ones)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per measurement (default: 10)")
    parser.add_argument("--chunks", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--models", nargs="+", default=list(RECORDINGS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1, what the pipelines' run_sync uses)")
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights
        if weights is None:
            from ecdc_stream.model.random_weights import write_random_checkpoints

            write_random_checkpoints(folder, seed=0, audio_dir=AUDIO_DIR)
            weights = folder

        print("| model | chunk (s, whole frames or segments) | latency median (s) | latency max (s) | wall time / audio time | encoder, coder, decoder LM, decoder (x real time) |")
        print("|---|---|---|---|---|---|")
        for name in args.models:
            for chunk in args.chunks:
                row = measure(name, chunk, args.seconds, weights)
                steps = ", ".join(f"{value:.2f}" for value in row["steps"].values())
                print(f"| {name} | {row['chunk']:.3f} | {row['median']:.2f} | {row['max']:.2f} | {row['load']:.2f} | {steps} |", flush=True)


if __name__ == "__main__":
    main()
