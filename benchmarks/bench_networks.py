"""Speed of the EnCodec networks alone (no LM, no entropy coding) for both published models.

    python benchmarks/bench_networks.py [--weights DIR] [--seconds 10] [--repeat 3] [--profile]
        [--skip-block-wise] [--models encodec_24khz encodec_48khz]

Times, on the first --seconds of the real recordings, at 6 kbps:
- `model.encode` and `model.decode`, the offline whole-file calls the Python API makes;
- the block-wise cores the pipelines use: `StreamingEncoder` / `StreamingDecoder` for the causal
  24 kHz model, `SegmentEncoder` / `SegmentDecoder` for the 48 kHz model, fed the whole input at
  once (one chunk per call for the decoders).
Each number is the best of --repeat runs; real-time factor = seconds of audio / seconds of
computing. Without --weights it writes seeded random checkpoints (seed 0, codebooks filled from
the recordings) into a temporary folder: speed does not depend on the weights' values.
--profile prints the operators that took the most time in the offline encode and decode.

On a machine that other processes keep busy, the numbers depend on how OpenMP threads wait at
the end of each parallel region: spinning threads (libgomp's default) lose their time slices
and every operator can take several times longer. Compare runs with
`OMP_WAIT_POLICY=PASSIVE` in the environment, which changes the speed, not the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import soundfile as sf
import soxr
import torch
from torch.profiler import ProfilerActivity, profile

from ecdc_stream.model import load_model
from ecdc_stream.model.random_weights import write_random_checkpoints
from ecdc_stream.model.streaming import SegmentDecoder, SegmentEncoder, StreamingDecoder, StreamingEncoder

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
CASES = [("encodec_24khz", "test_24k.wav"), ("encodec_48khz", "test_48k.wav")]
BANDWIDTH = 6.0


def read_audio(path: Path, sample_rate: int, channels: int, seconds: float) -> torch.Tensor:
    """Read `path` as float32 [channels, n] at `sample_rate`, cut to `seconds`."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate)
    if samples.shape[1] != channels:
        samples = samples.mean(axis=1, keepdims=True).repeat(channels, axis=1)
    samples = samples[: int(seconds * sample_rate)]
    return torch.from_numpy(samples.T.copy())


def best_time(function, repeat: int) -> tuple[float, object]:
    """Return the shortest wall time in seconds of `repeat` calls of `function`, and its result."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def stream_encode(model, wav: torch.Tensor, num_codebooks: int) -> list:
    """Encode `wav` [C, n] with the pipelines' block-wise encoder, given the whole input at once."""
    if model.segment_length is None:
        return [StreamingEncoder(model, num_codebooks).encode_all(wav)]
    encoder = SegmentEncoder(model, num_codebooks)
    return encoder.push(wav) + encoder.finish()


def stream_decode(model, encoded: list) -> torch.Tensor:
    """Decode the output of `stream_encode` with the pipelines' block-wise decoder."""
    if model.segment_length is None:
        decoder = StreamingDecoder(model)
        outputs = [decoder.push(encoded[0]), decoder.finish()]
    else:
        decoder = SegmentDecoder(model)
        outputs = [decoder.push(codes, scale) for codes, scale, _ in encoded] + [decoder.finish()]
    return torch.cat(outputs, dim=-1)


def print_profile(label: str, function) -> None:
    """Run `function` once under torch.profiler and print its most expensive operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        function()
    print(f"\n{label}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("ECDC_STREAM_WEIGHTS"), help="checkpoint folder")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is shown")
    parser.add_argument("--models", nargs="+", default=[name for name, _ in CASES], help="models to time")
    parser.add_argument("--profile", action="store_true", help="print an operator profile of each model")
    parser.add_argument("--skip-block-wise", action="store_true", help="time only the offline encode and decode")
    args = parser.parse_args()

    weights = args.weights
    if weights is None:
        weights = tempfile.mkdtemp(prefix="ecdc_weights_")
        write_random_checkpoints(weights, seed=0, audio_dir=AUDIO_DIR)

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {load}")
    print(f"{args.seconds:g} s of each recording, {BANDWIDTH:g} kbps, best of {args.repeat}; x real time")
    print("| model | encode | decode | block-wise encode | block-wise decode |")
    print("|---|---:|---:|---:|---:|")
    for model_name, recording in CASES:
        if model_name not in args.models:
            continue
        model = load_model(model_name, weights_dir=weights)
        wav = read_audio(AUDIO_DIR / recording, model.sample_rate, model.channels, args.seconds)
        seconds = wav.shape[-1] / model.sample_rate
        num_codebooks = model.num_codebooks(BANDWIDTH)

        encode_time, segments = best_time(lambda: model.encode(wav[None], BANDWIDTH), args.repeat)
        decode_time, _ = best_time(lambda: model.decode(segments, wav.shape[-1]), args.repeat)
        times = [encode_time, decode_time]
        if not args.skip_block_wise:
            stream_encode_time, encoded = best_time(lambda: stream_encode(model, wav, num_codebooks), args.repeat)
            stream_decode_time, _ = best_time(lambda: stream_decode(model, encoded), args.repeat)
            times += [stream_encode_time, stream_decode_time]
        factors = [f"{seconds / t:.1f}" for t in times] + ["-"] * (4 - len(times))
        print(f"| {model_name} | " + " | ".join(factors) + " |")

        if args.profile:
            print_profile(f"{model_name} encode", lambda: model.encode(wav[None], BANDWIDTH))
            print_profile(f"{model_name} decode", lambda: model.decode(segments, wav.shape[-1]))

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
