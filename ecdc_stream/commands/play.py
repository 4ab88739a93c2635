"""`ecdc-stream play IN.ecdc`: decode and play an .ecdc stream, starting after its first chunk."""

from __future__ import annotations

import argparse
import logging

from ecdc_stream.commands.record import add_live_options
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.pipeline.live import play

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "play",
        help="play an .ecdc file or stream on the speakers",
        description="Decode IN (an acv=4 .ecdc file, or - for standard input) and play it. Sound starts "
        "after the first chunk; Ctrl-C stops.",
    )
    parser.add_argument("input", metavar="IN", help=".ecdc file to play, or - for standard input")
    parser.add_argument("--device", dest="audio_device", default=None, metavar="N",
                        help="audio output device number or name (see `ecdc-stream devices`; default: the system default)")
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="start playing S seconds in")
    parser.add_argument("--latency", type=float, default=1.0, metavar="S",
                        help="maximum audio buffered ahead of the speakers, in seconds (default: 1)")
    parser.add_argument("--live", action="store_true",
                        help="the input arrives in real time (a live recording on standard input): after a stall, "
                        "drop late audio to catch up instead of falling behind")
    add_live_options(parser, bandwidth=False)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.start < 0:
        raise InvalidArgumentError(f"--start must not be negative, got {args.start}")
    if args.latency <= 0:
        raise InvalidArgumentError(f"--latency must be a positive number of seconds, got {args.latency}")
    report = play(
        args.input,
        device=args.audio_device,
        start_seconds=args.start,
        max_latency_seconds=args.latency,
        live=args.live,
        weights_dir=args.weights,
        torch_device=args.torch_device,
    )
    if not args.quiet:
        log.info("played %.2f s; %d underruns, %.2f s dropped to catch up, %d chunks concealed",
                 report.samples / report.sample_rate, report.underruns,
                 report.dropped_samples / report.sample_rate, report.gaps)
    return 0
