"""`ecdc-stream decode IN.ecdc OUT.wav`: decompress to an audio file."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import soxr

from ecdc_stream import api
from ecdc_stream.commands.common import add_runtime_options
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import WavWriter

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "decode",
        help="decompress an .ecdc file to audio",
        description="Decompress IN.ecdc to OUT (WAV, FLAC or OGG by its extension).",
    )
    parser.add_argument("input", metavar="IN", help=".ecdc file to decompress")
    parser.add_argument("output", metavar="OUT", help="audio file to write")
    parser.add_argument(
        "--rate", type=int, default=None, metavar="HZ", help="resample the output to HZ (default: the model's rate)"
    )
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.rate is not None and not 1000 <= args.rate <= 768_000:
        raise InvalidArgumentError(f"--rate must be between 1000 and 768000 Hz, got {args.rate}")

    wav, sample_rate = api.decompress_from_file(args.input, device=args.device, weights_dir=args.weights)
    samples = wav.numpy()
    if args.rate is not None and args.rate != sample_rate:
        samples = np.ascontiguousarray(soxr.resample(samples.T, sample_rate, args.rate, quality="HQ").T)
        sample_rate = args.rate

    with WavWriter(args.output, sample_rate, samples.shape[0]) as writer:
        writer.write(samples)

    if not args.quiet:
        log.info(
            "wrote %s: %.2f s, %d Hz, %d channel(s)",
            args.output,
            samples.shape[1] / sample_rate,
            sample_rate,
            samples.shape[0],
        )
        if writer.clamped:
            log.info("%d samples beyond [-1, 1] were clamped", writer.clamped)
    return 0
