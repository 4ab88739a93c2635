"""Streaming EnCodec: encode and decode block by block with the state carried between blocks.

The causal 24 kHz model runs incrementally. Each layer of the SEANet encoder and decoder is
wrapped in a streaming layer that keeps what the next block needs:

- a causal convolution keeps the input it has not yet consumed (its left context). At the start
  of the stream it waits for enough input to build the reflect padding that the offline model
  puts on the left. At the end it applies the reflect padding that the offline model puts on the
  right, the extra padding that completes the last strided window;
- a transposed convolution keeps the last input frame, whose output overlaps the next frame's;
- the LSTM keeps its hidden and cell state;
- a residual block keeps whatever one branch has produced ahead of the other.

Blocking independence: torch's CPU kernels need not compute an output column identically for
inputs of different lengths (the matrix products inside convolutions and the LSTM choose their
blocking by size), so a layer run on blocks of the caller's size could differ in the last bits
from the offline pass, and a code near a quantizer decision boundary could flip. To make the
result independent of the caller's blocking, every streaming layer computes its output on the
fixed grid of `grid_frames` codec frames: the outputs belonging to frames [k * grid_frames,
(k + 1) * grid_frames). Encoding a whole file at once runs the same grid
(`StreamingEncoder.encode_all`), so the caller's block size only changes when work happens,
never what is computed.

The 48 kHz model is not causal: it encodes each 1 s segment on its own, with its own scale,
and the decoder overlap-adds neighbouring segments. `SegmentDecoder` decodes segment by segment
and carries the overlap to the next call, so chunks can be decoded one at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .conv import PaddedConv1d, TrimmedConvTranspose1d, extra_padding_for_conv1d, pad1d
from .lstm import SkipLSTM
from .seanet import ResidualBlock

# Codec frames per computation of each streaming layer (see "Blocking independence").
DEFAULT_GRID_FRAMES = 10


class StreamingLayer:
    """One layer run incrementally: `step` takes the next input block, `flush` ends the stream.

    Blocks are [B, C, t]; `step` returns the output that is final (None when there is none yet),
    `flush` returns the rest, after which the layer is spent.
    """

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def flush(self) -> torch.Tensor | None:
        raise NotImplementedError


class StatelessLayer(StreamingLayer):
    """A pointwise layer (activation, identity): no state."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.module(x)

    def flush(self) -> torch.Tensor | None:
        return None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Set torch's intra-op thread count to 1 for the body, restoring it after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _FrozenConv:
    """A `NormConv1d` with its weight-normalised weight computed once instead of on every call.

    The weight comes from the kernel that the module calls, computed on one thread because its
    norm is a float reduction whose rounding depends on the thread count. The streaming layers
    call their convolutions many times per second, and recomputing the weight each time would
    cost as much as the convolution. Do not train the model meanwhile.
    """

    def __init__(self, module: nn.Module) -> None:
        conv = module.conv
        with torch.no_grad(), _one_thread():
            if hasattr(conv, "weight_v"):
                self.weight = torch._weight_norm(conv.weight_v, conv.weight_g, 0)
            else:
                self.weight = conv.weight.detach()
        self.bias = conv.bias.detach() if conv.bias is not None else None
        self.stride = conv.stride
        self.dilation = conv.dilation
        self.norm = module.norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.nn.functional.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation))


class _FrozenConvTranspose:
    """A `NormConvTranspose1d` with its weight computed once (see `_FrozenConv`)."""

    def __init__(self, module: nn.Module) -> None:
        conv = module.convtr
        with torch.no_grad(), _one_thread():
            if hasattr(conv, "weight_v"):
                self.weight = torch._weight_norm(conv.weight_v, conv.weight_g, 0)
            else:
                self.weight = conv.weight.detach()
        self.bias = conv.bias.detach() if conv.bias is not None else None
        self.stride = conv.stride
        self.norm = module.norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.nn.functional.conv_transpose1d(x, self.weight, self.bias, self.stride))


