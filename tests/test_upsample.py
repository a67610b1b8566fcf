"""nuir.upsample (plain and consistent modes) and the PIL-equivalent resample."""

import numpy as np
import pytest
import torch
from PIL import Image

import nuir
from nuir.bench._common import PIL_RESAMPLING
from nuir.upsample import PIL_FILTERS, resample, solve_consistent

PIL_CODES = PIL_RESAMPLING  # name -> PIL filter


def smooth_image(batch=1, channels=3, height=12, width=16, seed=0, dtype=torch.float32):
    """Random but smooth-ish test image [B, C, h, w] in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, height // 2, width // 2, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return image.to(dtype)


@pytest.mark.parametrize("filter", PIL_FILTERS)
@pytest.mark.parametrize("size", [(8, 5), (3, 4), (24, 40), (36, 50), (12, 7)])
def test_resample_matches_pil(filter, size):
    rng = np.random.default_rng(1)
    plane = rng.random((12, 20)).astype(np.float32)
    expected = np.asarray(
        Image.fromarray(plane, mode="F").resize((size[1], size[0]), PIL_CODES[filter])
    )
    got = resample(torch.from_numpy(plane)[None], size, filter)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_resample_box_is_block_mean_and_batched():
    image = torch.rand(2, 3, 8, 12)
    expected = torch.nn.functional.avg_pool2d(image, 4)
    torch.testing.assert_close(resample(image, (2, 3), "box"), expected)


def test_plain_mode_is_a_partition_of_unity_and_keeps_shapes():
    constant = torch.full((3, 5, 7), 0.25)
    out = nuir.upsample(constant, 3)
    assert out.shape == (3, 15, 21)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    batched = nuir.upsample(smooth_image(batch=2), size=(24, 40))
    assert batched.shape == (2, 3, 24, 40)


def consistency_residual(low, high, filter="box"):
    return float((resample(high, tuple(low.shape[-2:]), filter) - low).norm() / low.norm())


@pytest.mark.parametrize("filter", ["box", "bilinear", "nearest"])
@pytest.mark.parametrize("factor", [2, 3])
def test_consistent_mode_reduces_the_consistency_residual(filter, factor):
    low = smooth_image(batch=2, channels=3)
    plain = nuir.upsample(low, factor, sigma=0.5 * factor)
    consistent = nuir.upsample(
        low, factor, sigma=0.5 * factor, mode="consistent", downsample=filter, iterations=20
    )
    before, after = (
        consistency_residual(low, plain, filter),
        consistency_residual(low, consistent, filter),
    )
    assert before > 1e-2
    assert after < 1e-3 * max(1.0, before * 100)
    assert after < before / 20


def test_consistent_mode_solves_every_plane_independently():
    low = smooth_image(batch=2, channels=2, seed=3)
    together = nuir.upsample(low, 2, mode="consistent", iterations=5, tolerance=0)
    for b in range(2):
        for c in range(2):
            alone = nuir.upsample(
                low[b : b + 1, c : c + 1], 2, mode="consistent", iterations=5, tolerance=0
            )
            torch.testing.assert_close(together[b : b + 1, c : c + 1], alone)


def test_consistent_mode_with_zero_iterations_is_plain():
    low = smooth_image()
    plain = nuir.upsample(low, 2, sigma=1.0)
    torch.testing.assert_close(
        nuir.upsample(low, 2, sigma=1.0, mode="consistent", iterations=0), plain
    )


def test_consistent_mode_takes_a_callable_downsampling():
    low = smooth_image(batch=1, channels=1, height=6, width=8)
    pool = lambda high: torch.nn.functional.avg_pool2d(high, 2)
    out = nuir.upsample(low, 2, mode="consistent", downsample=pool, iterations=20)
    assert float((pool(out) - low).abs().max()) < 1e-3
    # The callable is the same operator as PIL's box filter at an integer factor.
    torch.testing.assert_close(
        out, nuir.upsample(low, 2, mode="consistent", downsample="box", iterations=20)
    )


def test_consistent_mode_is_differentiable():
    low = smooth_image(batch=1, channels=1, height=4, width=4, dtype=torch.float64)
    low.requires_grad_(True)
    upsample = lambda image: nuir.upsample(
        image, 2, sigma=1.0, mode="consistent", iterations=2, tolerance=0
    )
    assert torch.autograd.gradcheck(upsample, (low,), eps=1e-6, atol=1e-5)


def test_solve_consistent_on_a_known_linear_system():
    # render = identity on a 1 x 4 "image", degrade = a symmetric positive definite matrix.
    matrix = torch.tensor(
        [[2.0, 0.5, 0, 0], [0.5, 2.0, 0.5, 0], [0, 0.5, 2.0, 0.5], [0, 0, 0.5, 2.0]],
        dtype=torch.float64,
    )
    target = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64).reshape(1, 1, 1, 4)
    degrade = lambda x: (x.reshape(4) @ matrix.T).reshape(1, 1, 1, 4)
    solution = solve_consistent(target, lambda v: v, degrade, iterations=100, tolerance=1e-12)
    expected = torch.linalg.solve(matrix, target.reshape(4)).reshape(1, 1, 1, 4)
    torch.testing.assert_close(solution, expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "fancy"}, ValueError, "mode"),
        ({"mode": "consistent", "downsample": "cubic"}, ValueError, "downsample"),
        ({"mode": "consistent", "downsample": 3}, TypeError, "downsample"),
        ({"mode": "consistent", "iterations": -1}, ValueError, "iterations"),
        ({"mode": "consistent", "iterations": 1.5}, TypeError, "iterations"),
        ({"mode": "consistent", "tolerance": -1.0}, ValueError, "tolerance"),
        ({"mode": "consistent", "tolerance": "small"}, TypeError, "tolerance"),
        (
            {"mode": "consistent", "downsample": lambda high: high},
            ValueError,
            "downsample must map",
        ),
        ({"scale_factor": 0}, ValueError, "scale_factor"),
        ({"scale_factor": "2"}, TypeError, "scale_factor"),
    ],
)
def test_upsample_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"scale_factor": 2, **kwargs}
    with pytest.raises(error, match=match):
        nuir.upsample(smooth_image(), **kwargs)


def test_upsample_and_resample_reject_bad_images():
    with pytest.raises(TypeError, match="image"):
        nuir.upsample(torch.zeros(1, 3, 4, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="image"):
        nuir.upsample(torch.zeros(4, 4), 2)
    with pytest.raises(TypeError, match="image"):
        resample(np.zeros((3, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match="filter"):
        resample(torch.zeros(3, 4, 4), (2, 2), "cubic")
    with pytest.raises(ValueError, match="size"):
        resample(torch.zeros(3, 4, 4), (0, 2))


@pytest.mark.cuda
def test_consistent_mode_on_cuda_matches_cpu():
    low = smooth_image(batch=2, channels=3)
    cpu = nuir.upsample(low, 2, mode="consistent", iterations=5, tolerance=0)
    gpu = nuir.upsample(low.cuda(), 2, mode="consistent", iterations=5, tolerance=0)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
