"""Coordinate networks: output shapes and gradients with respect to the input coordinates."""

from __future__ import annotations

import pytest
import torch

from models.fourier import FourierFeatureMLP
from models.hashgrid import HashGridEncoding, HashGridMLP
from models.siren import Siren

NETWORKS = {
    "siren": lambda channels: Siren(out_features=channels, hidden_features=32, hidden_layers=2),
    "fourier": lambda channels: FourierFeatureMLP(
        out_features=channels, num_frequencies=16, hidden_features=32, hidden_layers=2
    ),
    "hashgrid": lambda channels: HashGridMLP(
        out_features=channels,
        num_levels=4,
        log2_table_size=8,
        base_resolution=4,
        max_resolution=32,
        hidden_features=16,
    ),
}


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shape(name: str, channels: int) -> None:
    torch.manual_seed(0)
    network = NETWORKS[name](channels)
    assert network(torch.rand(17, 2) * 2 - 1).shape == (17, channels)
    assert network(torch.rand(2, 5, 2) * 2 - 1).shape == (2, 5, channels)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_gradient_wrt_coordinates_matches_finite_differences(name: str) -> None:
    torch.manual_seed(0)
    network = NETWORKS[name](3).double()
    # Away from the hash grid's cell boundaries, where it is only piecewise smooth.
    coords = (torch.rand(6, 2, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    direction = torch.randn(6, 3, dtype=torch.float64)
    (network(coords) * direction).sum().backward()
    assert coords.grad is not None and coords.grad.abs().sum() > 0
    eps = 1e-6
    for axis in range(2):
        step = torch.zeros_like(coords)
        step[:, axis] = eps
        with torch.no_grad():
            plus = (network(coords + step) * direction).sum(1)
            minus = (network(coords - step) * direction).sum(1)
        numeric = (plus - minus) / (2 * eps)  # [6]: one point moves, the others do not
        torch.testing.assert_close(coords.grad[:, axis], numeric, rtol=1e-4, atol=1e-6)


def test_siren_initialisation_follows_the_paper() -> None:
    torch.manual_seed(0)
    network = Siren(
        in_features=2, hidden_features=64, hidden_layers=2, first_omega=30.0, hidden_omega=30.0
    )
    first = network.body[0].linear.weight
    hidden = network.body[1].linear.weight
    assert first.abs().max() <= 1.0 / 2
    assert hidden.abs().max() <= (6.0 / 64) ** 0.5 / 30.0
    # Uniform on the full range: the extreme draws come close to the bound.
    assert hidden.abs().max() > 0.9 * (6.0 / 64) ** 0.5 / 30.0
    assert network.body[0].w0 == 30.0


def test_hash_grid_levels_and_interpolation() -> None:
    encoding = HashGridEncoding(
        num_levels=3, features_per_level=2, log2_table_size=6, base_resolution=2, max_resolution=8
    )
    assert encoding.resolutions.tolist() == [2.0, 4.0, 8.0]
    # (2+1)^2 = 9 and (4+1)^2 = 25 vertices fit in 64 entries; (8+1)^2 = 81 is hashed.
    assert encoding.is_dense.tolist() == [True, True, False]
    with torch.no_grad():
        encoding.tables.copy_(torch.randn_like(encoding.tables))
    # At a vertex of level 0 the feature is that vertex's table row.
    vertex = torch.tensor([[0.0, 0.0]])  # unit (0.5, 0.5) -> level-0 vertex (1, 1): index 1 + 3
    assert torch.allclose(encoding(vertex)[0, :2], encoding.tables[4])
    # Halfway between two vertices: their average.
    middle = torch.tensor([[-0.5, -1.0]])  # level 0: position (0.5, 0) between (0,0) and (1,0)
    assert torch.allclose(encoding(middle)[0, :2], 0.5 * (encoding.tables[0] + encoding.tables[1]))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Siren(hidden_features=0), "hidden_features"),
        (lambda: Siren(first_omega=-1.0), "first_omega"),
        (lambda: FourierFeatureMLP(scale=0.0), "scale"),
        (lambda: HashGridMLP(base_resolution=64, max_resolution=32), "max_resolution"),
        (lambda: HashGridMLP(log2_table_size=40), "log2_table_size"),
    ],
)
def test_bad_arguments_are_named(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