class StreamingConv(StreamingLayer):
    """A causal `PaddedConv1d` run incrementally.

    Works in the coordinates of the offline padded input: `padding_total` reflected samples,
    then the input, then `extra` reflected samples once the length is known. Output frame j
    reads padded samples [j * stride, j * stride + span).
    """

    def __init__(self, layer: PaddedConv1d, out_step: int) -> None:
        if not layer.causal:
            raise ValueError("only causal convolutions can stream; the 48 kHz model works segment by segment")
        self.layer = layer
        self.conv = _FrozenConv(layer.conv)
        self.stride = layer.stride
        dilation = layer.conv.conv.dilation[0]
        self.span = (layer.kernel_size - 1) * dilation + 1
        self.padding = layer.padding_total
        self.out_step = out_step
        self.out_channels = layer.conv.conv.out_channels

        self._raw: list[torch.Tensor] = []  # input received before the left padding could be built
        self._raw_length = 0
        self._padded: torch.Tensor | None = None  # padded samples from index `_offset` on
        self._offset = 0
        self._frames_done = 0
        self._length = 0  # input samples seen

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        self._length += x.shape[-1]
        if self._padded is None:
            self._raw.append(x)
            self._raw_length += x.shape[-1]
            # Reflect padding of p samples needs samples 0..p of the input.
            if self._raw_length <= self.padding:
                return None
            start = torch.cat(self._raw, dim=-1)
            self._raw = []
            self._padded = pad1d(start, self.padding, 0, mode=self.layer.pad_mode)
        else:
            self._padded = torch.cat([self._padded, x], dim=-1)
        return self._emit(final=False)

    def flush(self) -> torch.Tensor | None:
        if self._padded is None:
            # The whole stream was shorter than the left padding: the offline layer handles it.
            if not self._raw:
                return None
            return self.layer(torch.cat(self._raw, dim=-1))

        extra = extra_padding_for_conv1d(self._length, self.layer.kernel_size, self.stride, self.padding)
        if extra:
            # The padded buffer always keeps at least the last `stride` input samples, and
            # extra < stride, so the reflection has the samples it needs.
            self._padded = pad1d(self._padded, 0, extra, mode=self.layer.pad_mode)
        return self._emit(final=True)

    def _emit(self, final: bool) -> torch.Tensor | None:
        assert self._padded is not None
        available = self._offset + self._padded.shape[-1]
        frames_ready = max(0, (available - self.span) // self.stride + 1)
        outputs = []
        while True:
            count = min(self.out_step, frames_ready - self._frames_done)
            if count <= 0 or (count < self.out_step and not final):
                break
            first = self._frames_done * self.stride - self._offset
            length = (count - 1) * self.stride + self.span
            outputs.append(self.conv(self._padded[..., first : first + length]))
            self._frames_done += count

        # Keep the input from the next frame on, and at least `stride` samples for the
        # end-of-stream reflection.
        keep_from = min(self._frames_done * self.stride, available - self.stride) - self._offset
        if keep_from > 0:
            self._padded = self._padded[..., keep_from:]
            self._offset += keep_from
        return torch.cat(outputs, dim=-1) if outputs else None


class StreamingConvTranspose(StreamingLayer):
    """A causal `TrimmedConvTranspose1d` (all trimming on the right) run incrementally.

    Output samples [j * stride, (j + 1) * stride) depend on input frames j - context .. j, so
    each computation gets `context` earlier frames and keeps only the samples it completes. The
    offline layer trims the last kernel_size - stride samples, which this layer never emits.
    """

    def __init__(self, layer: TrimmedConvTranspose1d, out_step: int) -> None:
        if layer.padding_left != 0:
            raise ValueError("a transposed convolution can stream only with all trimming on the right")
        self.convtr = _FrozenConvTranspose(layer.convtr)
        module = layer.convtr.convtr
        self.stride = module.stride[0]
        self.kernel_size = module.kernel_size[0]
        self.context = math.ceil(self.kernel_size / self.stride) - 1
        self.out_channels = module.out_channels
        self.frames_per_step = max(1, out_step // self.stride)
        self._frames: torch.Tensor | None = None  # kept context frames + pending frames
        self._context_kept = 0

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        self._frames = _join(self._frames, x)
        return self._emit(final=False) if self._frames is not None else None

    def flush(self) -> torch.Tensor | None:
        return self._emit(final=True) if self._frames is not None else None

    def _emit(self, final: bool) -> torch.Tensor | None:
        assert self._frames is not None
        outputs = []
        while True:
            pending = self._frames.shape[-1] - self._context_kept
            count = min(self.frames_per_step, pending)
            if count <= 0 or (count < self.frames_per_step and not final):
                break
            window = self._frames[..., : self._context_kept + count]
            full = self.convtr(window)
            first = self._context_kept * self.stride
            outputs.append(full[..., first : first + count * self.stride])
            # Keep the last `context` frames of this window as the next one's context.
            used = self._context_kept + count
            keep = min(self.context, used)
            self._frames = self._frames[..., used - keep :]
            self._context_kept = keep
        return torch.cat(outputs, dim=-1) if outputs else None


class StreamingLSTM(StreamingLayer):
    """`SkipLSTM` with its hidden and cell state carried from block to block."""

    def __init__(self, layer: SkipLSTM, out_step: int) -> None:
        self.layer = layer
        self.out_step = out_step
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: torch.Tensor | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        self._pending = _join(self._pending, x)
        return self._emit(final=False) if self._pending is not None else None

    def flush(self) -> torch.Tensor | None:
        return self._emit(final=True) if self._pending is not None else None

    def _emit(self, final: bool) -> torch.Tensor | None:
        assert self._pending is not None
        outputs = []
        while True:
            count = min(self.out_step, self._pending.shape[-1])
            if count <= 0 or (count < self.out_step and not final):
                break
            block = self._pending[..., :count]
            self._pending = self._pending[..., count:]
            sequence = block.permute(2, 0, 1)
            y, self._state = self.layer.lstm(sequence, self._state)
            if self.layer.skip:
                y = y + sequence
            outputs.append(y.permute(1, 2, 0))
        return torch.cat(outputs, dim=-1) if outputs else None


class StreamingSequential(StreamingLayer):
    """Layers in order; the output of each is the next one's input."""

    def __init__(self, layers: list[StreamingLayer]) -> None:
        self.layers = layers

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        out: torch.Tensor | None = x
        for layer in self.layers:
            if out is None or out.shape[-1] == 0:
                return None
            out = layer.step(out)
        return out

    def flush(self) -> torch.Tensor | None:
        carried: torch.Tensor | None = None
        for layer in self.layers:
            stepped = layer.step(carried) if carried is not None and carried.shape[-1] else None
            carried = _join(stepped, layer.flush())
        return carried


class StreamingResidual(StreamingLayer):
    """`ResidualBlock`: both branches stream; their sum is emitted as far as both have reached."""

    def __init__(self, block: ResidualBlock, grid_frames: int, samples_per_frame: int) -> None:
        self.shortcut, _ = streaming_layer(block.shortcut, grid_frames, samples_per_frame)
        self.block, _ = streaming_layer(block.block, grid_frames, samples_per_frame)
        self._shortcut_out: torch.Tensor | None = None
        self._block_out: torch.Tensor | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        self._collect(self.shortcut.step(x), self.block.step(x))
        return self._emit()

    def flush(self) -> torch.Tensor | None:
        self._collect(self.shortcut.flush(), self.block.flush())
        return self._emit()

    def _collect(self, shortcut: torch.Tensor | None, block: torch.Tensor | None) -> None:
        self._shortcut_out = _join(self._shortcut_out, shortcut)
        self._block_out = _join(self._block_out, block)

    def _emit(self) -> torch.Tensor | None:
        if self._shortcut_out is None or self._block_out is None:
            return None
        count = min(self._shortcut_out.shape[-1], self._block_out.shape[-1])
        if count == 0:
            return None
        out = self._shortcut_out[..., :count] + self._block_out[..., :count]
        self._shortcut_out = self._shortcut_out[..., count:]
        self._block_out = self._block_out[..., count:]
        return out


def _join(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate two optional blocks along time; None or an empty block is nothing."""
    if second is None or second.shape[-1] == 0:
        return first
    if first is None or first.shape[-1] == 0:
        return second
    return torch.cat([first, second], dim=-1)


def streaming_layer(module: nn.Module, grid_frames: int, samples_per_frame: int) -> tuple[StreamingLayer, int]:
    """Wrap a SEANet module (or an `nn.Sequential` of them) for streaming.

    grid_frames: codec frames per computation (the fixed grid, see the module docstring).
    samples_per_frame: time steps of the module's input per codec frame (the hop length for the
    encoder's input, 1 for the decoder's input).
    Returns the streaming layer and the time steps per codec frame of its output.
    """
    if isinstance(module, nn.Sequential):
        layers = []
        for child in module:
            layer, samples_per_frame = streaming_layer(child, grid_frames, samples_per_frame)
            layers.append(layer)
        return StreamingSequential(layers), samples_per_frame

    if isinstance(module, PaddedConv1d):
        if samples_per_frame % module.stride:
            raise ValueError(f"stride {module.stride} does not divide {samples_per_frame} samples per frame")
        samples_per_frame //= module.stride
        return StreamingConv(module, grid_frames * samples_per_frame), samples_per_frame

    if isinstance(module, TrimmedConvTranspose1d):
        samples_per_frame *= module.convtr.convtr.stride[0]
        return StreamingConvTranspose(module, grid_frames * samples_per_frame), samples_per_frame

    if isinstance(module, SkipLSTM):
        return StreamingLSTM(module, grid_frames * samples_per_frame), samples_per_frame

    if isinstance(module, ResidualBlock):
        return StreamingResidual(module, grid_frames, samples_per_frame), samples_per_frame

    if any(True for _ in module.parameters()):
        raise TypeError(f"no streaming version of {type(module).__name__}")
    return StatelessLayer(module), samples_per_frame


def run_streaming(layer: StreamingLayer, blocks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Feed `blocks` through `layer`, flush it, and return the concatenated output [B, C, T]."""
    output: torch.Tensor | None = None
    for block in blocks:
        output = _join(output, layer.step(block))
    output = _join(output, layer.flush())
    if output is None:
        raise ValueError("the stream produced no output: it was empty")
    return output


def _as_batch(samples: torch.Tensor, channels: int) -> torch.Tensor:
    """Return `samples` [C, n] or [1, C, n] as [1, C, n] float32."""
    if samples.dim() == 2:
        samples = samples.unsqueeze(0)
    if samples.dim() != 3 or samples.shape[0] != 1 or samples.shape[1] != channels:
        raise ValueError(f"expected audio [{channels}, n] or [1, {channels}, n], got {list(samples.shape)}")
    return samples.float()


class StreamingEncoder:
    """Encode the causal (24 kHz) model's audio block by block into codes, exactly.

    `push` takes the next audio block [C, n] (any n, including 0) and returns the codes
    [K, T_new] int64 of the frames that block completed. `finish` ends the stream and returns
    the codes of the remaining frames. The last frame is completed by the reflect padding that
    the offline encoder adds. In total a stream of n samples gives ceil(n / hop_length) frames.
    The codes do not depend on how the audio is cut into blocks (see the module docstring).
    """

    def __init__(self, model: nn.Module, num_codebooks: int, grid_frames: int = DEFAULT_GRID_FRAMES) -> None:
        if model.segment_length is not None or model.normalize or not model.config.causal:
            raise ValueError(f"model {model.name} is not causal: encode it segment by segment with SegmentEncoder")
        self.model = model
        self.num_codebooks = num_codebooks
        self.grid_frames = grid_frames
        self.encoder, _ = streaming_layer(model.encoder.model, grid_frames, model.hop_length)
        self._embeddings: torch.Tensor | None = None
        self.samples_in = 0
        self.frames_out = 0
        self._finished = False

    @torch.no_grad()
    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """Encode the next block [C, n]; return the codes [K, T_new] it completed."""
        if self._finished:
            raise RuntimeError("the stream has already been finished")
        x = _as_batch(torch.as_tensor(samples), self.model.channels).to(self.model.device)
        self.samples_in += x.shape[-1]
        if x.shape[-1] == 0:
            return self._empty_codes()
        return self._quantize(self.encoder.step(x), final=False)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End the stream and return the codes [K, T_rest] of its last frames."""
        if self._finished:
            raise RuntimeError("the stream has already been finished")
        self._finished = True
        if self.samples_in == 0:
            return self._empty_codes()
        return self._quantize(self.encoder.flush(), final=True)

    def _quantize(self, embeddings: torch.Tensor | None, final: bool) -> torch.Tensor:
        # Quantize on the same fixed grid of frames as the networks, because the quantizer's
        # matrix product is also computed differently for different numbers of rows.
        self._embeddings = _join(self._embeddings, embeddings)
        if self._embeddings is None:
            return self._empty_codes()
        codes = []
        while self._embeddings.shape[-1] >= self.grid_frames or (final and self._embeddings.shape[-1] > 0):
            count = min(self.grid_frames, self._embeddings.shape[-1])
            codes.append(self.model.quantizer.encode(self._embeddings[..., :count], self.num_codebooks)[:, 0])
            self._embeddings = self._embeddings[..., count:]
        if not codes:
            return self._empty_codes()
        out = torch.cat(codes, dim=-1)
        self.frames_out += out.shape[-1]
        return out

    def _empty_codes(self) -> torch.Tensor:
        return torch.zeros((self.num_codebooks, 0), dtype=torch.int64)

    @torch.no_grad()
    def encode_all(self, samples: torch.Tensor) -> torch.Tensor:
        """Encode a whole input [C, n] at once (a fresh stream) and return its codes [K, T]."""
        return torch.cat([self.push(samples), self.finish()], dim=-1)


class StreamingDecoder:
    """Decode the causal (24 kHz) model's codes frame block by frame block, with carried state.

    `push` takes the codes [K, T] of the next frames and returns the audio [C, n] that is final,
    `finish` returns the rest. In total T frames give T * hop_length samples, the same as the
    offline decoder up to float rounding, because the networks run on the fixed frame grid. The
    caller cuts the last chunk to the length it covers.
    """

    def __init__(self, model: nn.Module, grid_frames: int = DEFAULT_GRID_FRAMES) -> None:
        if model.segment_length is not None or model.normalize or not model.config.causal:
            raise ValueError(f"model {model.name} is not causal: decode it segment by segment with SegmentDecoder")
        self.model = model
        self.decoder, _ = streaming_layer(model.decoder.model, grid_frames, 1)
        self.frames_in = 0
        self.samples_out = 0

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode the next frames' codes [K, T]; return the audio [C, n] now final."""
        codes = torch.as_tensor(codes, dtype=torch.int64, device=self.model.device)
        self.frames_in += codes.shape[-1]
        if codes.shape[-1] == 0:
            return self._empty_audio()
        embeddings = self.model.quantizer.decode(codes.unsqueeze(1))
        return self._audio(self.decoder.step(embeddings))

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End the stream and return its remaining audio [C, n]."""
        if self.frames_in == 0:
            return self._empty_audio()
        return self._audio(self.decoder.flush())

    def _audio(self, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return self._empty_audio()
        self.samples_out += out.shape[-1]
        return out[0]

    def _empty_audio(self) -> torch.Tensor:
        return torch.zeros((self.model.channels, 0))


class SegmentEncoder:
    """Encode a segmented (48 kHz) model's audio segment by segment as blocks arrive.

    Segment i covers samples [i * stride, i * stride + segment_length), cut at the end of the
    stream, exactly as `EncodecModel.encode` cuts a whole input. `push` returns the segments the
    block completed, `finish` the rest, each as (codes [K, T] int64, scale float or None, covered
    samples), where a segment covers `stride` samples except the last, which covers its length.
    """

    def __init__(self, model: nn.Module, num_codebooks: int) -> None:
        if model.segment_length is None or model.segment_stride is None:
            raise ValueError(f"model {model.name} has no segments: use StreamingEncoder")
        self.model = model
        self.num_codebooks = num_codebooks
        self.length = model.segment_length
        self.stride = model.segment_stride
        self._buffer: torch.Tensor | None = None  # samples from `_offset` on
        self._offset = 0
        self._next = 0  # first sample of the next segment to encode
        self.samples_in = 0

    @torch.no_grad()
    def push(self, samples: torch.Tensor) -> list[tuple[torch.Tensor, float | None, int]]:
        """Take the next block [C, n]; return the segments it completed."""
        x = _as_batch(torch.as_tensor(samples), self.model.channels)
        self.samples_in += x.shape[-1]
        self._buffer = _join(self._buffer, x)
        segments = []
        while self._next + self.length <= self.samples_in:
            segments.append(self._encode(self.length, self.stride))
        return segments

    @torch.no_grad()
    def finish(self) -> list[tuple[torch.Tensor, float | None, int]]:
        """End the stream; return its remaining segments (the last possibly shorter)."""
        segments = []
        while self._next < self.samples_in:
            length = min(self.length, self.samples_in - self._next)
            last = self._next + self.stride >= self.samples_in
            segments.append(self._encode(length, length if last else self.stride))
        return segments

    def _encode(self, length: int, covered: int) -> tuple[torch.Tensor, float | None, int]:
        assert self._buffer is not None
        first = self._next - self._offset
        segment = self._buffer[..., first : first + length].to(self.model.device)
        codes, scale = self.model.encode_segment(segment, self.num_codebooks)
        self._next += self.stride
        drop = min(self._next, self.samples_in) - self._offset
        if drop > 0:
            self._buffer = self._buffer[..., drop:]
            self._offset += drop
        return codes[0].cpu(), (float(scale.view(-1)[0]) if scale is not None else None), covered


class SegmentDecoder:
    """Decode a segmented (48 kHz) model segment by segment, overlap-adding across calls.

    Neighbouring segments overlap by segment_length - stride samples and are blended with the
    triangular weights of `linear_overlap_add`. `push` decodes one segment and returns the audio
    before its overlap with the next segment, because that overlap is final only once the next
    segment arrives. `finish` returns the overlap kept back. The concatenated output equals `EncodecModel.decode` of
    all the segments up to float rounding.
    """

    def __init__(self, model: nn.Module) -> None:
        if model.segment_length is None or model.segment_stride is None:
            raise ValueError(f"model {model.name} has no segments: use StreamingDecoder")
        self.model = model
        self.length = model.segment_length
        self.stride = model.segment_stride
        # The triangle spans the first segment's decoded length, as in `linear_overlap_add`
        # (shorter than segment_length only when the whole stream is).
        self.weight: torch.Tensor | None = None
        # The previous segment's weighted samples past its stride, and their weights.
        self._tail: torch.Tensor | None = None
        self._tail_weight: torch.Tensor | None = None

    @torch.no_grad()
    def push(self, codes: torch.Tensor, scale: float | None) -> torch.Tensor:
        """Decode one segment's codes [K, T]; return the audio [C, n] now final."""
        codes = torch.as_tensor(codes, dtype=torch.int64, device=self.model.device).unsqueeze(0)
        scale_tensor = torch.tensor([[scale]], dtype=torch.float32, device=self.model.device) if scale is not None else None
        decoded = self.model.decode_segment(codes, scale_tensor)[0].cpu()
        return self._blend(decoded)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Return the overlap kept back from the last segment, normalised by its weights [C, n]."""
        if self._tail is None:
            return torch.zeros(self.model.channels, 0)
        out = self._tail / self._tail_weight
        self._tail = self._tail_weight = None
        return out

    def _blend(self, decoded: torch.Tensor) -> torch.Tensor:
        length = decoded.shape[-1]
        if self.weight is None:
            position = torch.linspace(0, 1, length + 2, dtype=decoded.dtype)[1:-1]
            self.weight = 0.5 - (position - 0.5).abs()
        weight = self.weight[:length]
        weighted = weight * decoded
        weight_sum = weight.clone()
        if self._tail is not None:
            overlap = min(self._tail.shape[-1], length)
            weighted[..., :overlap] = self._tail[..., :overlap] + weighted[..., :overlap]
            weight_sum[:overlap] = self._tail_weight[:overlap] + weight_sum[:overlap]
            # A segment shorter than the overlap leaves part of the previous tail uncovered.
            if self._tail.shape[-1] > length:
                weighted = torch.cat([weighted, self._tail[..., length:]], dim=-1)
                weight_sum = torch.cat([weight_sum, self._tail_weight[length:]])

        # Samples from `stride` on overlap the next segment, if one comes.
        keep = min(self.stride, weighted.shape[-1])
        out = weighted[..., :keep] / weight_sum[:keep]
        self._tail = weighted[..., keep:]
        self._tail_weight = weight_sum[keep:]
        if self._tail.shape[-1] == 0:
            self._tail = self._tail_weight = None
        return out
