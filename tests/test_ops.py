"""The CPU kernel against the reference, gradients, op registration, errors and determinism."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cases import SIGMA_FORMS, assert_close_scaled, assert_output_masks, make_case
from _helpers import gradcheck_interpolate

import nuir
from nuir import reference
from nuir._validate import prepare


def forward_and_grads(fn, points, values, kwargs, size, cutoff, fill=0.25):
    leaves = [points.clone().requires_grad_(), values.clone().requires_grad_()]
    kw = {}
    for key, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = v.clone().requires_grad_()
            leaves.append(v)
        kw[key] = v
    image, weight = fn(*leaves[:2], size, cutoff=cutoff, fill=fill, return_weight=True, **kw)
    g = torch.Generator().manual_seed(1)
    r_image = torch.randn(image.shape, generator=g, dtype=torch.float64).to(image.dtype)
    r_weight = torch.randn(weight.shape, generator=g, dtype=torch.float64).to(weight.dtype)
    loss = (image * r_image).sum() + (weight * r_weight).sum()
    grads = torch.autograd.grad(loss, leaves)
    return image.detach(), weight.detach(), grads


@pytest.mark.parametrize("form", SIGMA_FORMS)
@pytest.mark.parametrize("cutoff", [3.0, 1.5, math.inf])
def test_matches_reference_float64(compiled, form, cutoff):
    points, values, kwargs = make_case(form)
    got = forward_and_grads(nuir.interpolate, points, values, kwargs, (17, 23), cutoff)
    want = forward_and_grads(reference.interpolate, points, values, kwargs, (17, 23), cutoff)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-11)
    for g_got, g_want in zip(got[2], want[2]):
        assert_close_scaled(g_got, g_want, 1e-8)


@pytest.mark.parametrize("channels", [1, 3, 4, 5])
@pytest.mark.parametrize("form", ["float", "per_axis", "cov", "weights"])
def test_matches_reference_float32(compiled, form, channels):
    points, values, kwargs = make_case(form, channels=channels, n=60, size=(20, 31), seed=2)
    to32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    got = forward_and_grads(nuir.interpolate, points.float(), values.float(), to32, (20, 31), 3.0)
    want = forward_and_grads(reference.interpolate, points, values, kwargs, (20, 31), 3.0)
    assert got[0].dtype == torch.float32
    assert_close_scaled(got[0], want[0].float(), 2e-5)
    assert_close_scaled(got[1], want[1].float(), 2e-5)
    for g_got, g_want in zip(got[2], want[2]):
        assert_close_scaled(g_got, g_want.float(), 1e-3)


def test_unbatched_matches_batched(compiled):
    points, values, kwargs = make_case("per_point", batch=0, n=30)
    image, weight = nuir.interpolate(points, values, (12, 9), return_weight=True, **kwargs)
    b_kwargs = {k: v[None] for k, v in kwargs.items()}
    b_image, b_weight = nuir.interpolate(
        points[None], values[None], (12, 9), return_weight=True, **b_kwargs
    )
    assert image.shape == (3, 12, 9) and weight.shape == (12, 9)
    torch.testing.assert_close(image, b_image[0], rtol=0, atol=0)
    torch.testing.assert_close(weight, b_weight[0], rtol=0, atol=0)


def test_pixel_centre_convention(compiled):
    # A single point on the centre of row 5, column 3 peaks exactly there.
    _, weight = nuir.interpolate(
        torch.tensor([[3.0, 5.0]]), torch.ones(1, 1), (8, 6), 1.0, return_weight=True
    )
    assert divmod(int(weight.argmax()), 6) == (5, 3)
    torch.testing.assert_close(weight[5, 3], torch.tensor(1 / (2 * math.pi)))


def test_cutoff_and_fill(compiled):
    points = torch.tensor([[[10.0, 10.0]]])
    image, weight = nuir.interpolate(
        points,
        torch.full((1, 1, 2), 7.0),
        (21, 21),
        1.0,
        cutoff=3.0,
        fill=-1.0,
        return_weight=True,
    )
    yy, xx = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    inside = (xx - 10) ** 2 + (yy - 10) ** 2 <= 9
    torch.testing.assert_close(image[0, :, inside], torch.full_like(image[0, :, inside], 7.0))
    assert torch.all(image[0, :, ~inside] == -1.0)
    assert torch.all(weight[0][~inside] == 0) and torch.all(weight[0][inside] > 0)


def test_no_points_gives_fill(compiled):
    image, weight = nuir.interpolate(
        torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), (5, 4), 1.0, fill=0.5, return_weight=True
    )
    assert torch.all(image == 0.5) and torch.all(weight == 0)


def test_zero_weight_removes_point(compiled):
    points, values, _ = make_case("float", n=20)
    weights = torch.ones(2, 20, dtype=torch.float64)
    weights[:, 10:] = 0
    padded = nuir.interpolate(points, values, (17, 23), 1.5, weights=weights, fill=0.3)
    kept = nuir.interpolate(points[:, :10], values[:, :10], (17, 23), 1.5, fill=0.3)
    torch.testing.assert_close(padded, kept, rtol=0, atol=0)


def test_half_inputs_on_cpu_are_computed_in_float32(compiled):
    points, values, _ = make_case("float", dtype=torch.float32)
    half = nuir.interpolate(points.half(), values.half(), (17, 23), 1.5)
    full = nuir.interpolate(points.half().float(), values.half().float(), (17, 23), 1.5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("form", ["per_axis", "cov", "weights"])
@pytest.mark.parametrize("cutoff", [math.inf, 2.5])
def test_gradcheck_float64(compiled, form, cutoff):
    points, values, kwargs = make_case(form, batch=1, n=6, channels=2, size=(5, 6), seed=3)
    assert gradcheck_interpolate(points, values, kwargs, (5, 6), cutoff, "cpu")


# Run in a fresh process: ``import nuir`` alone must make the ops complete (schema, fake kernel,
# autograd), and their first call must load the compiled kernels, or fall back to the reference.
OPCHECK_AT_IMPORT = """
import itertools, sys, warnings
import torch
sys.path.insert(0, {tests!r})
import nuir
from _cases import make_case
from nuir._validate import prepare

