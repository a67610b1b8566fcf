"""The CUDA kernel against the reference and the CPU kernel: every gradient, gradcheck, opcheck,
determinism, half precision, large outputs, odd layouts and devices, and the CUDA benchmark.

Skipped without a GPU (conftest.py skips every test marked ``cuda``).
"""

import csv
import math

import pytest
import torch
from _cases import SIGMA_FORMS, assert_close_scaled, assert_output_masks, make_case
from _helpers import gradcheck_interpolate, opcheck_both_ops

import nuir
from nuir import reference
from nuir._validate import prepare

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = "cuda"


@pytest.fixture(scope="module")
def cuda_op(compiled):
    """The compiled operator with its CUDA kernels registered (a failed CUDA build fails here)."""
    for op in ("nuir::gmm_forward", "nuir::gmm_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), (
            f"{op} has no CUDA kernel: the CUDA sources were not built"
        )
    return compiled


def to(t, device, dtype):
    return t.to(device=device, dtype=dtype) if isinstance(t, torch.Tensor) else t


def forward_and_grads(
    fn, points, values, kwargs, size, cutoff, *, device=CUDA, dtype=torch.float64, fill=0.25
):
    """Image, weight map and the gradients of a random linear loss on both, for every tensor."""
    leaves = [
        to(points, device, dtype).requires_grad_(),
        to(values, device, dtype).requires_grad_(),
    ]
    kw = {}
    for key, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = to(v, device, dtype).requires_grad_()
            leaves.append(v)
        kw[key] = v
    image, weight = fn(*leaves[:2], size, cutoff=cutoff, fill=fill, return_weight=True, **kw)
    g = torch.Generator().manual_seed(1)
    r_image = torch.randn(image.shape, generator=g, dtype=torch.float64).to(image)
    r_weight = torch.randn(weight.shape, generator=g, dtype=torch.float64).to(weight)
    loss = (image * r_image).sum() + (weight * r_weight).sum()
    grads = torch.autograd.grad(loss, leaves)
    return [image.detach(), weight.detach(), *grads]


def assert_all_close(got, want, rtol_image, rtol_grad):
    assert_close_scaled(got[0], want[0], rtol_image)
    assert_close_scaled(got[1], want[1], rtol_image)
    for g_got, g_want in zip(got[2:], want[2:]):
        assert_close_scaled(g_got, g_want, rtol_grad)


# --- CUDA against the reference and the CPU kernel -----------------------------------------------


def test_cuda_kernels_are_registered(cuda_op):
    points = torch.rand(1, 5, 2, device=CUDA) * 8
    image = nuir.interpolate(points, torch.rand(1, 5, 2, device=CUDA), (8, 8), 1.0)
    assert image.device.type == "cuda" and image.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("form", SIGMA_FORMS)
@pytest.mark.parametrize("cutoff", [3.0, 1.5, math.inf])
def test_float64_matches_reference_and_cpu(cuda_op, form, cutoff):
    points, values, kwargs = make_case(form, cutoff=cutoff)
    got = forward_and_grads(nuir.interpolate, points, values, kwargs, (17, 23), cutoff)
    want = forward_and_grads(reference.interpolate, points, values, kwargs, (17, 23), cutoff)
    cpu = forward_and_grads(
        nuir.interpolate, points, values, kwargs, (17, 23), cutoff, device="cpu"
    )
    assert got[0].device.type == "cuda" and got[0].dtype == torch.float64
    assert_all_close(got, want, 1e-10, 1e-8)
    assert_all_close(got, cpu, 1e-10, 1e-8)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("form", ["float", "per_axis", "cov", "weights"])
