"""Peak memory of streaming encode and decode against the length of the input.

    python benchmarks/bench_memory.py [--weights DIR] [--minutes 1 30] [--models encodec_24khz encodec_48khz]

For each model and length, a test signal (a chirp over noise, so the codes vary) is generated
block by block into a WAV file, then encoded to acv=4 and decoded back, each in a fresh child
process whose peak resident set size (ru_maxrss) is reported. Flat memory means the long input
peaks where the short one does; the difference is printed.

Without --weights, seeded random checkpoints are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
REPO = Path(__file__).resolve().parents[1]
RATES = {"encodec_24khz": (24000, 1), "encodec_48khz": (48000, 2)}

CHILD = """
import json, resource, sys, time
from ecdc_stream.pipeline.files import decode_file, encode_file
job = json.loads(sys.argv[1])
started = time.perf_counter()
if job["step"] == "encode":
    encode_file(job["input"], job["output"], model=job["model"], bandwidth=6.0, weights_dir=job["weights"])
else:
    decode_file(job["input"], job["output"], weights_dir=job["weights"])
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_signal(path: Path, minutes: float, sample_rate: int, channels: int) -> None:
    """Write `minutes` of a chirp over noise, 10 s at a time."""
    generator = np.random.default_rng(0)
    total = int(minutes * 60 * sample_rate)
    block = 10 * sample_rate
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels, subtype="PCM_16") as out:
        for start in range(0, total, block):
            count = min(block, total - start)
            t = (start + np.arange(count)) / sample_rate
            frequency = 200 + 1800 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 7.0))
            tone = 0.3 * np.sin(2 * np.pi * np.cumsum(frequency) / sample_rate)
            noise = 0.03 * generator.standard_normal((count, channels))
            out.write((tone[:, None] + noise).astype(np.float32))


def run_child(job: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="folder with the checkpoints (default: random ones)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0], help="input lengths (default: 1 30)")
    parser.add_argument("--models", nargs="+", default=list(RATES))
    parser.add_argument("--folder", default=None, help="where to put the generated files (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary)
        weights = args.weights
        if weights is None:
            from ecdc_stream.model.random_weights import write_random_checkpoints

            write_random_checkpoints(Path(temporary) / "weights", seed=0, audio_dir=AUDIO_DIR)
            weights = str(Path(temporary) / "weights")

        print("| model | input (min) | encode peak RSS (MB) | encode time (s) | decode peak RSS (MB) | decode time (s) |")
        print("|---|---|---|---|---|---|")
        for name in args.models:
            rate, channels = RATES[name]
            for minutes in args.minutes:
                audio = folder / f"{name}_{minutes:g}min.wav"
                write_signal(audio, minutes, rate, channels)
                stream = audio.with_suffix(".ecdc")
                decoded = audio.with_name(audio.stem + "_decoded.wav")
                encoded = run_child({"step": "encode", "input": str(audio), "output": str(stream), "model": name, "weights": weights})
                restored = run_child({"step": "decode", "input": str(stream), "output": str(decoded), "model": name, "weights": weights})
                print(
                    f"| {name} | {minutes:g} | {encoded['peak_mb']:.0f} | {encoded['seconds']:.0f} "
                    f"| {restored['peak_mb']:.0f} | {restored['seconds']:.0f} |",
                    flush=True,
                )
                for path in (audio, stream, decoded):
                    path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