def has_kernel(key):
    return torch._C._dispatch_has_kernel_for_dispatch_key("nuir::gmm_forward", key)

def nuir_libraries():
    return [path for path in torch.ops.loaded_libraries if "nuir" in path]

assert not nuir_libraries() and not has_kernel("CPU"), nuir_libraries()
assert has_kernel("Meta") and has_kernel("Autograd"), "fake kernel or autograd missing"
DTYPES = (torch.float64, torch.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    shapes = [("cov", 2, 12, 3, (9, 7)), ("weights", 1, 5, 1, (4, 6))]
    for dtype, (form, batch, n, channels, size) in itertools.product(DTYPES, shapes):
        points, values, kw = make_case(form, batch=batch, n=n, channels=channels, size=size)
        p = prepare(points, values, size, kw.get("sigma"), kw.get("cov"), kw.get("weights"))
        kernel_form = (p.points, p.values, p.cov3, p.weights)
        inputs = [t.to(dtype).contiguous().requires_grad_() for t in kernel_form]
        torch.library.opcheck(torch.ops.nuir.gmm_forward.default, (*inputs, *size, 3.0, 0.5))
        image, weight = torch.ops.nuir.gmm_forward(*inputs, *size, 3.0, 0.5)
        saved = [t.detach() for t in (image, weight, *inputs)]
        # With both optional arguments given, and with neither.
        for optional in ([torch.randn_like(weight), [True, False, True, False]], [None]):
            args = (torch.randn_like(image), optional[0], *saved, 3.0, *optional[1:])
            torch.library.opcheck(torch.ops.nuir.gmm_backward.default, args)
print("backend:", nuir.backend_name())
print("CPU kernels:", has_kernel("CPU"), "libraries:", len(nuir_libraries()))
for warning in caught:
    print("warning:", str(warning.message).splitlines()[0])
"""


@pytest.mark.parametrize("kernels", ["compiled", "reference"])
def test_opcheck_right_after_import(kernels, tmp_path):
    env = dict(os.environ, NUIR_BACKEND="compiled" if kernels == "compiled" else "auto")
    if kernels == "reference":  # no compiler: the build fails, the ops run the reference
        env.update(CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    script = OPCHECK_AT_IMPORT.format(tests=str(Path(__file__).resolve().parent))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    backend, loaded, *warned = out.stdout.splitlines()
    if kernels == "compiled":  # loaded by the first call
        assert backend.startswith("backend: compiled (cpu") and not warned, out.stdout
        assert loaded == "CPU kernels: True libraries: 1"
    else:  # one warning, and the reference ran every call
        assert backend == "backend: reference" and loaded == "CPU kernels: False libraries: 0"
        assert len(warned) == 1 and "using the pure-PyTorch reference" in warned[0], warned


def test_deterministic_across_runs_and_thread_counts(compiled):
    points, values, kwargs = make_case(
        "per_point", batch=1, n=3000, size=(96, 128), dtype=torch.float32, seed=5, margin=None
    )

    def run():
        image, weight, grads = forward_and_grads(
            nuir.interpolate, points, values, kwargs, (96, 128), 3.0
        )
        return [image, weight, *grads]

    threads = torch.get_num_threads()
    try:
        first, second = run(), run()
        others = []
        for count in (1, 3):  # one thread, and an uneven split of the bands and points
            torch.set_num_threads(count)
            others.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in (second, *others):
        for a, b in zip(first, other):
            assert torch.equal(a, b)


def test_torch_compile_traces_the_op(compiled):
    points, values, _ = make_case("per_point", dtype=torch.float32)
    sigma = torch.full(points.shape[:2], 1.5, requires_grad=True)

    def render(p, v, s):
        return nuir.interpolate(p * 1.0, v, (17, 23), s).square().mean()

    compiled_render = torch.compile(render, backend="aot_eager", fullgraph=True)
    p = points.clone().requires_grad_()
    loss = compiled_render(p, values, sigma)
    loss.backward()
    p2 = points.clone().requires_grad_()
    sigma2 = sigma.detach().clone().requires_grad_()
    eager = render(p2, values, sigma2)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(p.grad, p2.grad)
    torch.testing.assert_close(sigma.grad, sigma2.grad)


def test_reference_handles_256x256_from_4096_points():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(4096, 2, generator=g) * 256
    values = torch.rand(4096, 3, generator=g, requires_grad=True)
    image = reference.interpolate(points, values, (256, 256), 2.0)
    image.mean().backward()
    assert image.shape == (3, 256, 256) and torch.isfinite(values.grad).all()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_kernels_share_torchs_openmp_runtime(compiled):
    # Built without -fopenmp, at::parallel_for would run every loop on one thread; built with it
    # against a second OpenMP runtime, torch.set_num_threads would not reach the kernels.
    if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
        ours = [path for path in torch.ops.loaded_libraries if "nuir_ops" in Path(path).name]
        assert ours, torch.ops.loaded_libraries
        assert b"GOMP_parallel" in Path(ours[0]).read_bytes()  # parallel regions compiled in
    loaded = {
        line.split()[-1]
        for line in Path("/proc/self/maps").read_text().splitlines()
        if "libgomp" in line or "libomp" in line or "libiomp" in line
    }
    assert len(loaded) <= 1, loaded


# --- bad input ---------------------------------------------------------------------------------

P = torch.rand(2, 5, 2)
V = torch.rand(2, 5, 3)
BAD_INPUTS = [
    (dict(points=[[0.0, 0.0]]), TypeError, "points must be a torch.Tensor"),
    (dict(points=torch.zeros(2, 5, 2, dtype=torch.int64)), TypeError, "points must be a floating"),
    (dict(points=torch.rand(2, 5, 3)), ValueError, "points must have shape"),
    (dict(points=torch.rand(2, 2, 5, 2)), ValueError, "points must have shape"),
    (dict(values=torch.rand(2, 5)), ValueError, "values must have shape"),
    (dict(values=torch.rand(2, 4, 3)), ValueError, "disagree on the batch / point"),
    (dict(values=torch.rand(3, 5, 3)), ValueError, "disagree on the batch / point"),
    (dict(values=torch.rand(2, 5, 0)), ValueError, "at least one channel"),
    (dict(values=torch.rand(2, 5, 3, dtype=torch.float64)), TypeError, "values has dtype"),
    (dict(values=torch.rand(2, 5, 3, device="meta")), ValueError, "values is on meta"),
    (
        dict(points=torch.tensor([[[0.0, math.nan]]]), values=torch.rand(1, 1, 1)),
        ValueError,
        "points must be finite",
    ),
    (
        dict(points=torch.tensor([[[0.0, math.inf]]]), values=torch.rand(1, 1, 1)),
        ValueError,
        "points must be finite",
    ),
    (dict(size=(0, 4)), ValueError, "size must be positive"),
    (dict(size=(4, -2)), ValueError, "size must be positive"),
    (dict(size=(4.0, 4)), TypeError, "size must be a pair"),
    (dict(size=4), TypeError, "size must be a pair"),
    (dict(size=(1 << 22, 1 << 22)), ValueError, "needs"),
    (dict(sigma=0.0), ValueError, "sigma must be > 0"),
    (dict(sigma=-1.0), ValueError, "sigma must be > 0"),
    (dict(sigma=math.nan), ValueError, "sigma must not be NaN"),
    (dict(sigma="2"), TypeError, "sigma must be a real number"),
    (dict(sigma=torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]] * 2)), ValueError, "sigma must be > 0"),
    (dict(sigma=torch.ones(2, 4)), ValueError, "sigma must have shape"),
    (dict(sigma=torch.ones(2, 5, 3)), ValueError, "sigma must have shape"),
    (dict(sigma=torch.ones(2, 5, 2, 2)), ValueError, "sigma must be a float or have shape"),
    (dict(sigma=torch.ones(2, 5, dtype=torch.int32)), TypeError, "sigma must be a floating"),
    (dict(sigma=1.0, cov=torch.eye(2).expand(2, 5, 2, 2)), ValueError, "not both"),
    (dict(cov=torch.eye(2).expand(2, 4, 2, 2)), ValueError, "cov must have shape"),
    (
        dict(cov=torch.tensor([[1.0, 0.5], [0.2, 1.0]]).expand(2, 5, 2, 2)),
        ValueError,
        "cov must be symmetric",
    ),
    (
        dict(cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]).expand(2, 5, 2, 2)),
        ValueError,
        "cov must be positive definite",
    ),
    (dict(cov=-torch.eye(2).expand(2, 5, 2, 2)), ValueError, "cov must be positive definite"),
    (dict(weights=-torch.ones(2, 5)), ValueError, "weights must be >= 0"),
    (dict(weights=torch.full((2, 5), math.nan)), ValueError, "weights must be >= 0"),
    (dict(weights=torch.ones(2, 6)), ValueError, "weights must have shape"),
    (dict(weights=torch.ones(2, 5, dtype=torch.int64)), TypeError, "weights must be a floating"),
    (dict(cutoff=0.0), ValueError, "cutoff must be > 0"),
    (dict(cutoff=-3.0), ValueError, "cutoff must be > 0"),
    (dict(cutoff=math.nan), ValueError, "cutoff must not be NaN"),
    (dict(fill="zero"), TypeError, "fill must be a real number"),
]


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
@pytest.mark.parametrize("fn", [nuir.interpolate, reference.interpolate], ids=["op", "reference"])
def test_bad_input(fn, change, error, message):
    kwargs = dict(points=P, values=V, size=(8, 8), sigma=None)
    kwargs.update(change)
    if "cov" in change and "sigma" not in change:
        kwargs["sigma"] = None
    points, values, size = kwargs.pop("points"), kwargs.pop("values"), kwargs.pop("size")
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        fn(points, values, size, **kwargs)


def test_backward_output_mask_skips_only_the_masked_gradients(compiled):
    assert_output_masks("cpu")


# --- the ops called directly with invalid data -------------------------------------------------

# A point whose data makes no Gaussian reaches no pixel: (input, its new value at one point).
INVALID_POINT_DATA = {
    "nan position": (0, [math.nan, 4.0]),
    "inf position": (0, [5.0, math.inf]),
    "-inf position": (0, [-math.inf, -math.inf]),
    "nan covariance": (2, [math.nan, 0.0, 1.0]),
    "inf covariance": (2, [1.0, math.inf, 1.0]),
    "inf variance": (2, [math.inf, 0.0, 1.0]),
    "negative variance": (2, [1.0, 0.0, -1.0]),
    "zero determinant": (2, [1.0, 2.0, 4.0]),
    "negative determinant": (2, [1.0, 3.0, 2.0]),
}


@pytest.mark.parametrize("what", list(INVALID_POINT_DATA))
@pytest.mark.parametrize("cutoff", [3.0, math.inf])
def test_ops_ignore_points_with_invalid_data(compiled, what, cutoff):
    points, values, kwargs = make_case("cov", n=30, seed=9)
    p = prepare(points, values, (17, 23), None, kwargs["cov"], None, cutoff, 0.0)
    args = [t.contiguous().clone() for t in (p.points, p.values, p.cov3, p.weights)]
    index, value = INVALID_POINT_DATA[what]
    args[index][:, 5] = torch.tensor(value, dtype=torch.float64)
    keep = torch.arange(30) != 5
    kept = [t[:, keep].contiguous() for t in args]

    image, weight = compiled.gmm_forward(*args, 17, 23, cutoff, 0.5)
    want_image, want_weight = compiled.gmm_forward(*kept, 17, 23, cutoff, 0.5)
    assert torch.equal(image, want_image) and torch.equal(weight, want_weight)

    grad_image, grad_weight = torch.randn_like(image), torch.randn_like(weight)
    grads = compiled.gmm_backward(grad_image, grad_weight, image, weight, *args, cutoff)
    want = compiled.gmm_backward(grad_image, grad_weight, image, weight, *kept, cutoff)
    for g, w in zip(grads, want):
        assert torch.equal(g[:, keep], w) and torch.all(g[:, 5] == 0)


@pytest.mark.parametrize("cutoff", [math.nan, 0.0, -2.0])
def test_ops_reject_a_cutoff_that_is_not_positive(compiled, cutoff):
    points, values, _ = make_case("float", n=5)
    p = prepare(points, values, (6, 5), 1.0)
    args = [t.contiguous() for t in (p.points, p.values, p.cov3, p.weights)]
    with pytest.raises(RuntimeError, match="cutoff must be > 0"):
        compiled.gmm_forward(*args, 6, 5, cutoff, 0.0)
    image, weight = compiled.gmm_forward(*args, 6, 5, 3.0, 0.0)
    with pytest.raises(RuntimeError, match="cutoff must be > 0"):
        compiled.gmm_backward(torch.ones_like(image), None, image, weight, *args, cutoff)


def test_backward_rejects_tensors_that_do_not_match(compiled):
    points, values, _ = make_case("float", n=5, channels=3)
    p = prepare(points, values, (6, 5), 1.0)
    args = [t.contiguous() for t in (p.points, p.values, p.cov3, p.weights)]
    image, weight = compiled.gmm_forward(*args, 6, 5, 3.0, 0.0)
    wrong = [
        (image[:, :2], torch.ones_like(image[:, :2]), weight, "image must be"),
        (image, torch.ones_like(image), weight[:, :3], "weight must be"),
        (image, torch.ones_like(image[:, :, :3]), weight, "grad_image must match"),
    ]
    for img, grad, w, message in wrong:
        with pytest.raises(RuntimeError, match=message):
            compiled.gmm_backward(grad, None, img, w, *args, 3.0)


# --- check=False: no host synchronisation ------------------------------------------------------


def _forbid_host_syncs(monkeypatch):
    """Every way nuir's checks could read a tensor's values on the host raises."""

    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation")

    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch.cuda, "mem_get_info", sync)


@pytest.mark.parametrize("form", SIGMA_FORMS)
def test_unchecked_calls_give_the_same_results_without_host_syncs(compiled, form, monkeypatch):
    points, values, kwargs = make_case(form)
    leaves = [t.clone().requires_grad_() for t in (points, values)]
    want = nuir.interpolate(*leaves, (17, 23), **kwargs, return_weight=True)
    want_grads = torch.autograd.grad(want[0].sum() + want[1].sum(), leaves)
    with monkeypatch.context() as patched:
        _forbid_host_syncs(patched)
        with pytest.raises(AssertionError, match="host synchronisation"):  # the checks sync
            nuir.interpolate(*leaves, (17, 23), **kwargs)
        got = nuir.interpolate(*leaves, (17, 23), **kwargs, return_weight=True, check=False)
        got_grads = torch.autograd.grad(got[0].sum() + got[1].sum(), leaves)
    for a, b in zip([*got, *got_grads], [*want, *want_grads]):
        assert torch.equal(a, b)


def test_unchecked_calls_still_check_shapes(compiled):
    with pytest.raises(ValueError, match="values must have shape"):
        nuir.interpolate(P, torch.rand(2, 5), (8, 8), check=False)
    # Invalid values are not looked at: a NaN point reaches no pixel.
    points = torch.tensor([[1.0, 1.0], [math.nan, 2.0]])
    image = nuir.interpolate(points, torch.tensor([[2.0], [7.0]]), (3, 3), 1.0, check=False)
    torch.testing.assert_close(image, torch.full((1, 3, 3), 2.0))