def test_float32_matches_reference_and_cpu(cuda_op, form, channels):
    points, values, kwargs = make_case(form, channels=channels, n=60, size=(20, 31), seed=2)
    args = (points, values, kwargs, (20, 31), 3.0)
    got = forward_and_grads(nuir.interpolate, *args, dtype=torch.float32)
    want = forward_and_grads(reference.interpolate, *args)
    cpu = forward_and_grads(nuir.interpolate, *args, device="cpu", dtype=torch.float32)
    assert got[0].dtype == torch.float32 and got[0].shape == (2, channels, 20, 31)
    assert_all_close(got, want, 2e-5, 1e-3)
    assert_all_close(got, cpu, 2e-5, 1e-3)


@pytest.mark.parametrize("cutoff", [3.0, math.inf])
def test_small_and_large_gaussians_together(cuda_op, cutoff):
    # Sigma from 0.3 to 14 pixels: every level of the cell grid in the forward, and in the
    # backward both the warp-per-point path and the block-per-point path (boxes > 2048 pixels).
    points, values, kwargs = make_case(
        "per_axis",
        batch=2,
        n=150,
        size=(70, 90),
        seed=4,
        cutoff=cutoff,
        sigma_range=(0.3, 14.0),
        margin=1e-9,
    )
    args = (points, values, kwargs, (70, 90), cutoff)
    got = forward_and_grads(nuir.interpolate, *args)
    want = forward_and_grads(reference.interpolate, *args)
    assert_all_close(got, want, 1e-10, 1e-8)


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (37, 1), (16, 16), (17, 33), (33, 16)])
def test_odd_output_shapes(cuda_op, size):
    points, values, kwargs = make_case("per_point", n=25, size=size, seed=6)
    got = forward_and_grads(nuir.interpolate, points, values, kwargs, size, 3.0)
    want = forward_and_grads(reference.interpolate, points, values, kwargs, size, 3.0)
    assert_all_close(got, want, 1e-10, 1e-8)


def test_no_points_gives_fill_and_empty_gradients(cuda_op):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        points = torch.zeros(2, 0, 2, device=CUDA, dtype=dtype, requires_grad=True)
        values = torch.zeros(2, 0, 3, device=CUDA, dtype=dtype, requires_grad=True)
        image, weight = nuir.interpolate(points, values, (5, 4), 1.0, fill=0.5, return_weight=True)
        assert image.dtype == dtype and image.shape == (2, 3, 5, 4)
        assert torch.all(image == 0.5) and torch.all(weight == 0)
        image.sum().backward()
        assert points.grad.shape == (2, 0, 2) and values.grad.shape == (2, 0, 3)


def test_points_out_of_reach_give_fill_and_zero_gradients(cuda_op):
    points = torch.tensor([[[-30.0, 5.0], [40.0, 60.0], [5.0, -9.5]]], device=CUDA)
    values = torch.randn(1, 3, 2, device=CUDA, requires_grad=True)
    sigma = torch.tensor([[1.0, 2.0, 2.0]], device=CUDA, requires_grad=True)
    image, weight = nuir.interpolate(
        points, values, (12, 10), sigma, fill=-2.0, cutoff=3.0, return_weight=True
    )
    assert torch.all(image == -2.0) and torch.all(weight == 0)
    (image.sum() + weight.sum()).backward()
    assert torch.all(values.grad == 0) and torch.all(sigma.grad == 0)


def test_loss_on_the_weight_map_only(cuda_op):
    points, values, kwargs = make_case("cov", n=30, seed=7)
    leaves = [t.to(CUDA).requires_grad_() for t in (points, values, kwargs["cov"])]
    _, weight = nuir.interpolate(*leaves[:2], (17, 23), cov=leaves[2], return_weight=True)
    grads = torch.autograd.grad(weight.square().sum(), leaves)
    ref = [t.detach().clone().requires_grad_() for t in leaves]
    _, ref_weight = reference.interpolate(*ref[:2], (17, 23), cov=ref[2], return_weight=True)
    ref_grads = torch.autograd.grad(ref_weight.square().sum(), ref, allow_unused=True)
    assert_close_scaled(grads[0], ref_grads[0], 1e-8)
    assert torch.all(grads[1] == 0)  # the weight map does not depend on the values
    assert_close_scaled(grads[2], ref_grads[2], 1e-8)


