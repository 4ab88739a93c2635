"""The LSTM that ends the SEANet encoder and starts the decoder."""

from __future__ import annotations

import torch
from torch import nn


class SkipLSTM(nn.Module):
    """Multi-layer LSTM over time with a residual connection from its input to its output.

    Input and output [B, C, T]; the state starts at zero on every call. The parameters are those
    of `nn.LSTM(C, C, num_layers)`, stored under `lstm.*` as in the published checkpoints.
    """

    def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.lstm = nn.LSTM(dimension, dimension, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.permute(2, 0, 1)
        y, _ = self.lstm(sequence)
        if self.skip:
            y = y + sequence
        return y.permute(1, 2, 0)
