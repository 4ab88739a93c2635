"""Encode and decode speed of both models at 6 kbps, with and without the LM, on real recordings.

    python benchmarks/bench_codec.py [--weights DIR] [--seconds 10] [--repeat 2]

Without --weights (or ECDC_STREAM_WEIGHTS) it writes seeded random checkpoints under the
published names into a temporary folder: speed does not depend on the weights' values. Each
row is the best of --repeat runs of the whole Python API call (`compress`, `decompress`),
networks, LM and coder included, on the first --seconds of the recording. Real-time factor =
seconds of audio / seconds of computing.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ecdc_stream import api
from ecdc_stream.io.audio_files import read_blocks
from ecdc_stream.model import load_model
from ecdc_stream.model.random_weights import write_random_checkpoints

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
CASES = [
    ("encodec_24khz", "test_24k.wav"),
    ("encodec_48khz", "test_48k.wav"),
]
CODINGS = [
    ("no LM", {"use_lm": False}),
    ("LM acv=4", {"use_lm": True}),
    ("LM original", {"use_lm": True, "legacy_lm": True}),
]


def best_time(function, repeat: int) -> tuple[float, object]:
    """Return the shortest wall time of `repeat` calls of `function` and its last result."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("ECDC_STREAM_WEIGHTS"))
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--skip-original", action="store_true", help="leave out the original LM format")
    args = parser.parse_args()

    weights = args.weights
    if weights is None:
        weights = tempfile.mkdtemp(prefix="ecdc_weights_")
        write_random_checkpoints(weights, seed=0, audio_dir=AUDIO_DIR)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.seconds:g} s of each recording, {args.bandwidth:g} kbps, best of {args.repeat}")
    print(f"| model | coding | kbps | encode x real time | decode x real time |")
    print(f"|---|---|---:|---:|---:|")
    for model_name, recording in CASES:
        model = load_model(model_name, weights_dir=weights)
        blocks = read_blocks(AUDIO_DIR / recording, model.sample_rate, model.channels)
        wav = np.concatenate([block.samples for block in blocks], axis=1)
        wav = wav[:, : int(args.seconds * model.sample_rate)]
        seconds = wav.shape[1] / model.sample_rate

        for label, options in CODINGS:
            if args.skip_original and options.get("legacy_lm"):
                continue
            encode_time, data = best_time(
                lambda: api.compress(model, wav, bandwidth=args.bandwidth, weights_dir=weights, **options), args.repeat
            )
            decode_time, _ = best_time(lambda: api.decompress(data, weights_dir=weights), args.repeat)
            kbps = len(data) * 8 / seconds / 1000
            print(
                f"| {model_name} | {label} | {kbps:.2f} | {seconds / encode_time:.1f} | {seconds / decode_time:.1f} |"
            )


if __name__ == "__main__":
    main()