def test_backward_output_mask_skips_only_the_masked_gradients(cuda_op):
    assert_output_masks(CUDA)


def test_unchecked_calls_do_not_synchronise(cuda_op):
    points, values, kwargs = make_case("per_axis", n=50, seed=12)
    leaves = [t.to(CUDA).requires_grad_() for t in (points, values, kwargs["sigma"])]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        image = nuir.interpolate(*leaves[:2], (17, 23), leaves[2], check=False)
        image.square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with_checks = nuir.interpolate(*leaves[:2], (17, 23), leaves[2])
    assert torch.equal(image, with_checks)


def test_uniform_upsampling_matches_cpu(cuda_op):
    g = torch.Generator().manual_seed(8)
    low = torch.rand(2, 3, 24, 20, generator=g, dtype=torch.float64)
    got = nuir.upsample(low.to(CUDA), 4)
    want = nuir.upsample(low, 4)
    assert got.shape == (2, 3, 96, 80)
    assert_close_scaled(got, want, 1e-10)


@pytest.mark.parametrize("form", ["per_axis", "cov", "weights"])
@pytest.mark.parametrize("cutoff", [math.inf, 2.5])
def test_gradcheck_float64(cuda_op, form, cutoff):
    points, values, kwargs = make_case(
        form, batch=1, n=6, channels=2, size=(5, 6), seed=3, cutoff=cutoff
    )
    assert gradcheck_interpolate(points, values, kwargs, (5, 6), cutoff, CUDA)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(cuda_op, dtype):
    points, values, kwargs = make_case("cov", batch=2, n=12, channels=3, size=(9, 7))
    p = prepare(points, values, (9, 7), None, kwargs["cov"], None, 3.0, 0.0)
    args = [t.to(CUDA, dtype).contiguous().requires_grad_() for t in (p.points, p.values, p.cov3)]
    weights = torch.rand(2, 12, dtype=dtype, device=CUDA, requires_grad=True)
    opcheck_both_ops(args, weights, 9, 7)


