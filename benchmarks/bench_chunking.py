"""Cost of chunking: acv=4 bits per second at chunk lengths of 0.25, 0.5, 1 and 2 s.

Every chunk restarts the LM and the range coder and carries 18 bytes of framing and chunk
header (plus 4 bytes per segment scale at 48 kHz), so shorter chunks cost more. A continuous
code sequence is sampled from a seeded, sharpened real-size LM (as in bench_exactness.py) and
coded at each chunk length. The first row is ideal coding of the whole sequence with the float
LM and its full past context, which no chunked stream can reach.

With random weights the LM leans on its context in an arbitrary way, so the cost of restarting
it per chunk is only indicative. `--weights DIR` uses the published checkpoints in DIR instead,
and the codes of the shared recordings (../shared/audio), for real numbers.

The 48 kHz model's chunks are whole 1 s segments, so only 1 and 2 s apply there.

Run: `python benchmarks/bench_chunking.py [--seconds S] [--sharpen S] [--threads T] [--weights DIR]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile
import torch
from bench_exactness import MODELS, float_lm, sharpened_state

from ecdc_stream.container.acv4 import ChunkCoder, StreamParams
from ecdc_stream.model import lm_state_dict, load_model, published_config
from ecdc_stream.pipeline.records import CodeChunk

CHUNK_SECONDS = (0.25, 0.5, 1.0, 2.0)
AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
RECORDINGS = {"encodec_24khz": "test_24k.wav", "encodec_48khz": "test_48k.wav"}


def recording_codes(name: str, weights_dir: str, seconds: int) -> torch.Tensor:
    """Return the codes `[K, T]` of the first `seconds` of the shared recording, at 6 kbps."""
    model = load_model(name, weights_dir)
    samples, _ = soundfile.read(str(AUDIO_DIR / RECORDINGS[name]), dtype="float32", always_2d=True)
    wav = torch.from_numpy(samples[: seconds * model.sample_rate].T.copy()).unsqueeze(0)
    segments = model.encode(wav, 6.0)
    return torch.cat([codes[0] for codes, _ in segments], dim=-1)


@torch.no_grad()
def sample_continuous(lm, num_codebooks: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Sample codes `[K, T]` from the float LM with its streaming state, never restarting."""
    states, offset = None, 0
    previous = torch.zeros(1, num_codebooks, 1, dtype=torch.long)
    codes = torch.zeros(num_codebooks, frames, dtype=torch.long)
    for frame in range(frames):
        probabilities, states, offset = lm(previous, states, offset)
        codes[:, frame] = torch.multinomial(probabilities[0, :, :, 0].t().double(), 1, generator=generator)[:, 0]
        previous = 1 + codes[:, frame].view(1, num_codebooks, 1)
    return codes


@torch.no_grad()
def continuous_ideal_bits(lm, codes: torch.Tensor) -> float:
    inputs = torch.zeros_like(codes)
    inputs[:, 1:] = codes[:, :-1] + 1
    probabilities, _, _ = lm(inputs.unsqueeze(0))
    chosen = probabilities[0].double().gather(0, codes.unsqueeze(0))[0]
    return float(-torch.log2(chosen).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="seconds of codes sampled per model (default 8)")
    parser.add_argument("--sharpen", type=float, default=6.0, help="output layer scale factor (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--weights", default=None, help="folder with the published checkpoints: code the recordings with them")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    source = f"recordings coded with {args.weights}" if args.weights else f"codes sampled from a random LM sharpened {args.sharpen:g}x"
    print(f"acv=4 cost of chunking, {args.seconds} s per model, {source}, 6 kbps")
    print(f"{'model':<15}{'chunk s':>8}{'frames':>8}{'coded kbps':>12}{'framed kbps':>13}{'vs ideal':>10}")
    for name in args.models:
        num_codebooks, second_frames, _, segment_length, stride = MODELS[name]
        config = published_config(name)
        if args.weights:
            state = lm_state_dict(name, args.weights)
            lm = float_lm(name, state)
            codes = recording_codes(name, args.weights, args.seconds)
            total_frames = codes.shape[-1] - codes.shape[-1] % (2 * second_frames)
            codes = codes[:, :total_frames]
        else:
            state = sharpened_state(name, args.sharpen, args.seed)
            lm = float_lm(name, state)
            generator = torch.Generator().manual_seed(args.seed)
            total_frames = args.seconds * config.frame_rate
            codes = sample_continuous(lm, num_codebooks, total_frames, generator)
        seconds = total_frames / config.frame_rate

        ideal = continuous_ideal_bits(lm, codes) / seconds / 1000
        print(f"{name:<15}{'ideal':>8}{total_frames:>8}{ideal:>12.3f}{'':>13}{'':>10}", flush=True)

        for chunk_seconds in CHUNK_SECONDS:
            if segment_length is not None:
                if chunk_seconds < 1:
                    continue
                segments = round(chunk_seconds)
                chunk_frames, chunk_samples = segments * second_frames, segments * stride
            else:
                chunk_frames = round(chunk_seconds * config.frame_rate)
                chunk_samples = chunk_frames * (config.sample_rate // config.frame_rate)
            params = StreamParams(
                model=name,
                sample_rate=config.sample_rate,
                channels=config.channels,
                num_codebooks=num_codebooks,
                bandwidth=6.0,
                chunk_frames=chunk_frames,
                chunk_samples=chunk_samples,
                frame_rate=config.frame_rate,
                segment_length=segment_length,
                segment_stride=stride,
            )
            coder = ChunkCoder(params, state)
            coded = framed = 0
            for sequence, start in enumerate(range(0, total_frames, chunk_frames)):
                part = codes[:, start : start + chunk_frames].numpy()
                if part.shape[1] < chunk_frames:
                    break
                scales = (1.0,) * (chunk_frames // second_frames) if segment_length else ()
                data = coder.encode(CodeChunk(sequence, part, chunk_samples, scales))
                coded += 8 * (len(data) - 19 - 4 * len(scales))
                framed += 8 * len(data)
            covered = (sequence if part.shape[1] < chunk_frames else sequence + 1) * chunk_frames / config.frame_rate
            coded_kbps = coded / covered / 1000
            framed_kbps = framed / covered / 1000
            overhead = 100 * (framed_kbps / ideal - 1)
            print(f"{name:<15}{chunk_seconds:>8g}{chunk_frames:>8}{coded_kbps:>12.3f}{framed_kbps:>13.3f}{overhead:>9.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
