"""`ecdc-stream verify FILE.ecdc`: decode on every device and thread count, compare the codes.

Run it on a second machine to check that a stream decodes there to the same codes. The printed
hash is the SHA-256 of every decoded chunk's sequence number and codes, so the same stream gives
the same hash on every machine where decoding is exact. Each setting also encodes the decoded
codes again, which runs the encoder's path through the LM (every frame at once, where decoding
steps frame by frame), and compares the bytes with the file's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ecdc_stream.api import open_stream
from ecdc_stream.container import acv4
from ecdc_stream.container.header import read_header
from ecdc_stream.errors import UnsupportedStreamError
from ecdc_stream.model import lm_state_dict


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="check that an acv=4 file decodes to the same codes on every device and thread count",
        description="Decode FILE.ecdc on every available device (CPU, CUDA, MPS) with 1, 2 and all "
        "CPU threads, and compare SHA-256 hashes of the decoded codes. Each setting also encodes the "
        "decoded codes again and compares the bytes with the file's chunks. Exits with 1 if any differ.",
    )
    parser.add_argument("input", metavar="FILE", help="acv=4 .ecdc file to verify")
    parser.add_argument(
        "--weights", metavar="DIR", default=None, help="folder holding the published checkpoint files"
    )
    parser.set_defaults(func=run)
    return parser


@dataclass(frozen=True)
class Setting:
    """One way of decoding: a torch device and a CPU thread count."""

    device: str
    threads: int

    def __str__(self) -> str:
        return f"{self.device}, {self.threads} thread{'s' if self.threads != 1 else ''}"


def available_settings() -> list[Setting]:
    """Return the devices of this machine, each with 1, 2 and all CPU threads."""
    thread_counts = sorted({1, 2, os.cpu_count() or 1})
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return [Setting(device, threads) for device in devices for threads in thread_counts]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with `torch.set_num_threads(count)`, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def codes_hash(chunks: list[acv4.CodeChunk | acv4.CorruptChunkError]) -> tuple[str, int]:
    """Return the SHA-256 of the decoded chunks' sequence numbers and codes, and how many failed."""
    digest = hashlib.sha256()
    failed = 0
    for chunk in chunks:
        if isinstance(chunk, acv4.CorruptChunkError):
            failed += 1
            digest.update(b"corrupt")
            continue
        digest.update(chunk.sequence.to_bytes(4, "big"))
        digest.update(np.ascontiguousarray(chunk.codes, dtype="<i4").tobytes())
    return digest.hexdigest(), failed


def run(args: argparse.Namespace) -> int:
    with open_stream(args.input) as fo:
        metadata = read_header(fo, source=args.input)
        if metadata.get("acv") != 4:
            raise UnsupportedStreamError(
                f"{args.input} is not an acv=4 stream: only acv=4 streams are coded to decode identically "
                "everywhere (raw streams hold their codes as they are; the original LM format cannot be verified)"
            )
        params = acv4.StreamParams.from_metadata(metadata, source=args.input)
        items = list(acv4.iter_framed_chunks(fo, params))
    framed = [item.data for item in items if isinstance(item, acv4.FramedChunk)]
    damaged = len(items) - len(framed)

    state = lm_state_dict(params.model, args.weights)
    print(
        f"{args.input}: {len(framed)} intact chunks, {damaged} damaged regions skipped, "
        f"model {params.model}, numerics {params.numerics}"
    )

    results: dict[str, list[str]] = {}
    reencoding_mismatches = 0
    for setting in available_settings():
        with torch_threads(setting.threads):
            coder = acv4.ChunkCoder(params, state, device=setting.device)
            decoded = coder.decode_batch(framed)
            digest, failed = codes_hash(decoded)
            differing = reencoded_differences(coder, decoded, framed)
        results.setdefault(digest, []).append(str(setting))
        reencoding_mismatches += differing
        note = f", {failed} chunks failed to decode" if failed else ""
        reencoded = f", {differing} chunks encode to other bytes" if differing else ", encodes to the same bytes"
        print(f"  {str(setting):<24} {digest[:32]}{note}{reencoded}")

    # Batched decoding steps many chunks at once; decoding them one at a time must agree.
    coder = acv4.ChunkCoder(params, state, device="cpu")
    digest, _ = codes_hash([coder.decode_batch([data])[0] for data in framed])
    results.setdefault(digest, []).append("cpu, one chunk at a time")
    print(f"  {'cpu, one chunk at a time':<24} {digest[:32]}")

    if len(results) == 1 and reencoding_mismatches == 0:
        print("identical codes in every setting")
        return 0
    if len(results) > 1:
        print(f"MISMATCH: {len(results)} different results; this stream does not decode identically here")
    if reencoding_mismatches:
        print("MISMATCH: the decoded codes encode to other bytes here, so encoder and decoder disagree")
    return 1


def reencoded_differences(coder: acv4.ChunkCoder, decoded: list, framed: list[bytes]) -> int:
    """Encode every decoded chunk again; return how many give other bytes than the file's chunk."""
    differing = 0
    for chunk, data in zip(decoded, framed):
        if isinstance(chunk, acv4.CorruptChunkError):
            continue
        if coder.encode(chunk) != data:
            differing += 1
    return differing
