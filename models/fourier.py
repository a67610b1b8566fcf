"""Fourier-feature MLP (Tancik et al., NeurIPS 2020) with Gaussian random features.

The input v is encoded as ``[cos(2 pi B v), sin(2 pi B v)]`` with B ~ N(0, scale^2) drawn once and
kept as a buffer (so a checkpoint restores the same features), then a ReLU MLP maps it to values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models._layers import check_ints, relu_mlp


class GaussianFourierFeatures(nn.Module):
    """v [..., d] -> [..., 2 m]: ``[cos(2 pi B v), sin(2 pi B v)]``, B [m, d] ~ N(0, scale^2)."""

    def __init__(self, in_features: int, num_frequencies: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(num_frequencies, in_features) * scale)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        phase = 2.0 * math.pi * coords @ self.frequencies.T  # [..., m]
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class FourierFeatureMLP(nn.Module):
    """Maps coordinates in [-1, 1]^2 to ``out_features`` values.

    Args:
        in_features: coordinate dimension (2 for images).
        out_features: channels C of the output.
        num_frequencies: m, number of random frequencies (the encoding has 2 m features).
        scale: standard deviation of the frequencies, in cycles per unit of the coordinates
            (the [-1, 1] square has side 2).
        hidden_features: width of the hidden ReLU layers.
        hidden_layers: number of hidden ReLU layers.
    """

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        num_frequencies: int = 256,
        scale: float = 10.0,
        hidden_features: int = 256,
        hidden_layers: int = 3,
    ) -> None:
        super().__init__()
        check_ints(
            in_features=in_features,
            out_features=out_features,
            num_frequencies=num_frequencies,
            hidden_features=hidden_features,
            hidden_layers=hidden_layers,
        )
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.encoding = GaussianFourierFeatures(in_features, num_frequencies, scale)
        self.mlp = relu_mlp(2 * num_frequencies, hidden_features, hidden_layers, out_features)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., in_features] in [-1, 1] -> values [..., out_features]."""
        return self.mlp(self.encoding(coords))
