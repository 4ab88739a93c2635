"""Encode an audio file chunk by chunk and play the decoded stream as it arrives.

    python demos/stream_to_speakers.py [AUDIO_FILE] [--weights DIR]

Two pipelines run side by side in one task group, joined by an in-memory queue of framed chunks
where a network link would be. The sender paces the file in real time through the encoder and
entropy coder. The receiver entropy-decodes, decodes, conceals and plays. Sound starts after
the first chunk, and Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import anyio

from ecdc_stream.io.devices import Speakers
from ecdc_stream.model import load_model
from ecdc_stream.pipeline.live import paced_file_source
from ecdc_stream.pipeline.standard import decode_pipeline, decoder_coder, encode_pipeline, make_coder

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio" / "test_24k.wav"


async def run(audio: Path, weights: str | None) -> None:
    model = load_model("encodec_24khz", weights_dir=weights)
    coder = make_coder(model, bandwidth=6.0, chunk_seconds=0.25, weights_dir=weights)
    link_send, link_receive = anyio.create_memory_object_stream(8)

    async def to_link(receive, send):
        async with receive, send, link_send:
            async for packet in receive:
                await link_send.send(packet)

    async def from_link(receive, send):
        async with receive, send, link_receive:
            async for packet in link_receive:
                await send.send(packet)

    source = functools.partial(paced_file_source, path=audio, sample_rate=model.sample_rate, channels=model.channels)
    sender = encode_pipeline(model, source, to_link, coder)
    speakers = Speakers(model.sample_rate, model.channels, live=True)
    receiver = decode_pipeline(model, from_link, speakers, decoder_coder(coder.params, weights_dir=weights), batch=1)

    async with anyio.create_task_group() as group:
        group.start_soon(sender.run)
        group.start_soon(receiver.run)
    print(f"played {speakers.buffer.samples_played / model.sample_rate:.1f} s, {speakers.buffer.underruns} underruns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--weights", default=None, help="folder with the EnCodec checkpoints")
    args = parser.parse_args()
    anyio.run(run, args.audio, args.weights)


if __name__ == "__main__":
    main()
