"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ecdc_stream.api import MODEL_ALIASES
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.pipeline.files import STDIO

if TYPE_CHECKING:
    from ecdc_stream.pipeline.core import Pipeline, Stage

# Fault layers of `send` and `simulate`: framed acv=4 chunks, or link messages.
FAULT_LAYERS = ("chunk", "wire")


def add_model_options(parser: argparse.ArgumentParser, *, bandwidth: bool = True) -> None:
    """Add --model, --bandwidth, --device and --weights."""
    parser.add_argument(
        "--model",
        default="24khz",
        help=f"EnCodec model: {', '.join(MODEL_ALIASES)} (default: 24khz)",
    )
    if bandwidth:
        parser.add_argument(
            "--bandwidth",
            type=float,
            default=6.0,
            metavar="KBPS",
            help="target bandwidth in kbps: 1.5, 3, 6, 12 or 24 for 24khz; 3, 6, 12 or 24 for 48khz (default: 6)",
        )
    add_runtime_options(parser)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Add --device, --weights and --quiet."""
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "mps"),
        help="torch device for the networks (default: cpu)",
    )
    parser.add_argument(
        "--weights",
        metavar="DIR",
        default=None,
        help="folder holding the published checkpoint files, for offline machines "
        "(default: $ECDC_STREAM_WEIGHTS, else the torch hub cache)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress bars or summaries")


def weights_dir(args: argparse.Namespace) -> str | None:
    """Return the weights folder from --weights or ECDC_STREAM_WEIGHTS, or None for the default."""
    return args.weights or os.environ.get("ECDC_STREAM_WEIGHTS") or None


def check_output_is_not_input(input_path: str, output_path: str) -> None:
    """Raise InvalidArgumentError when OUT names the same file as IN, which writing would destroy."""
    if STDIO in (input_path, output_path) or not os.path.exists(output_path):
        return
    if os.path.exists(input_path) and os.path.samefile(input_path, output_path):
        raise InvalidArgumentError(f"output {output_path!r} is the input file: choose another output name")


def check_time_range(start: float, end: float | None) -> None:
    """Raise InvalidArgumentError unless 0 <= --start < --end (seconds)."""
    if not start >= 0:
        raise InvalidArgumentError(f"--start must be 0 or more seconds, got {start}")
    if end is not None and not end > start:
        raise InvalidArgumentError(f"--end ({end} s) must be later than --start ({start} s)")


def check_fault_layer(fault_layer: str) -> None:
    """Raise InvalidArgumentError unless `fault_layer` is one of FAULT_LAYERS."""
    if fault_layer not in FAULT_LAYERS:
        raise InvalidArgumentError(f"fault layer {fault_layer!r} is not one of {', '.join(FAULT_LAYERS)}")


def append_link_stages(pipeline: Pipeline, framer: Stage, injector: Stage | None, fault_layer: str) -> None:
    """Append the link framer to `pipeline`, with the fault injector on the side that `fault_layer` names.

    "chunk" puts the injector before the framer, so faults hit framed acv=4 chunks and the
    receiver counts each damaged chunk as corrupt. "wire" puts it after, so faults hit the link
    messages themselves: headers, fragments and end messages. With no injector only the framer
    is appended. Raises InvalidArgumentError for any other layer.
    """
    check_fault_layer(fault_layer)
    if injector is not None and fault_layer == "chunk":
        pipeline.append("faults", injector)
    pipeline.append("link", framer)
    if injector is not None and fault_layer == "wire":
        pipeline.append("faults", injector)
