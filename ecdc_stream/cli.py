"""The `ecdc-stream` command.

Each subcommand lives in `ecdc_stream.commands.<name>` and provides
`register(subparsers) -> argparse.ArgumentParser`, whose parser sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

# OpenMP threads that wait for work spin by default. When other processes share the cores, the
# spinning threads take time slices from the working ones: with two busy processes on 2 cores,
# encoding 10 s of audio took 7 to 33 s instead of 1.2 to 3 s. Passive waiting avoids that and
# changes no result. libgomp reads the variable once, when torch loads, which is after this line
# for every command; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ecdc_stream.errors import EcdcError  # noqa: E402

COMMANDS = (
    "encode",
    "decode",
    "inspect",
    "verify",
    "bench",
    "record",
    "play",
    "devices",
    "send",
    "receive",
    "simulate",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ecdc-stream",
        description="Compress, stream and decode audio with the EnCodec neural codec.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"ecdc_stream.commands.{name}")
        module.register(subparsers)
    return parser


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="ecdc-stream: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "quiet", False):
        logging.getLogger().setLevel(logging.WARNING)

    # `kill` and `timeout` send SIGTERM: stop as on Ctrl-C. Then encode, simulate and decode from
    # a file leave no partial output. Commands with a live input (record, receive, decode from
    # standard input) keep a valid file with what arrived.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return int(args.func(args) or 0)
    except EcdcError as exc:
        print(f"ecdc-stream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ecdc-stream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of standard output went away (`ecdc-stream decode x.ecdc - | head`).
        return 141
