"""Record the microphone to an .ecdc file for a few seconds, then decode it to a WAV.

    python demos/mic_to_file.py [SECONDS] [--output FILE.ecdc] [--weights DIR]

Builds the standard encode pipeline by hand (microphone -> encoder -> entropy coder -> file)
and adds a stage of its own that prints the level of each block. Ctrl-C stops the recording
early; the file is complete either way.
"""

from __future__ import annotations

import argparse

import numpy as np

from ecdc_stream.io.devices import Microphone
from ecdc_stream.model import load_model
from ecdc_stream.pipeline.ecdc_stages import EcdcSink
from ecdc_stream.pipeline.files import decode_file
from ecdc_stream.pipeline.standard import encode_pipeline, make_coder


async def print_level(receive, send):
    """Pass audio blocks on and print a level bar for each: a custom stage."""
    async with receive, send:
        async for block in receive:
            peak = float(np.abs(block.samples).max()) if block.num_samples else 0.0
            print(f"\r{block.start / block.sample_rate:5.1f} s  {'#' * int(peak * 40):40s}", end="", flush=True)
            await send.send(block)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=5.0)
    parser.add_argument("--output", default="recording.ecdc", help=".ecdc file to write (a WAV is written beside it)")
    parser.add_argument("--weights", default=None, help="folder with the EnCodec checkpoints")
    args = parser.parse_args()

    model = load_model("encodec_24khz", weights_dir=args.weights)
    coder = make_coder(model, bandwidth=6.0, chunk_seconds=0.5, tags={"title": "mic_to_file demo"}, weights_dir=args.weights)
    microphone = Microphone(model.sample_rate, model.channels, duration_seconds=args.seconds)

    with open(args.output, "wb") as out:
        pipeline = encode_pipeline(model, microphone, EcdcSink(out, coder), coder)
        pipeline.insert_after("source", "level", print_level)
        pipeline.run_sync()

    wav_path = args.output.rsplit(".", 1)[0] + ".wav"
    report = decode_file(args.output, wav_path, model=model, weights_dir=args.weights)
    print(f"wrote {args.output} and {wav_path} ({report.samples / report.sample_rate:.1f} s)")


if __name__ == "__main__":
    main()
