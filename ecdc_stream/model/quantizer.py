"""Residual vector quantizer (RVQ): inference only, with the reference's buffer names.

Each codebook level quantizes what the levels before it left over, so K levels turn an embedding
[B, D, T] into codes [K, B, T]. The modules nest as `quantizer.vq.layers.N._codebook` with buffers
`inited`, `cluster_size`, `embed` and `embed_avg`, as in the published checkpoints. Only `embed`
is used at inference, and the others are kept so those checkpoints load with strict key matching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EuclideanCodebook(nn.Module):
    """One codebook: `embed` [bins, D] codewords, the nearest one (L2) is the code."""

    def __init__(self, dim: int, bins: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(bins))
        self.register_buffer("embed", torch.zeros(bins, dim))
        self.register_buffer("embed_avg", torch.zeros(bins, dim))
        self._cached_norms: tuple[tuple, torch.Tensor] | None = None

    def squared_norms(self) -> torch.Tensor:
        """Return ||e||^2 of every codeword as [1, bins], recomputed only when `embed` changes.

        The cache key is the buffer's version (bumped by in-place changes such as
        `load_state_dict`), its storage (replaced by `.to()`) and the thread count, so the
        result is what a fresh computation would give.
        """
        embed = self.embed
        key = (embed._version, embed.data_ptr(), embed.dtype, embed.device, torch.get_num_threads())
        if self._cached_norms is None or self._cached_norms[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                norms = embed.t().pow(2).sum(0, keepdim=True)
            self._cached_norms = (key, norms)
        return self._cached_norms[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the index of the nearest codeword for each row of `x` [N, D], as [N] int64.

        The squared distance is written as the reference writes it, ||x||^2 - 2 x.e + ||e||^2,
        negated and maximised, so that float rounding and ties resolve to the same index. The
        in-place steps compute the same values as the reference's expression.
        """
        distance = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.embed.t()
        distance += self.squared_norms()
        return distance.neg_().max(dim=-1).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the codewords [..., D] of `codes` [...]."""
        return F.embedding(codes, self.embed)


class VectorQuantization(nn.Module):
    """One RVQ level over embeddings laid out [B, D, T]."""

    def __init__(self, dim: int, bins: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, bins)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize `x` [B, D, T] to codes [B, T]."""
        batch, dim, frames = x.shape
        rows = x.transpose(1, 2).reshape(batch * frames, dim)
        return self._codebook.encode(rows).view(batch, frames)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the quantized embedding [B, D, T] of `codes` [B, T]."""
        return self._codebook.decode(codes).transpose(1, 2)


class ResidualVectorQuantization(nn.Module):
    """A stack of `num_quantizers` levels, each quantizing the residual of those before it."""

    def __init__(self, dim: int, bins: int, num_quantizers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, bins) for _ in range(num_quantizers))

    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """Quantize `x` [B, D, T] with the first `num_codebooks` levels into codes [K, B, T] int64."""
        batch, dim, frames = x.shape
        # The residual is kept as rows [B * T, D], the layout the codebooks compare. Subtraction
        # is elementwise, so the values equal those of a residual kept as [B, D, T].
        residual = x.transpose(1, 2).reshape(batch * frames, dim)
        all_codes = []
        for layer in self.layers[:num_codebooks]:
            codebook = layer._codebook
            codes = codebook.encode(residual)
            residual = residual - codebook.decode(codes)
            all_codes.append(codes.view(batch, frames))
        return torch.stack(all_codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum the codewords of `codes` [K, B, T] over the K levels, giving [B, D, T]."""
        quantized = torch.tensor(0.0, device=codes.device)
        for level, level_codes in enumerate(codes):
            quantized = quantized + self.layers[level].decode(level_codes)
        return quantized


class ResidualVectorQuantizer(nn.Module):
    """RVQ with `n_q` codebooks of `bins` codewords of `dimension` values each."""

    def __init__(self, dimension: int, n_q: int, bins: int) -> None:
        super().__init__()
        self.dimension = dimension
        self.n_q = n_q
        self.bins = bins
        self.vq = ResidualVectorQuantization(dimension, bins, n_q)

    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """Quantize embeddings [B, D, T] into codes [K, B, T] with K = `num_codebooks`."""
        if not 1 <= num_codebooks <= self.n_q:
            raise ValueError(f"num_codebooks must be in [1, {self.n_q}], got {num_codebooks}")
        return self.vq.encode(x, num_codebooks)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the embeddings [B, D, T] that codes [K, B, T] stand for."""
        if codes.shape[0] > self.n_q:
            raise ValueError(f"codes hold {codes.shape[0]} codebooks, the quantizer has {self.n_q}")
        return self.vq.decode(codes)
