"""Streaming EnCodec: encode and decode block by block with the state carried between blocks.

The causal 24 kHz model runs incrementally. Each layer of the SEANet encoder and decoder is
wrapped in a streaming layer that keeps what the next block needs:

- a causal convolution keeps the input it has not yet consumed (its left context). At the start
  of the stream it waits for enough input to build the reflect padding the offline model puts on
  the left, and at the end it applies the reflect padding the offline model puts on the right
  (the extra padding that completes the last strided window), so the end of a stream comes out
  as in an offline pass;
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

import math
from collections.abc import Iterable

import torch
from torch import nn

from .conv import PaddedConv1d, TrimmedConvTranspose1d, extra_padding_for_conv1d, pad1d
from .lstm import SkipLSTM
from .seanet import ResidualBlock

# Codec frames per computation of each streaming layer (see "Blocking independence").
DEFAULT_GRID_FRAMES = 3


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
        self.conv = layer.conv
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
        self.convtr = layer.convtr
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
