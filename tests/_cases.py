"""Random inputs of the operator for the tests, and how their results are compared."""

from __future__ import annotations

import math

import torch

from nuir._validate import prepare

SIGMA_FORMS = ["float", "default", "per_point", "per_axis", "cov", "weights"]


def _draw(form, batch, n, channels, size, seed, sigma_range, dtype):
    g = torch.Generator().manual_seed(seed)
    height, width = size
    lead = (batch, n) if batch else (n,)
    span = torch.tensor([width + 8.0, height + 8.0], dtype=dtype)
    points = torch.rand(*lead, 2, generator=g, dtype=dtype) * span - 4.0  # some outside
    values = torch.randn(*lead, channels, generator=g, dtype=dtype)
    lo, hi = sigma_range
    kwargs = {}
    if form == "float":
        kwargs["sigma"] = 1.7
    elif form == "per_point":  # log-uniform in [lo, hi]
        kwargs["sigma"] = lo * (hi / lo) ** torch.rand(*lead, generator=g, dtype=dtype)
    elif form == "per_axis":
        kwargs["sigma"] = lo * (hi / lo) ** torch.rand(*lead, 2, generator=g, dtype=dtype)
    elif form == "cov":
        a = torch.randn(*lead, 2, 2, generator=g, dtype=dtype)
        kwargs["cov"] = a @ a.transpose(-1, -2) + 0.5 * torch.eye(2, dtype=dtype)
    elif form == "weights":
        weights = torch.rand(*lead, generator=g, dtype=dtype) * 2
        weights[..., ::3] = 0.0
        kwargs["weights"] = weights
        kwargs["sigma"] = 1.3
    return points, values, kwargs


def near_cutoff(points, values, size, kwargs, cutoff, rel=1e-4) -> bool:
    """True if some pixel sits within `rel` of a point's cutoff ellipse: rounding could then put
    the pair on either side, in a kernel and in the reference alike."""
    if not math.isfinite(cutoff):
        return False
    p = prepare(points, values, size, kwargs.get("sigma"), kwargs.get("cov"), None, cutoff, 0.0)
    height, width = size
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    dx = xs.reshape(1, -1, 1) - p.points[:, None, :, 0].double()  # [B, HW, N]
    dy = ys.reshape(1, -1, 1) - p.points[:, None, :, 1].double()
    sxx, sxy, syy = (p.cov3[..., k][:, None, :].double() for k in range(3))
    m2 = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / (sxx * syy - sxy * sxy)
    return bool(((m2 - cutoff**2).abs() <= rel * cutoff**2).any())


def make_case(
    form,
    *,
    batch=2,
    n=40,
    channels=3,
    size=(17, 23),
    seed=0,
    cutoff=3.0,
    sigma_range=(0.6, 2.6),
    margin=1e-4,
    dtype=torch.float64,
):
    """Random CPU inputs (points partly outside the raster; batch=0: unbatched), the Gaussian
    given in one of SIGMA_FORMS, drawn again until no pixel lies within `margin` (relative) of a
    cutoff boundary: 1e-4 covers float32 rounding and gradcheck's steps, 1e-9 float64 rounding,
    None skips the check."""
    for attempt in range(100):
        case = _draw(form, batch, n, channels, size, 1000 * seed + attempt, sigma_range, dtype)
        if margin is None or not near_cutoff(*case[:2], size, case[2], cutoff, margin):
            return case
    raise AssertionError("could not draw a case without pixels on a cutoff boundary")


def assert_close_scaled(actual, expected, rtol):
    """Elementwise close, with an absolute tolerance of rtol times the largest expected value."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu().to(actual.dtype)
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30))


def assert_output_masks(device):
    """gmm_backward with each output_mask: the masked gradients are zeros, the others those of
    the full backward, bit for bit."""
    points, values, kwargs = make_case("cov", batch=1, n=30, size=(14, 18))
    p = prepare(points, values, (14, 18), None, kwargs["cov"], None, 3.0, 0.0)
    args = [t.to(device).contiguous() for t in (p.points, p.values, p.cov3, p.weights)]
    image, weight = torch.ops.nuir.gmm_forward(*args, 14, 18, 3.0, 0.0)
    grad_image, grad_weight = torch.randn_like(image), torch.randn_like(weight)
    full = torch.ops.nuir.gmm_backward(grad_image, grad_weight, image, weight, *args, 3.0)
    for mask in ([True, False, False, True], [False, True, True, False], [False] * 4):
        part = torch.ops.nuir.gmm_backward(grad_image, grad_weight, image, weight, *args, 3.0, mask)
        for need, g_full, g_part in zip(mask, full, part):
            assert torch.equal(g_part, g_full if need else torch.zeros_like(g_full))
