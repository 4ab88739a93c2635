"""`ecdc-stream inspect FILE.ecdc`: show the header, duration, bitrate and coding of a stream."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ecdc_stream.api import open_stream
from ecdc_stream.container.header import read_header, require_field
from ecdc_stream.errors import EcdcError, UnsupportedStreamError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="show the header, duration, bitrate and chunks of an .ecdc file",
        description="Print the header of an .ecdc file, its duration, bitrate and how it is coded.",
    )
    parser.add_argument("input", metavar="FILE", help=".ecdc file to inspect")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)
    return parser


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Return a description of the .ecdc file at `path`: header, coding, duration, bitrate, chunks."""
    size = os.path.getsize(path) if os.path.exists(path) else None
    with open_stream(path) as fo:
        metadata = read_header(fo, source=str(path))
        if "acv" in metadata:
            info = describe_acv4(fo, metadata, str(path))
        else:
            info = describe_legacy(metadata, str(path))

    info["header"] = metadata
    info["file_bytes"] = size
    seconds = info.get("duration_seconds")
    if seconds:
        info["bitrate_kbps"] = round(size * 8 / seconds / 1000, 3)
    return info


def describe_legacy(metadata: dict[str, Any], source: str) -> dict[str, Any]:
    """Describe a stream in the original EnCodec package's format."""
    name = require_field(metadata, "m", str, source)
    num_samples = require_field(metadata, "al", int, source)
    num_codebooks = require_field(metadata, "nc", int, source)
    use_lm = require_field(metadata, "lm", bool, source)
    info: dict[str, Any] = {
        "format": "original EnCodec stream",
        "coding": "LM arithmetic coding (original float LM)" if use_lm else "bit-packed codes",
        "model": name,
        "codebooks": num_codebooks,
        "samples": num_samples,
    }
    sample_rate = model_sample_rate(name)
    if sample_rate is not None:
        info["sample_rate"] = sample_rate
        info["duration_seconds"] = num_samples / sample_rate
    return info


def describe_acv4(fo: Any, metadata: dict[str, Any], source: str) -> dict[str, Any]:
    """Describe an acv=4 stream: its parameters and how many chunks are intact."""
    from ecdc_stream.container import acv4

    if metadata.get("acv") != 4:
        raise UnsupportedStreamError(f"{source} is coded as acv={metadata.get('acv')!r}; only acv=4 is known")
    params = acv4.StreamParams.from_metadata(metadata, source=source)
    acv4.check_length_fits(params, acv4.remaining_bytes(fo), source)

    intact = 0
    damaged = 0
    samples = 0
    for item in acv4.iter_framed_chunks(fo, params):
        if isinstance(item, acv4.FramedChunk):
            intact += 1
            samples += acv4.chunk_duration(params, item.sequence)
        else:
            damaged += 1

    total = params.total_samples if params.total_samples is not None else samples
    return {
        "format": "acv=4",
        "coding": f"exact integer LM (numerics {params.numerics}), range coding, CRC-framed chunks",
        "model": params.model,
        "sample_rate": params.sample_rate,
        "channels": params.channels,
        "codebooks": params.num_codebooks,
        "bandwidth_kbps": params.bandwidth,
        "chunk_seconds": params.chunk_samples / params.sample_rate,
        "chunks": intact,
        "damaged_regions": damaged,
        "samples": total,
        "duration_seconds": total / params.sample_rate,
        "tags": dict(params.tags),
    }


def model_sample_rate(name: str) -> int | None:
    """Return the sample rate of model `name` without loading weights, or None if unknown."""
    from ecdc_stream.model import published_config

    try:
        return published_config(name).sample_rate
    except EcdcError:
        return None


def run(args: argparse.Namespace) -> int:
    info = describe(args.input)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    print(f"file:      {args.input} ({info['file_bytes']} bytes)")
    print(f"format:    {info['format']}")
    print(f"coding:    {info['coding']}")
    print(f"model:     {info['model']}")
    if "duration_seconds" in info:
        print(f"duration:  {info['duration_seconds']:.3f} s ({info['samples']} samples at {info['sample_rate']} Hz)")
    if "bitrate_kbps" in info:
        print(f"bitrate:   {info['bitrate_kbps']:.2f} kbps")
    if "chunks" in info:
        print(f"chunks:    {info['chunks']} intact, {info['damaged_regions']} damaged regions")
    for key, value in info.get("tags", {}).items():
        print(f"{key + ':':<10} {value}")
    print(f"header:    {json.dumps(info['header'])}")
    return 0
