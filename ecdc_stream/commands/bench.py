"""`ecdc-stream bench IN`: bitrate, quality, speed and damage tolerance on one recording."""

from __future__ import annotations

import argparse
import io
import json
import time
from typing import Any

import numpy as np

from ecdc_stream import api
from ecdc_stream.commands.common import add_model_options
from ecdc_stream.container import acv4
from ecdc_stream.io.audio_files import read_blocks
from ecdc_stream.model import load_model, resolve_device
from ecdc_stream.pipeline.records import Gap

# "ECDC", the version byte and the u32 length of the JSON that follows.
HEADER_PREFIX_BYTES = 9


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure bitrate, SNR, speed and the cost of a corrupted byte on a recording",
        description="Encode and decode IN without and with the LM and report bitrate, SNR against "
        "the input, encode and decode real-time factors, and what one corrupted byte costs.",
    )
    parser.add_argument("input", metavar="IN", help="audio file to measure with")
    add_model_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for the position of the corrupted byte")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Return the signal-to-noise ratio of `decoded` against `reference`, both `[C, n]`, in dB."""
    noise = float(np.sum((reference - decoded) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-20) / noise)


def measure(model: Any, wav: np.ndarray, weights: str | None, **options: Any) -> tuple[dict[str, Any], bytes]:
    """Encode and decode `wav` once with `options`; return the measurements and the stream."""
    seconds = wav.shape[1] / model.sample_rate

    start = time.perf_counter()
    data = api.compress(model, wav, weights_dir=weights, **options)
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    decoded, _ = api.decompress(data, device=model.device, weights_dir=weights)
    decode_seconds = time.perf_counter() - start

    result = {
        "bytes": len(data),
        "kbps": len(data) * 8 / seconds / 1000,
        "snr_db": snr_db(wav, decoded.numpy()),
        "encode_realtime": seconds / encode_seconds,
        "decode_realtime": seconds / decode_seconds,
    }
    return result, data


def corrupted_byte_cost(data: bytes, weights: str | None, seed: int) -> dict[str, Any]:
    """Flip one byte in the chunks of an acv=4 stream and report what decoding loses."""
    params, clean = acv4.read_acv4(io.BytesIO(data), weights_dir=weights)
    header_end = HEADER_PREFIX_BYTES + int.from_bytes(data[5:9], "big")

    rng = np.random.default_rng(seed)
    position = int(rng.integers(header_end, len(data)))
    damaged = bytearray(data)
    damaged[position] ^= 0xFF
    _, chunks = acv4.read_acv4(io.BytesIO(bytes(damaged)), weights_dir=weights)

    lost = [item for item in chunks if isinstance(item, Gap)]
    intact_equal = all(
        isinstance(a, Gap) or isinstance(b, Gap) or np.array_equal(a.codes, b.codes) for a, b in zip(clean, chunks)
    )
    return {
        "byte_offset": position,
        "chunks_lost": len(lost),
        "seconds_lost": sum(gap.num_samples for gap in lost) / params.sample_rate,
        "length_exact": sum(item.num_samples for item in chunks) == sum(item.num_samples for item in clean),
        "other_chunks_exact": intact_equal,
    }


def run(args: argparse.Namespace) -> int:
    model = load_model(api.resolve_model_name(args.model), weights_dir=args.weights, device=resolve_device(args.device))
    model.num_codebooks(args.bandwidth)
    wav = np.concatenate([block.samples for block in read_blocks(args.input, model.sample_rate, model.channels)], axis=1)

    raw, _ = measure(model, wav, args.weights, bandwidth=args.bandwidth, use_lm=False)
    exact, stream = measure(model, wav, args.weights, bandwidth=args.bandwidth, use_lm=True)
    damage = corrupted_byte_cost(stream, args.weights, args.seed)
    report = {
        "input": args.input,
        "model": model.name,
        "bandwidth_kbps": args.bandwidth,
        "seconds": wav.shape[1] / model.sample_rate,
        "without_lm": raw,
        "with_lm_acv4": exact,
        "lm_saving_percent": 100.0 * (1.0 - exact["bytes"] / raw["bytes"]),
        "one_corrupted_byte": damage,
    }

    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    print(f"{args.input}: {report['seconds']:.2f} s, model {model.name}, {args.bandwidth:g} kbps")
    print(f"{'coding':<14} {'kbps':>7} {'SNR dB':>7} {'encode x RT':>12} {'decode x RT':>12}")
    for name, row in (("without LM", raw), ("LM, acv=4", exact)):
        print(
            f"{name:<14} {row['kbps']:>7.2f} {row['snr_db']:>7.2f} "
            f"{row['encode_realtime']:>12.1f} {row['decode_realtime']:>12.1f}"
        )
    print(f"the LM saves {report['lm_saving_percent']:.1f} % of the bytes")
    print(
        f"one corrupted byte (offset {damage['byte_offset']}): {damage['chunks_lost']} chunk(s), "
        f"{damage['seconds_lost']:.2f} s concealed; length exact: {damage['length_exact']}; "
        f"other chunks exact: {damage['other_chunks_exact']}"
    )
    return 0
