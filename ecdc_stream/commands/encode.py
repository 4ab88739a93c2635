"""`ecdc-stream encode IN OUT.ecdc`: compress an audio file."""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np

from ecdc_stream import api
from ecdc_stream.commands.common import add_model_options
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import read_blocks
from ecdc_stream.model import load_model, resolve_device

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "encode",
        help="compress an audio file to .ecdc",
        description="Compress IN (any format soundfile reads, any rate and channel count) to OUT.ecdc.",
    )
    parser.add_argument("input", metavar="IN", help="audio file to compress")
    parser.add_argument("output", metavar="OUT", help=".ecdc file to write")
    add_model_options(parser)
    lm = parser.add_mutually_exclusive_group()
    lm.add_argument(
        "--lm",
        dest="lm",
        action="store_true",
        default=True,
        help="entropy-code the codes with the language model as acv=4, about 25%% smaller (default)",
    )
    lm.add_argument("--no-lm", dest="lm", action="store_false", help="store the codes bit-packed, without the LM")
    lm.add_argument(
        "--legacy-lm",
        action="store_true",
        help="use the LM format of the original encodec package, which it can read but which may not decode on another machine",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=api.DEFAULT_CHUNK_SECONDS,
        metavar="S",
        help="acv=4 chunk length in seconds: the unit of loss and seeking (default: 1)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    model_name = api.resolve_model_name(args.model)
    device = resolve_device(args.device)
    if args.chunk_seconds <= 0 or not np.isfinite(args.chunk_seconds):
        raise InvalidArgumentError(f"--chunk-seconds must be a positive number of seconds, got {args.chunk_seconds}")

    model = load_model(model_name, weights_dir=args.weights, device=device)
    model.num_codebooks(args.bandwidth)
    log.debug("model %s on %s", model_name, device)

    blocks = [block.samples for block in read_blocks(args.input, model.sample_rate, model.channels)]
    wav = np.concatenate(blocks, axis=1)

    api.compress_to_file(
        model,
        wav,
        args.output,
        bandwidth=args.bandwidth,
        use_lm=args.lm or args.legacy_lm,
        legacy_lm=args.legacy_lm,
        chunk_seconds=args.chunk_seconds,
        weights_dir=args.weights,
    )

    if not args.quiet:
        seconds = wav.shape[1] / model.sample_rate
        size = os.path.getsize(args.output)
        log.info(
            "wrote %s: %.2f s of audio in %d bytes, %.2f kbps",
            args.output,
            seconds,
            size,
            size * 8 / seconds / 1000,
        )
    return 0
