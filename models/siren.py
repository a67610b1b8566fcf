"""SIREN: a coordinate MLP with sine activations (Sitzmann et al., NeurIPS 2020).

Each hidden layer computes ``sin(w0 * (W x + b))``. The initialisation is the authors': the first
layer draws W from U(-1/fan_in, 1/fan_in), every later layer from
U(-sqrt(6/fan_in)/w0, sqrt(6/fan_in)/w0), so pre-activations stay well distributed at any depth.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models._layers import check_ints


class SineLayer(nn.Module):
    """``sin(w0 * (W x + b))`` with the SIREN initialisation of W."""

    def __init__(self, in_features: int, out_features: int, w0: float, *, is_first: bool) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    """Maps coordinates in [-1, 1]^2 to ``out_features`` values.

    Args:
        in_features: coordinate dimension (2 for images).
        out_features: channels C of the output.
        hidden_features: width of every hidden layer.
        hidden_layers: number of sine layers after the first one.
        first_omega: w0 of the first layer (30 in the paper: sets the frequency range).
        hidden_omega: w0 of the hidden layers.
    """

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        hidden_features: int = 256,
        hidden_layers: int = 3,
        first_omega: float = 30.0,
        hidden_omega: float = 30.0,
    ) -> None:
        super().__init__()
        check_ints(
            in_features=in_features, out_features=out_features, hidden_features=hidden_features
        )
        check_ints(minimum=0, hidden_layers=hidden_layers)
        if not (first_omega > 0 and hidden_omega > 0):
            raise ValueError(
                f"first_omega and hidden_omega must be > 0, got {first_omega}, {hidden_omega}"
            )
        layers: list[nn.Module] = [
            SineLayer(in_features, hidden_features, first_omega, is_first=True)
        ]
        for _ in range(hidden_layers):
            layers.append(SineLayer(hidden_features, hidden_features, hidden_omega, is_first=False))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_features, out_features)
        bound = math.sqrt(6.0 / hidden_features) / hidden_omega
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., in_features] in [-1, 1] -> values [..., out_features]."""
        return self.head(self.body(coords))
