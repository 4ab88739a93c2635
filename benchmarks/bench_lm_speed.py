"""LM speed: the exact LM with its key/value cache against the reference-style float LM.

For each published model at 6 kbps (24 kHz: 8 codebooks, 75 frames/s, 262 frames of past;
48 kHz: 4 codebooks, 150 frames/s, 525 frames of past) with seeded random weights of the
published size, the table gives milliseconds per second of audio for the LM and range-coder
part of acv=4 alone (no EnCodec networks):

- encode: teacher-forced exact LM over each 1 s chunk, CDFs, range coding;
- live decode: one chunk at a time, one exact-LM step per frame;
- file decode: all chunks of the file decoded as one batch;

and milliseconds per step for one frame: the exact LM step with its cache, and the float LM of
the reference (`ecdc_stream.model.lm.LMModel`), which re-projects its whole past at each step,
measured once its past context is full.

Run: `python benchmarks/bench_lm_speed.py [--seconds S] [--threads T] [--clock wall|cpu]`.
`--clock cpu` measures the process's CPU time instead of wall time: with `--threads 1` it is
close to the wall time of a quiet machine, even while other programs load this one.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from bench_exactness import MODELS, float_lm, sharpened_state

from ecdc_stream.container.acv4 import ChunkCoder, StreamParams
from ecdc_stream.entropy.range_coder import RangeEncoder
from ecdc_stream.model import published_config
from ecdc_stream.pipeline.records import CodeChunk


CLOCK = time.perf_counter


def timed(function, repeat: int = 1) -> float:
    """Return the least time of `repeat` calls on CLOCK, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = CLOCK()
        function()
        best = min(best, CLOCK() - start)
    return best


def make_params(name: str) -> StreamParams:
    num_codebooks, frames, samples, segment_length, stride = MODELS[name]
    config = published_config(name)
    return StreamParams(
        model=name,
        sample_rate=config.sample_rate,
        channels=config.channels,
        num_codebooks=num_codebooks,
        bandwidth=6.0,
        chunk_frames=frames,
        chunk_samples=samples,
        frame_rate=config.frame_rate,
        segment_length=segment_length,
        segment_stride=stride,
    )


@torch.no_grad()
def float_step_ms(lm, num_codebooks: int, past_context: int, steps: int) -> float:
    """Return the float LM's milliseconds per step once `past_context` frames are in its state."""
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(0, lm.card, (1, num_codebooks, past_context), generator=generator) + 1
    _, states, offset = lm(history)
    previous = history[:, :, -1:]
    start = CLOCK()
    for _ in range(steps):
        _, states, offset = lm(previous, states, offset)
    return (CLOCK() - start) / steps * 1000


def run(name: str, seconds: int) -> dict[str, float]:
    params = make_params(name)
    state = sharpened_state(name, 6.0, 0)
    coder = ChunkCoder(params, state)
    num_codebooks, frames, samples, _, _ = MODELS[name]
    generator = np.random.default_rng(0)
    scales = (1.0,) if params.segment_length else ()
    chunks = [CodeChunk(s, generator.integers(0, coder.card, (num_codebooks, frames)), samples, scales) for s in range(seconds)]
    audio_seconds = seconds * samples / params.sample_rate
    coder.encode(chunks[0])

    framed: list[bytes] = []
    encode = timed(lambda: framed.extend(coder.encode(chunk) for chunk in chunks))

    # The encode time split: the exact LM and CDFs alone, then the range coder alone.
    counts = []
    def lm_counts(codes: np.ndarray) -> torch.Tensor:
        hidden = coder.lm.hidden_states(torch.from_numpy(codes).unsqueeze(0))
        return coder.counts(coder.lm.output_logits(hidden))[0]

    lm_only = timed(lambda: counts.extend(lm_counts(np.asarray(chunk.codes, dtype=np.int64)) for chunk in chunks))

    def code_only() -> None:
        for chunk, chunk_counts in zip(chunks, counts):
            symbols = torch.from_numpy(np.asarray(chunk.codes).T.copy())
            lows = torch.cumsum(chunk_counts, dim=-1) - chunk_counts
            encoder = RangeEncoder(params.count_precision)
            encoder.encode_all(
                lows.gather(-1, symbols.unsqueeze(-1)).reshape(-1).tolist(),
                chunk_counts.gather(-1, symbols.unsqueeze(-1)).reshape(-1).tolist(),
            )
            encoder.finish()

    coder_only = timed(code_only)
    live = timed(lambda: [coder.decode(data) for data in framed])
    batch = timed(lambda: coder.decode_batch(framed))

    state_cache = coder.lm.start(1, frames)
    previous = torch.zeros(1, num_codebooks, dtype=torch.int64)
    coder.lm.step(state_cache, None)
    steps = frames - 1
    step = timed(lambda: [coder.lm.step(state_cache, previous) for _ in range(steps)]) / steps

    lm = float_lm(name, state)
    reference_step = float_step_ms(lm, num_codebooks, params.past_context, 30)
    weight_bytes = coder.lm.weight_bytes()
    return {
        "weight_mb": weight_bytes / 1e6,
        "encode": encode / audio_seconds * 1000,
        "lm": lm_only / audio_seconds * 1000,
        "coder": coder_only / audio_seconds * 1000,
        "live": live / audio_seconds * 1000,
        "batch": batch / audio_seconds * 1000,
        "step": step * 1000,
        "reference_step": reference_step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds of codes per model (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="time measured (default wall)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    print(
        f"acv=4 LM and range coder alone, {args.seconds} s of 1 s chunks, 6 kbps, "
        f"torch threads {torch.get_num_threads()}, {args.clock} clock"
    )
    print("ms per second of audio (real-time factor in brackets); ms per step for one frame")
    header = f"{'model':<15}{'encode':>16}{'(LM / coder)':>16}{'live decode':>16}{'file decode':>16}{'exact step':>12}{'float step':>12}"
    print(header)
    notes = []
    for name in args.models:
        row = run(name, args.seconds)

        def rate(ms: float) -> str:
            return f"{ms:.0f} ({1000 / ms:.0f}x)"

        print(
            f"{name:<15}{rate(row['encode']):>16}{row['lm']:>9.0f} / {row['coder']:<4.0f}{rate(row['live']):>16}"
            f"{rate(row['batch']):>16}{row['step']:>10.2f}ms{row['reference_step']:>10.2f}ms",
            flush=True,
        )
        notes.append(
            f"{name}: an exact step reads {row['weight_mb']:.0f} MB of float64 weights, "
            f"{row['weight_mb'] / row['step']:.1f} GB/s at the step time measured"
        )
    print("Where the time of a live decode goes: each step streams every weight from memory once.")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
