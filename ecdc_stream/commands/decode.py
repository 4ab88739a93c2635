"""`ecdc-stream decode IN.ecdc OUT.wav`: decompress to an audio file or standard output."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import soxr

from ecdc_stream import api
from ecdc_stream.commands.common import add_runtime_options, check_output_is_not_input, check_time_range
from ecdc_stream.container.header import read_header
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import WavWriter, writable_format
from ecdc_stream.pipeline.files import STDIO, decode_file

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "decode",
        help="decompress an .ecdc file to audio",
        description="Decompress IN.ecdc (or - for an acv=4 stream on standard input) to OUT: a sound "
        "file in the format its extension names (.wav, .flac, .ogg, .aiff, or .mp3 with libsndfile 1.1 or "
        "later), or - for standard output. A failed run, or one from a file stopped by Ctrl-C, leaves no OUT and an earlier OUT "
        "as it was. Ctrl-C on a stream from standard input keeps what arrived.",
    )
    parser.add_argument("input", metavar="IN", help=".ecdc file to decompress, or - for standard input")
    parser.add_argument("output", metavar="OUT", help="audio file to write, or - for standard output")
    parser.add_argument(
        "--rate", type=int, default=None, metavar="HZ", help="resample the output to HZ (default: the model's rate)"
    )
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="decode from S seconds into the stream")
    parser.add_argument("--end", type=float, default=None, metavar="S", help="decode up to S seconds into the stream")
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=("wav", "s16le", "f32le"),
        default=None,
        help="format of standard output: wav (default), or raw s16le/f32le PCM",
    )
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def is_acv4(path: str) -> bool:
    """Return whether the .ecdc file at `path` is an acv=4 stream (reading only its header)."""
    with api.open_stream(path) as fo:
        return "acv" in read_header(fo, source=path)


def run(args: argparse.Namespace) -> int:
    if args.rate is not None and not 1000 <= args.rate <= 768_000:
        raise InvalidArgumentError(f"--rate must be between 1000 and 768000 Hz, got {args.rate}")
    check_time_range(args.start, args.end)
    check_output_is_not_input(args.input, args.output)
    if args.output != STDIO and args.output_format not in (None, "wav"):
        raise InvalidArgumentError(f"--format {args.output_format} applies to standard output ('-') only")
    if args.output != STDIO:
        writable_format(args.output)

    # Standard input can only be read once, so it must be an acv=4 stream, which decodes as it arrives.
    if args.input == STDIO or is_acv4(args.input):
        report = decode_file(
            args.input,
            args.output,
            start_seconds=args.start,
            end_seconds=args.end,
            output_format=args.output_format,
            rate=args.rate,
            weights_dir=args.weights,
            device=args.device,
            progress=not args.quiet,
        )
        samples, sample_rate, channels, clamped = report.samples, report.sample_rate, report.channels, report.clamped
    else:
        samples, sample_rate, channels, clamped = decode_original_format(args)

    if not args.quiet and args.output != STDIO:
        log.info("wrote %s: %.2f s, %d Hz, %d channel(s)", args.output, samples / sample_rate, sample_rate, channels)
    if clamped:
        log.warning("%d samples beyond [-1, 1] were clamped", clamped)
    return 0


def decode_original_format(args: argparse.Namespace) -> tuple[int, int, int, int]:
    """Decode a stream of the original EnCodec package whole; return samples, rate, channels, clamped."""
    if args.output == STDIO:
        raise InvalidArgumentError("streams in the original EnCodec format decode to a file only, not to standard output")
    wav, sample_rate = api.decompress_from_file(args.input, device=args.device, weights_dir=args.weights)
    samples = wav.numpy()
    start = round(args.start * sample_rate)
    end = samples.shape[1] if args.end is None else min(samples.shape[1], round(args.end * sample_rate))
    if start >= samples.shape[1]:
        raise InvalidArgumentError(f"--start {args.start} s is beyond the stream's {samples.shape[1] / sample_rate:.2f} s")
    samples = samples[:, start:end]
    if args.rate is not None and args.rate != sample_rate:
        samples = np.ascontiguousarray(soxr.resample(samples.T, sample_rate, args.rate, quality="HQ").T)
        sample_rate = args.rate

    with WavWriter(args.output, sample_rate, samples.shape[0]) as writer:
        writer.write(samples)
    return samples.shape[1], sample_rate, samples.shape[0], writer.clamped
