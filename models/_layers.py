"""Pieces the coordinate networks share: argument checks and the ReLU decoder MLP."""

from __future__ import annotations

from torch import nn


def check_ints(minimum: int = 1, **named: object) -> None:
    """Raise a ValueError naming the first argument that is not an int >= ``minimum``."""
    for name, value in named.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def relu_mlp(
    in_features: int, hidden_features: int, hidden_layers: int, out_features: int
) -> nn.Sequential:
    """features [..., in_features] -> [..., out_features]: ReLU hidden layers, then a linear one."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_features), nn.ReLU(inplace=True)]
        width = hidden_features
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