@pytest.mark.parametrize("channels", [3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bitwise_deterministic(cuda_op, channels, dtype):
    # Many overlapping points of many sizes: any unordered accumulation would show.
    points, values, kwargs = make_case(
        "per_point",
        batch=2,
        n=6000,
        channels=channels,
        size=(192, 256),
        seed=5,
        cutoff=math.inf,  # (skips the boundary scan; the runs below use cutoff 3)
        sigma_range=(0.4, 9.0),
    )

    def run():
        return forward_and_grads(
            nuir.interpolate, points, values, kwargs, (192, 256), 3.0, dtype=dtype
        )

    first, second = run(), run()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        third = run()
    stream.synchronize()
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(cuda_op, dtype):
    points, values, kwargs = make_case("per_axis", n=200, size=(40, 50), seed=9)
    p = prepare(points, values, (40, 50), kwargs["sigma"], None, None, 3.0, 0.0)
    weights = 0.5 + torch.rand(p.weights.shape, generator=torch.Generator().manual_seed(9))
    half = [t.to(CUDA, dtype).contiguous() for t in (p.points, p.values, p.cov3, weights)]
    full = [t.float() for t in half]  # the same (rounded) numbers in float32
    image_h, weight_h = torch.ops.nuir.gmm_forward(*half, 40, 50, 3.0, 0.25)
    image_f, weight_f = torch.ops.nuir.gmm_forward(*full, 40, 50, 3.0, 0.25)
    # float32 accumulation, one rounding at the end: within one unit roundoff of float32's result.
    u = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    # The weight map stays in float32: the backward divides by it.
    assert image_h.dtype == dtype and weight_h.dtype == torch.float32
    torch.testing.assert_close(image_h.float(), image_f, rtol=2 * u, atol=1e-6)
    torch.testing.assert_close(weight_h, weight_f)
    g = torch.Generator().manual_seed(10)
    grad_image = torch.randn(image_h.shape, generator=g).to(CUDA, dtype)
    grad_weight = torch.randn(weight_h.shape, generator=g).to(CUDA, dtype)
    grads_h = torch.ops.nuir.gmm_backward(grad_image, grad_weight, image_h, weight_h, *half, 3.0)
    grads_f = torch.ops.nuir.gmm_backward(
        grad_image.float(), grad_weight.float(), image_h.float(), weight_h, *full, 3.0
    )
    for g_h, g_f in zip(grads_h, grads_f):
        assert g_h.dtype == dtype
        torch.testing.assert_close(g_h.float(), g_f, rtol=2 * u, atol=1e-6)

    # Through the public API and autograd, half in and half out.
    got = forward_and_grads(nuir.interpolate, points, values, kwargs, (40, 50), 3.0, dtype=dtype)
    want = forward_and_grads(
        nuir.interpolate, points, values, kwargs, (40, 50), 3.0, dtype=torch.float32
    )
    for t in got:
        assert t.dtype == dtype and torch.isfinite(t.float()).all()
    assert_close_scaled(got[0].float(), want[0], 20 * u)


def test_noncontiguous_and_batched_inputs(cuda_op):
    g = torch.Generator().manual_seed(10)
    batch, n, channels, size = 3, 80, 4, (30, 41)
    base = torch.rand(batch, 2 * n, 3, generator=g, dtype=torch.float64) * 40 - 3
    points = base[:, ::2, :2].to(CUDA)  # strided rows, strided point dimension
    values = torch.randn(batch, channels, n, generator=g, dtype=torch.float64).to(CUDA)
    values = values.transpose(1, 2)  # [B, N, C], channel-major in memory
    sigma = (0.5 + 2 * torch.rand(n, batch, 2, generator=g, dtype=torch.float64)).to(CUDA)
    sigma = sigma.transpose(0, 1)  # [B, N, 2]
    weights = torch.rand(batch, n, 2, generator=g, dtype=torch.float64).to(CUDA)[..., 0]
    assert not any(t.is_contiguous() for t in (points, values, sigma, weights))
    got = nuir.interpolate(points, values, size, sigma, weights=weights)
    dense = [t.contiguous() for t in (points, values, sigma, weights)]
    want = nuir.interpolate(*dense[:2], size, dense[2], weights=dense[3])
    assert torch.equal(got, want)
    ref = reference.interpolate(points, values, size, sigma, weights=weights)
    assert_close_scaled(got, ref, 1e-10)
    # Each batch element alone gives the same bits as within the batch.
    for b in range(batch):
        single = nuir.interpolate(
            dense[0][b : b + 1],
            dense[1][b : b + 1],
            size,
            dense[2][b : b + 1],
            weights=dense[3][b : b + 1],
        )
        assert torch.equal(single[0], got[b])
    # The op itself takes strided tensors too.
    p = prepare(points, values, size, sigma, None, weights, 3.0, 0.0)
    strided = torch.ops.nuir.gmm_forward(p.points, p.values, p.cov3, p.weights, *size, 3.0, 0.0)
    packed = torch.ops.nuir.gmm_forward(
        *(t.contiguous() for t in (p.points, p.values, p.cov3, p.weights)), *size, 3.0, 0.0
    )
    assert torch.equal(strided[0], packed[0]) and torch.equal(strided[1], packed[1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensor_on_cuda0_with_another_current_device(cuda_op):
    points, values, kwargs = make_case("per_point", n=50, seed=11)
    want = forward_and_grads(
        nuir.interpolate, points, values, kwargs, (17, 23), 3.0, device="cuda:0"
    )
    with torch.cuda.device(1):
        got = forward_and_grads(
            nuir.interpolate, points, values, kwargs, (17, 23), 3.0, device="cuda:0"
        )
    for a, b in zip(got, want):
        assert a.device == torch.device("cuda:0") and torch.equal(a, b)


# --- a large case ---------------------------------------------------------------------------------


def _direct_pixels(points, values, cov3, weights, xs, ys, cutoff, rel=1e-4, chunk=16):
    """The definition at a few pixels (xs, ys) [P], over all points, in float64.

    Returns W [P], numerators [P, C] and whether a pair lies within `rel` of the cutoff [P]."""
    points, values, cov3, weights = (t.double() for t in (points, values, cov3, weights))
    sxx, sxy, syy = cov3.unbind(-1)  # [N]
    det = sxx * syy - sxy * sxy
    norm = weights / (2 * math.pi * det.sqrt())
    totals, numers, ambiguous = [], [], []
    for start in range(0, xs.numel(), chunk):
        dx = xs[start : start + chunk, None].double() - points[None, :, 0]  # [P, N]
        dy = ys[start : start + chunk, None].double() - points[None, :, 1]
        m2 = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det
        w = torch.where(m2 <= cutoff**2, norm * torch.exp(-0.5 * m2), 0.0)
        totals.append(w.sum(1))
        numers.append(w @ values)
        ambiguous.append(((m2 - cutoff**2).abs() <= rel * cutoff**2).any(1))
    return torch.cat(totals), torch.cat(numers), torch.cat(ambiguous)


def _point_grads(i, points, values, sigma, weights, image, weight, grad_image, cutoff):
    """Gradients of sum(image * grad_image) for point i from the definition, in float64, over
    the pixels near it, with the kernel's forward outputs (image, weight) as W and v.

    Returns, per input, (gradient, sum of the magnitudes of its terms, sum of the magnitudes of
    the terms of pixels within 1e-4 of the cutoff, which float32 may count or not)."""
    mx, my = points[i].double().tolist()
    s = float(sigma[i])
    a = float(weights[i])
    height, width = weight.shape
    r = cutoff * s + 1
    x0, x1 = max(0, math.floor(mx - r)), min(width - 1, math.ceil(mx + r))
    y0, y1 = max(0, math.floor(my - r)), min(height - 1, math.ceil(my + r))
    dev = image.device
    ys, xs = torch.meshgrid(
        torch.arange(y0, y1 + 1, device=dev, dtype=torch.float64),
        torch.arange(x0, x1 + 1, device=dev, dtype=torch.float64),
        indexing="ij",
    )
    dx, dy = xs - mx, ys - my
    m2 = (dx * dx + dy * dy) / (s * s)
    density = torch.exp(-0.5 * m2) / (2 * math.pi * s * s)
    total = weight[y0 : y1 + 1, x0 : x1 + 1].double()
    img = image[:, y0 : y1 + 1, x0 : x1 + 1].double()
    g = grad_image[:, y0 : y1 + 1, x0 : x1 + 1].double()
    reached = total > 0
    safe = torch.where(reached, total, torch.ones_like(total))
    big_g = torch.where(reached, g / safe, 0.0)  # [C, h, w]
    s_map = torch.where(reached, (g * img).sum(0) / safe, 0.0)
    k = (big_g * values[i].double()[:, None, None]).sum(0) - s_map
    ux, uy = dx / (s * s), dy / (s * s)

    def terms(dens):
        w = a * dens
        return {
            "values": w * big_g,
            "points": torch.stack([k * w * ux, k * w * uy]),
            # cov = sigma^2 I: dL/dsigma = 2 sigma (dL/dsxx + dL/dsyy),
            # dL/dSigma = 1/2 sum k w (u u^T - Sigma^-1)
            "sigma": (k * w * (ux * ux + uy * uy - 2 / (s * s)) * s)[None],
            "weights": (k * dens)[None],
        }

    inside = terms(torch.where(m2 <= cutoff**2, density, 0.0))
    edge = terms(torch.where((m2 - cutoff**2).abs() <= 1e-4 * cutoff**2, density, 0.0))
    return {
        name: (t.sum(dim=(-1, -2)), t.abs().sum(dim=(-1, -2)), edge[name].abs().sum(dim=(-1, -2)))
        for name, t in inside.items()
    }


def check_large_case(height, width, n, device=CUDA):
    """float32, sigma log-uniform from 0.3 to 30 pixels: the forward at 1024 random pixels and the
    gradients of 64 points (the 16 widest) against the definition, then bitwise repeatability."""
    channels, cutoff = 3, 3.0
    g = torch.Generator(device=device).manual_seed(12)
    span = torch.tensor([width, height], device=device, dtype=torch.float32)
    points = torch.rand(n, 2, generator=g, device=device) * span
    values = torch.rand(n, channels, generator=g, device=device)
    sigma = 0.3 * 100.0 ** torch.rand(n, generator=g, device=device)
    weights = 0.5 + torch.rand(n, generator=g, device=device)
    leaves = [t.clone().requires_grad_() for t in (points, values, sigma, weights)]
    image, weight = nuir.interpolate(
        leaves[0],
        leaves[1],
        (height, width),
        leaves[2],
        weights=leaves[3],
        cutoff=cutoff,
        return_weight=True,
    )
    assert image.shape == (channels, height, width) and torch.isfinite(image).all()

    # The forward at random pixels against the definition over all points.
    xs = torch.randint(0, width, (1024,), generator=g, device=device)
    ys = torch.randint(0, height, (1024,), generator=g, device=device)
    cov3 = torch.stack([sigma**2, torch.zeros_like(sigma), sigma**2], dim=-1)
    total, numer, ambiguous = _direct_pixels(points, values, cov3, weights, xs, ys, cutoff)
    fair = ~ambiguous
    assert fair.float().mean() > 0.9
    got_w = weight[ys, xs].double()
    torch.testing.assert_close(got_w[fair], total[fair], rtol=1e-4, atol=1e-6)
    want_v = numer / total[:, None]
    got_v = image[:, ys, xs].T.double()
    torch.testing.assert_close(got_v[fair], want_v[fair], rtol=1e-4, atol=1e-4)

    # Gradients of 64 points; the 16 widest take the CUDA backward's block-per-point path.
    grad_image = torch.randn(image.shape, generator=g, device=device)
    grads = torch.autograd.grad((image * grad_image).sum(), leaves)
    widest = torch.topk(sigma, 16).indices
    others = torch.randint(0, n, (48,), generator=g, device=device)
    for i in torch.cat([widest, others]).tolist():
        want = _point_grads(
            i, points, values, sigma, weights, image.detach(), weight.detach(), grad_image, cutoff
        )
        got = {
            "points": grads[0][i],
            "values": grads[1][i],
            "sigma": grads[2][i : i + 1],
            "weights": grads[3][i : i + 1],
        }
        for name, (value, scale, edge) in want.items():
            err = (got[name].double() - value).abs()
            assert torch.all(err <= 1e-3 * scale + edge + 1e-6), (name, i, got[name], value)

    # And the same bits again.
    again = nuir.interpolate(
        points, values, (height, width), sigma, weights=weights, cutoff=cutoff, return_weight=True
    )
    assert torch.equal(again[0], image.detach()) and torch.equal(again[1], weight.detach())


def test_large_output_many_points_wide_sigma(cuda_op):
    # 4096 x 4096 x 3 from 2^20 points; runs in seconds on an H100.
    check_large_case(4096, 4096, 1 << 20)


# --- the CUDA speed benchmark ---------------------------------------------------------------------


def test_speed_benchmark_runs_and_writes_csv(cuda_op, tmp_path, capsys):
    from nuir.bench import _speed_cuda

    out = tmp_path / "speed.csv"
    code = _speed_cuda.main(
        ["--sizes", "64", "128", "--repeats", "3", "--warmup", "1", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "nuir" in printed and "GB/s" in printed
    rows = list(csv.DictReader(out.open()))
    impls = {row["impl"] for row in rows}
    assert {"nuir op", "reference", "nuir upsample", "torch bicubic"} <= impls
    for row in rows:
        assert float(row["forward_ms"]) > 0
        assert float(row["bytes"]) > 0
