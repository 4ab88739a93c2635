"""Encode and decode files and pipes through the streaming pipelines, in bounded memory.

`encode_file` and `decode_file` are what the `encode`, `decode`, `record` and `play` commands
call for acv=4 streams. Either end may be "-" for standard input or output. Neither holds the
whole audio: memory stays flat however long the input is.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import soundfile as sf
import torch

from ecdc_stream.container import acv4
from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.audio_files import AudioFileSink, file_source, writable_format
from ecdc_stream.io.stdio import StreamSink, read_stream_blocks, stream_source
from ecdc_stream.io.temporary_files import create_beside
from ecdc_stream.model.streaming import DEFAULT_GRID_FRAMES
from ecdc_stream.pipeline.core import Pipeline, Stage
from ecdc_stream.pipeline.progress import ProgressStage
from ecdc_stream.pipeline.ecdc_stages import EcdcSink, EcdcSource, open_ecdc, seek_range
from ecdc_stream.pipeline.standard import decode_pipeline, decoder_coder, encode_pipeline, make_coder, resample_stage

log = logging.getLogger(__name__)

STDIO = "-"


@dataclass
class EncodeReport:
    """Summary of an `encode_file` run: audio samples (at the model's rate), chunks and bytes written."""

    samples: int = 0
    sample_rate: int = 0
    chunks: int = 0
    bytes: int = 0
    params: acv4.StreamParams | None = None

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def kbps(self) -> float:
        """Bitrate of the chunks (header excluded), in kbps."""
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


@dataclass
class DecodeReport:
    """Summary of a `decode_file` run: samples written, sample rate, gaps concealed, samples clamped."""

    samples: int = 0
    sample_rate: int = 0
    channels: int = 0
    gaps: int = 0
    clamped: int = 0
    params: acv4.StreamParams | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _load(model: Any, weights_dir: Any, device: Any) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    from ecdc_stream.api import resolve_model_name
    from ecdc_stream.model import load_model

    return load_model(resolve_model_name(model), weights_dir=weights_dir, device=device or "cpu")


def audio_source(
    path: str | os.PathLike,
    sample_rate: int,
    channels: int,
    *,
    input_format: str | None = None,
    rate: int | None = None,
    input_channels: int | None = None,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
    stdin: BinaryIO | None = None,
) -> Stage:
    """Return a source stage reading audio from a file or, for "-", standard input.

    input_format: for "-", "wav" (default) or raw "s16le"/"f32le" with `rate` and `input_channels`.
    The audio comes out at `sample_rate` Hz and `channels` channels.
    """
    if str(path) == STDIO:
        if start_seconds or end_seconds is not None:
            raise InvalidArgumentError("--start and --end need a file input, not standard input")
        fo = stdin if stdin is not None else sys.stdin.buffer
        blocks = read_stream_blocks(fo, input_format or "wav", sample_rate, channels, rate, input_channels)
        return functools.partial(stream_source, blocks=blocks)
    if input_format not in (None, "wav"):
        raise InvalidArgumentError(
            f"--format {input_format} applies to standard input ('-'); {str(path)!r} is read by its own header"
        )
    return functools.partial(
        file_source,
        path=path,
        sample_rate=sample_rate,
        channels=channels,
        start_seconds=start_seconds,
        end_seconds=end_seconds,
    )


def encode_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: str | torch.nn.Module = "24khz",
    bandwidth: float = 6.0,
    chunk_seconds: float = acv4.DEFAULT_CHUNK_SECONDS,
    tags: dict[str, str] | None = None,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
    input_format: str | None = None,
    rate: int | None = None,
    channels: int | None = None,
    fsync: bool = False,
    weights_dir: str | os.PathLike | None = None,
    device: str | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    grid_frames: int = DEFAULT_GRID_FRAMES,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    progress: bool = False,
) -> EncodeReport:
    """Encode audio to an acv=4 .ecdc stream through the streaming encode pipeline.

    input_path: any file soundfile reads, or "-" for standard input (WAV, or raw PCM with
    `input_format` "s16le"/"f32le", `rate` in Hz and `channels`).
    output_path: the .ecdc file, or "-" for standard output. A file is written under a temporary
    name and renamed when complete, so a failed run leaves nothing that looks like a stream.
    tags: title, artist, comment... stored in the header.
    start_seconds, end_seconds: encode only this part of a file input.
    progress: show a progress bar on standard error when encoding takes more than a second.
    """
    model = _load(model, weights_dir, device)
    coder = make_coder(model, bandwidth, chunk_seconds, tags=tags, lm_state_dict=lm_state_dict, weights_dir=weights_dir)
    source = audio_source(
        input_path, model.sample_rate, model.channels,
        input_format=input_format, rate=rate, input_channels=channels,
        start_seconds=start_seconds, end_seconds=end_seconds, stdin=stdin,
    )

    with ExitStack() as stack:
        if str(output_path) == STDIO:
            fo = stdout if stdout is not None else sys.stdout.buffer
            finish = None
        else:
            fo, finish = _atomic_output(Path(output_path), stack)
        sink = EcdcSink(fo, coder, fsync=fsync)
        pipeline = encode_pipeline(model, source, sink, coder, grid_frames=grid_frames)
        if progress:
            total = expected_seconds(input_path, start_seconds, end_seconds)
            pipeline.insert_after("source", "progress", ProgressStage("encoding", total))
        pipeline.run_sync(handle_signals=False)
        if finish is not None:
            finish()

    encoder = pipeline.get("encoder").encoder
    return EncodeReport(encoder.samples_in, model.sample_rate, encoder.sequence, sink.bytes_written, coder.params)


