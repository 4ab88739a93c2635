"""Cost of exactness: acv=4 bits against ideal coding with the float LM on the same codes.

For each published model, a seeded random LM of the published size has its output layers
scaled up (`--sharpen`) so that its distributions are sharp, like a trained LM's. Code
sequences are sampled from that float LM, one 1 s chunk at a time with the LM reset per chunk,
as acv=4 codes them. The table compares

- ideal: the sum of -log2 p of the codes under the float LM (teacher-forced, per chunk),
- coded: the range-coded bytes of the acv=4 chunks (the exact LM, CDF quantization, coder),
- framed: the whole acv=4 chunks, with their 18 bytes of framing and chunk header.

Run: `python benchmarks/bench_exactness.py [--chunks N] [--sharpen S ...] [--threads T]`.
The target is coded at most 1 % above ideal.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ecdc_stream.container.acv4 import ChunkCoder, StreamParams
from ecdc_stream.model import build_lm, published_config
from ecdc_stream.model.random_weights import random_lm_state
from ecdc_stream.pipeline.records import CodeChunk

MODELS = {
    # model name: (codebooks at 6 kbps, frames per chunk, audio samples per chunk, segment length, stride)
    "encodec_24khz": (8, 75, 24000, None, None),
    "encodec_48khz": (4, 150, 47520, 48000, 47520),
}


def sharpened_state(name: str, sharpen: float, seed: int) -> dict[str, torch.Tensor]:
    """Return a seeded random LM state dict of model `name` with its output layers scaled by `sharpen`."""
    state = random_lm_state(name, seed=seed)
    for key in state:
        if key.startswith("linears."):
            state[key] = state[key] * sharpen
    return state


def float_lm(name: str, state: dict[str, torch.Tensor]):
    lm = build_lm(published_config(name))
    lm.load_state_dict(state)
    return lm.eval()


@torch.no_grad()
def sample_chunk(lm, num_codebooks: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Sample codes `[K, T]` from the float LM step by step, starting afresh."""
    states, offset = None, 0
    previous = torch.zeros(1, num_codebooks, 1, dtype=torch.long)
    codes = torch.zeros(num_codebooks, frames, dtype=torch.long)
    for frame in range(frames):
        probabilities, states, offset = lm(previous, states, offset)
        distribution = probabilities[0, :, :, 0].t()  # [K, card]
        codes[:, frame] = torch.multinomial(distribution.double(), 1, generator=generator)[:, 0]
        previous = 1 + codes[:, frame].view(1, num_codebooks, 1)
    return codes


@torch.no_grad()
def ideal_bits(lm, codes: torch.Tensor) -> float:
    """Return -sum log2 p of codes `[K, T]` under the float LM, teacher-forced from a fresh state."""
    inputs = torch.zeros_like(codes)
    inputs[:, 1:] = codes[:, :-1] + 1
    probabilities, _, _ = lm(inputs.unsqueeze(0))  # [1, card, K, T]
    chosen = probabilities[0].double().gather(0, codes.unsqueeze(0))[0]
    return float(-torch.log2(chosen).sum())


def run(name: str, sharpen: float, num_chunks: int, seed: int) -> dict[str, float]:
    num_codebooks, frames, samples, segment_length, stride = MODELS[name]
    config = published_config(name)
    state = sharpened_state(name, sharpen, seed)
    lm = float_lm(name, state)
    params = StreamParams(
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
    coder = ChunkCoder(params, state)
    generator = torch.Generator().manual_seed(seed)

    ideal = coded = framed = 0.0
    for sequence in range(num_chunks):
        codes = sample_chunk(lm, num_codebooks, frames, generator)
        ideal += ideal_bits(lm, codes)
        scales = (1.0,) if segment_length else ()
        data = coder.encode(CodeChunk(sequence, codes.numpy(), samples, scales))
        header = 8 + 11 + 4 * len(scales)
        coded += 8 * (len(data) - header)
        framed += 8 * len(data)
        assert (coder.decode(data).codes == codes.numpy()).all()

    seconds = num_chunks * samples / config.sample_rate
    return {
        "ideal": ideal / seconds / 1000,
        "coded": coded / seconds / 1000,
        "framed": framed / seconds / 1000,
        "bits_per_code": ideal / (num_chunks * frames * num_codebooks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8, help="1 s chunks sampled per model (default 8)")
    parser.add_argument("--sharpen", type=float, nargs="+", default=[1.0, 3.0, 6.0], help="output layer scale factors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"acv=4 cost of exactness, {args.chunks} chunks of 1 s per row, 6 kbps, torch threads {torch.get_num_threads()}")
    print(f"{'model':<15}{'sharpen':>8}{'bits/code':>10}{'ideal kbps':>12}{'coded kbps':>12}{'overhead':>10}{'framed kbps':>13}")
    worst = 0.0
    for name in args.models:
        for sharpen in args.sharpen:
            start = time.perf_counter()
            row = run(name, sharpen, args.chunks, args.seed)
            overhead = 100 * (row["coded"] / row["ideal"] - 1)
            worst = max(worst, overhead)
            print(
                f"{name:<15}{sharpen:>8g}{row['bits_per_code']:>10.2f}{row['ideal']:>12.3f}{row['coded']:>12.3f}"
                f"{overhead:>9.2f}%{row['framed']:>13.3f}   ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(f"largest overhead of coded over ideal: {worst:.2f} % (target: at most 1 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
