"""Compress and decompress whole signals from Python.

`compress(model, wav)` returns the bytes of an .ecdc stream and `decompress(data)` returns the
audio and its sample rate. The `*_file` variants read and write files. Streams coded with the LM
are acv=4 (chunked, CRC-framed, decodable identically on every machine) unless `legacy_lm=True`
selects the original EnCodec package's format. Streams without the LM are the original raw
format, which the original package reads too.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ecdc_stream.container import acv4, legacy
from ecdc_stream.container.header import read_header, require_field
from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError, UnsupportedStreamError
from ecdc_stream.io.temporary_files import create_beside
from ecdc_stream.model import EncodecModel, lm_state_dict, load_lm, load_model, resolve_device
from ecdc_stream.pipeline.concealment import Concealer
from ecdc_stream.pipeline.records import AudioBlock, Gap
from ecdc_stream.pipeline.stages import ChunkDecoder

logger = logging.getLogger(__name__)

MODEL_ALIASES = {"24khz": "encodec_24khz", "48khz": "encodec_48khz"}
DEFAULT_BANDWIDTH = 6.0
DEFAULT_CHUNK_SECONDS = 1.0


def resolve_model_name(name: str) -> str:
    """Return the full model name for a command-line alias such as "24khz"."""
    return MODEL_ALIASES.get(name, name)


# Loading a checkpoint and converting the LM to integers take longer than coding a short signal,
# so repeated calls reuse what the last few calls loaded. The key includes ECDC_STREAM_WEIGHTS
# because it changes where checkpoints are found.


@functools.lru_cache(maxsize=4)
def _cached_model(name: str, weights_dir: str | None, device: str, env_weights: str | None) -> EncodecModel:
    return load_model(name, weights_dir=weights_dir, device=device)


@functools.lru_cache(maxsize=4)
def _cached_lm(name: str, weights_dir: str | None, device: str, env_weights: str | None) -> torch.nn.Module:
    return load_lm(name, weights_dir=weights_dir, device=device)


_chunk_coders: dict[str, acv4.ChunkCoder] = {}
_MAX_CHUNK_CODERS = 4


def cached_model(name: str, weights_dir: str | os.PathLike | None, device: str | torch.device) -> EncodecModel:
    """Return `load_model(name, weights_dir, device)`, reusing a model loaded by an earlier call."""
    return _cached_model(name, _key(weights_dir), str(device), os.environ.get("ECDC_STREAM_WEIGHTS"))


def cached_lm(name: str, weights_dir: str | os.PathLike | None, device: str | torch.device) -> torch.nn.Module:
    """Return `load_lm(name, weights_dir, device)`, reusing an LM loaded by an earlier call."""
    return _cached_lm(name, _key(weights_dir), str(device), os.environ.get("ECDC_STREAM_WEIGHTS"))


def cached_chunk_coder(params: acv4.StreamParams, weights_dir: str | os.PathLike | None) -> acv4.ChunkCoder:
    """Return an acv=4 `ChunkCoder` for `params`, reusing one made for the same coding parameters.

    The stream's length and tags do not affect coding, so they are left out of the key.
    """
    coding = dataclasses.replace(params, total_samples=None, tags={}, lm_fingerprint=None)
    key = json.dumps([coding.to_metadata(), _key(weights_dir), os.environ.get("ECDC_STREAM_WEIGHTS")])
    coder = _chunk_coders.get(key)
    if coder is None:
        coder = acv4.ChunkCoder(coding, lm_state_dict(params.model, weights_dir))
        if len(_chunk_coders) >= _MAX_CHUNK_CODERS:
            _chunk_coders.pop(next(iter(_chunk_coders)))
        _chunk_coders[key] = coder
    if params.lm_fingerprint is not None and params.lm_fingerprint != coder.params.lm_fingerprint:
        # A coder made for the stream's own parameters raises the error that explains the mismatch.
        return acv4.ChunkCoder(params, lm_state_dict(params.model, weights_dir))
    return coder


def _key(weights_dir: str | os.PathLike | None) -> str | None:
    return None if weights_dir is None else str(weights_dir)


def prepare_audio(model: EncodecModel, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check audio `[C, n]` for `model` and return it as float32 on the model's device.

    Raises InvalidAudioError for a wrong shape or channel count, no samples, or NaN/inf samples.
    """
    wav = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    if wav.dim() != 2:
        raise InvalidAudioError(f"audio must have shape [channels, samples], got {tuple(wav.shape)}")
    if wav.shape[0] != model.channels:
        raise InvalidAudioError(
            f"model {model.name} takes {model.channels} channel(s), the audio has {wav.shape[0]}"
        )
    if wav.shape[1] == 0:
        raise InvalidAudioError("audio is empty: it must hold at least one sample")
    if not wav.is_floating_point():
        raise InvalidAudioError(f"audio must be floating point in [-1, 1], got {wav.dtype}")
    if not bool(torch.isfinite(wav).all()):
        raise InvalidAudioError("audio contains NaN or infinite samples")
    return wav.to(device=model.device, dtype=torch.float32)


