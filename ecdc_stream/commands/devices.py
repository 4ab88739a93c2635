"""`ecdc-stream devices`: list the audio devices for `record --device` and `play --device`."""

from __future__ import annotations

import argparse

from ecdc_stream.io.devices import list_devices


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "devices",
        help="list audio input and output devices",
        description="List the audio devices PortAudio can open; pass the number to --device.",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    devices = list_devices()
    if not devices:
        print("no audio devices found")
        return 0
    for device in devices:
        input_mark = "<" if device.default_input else " "
        output_mark = ">" if device.default_output else " "
        marks = input_mark + output_mark
        print(
            f"{marks} {device.index:3d}  {device.name} ({device.host_api}): "
            f"{device.max_input_channels} in, {device.max_output_channels} out, {device.default_sample_rate:g} Hz"
        )
    print("< default input, > default output")
    return 0
