"""`ecdc-stream record OUT.ecdc`: record the microphone to an .ecdc stream, live."""

from __future__ import annotations

import argparse
import logging
import sys

from ecdc_stream.container.acv4 import DEFAULT_CHUNK_SECONDS
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.pipeline.live import record

log = logging.getLogger(__name__)


def add_live_options(parser: argparse.ArgumentParser, bandwidth: bool) -> None:
    """Add the options that `record` and `play` share.

    Their --device is the audio device, so the torch device is --torch-device.
    """
    if bandwidth:
        parser.add_argument("--model", default="24khz", help="EnCodec model: 24khz or 48khz (default: 24khz)")
        parser.add_argument("--bandwidth", type=float, default=6.0, metavar="KBPS",
                            help="target bandwidth in kbps: 1.5, 3, 6, 12 or 24 for 24khz; 3, 6, 12 or 24 for 48khz (default: 6)")
    parser.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda", "mps"),
                        help="torch device for the networks (default: cpu)")
    parser.add_argument("--weights", metavar="DIR", default=None,
                        help="folder holding the published checkpoint files (default: $ECDC_STREAM_WEIGHTS, else the torch hub cache)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no level meter or summary")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "record",
        help="record from the microphone to an .ecdc file",
        description="Record from an audio input to OUT.ecdc (acv=4), writing each chunk as it is coded. "
        "Ctrl-C stops the recording and completes the file; a recording that is killed still "
        "decodes up to its last complete chunk.",
    )
    parser.add_argument("output", metavar="OUT", help=".ecdc file to write, or - for standard output")
    parser.add_argument("--device", dest="audio_device", default=None, metavar="N",
                        help="audio input device number or name (see `ecdc-stream devices`; default: the system default)")
    parser.add_argument("--input", dest="input_file", default=None, metavar="FILE",
                        help="record an audio file, delivered in real time, instead of a device")
    add_live_options(parser, bandwidth=True)
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, metavar="S",
                        help="chunk length in seconds: what a crash or a lost packet can cost (default: 1)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: at Ctrl-C)")
    parser.add_argument("--fsync", action="store_true", help="make every chunk durable on disk before the next one (slower)")
    parser.add_argument("--title", default=None, help="title tag stored in the header")
    parser.add_argument("--artist", default=None, help="artist tag stored in the header")
    parser.add_argument("--comment", default=None, help="comment tag stored in the header")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        raise InvalidArgumentError(f"--duration must be a positive number of seconds, got {args.duration}")
    tags = {key: getattr(args, key) for key in ("title", "artist", "comment") if getattr(args, key)}
    report = record(
        args.output,
        model=args.model,
        bandwidth=args.bandwidth,
        chunk_seconds=args.chunk_seconds,
        device=args.audio_device,
        duration_seconds=args.duration,
        input_path=args.input_file,
        fsync=args.fsync,
        tags=tags,
        meter=not args.quiet and sys.stderr.isatty(),
        weights_dir=args.weights,
        torch_device=args.torch_device,
    )
    if not args.quiet:
        log.info("recorded %.2f s in %d chunks, %d bytes (%.2f kbps) to %s",
                 report.seconds, report.chunks, report.bytes, report.kbps, args.output)
    return 0