def compress_to_file(
    model: EncodecModel,
    wav: torch.Tensor | np.ndarray,
    out: str | os.PathLike | BinaryIO,
    *,
    bandwidth: float = DEFAULT_BANDWIDTH,
    use_lm: bool = True,
    legacy_lm: bool = False,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    tags: dict[str, str] | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> None:
    """Encode audio `[C, n]` at the model's rate into an .ecdc stream written to `out`.

    bandwidth: in kbps, one of the model's `target_bandwidths`.
    use_lm: entropy-code the codes with the LM (acv=4, or the original format with `legacy_lm`).
    chunk_seconds: acv=4 chunk length; ignored by the original formats.
    A path is written through a temporary file that replaces it only when complete.
    """
    if legacy_lm and not use_lm:
        raise InvalidArgumentError("legacy_lm=True selects the original LM format, which needs use_lm=True")
    wav = prepare_audio(model, wav)
    num_samples = wav.shape[-1]
    segments = model.encode(wav[None], bandwidth)

    def write(fo: BinaryIO) -> None:
        if use_lm and not legacy_lm:
            params = acv4.StreamParams.for_model(
                model, bandwidth, chunk_seconds, total_samples=num_samples, tags=tags
            )
            chunks = acv4.segments_to_chunks(params, segments, num_samples)
            coder = cached_chunk_coder(params, weights_dir)
            writer = acv4.Acv4Writer(fo, coder)
            for chunk in chunks:
                writer.write_chunk(chunk)
            writer.close()
        else:
            lm = cached_lm(model.name, weights_dir, model.device) if use_lm else None
            legacy.write_legacy(fo, model, segments, num_samples, lm=lm)

    if isinstance(out, (str, os.PathLike)):
        write_atomically(Path(out), write)
    else:
        write(out)


def compress(model: EncodecModel, wav: torch.Tensor | np.ndarray, **options: Any) -> bytes:
    """Encode audio `[C, n]` into the bytes of an .ecdc stream; options as `compress_to_file`."""
    buffer = io.BytesIO()
    compress_to_file(model, wav, buffer, **options)
    return buffer.getvalue()


def decompress_from_file(
    source: str | os.PathLike | BinaryIO,
    *,
    device: str | torch.device | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, int]:
    """Decode an .ecdc stream into audio `[C, n]` (float32, on CPU) and its sample rate in Hz.

    Reads acv=4 streams and both formats of the original EnCodec package. In an acv=4 stream a
    chunk that fails its CRC becomes silence of exactly its duration.
    """
    if isinstance(source, (str, os.PathLike)):
        with open_stream(source) as fo:
            return decompress_from_file(fo, device=device, weights_dir=weights_dir)

    name = getattr(source, "name", "input")
    if not source.seekable():
        source = io.BytesIO(source.read())
    start = source.tell()
    metadata = read_header(source, source=str(name))
    device = resolve_device(device or "cpu")

    if "acv" in metadata:
        if metadata["acv"] != 4:
            raise UnsupportedStreamError(
                f"{name} is coded as acv={metadata['acv']!r}; this version of ecdc-stream decodes acv=4 only"
            )
        source.seek(start)
        return decode_acv4_chunks(source, device=device, weights_dir=weights_dir, source_name=str(name))

    model_name = require_field(metadata, "m", str, source=str(name))
    num_samples = require_field(metadata, "al", int, source=str(name))
    use_lm = require_field(metadata, "lm", bool, source=str(name))
    model = cached_model(model_name, weights_dir, device)
    lm = cached_lm(model_name, weights_dir, device) if use_lm else None
    segments = legacy.read_legacy(source, metadata, model, lm=lm)
    wav = model.decode(segments, length=num_samples)
    return wav[0].cpu(), model.sample_rate


def decode_acv4_chunks(
    fo: BinaryIO,
    *,
    device: torch.device,
    weights_dir: str | os.PathLike | None,
    source_name: str,
) -> tuple[torch.Tensor, int]:
    """Decode an acv=4 stream, header included, into audio `[C, n]` and its sample rate.

    A lost or corrupt chunk becomes faded silence of exactly its duration. n is the header's
    total length, or, for a stream whose writer never completed its header, the audio up to
    the last intact chunk.
    """
    start = fo.tell()
    params = acv4.StreamParams.from_metadata(read_header(fo, source_name), source_name)
    acv4.check_length_fits(params, acv4.remaining_bytes(fo), source_name)
    fo.seek(start)
    coder = cached_chunk_coder(params, weights_dir)
    params, chunks = acv4.read_acv4(fo, source=source_name, coder=coder)
    model = cached_model(params.model, weights_dir, device)

    decoder = ChunkDecoder(model, params.chunk_frames)
    concealer = Concealer(model.sample_rate, model.channels)
    blocks: list[np.ndarray] = []

    def conceal(outputs: list[np.ndarray | Gap]) -> None:
        for out in outputs:
            item = out if isinstance(out, Gap) else AudioBlock(out, model.sample_rate, 0)
            blocks.extend(block.samples for block in concealer.push(item))

    for chunk in chunks:
        conceal(decoder.push(chunk))
    conceal(decoder.finish())
    blocks.extend(block.samples for block in concealer.flush())

    if concealer.gaps:
        logger.warning(
            "%s: %d chunks were lost or corrupt and are silence (%.2f s)",
            source_name,
            concealer.gaps,
            concealer.concealed_samples / model.sample_rate,
        )
    wav = np.concatenate(blocks, axis=1) if blocks else np.zeros((model.channels, 0), dtype=np.float32)
    return torch.from_numpy(wav), model.sample_rate


def decompress(data: bytes, **options: Any) -> tuple[torch.Tensor, int]:
    """Decode the bytes of an .ecdc stream into audio `[C, n]` and its sample rate in Hz."""
    return decompress_from_file(io.BytesIO(data), **options)


def open_stream(path: str | os.PathLike) -> BinaryIO:
    """Open an .ecdc file for reading, raising InvalidArgumentError if it cannot be opened."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InvalidArgumentError(f"input file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"input {str(path)!r} is a directory, not an .ecdc file") from None
    except PermissionError:
        raise InvalidArgumentError(f"input file {str(path)!r} cannot be read: permission denied") from None


def write_atomically(path: Path, write: Any) -> None:
    """Call `write(fo)` on a temporary file beside `path`, then rename it to `path`.

    On any error the temporary file is removed, so no partial file is left under `path`.
    """
    handle, temporary = create_beside(path)
    try:
        with os.fdopen(handle, "wb") as fo:
            write(fo)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