def expected_seconds(path: str | os.PathLike, start_seconds: float, end_seconds: float | None) -> float | None:
    """Return how many seconds of audio a file input will give, or None if unknown."""
    if str(path) == STDIO:
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if end_seconds is not None:
        seconds = min(seconds, end_seconds)
    return max(0.0, seconds - start_seconds)


def _atomic_output(path: Path, stack: ExitStack) -> tuple[BinaryIO, Any]:
    """Open a temporary file beside `path`; return it and a function that moves it into place.

    Unless that function runs, the temporary file is removed when `stack` closes.
    """
    handle, temporary = create_beside(path)
    fo = os.fdopen(handle, "w+b")
    state = {"done": False}

    def cleanup() -> None:
        if not fo.closed:
            fo.close()
        if not state["done"]:
            Path(temporary).unlink(missing_ok=True)

    def finish() -> None:
        fo.close()
        os.replace(temporary, path)
        state["done"] = True

    stack.callback(cleanup)
    return fo, finish


def open_ecdc_input(path: str | os.PathLike, stack: ExitStack, stdin: BinaryIO | None = None) -> tuple[BinaryIO, acv4.StreamParams]:
    """Open an .ecdc file (or "-" for standard input) and read its acv=4 header."""
    if str(path) == STDIO:
        fo = stdin if stdin is not None else sys.stdin.buffer
        return fo, open_ecdc(fo, "standard input")
    from ecdc_stream.api import open_stream

    fo = stack.enter_context(open_stream(path))
    return fo, open_ecdc(fo, repr(str(path)))


def decode_pipeline_for(
    fo: BinaryIO,
    params: acv4.StreamParams,
    sink_factory: Any,
    *,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
    model: torch.nn.Module | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    output_rate: int | None = None,
    batch: int = 16,
    source_name: str = "input",
) -> Pipeline:
    """Build the decode pipeline of an opened acv=4 stream.

    sink_factory(sample_rate, channels) returns the sink stage. With `output_rate`, a
    "resample" stage converts to that rate before the sink.
    """
    if model is None:
        model = _load(params.model, weights_dir, device)
    if model.name != params.model:
        raise InvalidArgumentError(f"the stream was made by model {params.model!r}, not {model.name!r}")
    coder = decoder_coder(params, lm_state_dict=lm_state_dict, weights_dir=weights_dir)
    seek = seek_range(params, start_seconds, end_seconds)
    rate = output_rate or params.sample_rate
    pipeline = decode_pipeline(
        model, EcdcSource(fo, params, seek, source_name), sink_factory(rate, params.channels), coder, seek=seek, batch=batch
    )
    if rate != params.sample_rate:
        pipeline.insert_before(
            "sink", "resample", functools.partial(resample_stage, sample_rate=rate, channels=params.channels)
        )
    return pipeline


def decode_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
    output_format: str | None = None,
    rate: int | None = None,
    subtype: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | None = None,
    model: torch.nn.Module | None = None,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    progress: bool = False,
) -> DecodeReport:
    """Decode an acv=4 .ecdc stream to audio through the streaming decode pipeline.

    input_path: .ecdc file or "-" for standard input. output_path: an audio file, in the format
    its extension names (see `writable_format`), or "-" for standard output as `output_format`
    "wav" (default), "s16le" or "f32le". A failed run leaves no file at output_path, and an
    earlier file there as it was. So does an interrupted one from a file, but one from standard
    input keeps a valid file with what arrived.
    subtype: soundfile subtype such as "PCM_16" or "FLOAT" (default: see `WavWriter`).
    start_seconds, end_seconds: decode only this part; only the chunks that hold it are read
    past their frame header and decoded.
    rate: resample the output to this many Hz (default: the model's rate).
    Lost or corrupt chunks become silence of their exact duration.
    progress: show a progress bar on standard error when decoding takes more than a second.
    """
    if rate is not None and not 1000 <= rate <= 768_000:
        raise InvalidArgumentError(f"--rate must be between 1000 and 768000 Hz, got {rate}")
    if str(output_path) != STDIO:
        writable_format(output_path)
    with ExitStack() as stack:
        fo, params = open_ecdc_input(input_path, stack, stdin)
        sinks: list[Any] = []

        def sink_factory(sample_rate: int, channels: int) -> Stage:
            if str(output_path) == STDIO:
                sink: Any = StreamSink(output_format or "wav", sample_rate, channels, stdout)
            else:
                # Standard input may be a live stream (`record - | decode - OUT`) that Ctrl-C
                # normally ends, so a cancelled run keeps what arrived. From a file it leaves no OUT.
                live = str(input_path) == STDIO
                sink = AudioFileSink(output_path, sample_rate, channels, subtype, keep_on_cancel=live)
            sinks.append(sink)
            return sink

        pipeline = decode_pipeline_for(
            fo, params, sink_factory,
            start_seconds=start_seconds, end_seconds=end_seconds, model=model,
            weights_dir=weights_dir, device=device, lm_state_dict=lm_state_dict, output_rate=rate,
            source_name="standard input" if str(input_path) == STDIO else repr(str(input_path)),
        )
        if progress:
            seek = seek_range(params, start_seconds, end_seconds)
            if seek.length is not None:
                total = seek.length / params.sample_rate
            elif params.total_samples is not None:
                total = (params.total_samples - seek.first * params.chunk_samples - seek.skip) / params.sample_rate
            else:
                total = None
            pipeline.insert_before("sink", "progress", ProgressStage("decoding", total))
        pipeline.run_sync(handle_signals=False)

    writer = sinks[0].writer
    source = pipeline.get("source")
    return DecodeReport(
        samples=writer.samples_written,
        sample_rate=rate or params.sample_rate,
        channels=params.channels,
        gaps=source.gaps + pipeline.get("entropy_decoder").corrupt,
        clamped=writer.clamped,
        params=params,
    )
