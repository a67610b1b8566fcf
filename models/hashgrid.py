"""Multiresolution hash-grid encoding with a small MLP (Mueller et al., "Instant NGP", 2022).

Pure PyTorch, for 2-D (or any low-dimensional) coordinates. Level l has a grid of resolution
``floor(base_resolution * growth**l)`` cells per axis, growing geometrically up to
``max_resolution``; its vertices index a table of ``2**log2_table_size`` trainable feature vectors,
directly when the grid fits in the table and through the spatial hash
``xor_i(v_i * prime_i) mod T`` otherwise. A point's features are the multilinear interpolation of
its cell's corner features, concatenated over levels, then decoded by a ReLU MLP. The interpolation
weights depend on the coordinates, so the output is differentiable with respect to them.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from models._layers import check_ints, relu_mlp

_PRIMES = (1, 2654435761, 805459861, 3674653429)


class HashGridEncoding(nn.Module):
    """coords [..., d] in [-1, 1] -> features [..., num_levels * features_per_level]."""

    def __init__(
        self,
        in_features: int = 2,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 15,
        base_resolution: int = 16,
        max_resolution: int = 512,
    ) -> None:
        super().__init__()
        check_ints(
            in_features=in_features,
            num_levels=num_levels,
            features_per_level=features_per_level,
            log2_table_size=log2_table_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
        )
        if in_features > len(_PRIMES):
            raise ValueError(f"in_features must be <= {len(_PRIMES)}, got {in_features}")
        if max_resolution < base_resolution:
            raise ValueError(
                f"max_resolution ({max_resolution}) must be >= base_resolution ({base_resolution})"
            )
        if log2_table_size > 30:
            raise ValueError(f"log2_table_size must be <= 30, got {log2_table_size}")
        self.in_features = in_features
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.table_size = 2**log2_table_size
        growth = (
            math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))
            if num_levels > 1
            else 1.0
        )
        # floor as in Instant NGP; the epsilon keeps exact powers (2 * 2.0**1 = 3.9999...) whole.
        resolutions = [
            int(math.floor(base_resolution * growth**level + 1e-6)) for level in range(num_levels)
        ]
        # A level indexes its table directly when all its (res + 1)^d vertices fit.
        dense = [(res + 1) ** in_features <= self.table_size for res in resolutions]
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32))
        self.register_buffer("is_dense", torch.tensor(dense))
        self.register_buffer(
            "level_offsets", torch.arange(num_levels, dtype=torch.int64) * self.table_size
        )
        self.register_buffer("primes", torch.tensor(_PRIMES[:in_features], dtype=torch.int64))
        # Corner offsets of a cell: [2^d, d], entries 0 or 1.
        corners = list(itertools.product((0, 1), repeat=in_features))
        self.register_buffer("corner_offsets", torch.tensor(corners, dtype=torch.int64))
        self.tables = nn.Parameter(
            torch.empty(num_levels * self.table_size, features_per_level).uniform_(-1e-4, 1e-4)
        )

    @property
    def out_features(self) -> int:
        return self.num_levels * self.features_per_level

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        lead_shape = coords.shape[:-1]
        unit = (coords.reshape(-1, self.in_features) + 1.0) * 0.5  # [M, d] in [0, 1]
        resolutions = self.resolutions.to(coords.dtype)  # [L]
        scaled = unit[:, None, :] * resolutions[None, :, None]  # [M, L, d]
        scaled = torch.minimum(scaled.clamp_min(0.0), resolutions[None, :, None])
        cell = torch.minimum(scaled.detach().floor(), resolutions[None, :, None] - 1)  # [M, L, d]
        frac = scaled - cell  # [M, L, d], carries the gradient to the coordinates
        cell = cell.long()
        vertices = cell[:, :, None, :] + self.corner_offsets  # [M, L, K, d], K = 2^d corners
        # Direct index: v0 + v1 (res + 1) + ...; hashed index: xor of v_i * prime_i, mod T.
        side = self.resolutions.long() + 1  # [L]
        strides = side[:, None] ** torch.arange(self.in_features, device=coords.device)  # [L, d]
        direct = (vertices * strides[None, :, None, :]).sum(-1)  # [M, L, K]
        hashed = vertices[..., 0] * self.primes[0]
        for axis in range(1, self.in_features):
            hashed = hashed ^ (vertices[..., axis] * self.primes[axis])
        index = torch.where(self.is_dense[None, :, None], direct, hashed) & (self.table_size - 1)
        index = index + self.level_offsets[None, :, None]  # [M, L, K]
        corner_features = F.embedding(index, self.tables)  # [M, L, K, F]
        # Multilinear weights: prod over axes of frac or (1 - frac) by corner bit.
        bits = self.corner_offsets.to(coords.dtype)  # [K, d]
        weights = frac[:, :, None, :] * bits + (1.0 - frac[:, :, None, :]) * (1.0 - bits)
        weights = weights.prod(-1)  # [M, L, K]
        features = (corner_features * weights[..., None]).sum(2)  # [M, L, F]
        return features.reshape(*lead_shape, self.out_features)


class HashGridMLP(nn.Module):
    """Hash-grid encoding followed by a small ReLU MLP: coords in [-1, 1]^d -> C values.

    Args:
        in_features: coordinate dimension (2 for images).
        out_features: channels C of the output.
        num_levels, features_per_level, log2_table_size, base_resolution, max_resolution:
            the encoding (see :class:`HashGridEncoding`).
        hidden_features: width of the MLP's hidden layers.
        hidden_layers: number of hidden ReLU layers.
    """

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 3,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 15,
        base_resolution: int = 16,
        max_resolution: int = 512,
        hidden_features: int = 64,
        hidden_layers: int = 2,
    ) -> None:
        super().__init__()
        check_ints(out_features=out_features, hidden_features=hidden_features)
        check_ints(minimum=0, hidden_layers=hidden_layers)
        self.encoding = HashGridEncoding(
            in_features,
            num_levels,
            features_per_level,
            log2_table_size,
            base_resolution,
            max_resolution,
        )
        self.mlp = relu_mlp(
            self.encoding.out_features, hidden_features, hidden_layers, out_features
        )
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., in_features] in [-1, 1] -> values [..., out_features]."""
        return self.mlp(self.encoding(coords))
