"""The two .ecdc stream formats of the original EnCodec package (encodec 0.1.2a3), read and written.

After the header (see `header`), whose JSON metadata is `{"m": model name, "al": audio length in
samples, "nc": number of codebooks, "lm": whether the LM codes the stream}`, each segment follows
in order:

- for models that normalise their input, the segment's scale as a big-endian float32;
- the segment's codes, frame by frame and codebook by codebook within a frame, either
  bit-packed with `bits_per_codebook` bits each (`"lm": false`), or arithmetic-coded with CDFs
  from a fresh LM run step by step over the segment (`"lm": true`);
- padding to a whole byte, so the next segment starts on a byte boundary.

Nothing records the number of segments or frames: they follow from `al`. The segments start every
`segment_stride` samples (one segment without segments), and a segment of n samples contains
ceil(n * frame_rate / sample_rate) frames. This package computes that count in integers, as
`EncodecModel.frames_for_samples`.

LM-coded streams decode only with probabilities equal bit for bit to the encoder's, which the
float LM reproduces on the same kind of CPU and torch build, not across machines. That is the
reason for the acv=4 format; this one is kept for files made by the original package.

NOTE: even on one machine the LM's attention kernel (torch 2.13 CPU) rounds differently with
different torch thread counts (1 and 3 threads agree with each other, not with 2), so an LM-coded
stream may fail to decode unless `torch.get_num_threads()` partitions like the encoder's did.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Sequence

import numpy as np
import torch

from ecdc_stream.container.header import encode_header, require_field
from ecdc_stream.entropy.bitpack import pack_values, packed_size, unpack_values
from ecdc_stream.entropy.legacy_cdf import MIN_RANGE, TOTAL_RANGE_BITS, build_stable_quantized_cdf
from ecdc_stream.entropy.legacy_coder import ArithmeticDecoder, ArithmeticEncoder
from ecdc_stream.errors import InvalidArgumentError, InvalidStreamError

if TYPE_CHECKING:
    from ecdc_stream.model.encodec import EncodecModel
    from ecdc_stream.model.lm import LMModel

logger = logging.getLogger(__name__)

_SCALE = struct.Struct("!f")

# Bytes read at once: a corrupt header cannot make the reader allocate more than this ahead of data.
_READ_BLOCK_BYTES = 1 << 20

# One decoded or encoded segment: codes [1, K, T] int64 and, for normalising models, scale [1, 1].
LegacySegment = tuple[torch.Tensor, "torch.Tensor | None"]


def segment_count(model: EncodecModel, audio_length: int) -> int:
    """Return the number of segments of a stream of `audio_length` (>= 1) samples."""
    if model.segment_stride is None:
        return 1
    return -(-audio_length // model.segment_stride)


def iter_segment_frames(model: EncodecModel, audio_length: int) -> Iterator[int]:
    """Yield the number of frames of each segment of a stream of `audio_length` samples.

    A generator, so that a huge length from a corrupt header costs nothing until it is used.
    """
    segment_length = model.segment_length if model.segment_length is not None else audio_length
    stride = model.segment_stride if model.segment_stride is not None else audio_length
    for offset in range(0, audio_length, stride):
        yield model.frames_for_samples(min(audio_length - offset, segment_length))


def segment_frame_counts(model: EncodecModel, audio_length: int) -> list[int]:
    """Return the number of frames of each segment of a stream of `audio_length` samples."""
    return list(iter_segment_frames(model, audio_length))


def write_legacy(
    fo: BinaryIO,
    model: EncodecModel,
    segments: Sequence[LegacySegment],
    audio_length: int,
    lm: LMModel | None = None,
) -> None:
    """Write an original-format .ecdc stream of `segments` (from `model.encode`) to `fo`.

    `segments` contains one `(codes [1, K, T], scale [1, 1] or None)` per segment of `audio_length`
    samples. With `lm`, the codes are arithmetic-coded with the LM's probabilities (the `"lm":
    true` format); without, they are bit-packed. The whole stream is built in memory and written
    with one call, so an error leaves nothing written.

    Raises InvalidArgumentError if the segments do not match the model and `audio_length`.
    """
    num_codebooks = _check_segments(model, segments, audio_length, lm)

    metadata = {"m": model.name, "al": audio_length, "nc": num_codebooks, "lm": lm is not None}
    stream = bytearray(encode_header(metadata))

    for codes, scale in segments:
        if scale is not None:
            stream += _SCALE.pack(float(scale.reshape(-1)[0]))

        if lm is None:
            frame_major = codes[0].transpose(0, 1).reshape(-1).cpu().numpy()
            stream += pack_values(frame_major, model.bits_per_codebook)
        else:
            stream += _encode_segment_with_lm(codes, lm)

    fo.write(bytes(stream))


def read_legacy(
    fo: BinaryIO,
    metadata: dict[str, Any],
    model: EncodecModel,
    lm: LMModel | None = None,
) -> list[LegacySegment]:
    """Read the segments of an original-format stream from `fo`, positioned just after the header.

    `metadata` is the header's JSON object, and `model` the model it names. `lm`, the model's LM,
    is needed for `"lm": true` streams. Returns one `(codes [1, K, T] int64, scale [1, 1] float32
    or None)` per segment, on the model's device.

    Raises InvalidStreamError for wrong or missing header fields, and for a payload that is
    truncated or corrupt; InvalidArgumentError if `model` or `lm` does not fit the stream.
    """
    source = str(getattr(fo, "name", "input"))
    audio_length, num_codebooks, use_lm = _check_metadata(metadata, model, lm, source)
    scale_bytes = _SCALE.size if model.normalize else 0

    # Check the declared length against the bytes present before decoding anything. Every
    # segment takes at least one byte, so the first check bounds the segment list built next.
    remaining = _remaining_bytes(fo)
    if remaining is not None:
        num_segments = segment_count(model, audio_length)
        if num_segments * (scale_bytes + 1) > remaining:
            raise InvalidStreamError(
                f"{source} is truncated: its header declares {audio_length} samples in {num_segments} segments, "
                f"but only {remaining} bytes follow the header"
            )
        frame_counts = segment_frame_counts(model, audio_length)
        if use_lm:
            _check_lm_capacity(frame_counts, num_codebooks, model.bins, scale_bytes, remaining, source)
        else:
            needed = sum(scale_bytes + packed_size(num_codebooks * frames, model.bits_per_codebook) for frames in frame_counts)
            if needed > remaining:
                raise InvalidStreamError(
                    f"{source} is truncated: its header declares {audio_length} samples, which take {needed} "
                    f"bytes of codes, but only {remaining} bytes follow the header"
                )

    device = model.device
    segments: list[LegacySegment] = []
    # Without a known size (a pipe), segments are read one by one until the data ends.
    # NOTE: such an LM-coded stream with a huge declared length and a very confident LM can run
    # the LM for many frames per byte before the data runs out.
    for index, num_frames in enumerate(iter_segment_frames(model, audio_length)):
        scale = _read_scale(fo, source, index) if model.normalize else None

        if use_lm:
            assert lm is not None
            codes = _decode_segment_with_lm(fo, lm, num_codebooks, num_frames, source)
        else:
            data = _read_exactly(fo, packed_size(num_codebooks * num_frames, model.bits_per_codebook), source, f"segment {index}")
            values = unpack_values(data, model.bits_per_codebook, num_codebooks * num_frames)
            codes = torch.from_numpy(values.reshape(num_frames, num_codebooks).T.copy())[None]

        segments.append((codes.to(device), None if scale is None else scale.to(device)))

    if remaining is not None and fo.read(1):
        logger.debug("%s has bytes after its last segment; they are ignored", source)
    return segments


def _check_segments(model: EncodecModel, segments: Sequence[LegacySegment], audio_length: int, lm: LMModel | None) -> int:
    """Validate the segments to write and return their number of codebooks K."""
    if isinstance(audio_length, bool) or not isinstance(audio_length, int) or audio_length < 1:
        raise InvalidArgumentError(f"audio length must be a positive number of samples, got {audio_length!r}")
    num_segments = segment_count(model, audio_length)
    if len(segments) != num_segments:
        raise InvalidArgumentError(
            f"{audio_length} samples make {num_segments} segment(s) for model {model.name}, got {len(segments)}"
        )
    frame_counts = segment_frame_counts(model, audio_length)

    num_codebooks = None
    for index, ((codes, scale), num_frames) in enumerate(zip(segments, frame_counts)):
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.shape[0] != 1 or codes.dtype.is_floating_point:
            raise InvalidArgumentError(f"segment {index}: codes must be an integer tensor [1, codebooks, frames]")
        if num_codebooks is None:
            num_codebooks = codes.shape[1]
        if codes.shape[1] != num_codebooks or not 1 <= num_codebooks <= model.config.n_q:
            raise InvalidArgumentError(
                f"segment {index} has {codes.shape[1]} codebooks; every segment needs the same count, 1 to {model.config.n_q}"
            )
        if codes.shape[2] != num_frames:
            raise InvalidArgumentError(
                f"segment {index} has {codes.shape[2]} frames, but a reader of {audio_length} samples expects {num_frames}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= model.bins):
            raise InvalidArgumentError(f"segment {index}: codes must lie in [0, {model.bins}) for model {model.name}")
        if model.normalize != (scale is not None):
            expected = "a scale" if model.normalize else "no scale"
            raise InvalidArgumentError(f"segment {index}: model {model.name} needs {expected} per segment")
        if scale is not None and scale.numel() != 1:
            raise InvalidArgumentError(f"segment {index}: the scale must hold one value, got shape {tuple(scale.shape)}")

    assert num_codebooks is not None
    if lm is not None:
        _check_lm(lm, model, num_codebooks)
    return num_codebooks


def _check_lm(lm: LMModel, model: EncodecModel, num_codebooks: int) -> None:
    if lm.card != model.bins or lm.n_q < num_codebooks:
        raise InvalidArgumentError(
            f"the LM predicts {lm.n_q} codebooks of {lm.card} codes; the stream needs {num_codebooks} of {model.bins}"
        )


def _check_metadata(metadata: dict[str, Any], model: EncodecModel, lm: LMModel | None, source: str) -> tuple[int, int, bool]:
    """Validate the header fields against `model` and return (audio length, codebooks, uses LM)."""
    model_name = require_field(metadata, "m", str, source)
    audio_length = require_field(metadata, "al", int, source)
    num_codebooks = require_field(metadata, "nc", int, source)
    use_lm = require_field(metadata, "lm", bool, source)

    if model_name != model.name:
        raise InvalidArgumentError(f"{source} was encoded with model {model_name!r}, but model {model.name!r} was given")
    if audio_length < 1:
        raise InvalidStreamError(f"{source} header field 'al' is {audio_length}; invalid because a stream contains at least one sample")
    if not 1 <= num_codebooks <= model.config.n_q:
        raise InvalidStreamError(
            f"{source} header field 'nc' is {num_codebooks}, but model {model.name} has 1 to {model.config.n_q} codebooks"
        )
    if use_lm:
        if lm is None:
            raise InvalidArgumentError(f"{source} is coded with the LM of {model.name}: load it with load_lm and pass it")
        _check_lm(lm, model, num_codebooks)
    return audio_length, num_codebooks, use_lm


def _check_lm_capacity(
    frame_counts: list[int], num_codebooks: int, card: int, scale_bytes: int, remaining: int, source: str
) -> None:
    """Raise InvalidStreamError if `remaining` bytes cannot hold the declared LM-coded segments.

    Each code narrows the coder's interval by a factor of at most f = 1 - min_range * (card - 1)
    / 2**24, the share of the likeliest code when every other has the minimum count. The width
    starts at 1 and ends at least at 1, with one doubling per bit read, so n codes need at least
    n * -log2(f) bits. The bound is loose (tens of thousands of codes per byte), but it rejects
    a header that declares far more audio than the file could hold.
    """
    payload = remaining - scale_bytes * len(frame_counts)
    if payload < 0:
        raise InvalidStreamError(
            f"{source} is truncated: {len(frame_counts)} segment scales need {scale_bytes * len(frame_counts)} bytes, "
            f"only {remaining} follow the header"
        )
    shrink = 1 - MIN_RANGE * (card - 1) / (1 << TOTAL_RANGE_BITS)
    # The 0.999 margin keeps float rounding of the logarithm from rejecting a stream at the bound.
    bits_per_code = -math.log2(shrink) * 0.999 if shrink < 1 else 0.0
    if bits_per_code == 0.0:
        return
    max_codes = (8 * payload) / bits_per_code
    declared = num_codebooks * sum(frame_counts)
    if declared > max_codes:
        raise InvalidStreamError(
            f"{source} declares {declared} codes, but {payload} bytes of LM-coded data contain at most {int(max_codes)}: "
            "the file is truncated or its header is corrupt"
        )


def _remaining_bytes(fo: BinaryIO) -> int | None:
    """Return the number of bytes from the position of `fo` to its end, or None if it cannot seek."""
    try:
        if not fo.seekable():
            return None
        position = fo.tell()
        end = fo.seek(0, io.SEEK_END)
        fo.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return max(0, end - position)


def _read_exactly(fo: BinaryIO, size: int, source: str, description: str) -> bytes:
    """Read `size` bytes in blocks of at most `_READ_BLOCK_BYTES`, raising InvalidStreamError if they end first."""
    blocks = []
    received = 0
    while received < size:
        block = fo.read(min(size - received, _READ_BLOCK_BYTES))
        if not block:
            raise InvalidStreamError(f"{source} is truncated: {description} needs {size} bytes, only {received} remain")
        blocks.append(block)
        received += len(block)
    return b"".join(blocks)


def _read_scale(fo: BinaryIO, source: str, index: int) -> torch.Tensor:
    """Read a segment's scale, which the encoder computes as 1e-8 + RMS and so is finite and positive."""
    (value,) = _SCALE.unpack(_read_exactly(fo, _SCALE.size, source, f"the scale of segment {index}"))
    if not math.isfinite(value) or value <= 0:
        raise InvalidStreamError(f"{source} has a scale of {value} for segment {index}; valid scales are positive: the file is corrupt")
    return torch.tensor([[value]], dtype=torch.float32)


def _frame_cdfs(probs: torch.Tensor) -> np.ndarray:
    """Return the CDFs [K, card] of one LM step's probabilities [1, card, K, 1]."""
    return build_stable_quantized_cdf(probs[0, :, :, 0].transpose(0, 1).cpu().numpy())


@torch.no_grad()
def _encode_segment_with_lm(codes: torch.Tensor, lm: LMModel) -> bytes:
    """Arithmetic-code one segment's codes [1, K, T] with a fresh LM state and coder."""
    _, num_codebooks, num_frames = codes.shape
    device = next(lm.parameters()).device
    codes = codes.to(device=device, dtype=torch.long)
    frame_major = codes[0].transpose(0, 1).tolist()

    encoder = ArithmeticEncoder(TOTAL_RANGE_BITS)
    states = None
    offset: Any = 0
    lm_input = torch.zeros(1, num_codebooks, 1, dtype=torch.long, device=device)
    for t in range(num_frames):
        probs, states, offset = lm(lm_input, states, offset)
        lm_input = 1 + codes[:, :, t : t + 1]

        cdfs = _frame_cdfs(probs)
        for k, code in enumerate(frame_major[t]):
            encoder.push(code, cdfs[k])
    return encoder.finish()


@torch.no_grad()
def _decode_segment_with_lm(fo: BinaryIO, lm: LMModel, num_codebooks: int, num_frames: int, source: str) -> torch.Tensor:
    """Decode one segment's codes [1, K, T] (on CPU), running the LM step by step as the encoder did."""
    device = next(lm.parameters()).device
    decoder = ArithmeticDecoder(fo, TOTAL_RANGE_BITS, source=source)

    # Frames are collected as they decode, so memory grows with the data actually read rather
    # than with the frame count the header declares.
    frames: list[list[int]] = []
    states = None
    offset: Any = 0
    lm_input = torch.zeros(1, num_codebooks, 1, dtype=torch.long, device=device)
    for _ in range(num_frames):
        probs, states, offset = lm(lm_input, states, offset)

        cdfs = _frame_cdfs(probs)
        frame = [decoder.pull(cdfs[k]) for k in range(num_codebooks)]
        frames.append(frame)
        lm_input = 1 + torch.tensor(frame, dtype=torch.long, device=device).view(1, num_codebooks, 1)

    codes = torch.tensor(frames, dtype=torch.long).reshape(num_frames, num_codebooks)
    return codes.transpose(0, 1).contiguous()[None]
