"""Helpers for the exact-LM and acv=4 tests: synthetic checkpoints, a float LM, other matmuls.

The synthetic checkpoints come from a 64-bit integer hash of each element's index, not from a
random number generator, so they are the same under every numpy and torch version and the
pinned digests of the tests stay valid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ecdc_stream.model.lm import sinusoidal_embedding


def _hash_uniform(count: int, salt: int) -> np.ndarray:
    """Return `count` values in [-1, 1) from a splitmix64-style hash of (salt, index)."""
    with np.errstate(over="ignore"):
        x = np.arange(count, dtype=np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & (2**64 - 1))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**52 - 1.0


def synthetic_lm_state(
    dim: int = 200,
    num_layers: int = 5,
    card: int = 1024,
    num_codebooks: int = 8,
    hidden_scale: int = 4,
    seed: int = 0,
    output_gain: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Return an EnCodec LM state dict with hashed uniform weights, shaped like torch's init.

    Linear weights are uniform in +-1/sqrt(fan_in), embeddings in +-sqrt(3) (unit variance),
    LayerNorm gains near 1. output_gain scales the output layers to sharpen the distributions.
    """
    state: dict[str, torch.Tensor] = {}
    salt = [seed * 1000]

    def uniform(shape: tuple[int, ...], bound: float, offset: float = 0.0) -> torch.Tensor:
        salt[0] += 1
        values = offset + bound * _hash_uniform(math.prod(shape), salt[0])
        return torch.from_numpy(values.astype(np.float32).reshape(shape))

    hidden = dim * hidden_scale
    state["transformer.norm_in.weight"] = uniform((dim,), 0.1, 1.0)
    state["transformer.norm_in.bias"] = uniform((dim,), 0.1)
    for layer in range(num_layers):
        prefix = f"transformer.layers.{layer}."
        state[prefix + "self_attn.in_proj_weight"] = uniform((3 * dim, dim), math.sqrt(6 / (4 * dim)))
        state[prefix + "self_attn.in_proj_bias"] = uniform((3 * dim,), 0.05)
        state[prefix + "self_attn.out_proj.weight"] = uniform((dim, dim), 1 / math.sqrt(dim))
        state[prefix + "self_attn.out_proj.bias"] = uniform((dim,), 0.05)
        state[prefix + "linear1.weight"] = uniform((hidden, dim), 1 / math.sqrt(dim))
        state[prefix + "linear1.bias"] = uniform((hidden,), 1 / math.sqrt(dim))
        state[prefix + "linear2.weight"] = uniform((dim, hidden), 1 / math.sqrt(hidden))
        state[prefix + "linear2.bias"] = uniform((dim,), 1 / math.sqrt(hidden))
        for norm in ("norm1", "norm2"):
            state[prefix + norm + ".weight"] = uniform((dim,), 0.1, 1.0)
            state[prefix + norm + ".bias"] = uniform((dim,), 0.1)
    for k in range(num_codebooks):
        state[f"emb.{k}.weight"] = uniform((card + 1, dim), math.sqrt(3))
    for k in range(num_codebooks):
        state[f"linears.{k}.weight"] = uniform((card, dim), output_gain / math.sqrt(dim))
        state[f"linears.{k}.bias"] = uniform((card,), output_gain / math.sqrt(dim))
    return state


def hashed_codes(num_codebooks: int, frames: int, card: int, salt: int) -> np.ndarray:
    """Return int64 codes `[K, T]` in [0, card) from the integer hash."""
    values = (_hash_uniform(num_codebooks * frames, salt) + 1.0) / 2.0
    return np.minimum((values * card).astype(np.int64), card - 1).reshape(num_codebooks, frames)


def reversed_matmul(a, b):
    """Multiply with the inner dimension reversed, which changes the summation order.

    Takes two torch tensors or two numpy arrays, like the exact LM's `integer_matmul`.
    """
    if isinstance(a, np.ndarray):
        return np.matmul(a[..., ::-1], b[..., ::-1, :])
    return torch.matmul(a.flip(-1), b.flip(-2))


def blocked_matmul(a, b, block: int = 7):
    """Multiply as a sum of products over blocks of the inner dimension, last block first.

    Takes two torch tensors or two numpy arrays, like the exact LM's `integer_matmul`.
    """
    inner = a.shape[-1]
    total = None
    for start in reversed(range(0, inner, block)):
        part = a[..., start : start + block] @ b[..., start : start + block, :]
        total = part if total is None else total + part
    return total


def float_logits(
    state: dict[str, torch.Tensor],
    codes: torch.Tensor,
    past_context: int,
    num_heads: int = 8,
    matmul=torch.matmul,
) -> torch.Tensor:
    """Compute the reference LM's float32 logits `[B, T, K, card]` for codes `[B, K, T]`.

    The same architecture as the exact LM (and the reference), with every matrix product done by
    `matmul`, so that a test can show how its summation order changes the result.
    """
    batch, num_codebooks, frames = codes.shape
    inputs = torch.zeros_like(codes)
    inputs[:, :, 1:] = codes[:, :, :-1] + 1
    x = sum(state[f"emb.{k}.weight"][inputs[:, k]] for k in range(num_codebooks))
    dim = x.shape[-1]
    x = F.layer_norm(x, (dim,), state["transformer.norm_in.weight"], state["transformer.norm_in.bias"])
    x = x + sinusoidal_embedding(torch.arange(frames).view(1, -1, 1), dim)

    layer = 0
    head_dim = dim // num_heads
    while f"transformer.layers.{layer}.linear1.weight" in state:
        prefix = f"transformer.layers.{layer}."
        keys_input = torch.cat([torch.zeros(batch, 1, dim), x], dim=1)
        weight, bias = state[prefix + "self_attn.in_proj_weight"], state[prefix + "self_attn.in_proj_bias"]
        q = (matmul(x, weight[:dim].t()) + bias[:dim]).view(batch, frames, num_heads, head_dim).transpose(1, 2)
        k = (matmul(keys_input, weight[dim : 2 * dim].t()) + bias[dim : 2 * dim]).view(batch, frames + 1, num_heads, head_dim).transpose(1, 2)
        v = (matmul(keys_input, weight[2 * dim :].t()) + bias[2 * dim :]).view(batch, frames + 1, num_heads, head_dim).transpose(1, 2)
        scores = matmul(q / math.sqrt(head_dim), k.transpose(-1, -2))
        delta = torch.arange(1, frames + 1).view(-1, 1) - torch.arange(frames + 1).view(1, -1)
        scores = scores.masked_fill(~((delta >= 0) & (delta <= past_context)), float("-inf"))
        attended = matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(batch, frames, dim)
        attended = matmul(attended, state[prefix + "self_attn.out_proj.weight"].t()) + state[prefix + "self_attn.out_proj.bias"]
        x = F.layer_norm(x + attended, (dim,), state[prefix + "norm1.weight"], state[prefix + "norm1.bias"])
        hidden = F.gelu(matmul(x, state[prefix + "linear1.weight"].t()) + state[prefix + "linear1.bias"])
        feed_forward = matmul(hidden, state[prefix + "linear2.weight"].t()) + state[prefix + "linear2.bias"]
        x = F.layer_norm(x + feed_forward, (dim,), state[prefix + "norm2.weight"], state[prefix + "norm2.bias"])
        layer += 1

    logits = [matmul(x, state[f"linears.{k}.weight"].t()) + state[f"linears.{k}.bias"] for k in range(num_codebooks)]
    return torch.stack(logits, dim=2)
