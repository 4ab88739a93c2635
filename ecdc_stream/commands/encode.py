"""`ecdc-stream encode IN OUT.ecdc`: compress an audio file or standard input."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import numpy as np

from ecdc_stream import api
from ecdc_stream.commands.common import add_model_options, check_output_is_not_input, check_time_range
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import read_blocks
from ecdc_stream.io.stdio import read_stream_blocks
from ecdc_stream.model import load_model, resolve_device
from ecdc_stream.pipeline.files import STDIO, encode_file

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "encode",
        help="compress an audio file to .ecdc",
        description="Compress IN (any format soundfile reads, any rate and channel count, or - for "
        "standard input) to OUT.ecdc (or - for standard output).",
    )
    parser.add_argument("input", metavar="IN", help="audio file to compress, or - for standard input")
    parser.add_argument("output", metavar="OUT", help=".ecdc file to write, or - for standard output")
    add_model_options(parser)

    lm = parser.add_mutually_exclusive_group()
    lm.add_argument(
        "--lm",
        dest="lm",
        action="store_true",
        default=True,
        help="entropy-code the codes with the language model as acv=4 chunks (default)",
    )
    lm.add_argument("--no-lm", dest="lm", action="store_false", help="store the codes bit-packed, without the LM")
    lm.add_argument(
        "--legacy-lm",
        action="store_true",
        help="use the LM format of the original encodec package, which that package reads but which "
        "may not decode on another machine",
    )

    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=api.DEFAULT_CHUNK_SECONDS,
        metavar="S",
        help="acv=4 chunk length in seconds: the unit of loss and seeking (default: 1)",
    )
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="encode from S seconds into IN")
    parser.add_argument("--end", type=float, default=None, metavar="S", help="encode up to S seconds into IN")

    parser.add_argument("--title", default=None, help="title tag stored in the acv=4 header")
    parser.add_argument("--artist", default=None, help="artist tag stored in the acv=4 header")
    parser.add_argument("--comment", default=None, help="comment tag stored in the acv=4 header")

    parser.add_argument(
        "--format",
        dest="input_format",
        choices=("wav", "s16le", "f32le"),
        default=None,
        help="format of standard input: wav (default), or raw s16le/f32le PCM with --rate and --channels",
    )
    parser.add_argument("--rate", type=int, default=None, metavar="HZ", help="sample rate of raw standard input")
    parser.add_argument("--channels", type=int, default=None, metavar="C", help="channel count of raw standard input")
    parser.add_argument("--fsync", action="store_true", help="make every chunk durable on disk before the next one")

    parser.set_defaults(func=run)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Raise InvalidArgumentError for option values that no input could make valid."""
    if not math.isfinite(args.chunk_seconds) or args.chunk_seconds <= 0:
        raise InvalidArgumentError(f"--chunk-seconds must be a positive number of seconds, got {args.chunk_seconds}")
    check_time_range(args.start, args.end)
    check_output_is_not_input(args.input, args.output)
    tags = any(value is not None for value in (args.title, args.artist, args.comment))
    if tags and not (args.lm and not args.legacy_lm):
        raise InvalidArgumentError("--title, --artist and --comment are stored in acv=4 streams only: drop --no-lm/--legacy-lm")
    if args.output == STDIO and not (args.lm and not args.legacy_lm):
        raise InvalidArgumentError("only acv=4 streams can be written to standard output: drop --no-lm/--legacy-lm")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    model = load_model(api.resolve_model_name(args.model), weights_dir=args.weights, device=resolve_device(args.device))
    model.num_codebooks(args.bandwidth)

    if args.lm and not args.legacy_lm:
        tags = {key: value for key in ("title", "artist", "comment") if (value := getattr(args, key)) is not None}
        report = encode_file(
            args.input,
            args.output,
            model=model,
            bandwidth=args.bandwidth,
            chunk_seconds=args.chunk_seconds,
            tags=tags,
            start_seconds=args.start,
            end_seconds=args.end,
            input_format=args.input_format,
            rate=args.rate,
            channels=args.channels,
            fsync=args.fsync,
            weights_dir=args.weights,
            progress=not args.quiet,
        )
        seconds, size = report.seconds, report.bytes
    else:
        # The original formats code a 24 kHz signal as one segment, so the whole signal is in memory.
        wav = read_whole_input(args, model)
        api.compress_to_file(
            model,
            wav,
            args.output,
            bandwidth=args.bandwidth,
            use_lm=args.legacy_lm,
            legacy_lm=args.legacy_lm,
            weights_dir=args.weights,
        )
        seconds = wav.shape[1] / model.sample_rate
        size = os.path.getsize(args.output)

    if not args.quiet:
        where = "standard output" if args.output == STDIO else args.output
        log.info("wrote %s: %.2f s of audio in %d bytes, %.2f kbps", where, seconds, size, size * 8 / seconds / 1000)
    return 0


def read_whole_input(args: argparse.Namespace, model) -> np.ndarray:
    """Read IN (a file or standard input) whole, at the model's rate and channels, `[C, n]`."""
    if args.input == STDIO:
        blocks = read_stream_blocks(
            sys.stdin.buffer, args.input_format or "wav", model.sample_rate, model.channels, args.rate, args.channels
        )
    else:
        if args.input_format not in (None, "wav"):
            raise InvalidArgumentError(f"--format {args.input_format} applies to standard input ('-') only")
        blocks = read_blocks(args.input, model.sample_rate, model.channels, start_seconds=args.start, end_seconds=args.end)
    return np.concatenate([block.samples for block in blocks], axis=1)
