"""The float language model of the original EnCodec package, used by its LM-coded .ecdc streams.

The model predicts, for every codebook at once, a distribution over the next frame's codes from
the codes of the frames before it. Its state-dict keys (`emb.N`, `transformer.norm_in`,
`transformer.layers.N.*`, `linears.N`) are those of the published `encodec_lm_*.th` checkpoints.

Streams written by the original package decode only if every probability here equals the one its
encoder computed, bit for bit, because the arithmetic coder quantizes them into its CDFs. So the
forward pass applies the same torch operations in the same order as the reference `LMModel` of
encodec 0.1.2a3 (`encodec/model.py`, `encodec/modules/transformer.py`). That makes it exact on the
same CPU and torch build only; the acv=4 format exists because it is not exact across machines.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

# Per-layer streaming state: the layer inputs of up to `past_context` earlier frames, [B, H, dim].
LMStates = list[torch.Tensor]


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Compute the position embedding `[cos(p / f_i), sin(p / f_i)]` with `f_i = max_period ** (i / (dim/2 - 1))`.

    `positions` is `[B, T, 1]` (int64 frame indices); the result is `[B, T, dim]` float32. The
    operations and their order are the reference's, so the values are identical to its own.
    """
    if dim % 2 != 0:
        raise ValueError(f"the position embedding needs an even dimension, got {dim}")
    half_dim = dim // 2
    frequency_index = torch.arange(half_dim, device=positions.device).view(1, 1, -1)
    phase = positions / (max_period ** (frequency_index / (half_dim - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class StreamingTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """A transformer encoder layer whose self-attention also attends to the inputs of earlier frames.

    It keeps the parameters and submodules of `torch.nn.TransformerEncoderLayer` (so checkpoint
    keys match) and replaces `forward`.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, x_past: torch.Tensor, past_context: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform `x` [B, T, dim] given the earlier layer inputs `x_past` [B, H, dim].

        Returns the layer output [B, T, dim] and the layer input that the next call needs in its
        past (the normalised input for pre-norm layers, `x` itself for post-norm ones).
        """
        if self.norm_first:
            attention_input = self.norm1(x)
            x = x + self._streaming_attention(attention_input, x_past, past_context)
            x = x + self._ff_block(self.norm2(x))
        else:
            attention_input = x
            x = self.norm1(x + self._streaming_attention(attention_input, x_past, past_context))
            x = self.norm2(x + self._ff_block(x))

        return x, attention_input

    def _streaming_attention(self, x: torch.Tensor, x_past: torch.Tensor, past_context: int) -> torch.Tensor:
        """Attend from each frame of `x` [B, T, dim] to itself and up to `past_context` frames before it."""
        _, num_frames, _ = x.shape
        _, num_past, _ = x_past.shape

        # Keys and values are one tensor object: MultiheadAttention then projects them with a single
        # packed matrix product, as the reference does, which matters for bit-equal results.
        keys = torch.cat([x_past, x], dim=1)

        query_positions = torch.arange(num_past, num_frames + num_past, device=x.device).view(-1, 1)
        key_positions = torch.arange(num_frames + num_past, device=x.device).view(1, -1)
        distance = query_positions - key_positions
        allowed = (distance >= 0) & (distance <= past_context)

        out = self.self_attn(x, keys, keys, attn_mask=~allowed, need_weights=False)[0]
        return self.dropout1(out)


class StreamingTransformerEncoder(nn.Module):
    """A stack of streaming encoder layers after an input LayerNorm and a sinusoidal position embedding.

    Args:
        dim: model width; must be divisible by `num_heads` and even.
        hidden_scale: the feed-forward width is `int(dim * hidden_scale)`.
        num_heads: attention heads per layer.
        num_layers: number of layers.
        max_period: maximum period of the position embedding, in frames.
        past_context: how many earlier frames each frame attends to.
        gelu: GELU activation if true, ReLU otherwise.
        norm_in: apply a LayerNorm to the input if true.
        dropout: dropout probability (the model is used in eval mode, where it has no effect).
        **kwargs: passed to `torch.nn.TransformerEncoderLayer` (for example `norm_first`).
    """

    def __init__(
        self,
        dim: int,
        hidden_scale: float = 4.0,
        num_heads: int = 8,
        num_layers: int = 5,
        max_period: float = 10000,
        past_context: int = 1000,
        gelu: bool = True,
        norm_in: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"LM dimension {dim} is not divisible by the number of heads {num_heads}")
        hidden_dim = int(dim * hidden_scale)

        self.max_period = max_period
        self.past_context = past_context
        activation = F.gelu if gelu else F.relu

        self.norm_in: nn.Module = nn.LayerNorm(dim) if norm_in else nn.Identity()
        self.layers = nn.ModuleList(
            StreamingTransformerEncoderLayer(
                dim, num_heads, hidden_dim, activation=activation, batch_first=True, dropout=dropout, **kwargs
            )
            for _ in range(num_layers)
        )

    def forward(
        self, x: torch.Tensor, states: LMStates | None = None, offset: Union[int, torch.Tensor] = 0
    ) -> tuple[torch.Tensor, LMStates, Union[int, torch.Tensor]]:
        """Transform `x` [B, T, dim], the frames that follow the `offset` frames summarised by `states`.

        Returns the output [B, T, dim], the new states (one [B, H, dim] per layer, H at most
        `past_context`) and the new offset `offset + T`.
        """
        batch, num_frames, dim = x.shape

        # A fresh state is one frame of zeros, which the first frame attends to like a real one.
        # The reference starts this way, and its probabilities depend on it.
        if states is None:
            states = [torch.zeros_like(x[:, :1]) for _ in range(len(self.layers))]

        positions = torch.arange(num_frames, device=x.device).view(1, -1, 1) + offset
        position_embedding = sinusoidal_embedding(positions, dim, max_period=self.max_period)

        x = self.norm_in(x)
        x = x + position_embedding

        new_states: LMStates = []
        for layer_state, layer in zip(states, self.layers):
            x, layer_input = layer(x, layer_state, self.past_context)
            extended = torch.cat([layer_state, layer_input], dim=1)
            new_states.append(extended[:, -self.past_context :, :])
        return x, new_states, offset + num_frames


class LMModel(nn.Module):
    """The reference EnCodec language model over RVQ codes, with its float numerics.

    Args:
        n_q: number of codebooks K it predicts.
        card: codebook size (the number of bins); the output has `card` probabilities.
        dim: transformer width.
        num_layers, num_heads, hidden_scale, past_context, max_period, gelu, norm_in, dropout:
            see `StreamingTransformerEncoder`. The published models use `dim=200`, `num_layers=5`,
            8 heads, `hidden_scale=4` and `past_context=int(3.5 * frame_rate)` frames.
    """

    def __init__(
        self,
        n_q: int = 32,
        card: int = 1024,
        dim: int = 200,
        num_layers: int = 5,
        num_heads: int = 8,
        hidden_scale: float = 4.0,
        past_context: int = 1000,
        max_period: float = 10000,
        gelu: bool = True,
        norm_in: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__()
        self.card = card
        self.n_q = n_q
        self.dim = dim
        self.transformer = StreamingTransformerEncoder(
            dim=dim,
            hidden_scale=hidden_scale,
            num_heads=num_heads,
            num_layers=num_layers,
            max_period=max_period,
            past_context=past_context,
            gelu=gelu,
            norm_in=norm_in,
            dropout=dropout,
            **kwargs,
        )
        # Row 0 of each embedding means "no previous code" (the first frame), and row c + 1 is code c.
        self.emb = nn.ModuleList(nn.Embedding(card + 1, dim) for _ in range(n_q))
        self.linears = nn.ModuleList(nn.Linear(dim, card) for _ in range(n_q))

    @property
    def past_context(self) -> int:
        """Number of earlier frames each frame attends to."""
        return self.transformer.past_context

    def forward(
        self,
        indices: torch.Tensor,
        states: LMStates | None = None,
        offset: Union[int, torch.Tensor] = 0,
    ) -> tuple[torch.Tensor, LMStates, Union[int, torch.Tensor]]:
        """Predict the code distributions of the frames that follow `indices`.

        Args:
            indices: [B, K, T] int64, `1 + code` of the previous frame for each predicted frame,
                0 where there is none (the first frame). K may be less than `n_q`.
            states: the states returned by the previous call, or None to start afresh.
            offset: the number of frames already fed (the offset returned by the previous call).

        Returns:
            `(probs, states, offset)`: probs [B, card, K, T] float32 (softmax over the card axis),
            the new states and the new offset.
        """
        _, num_codebooks, _ = indices.shape
        if num_codebooks > self.n_q:
            raise ValueError(f"the LM predicts {self.n_q} codebooks, got indices for {num_codebooks}")

        # The embeddings are summed left to right, the order of the reference's `sum()`.
        embedded = self.emb[0](indices[:, 0])
        for k in range(1, num_codebooks):
            embedded = embedded + self.emb[k](indices[:, k])

        out, states, offset = self.transformer(embedded, states, offset)

        # Softmax over dimension 1 of the permuted (non-contiguous) logits, exactly as the
        # reference does it, because another memory layout can change the last bits.
        logits = torch.stack([self.linears[k](out) for k in range(num_codebooks)], dim=1).permute(0, 3, 1, 2)
        return torch.softmax(logits, dim=1), states, offset
