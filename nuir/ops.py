"""The public operator ``nuir.interpolate``, and the ops ``torch.ops.nuir.*`` underneath it.

Importing this module makes the ops complete without loading any compiled code: it defines them
from their schemas (written once, in csrc/nuir.cpp) and registers their fake (meta) kernels,
their autograd and a kernel for any device. That last one runs only where no compiled kernel is
registered: its first call loads or builds the CPU (and CUDA) kernels (nuir/_backend.py), which
register themselves for their devices and take that call and every later one; where none can
serve (a failed build, a device without kernels of its own) it runs the reference.
"""

from __future__ import annotations

import ast
import re

import torch

from nuir import _backend, reference
from nuir._validate import Prepared, check_scalar, prepare


def interpolate(
    points: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    sigma: float | torch.Tensor | None = None,
    *,
    cov: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    cutoff: float = 3.0,
    fill: float = 0.0,
    return_weight: bool = False,
    check: bool = True,
):
    """Render an image from scattered points by normalised Gaussian-mixture interpolation.

    Args:
        points: [B, N, 2] or [N, 2] positions (x, y) in pixel units; pixel (row r, column s)
            has its centre at (x, y) = (s, r). Points may lie outside the raster.
        values: [B, N, C] or [N, C] value carried by each point.
        size: (H, W) of the output.
        sigma: standard deviation in pixels: a float, [B, N] per point, or [B, N, 2] per point
            and axis (x, y). Default: half the mean point spacing, 0.5 * sqrt(H * W / N).
        cov: [B, N, 2, 2] symmetric positive-definite covariance per point, instead of sigma.
        weights: [B, N] non-negative point weights (default 1); 0 removes a point.
        cutoff: Mahalanobis radius beyond which a point does not reach a pixel; math.inf for none.
        fill: value of pixels that no point reaches.
        return_weight: also return the total weight map [B, H, W].
        check: check the values of the tensors (finite points, sigma > 0, covariances positive
            definite, weights >= 0) and that the output fits in memory. These checks cost one
            host synchronisation per call; False skips them (for training loops and CUDA
            graphs). Types, shapes, devices and dtypes are checked either way. Unchecked, a
            point with a non-finite position or covariance, or a covariance that is not positive
            definite, reaches no pixel.

    Returns:
        image [B, C, H, W] (or [C, H, W] unbatched), and the weight map when asked for.
        Differentiable with respect to points, values, sigma / cov and weights.
    """
    p = prepare(points, values, size, sigma, cov, weights, cutoff, fill, check=check)
    if _backend.use_compiled(p.values.device):
        image, weight = _call_op(p)
    else:
        image, weight = reference.interpolate_cov3(
            p.points, p.values, p.cov3, p.weights, p.height, p.width, p.cutoff, p.fill
        )
    return p.finish(image, weight, return_weight)


def _call_op(p: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    args = [p.points, p.values, p.cov3, p.weights]
    half = p.values.dtype in (torch.float16, torch.bfloat16)
    if half and p.values.device.type == "cpu":
        args = [t.float() for t in args]  # the CPU kernels take float32 and float64
    args = [t.contiguous() for t in args]
    try:
        image, weight = torch.ops.nuir.gmm_forward(*args, p.height, p.width, p.cutoff, p.fill)
    except torch.OutOfMemoryError as exc:
        raise ValueError(
            f"size=({p.height}, {p.width}) is too large to allocate on {p.values.device}: {exc}"
        ) from exc
    return image.to(p.values.dtype), weight


# --- the ops: schemas, fake kernels, autograd, and the kernel for any device ------------------


def _schemas() -> list[str]:
    """The op schemas as csrc/nuir.cpp writes them: the string literals of its kSchemas array."""
    path = _backend.source_dir() / "nuir.cpp"
    found = re.search(r"kSchemas\[\] = \{\n(.*?)\n\};", path.read_text(), re.DOTALL)
    if found is None:
        raise RuntimeError(f"nuir: no kSchemas array in {path}")
    # C and Python agree on these literals (no escapes) and on joining adjacent ones.
    return list(ast.literal_eval("[" + re.sub(r"//[^\n]*", "", found.group(1)) + "]"))


_library = torch.library.Library("nuir", "DEF")
for _schema in _schemas():
    _library.define(_schema)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The weight map's dtype (csrc/op_common.h): float32 for half-precision inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("nuir::gmm_forward")
def _(points, values, cov3, weights, height, width, cutoff, fill):
    batch, _, channels = values.shape
    return (
        values.new_empty(batch, channels, height, width),
        values.new_empty(batch, height, width, dtype=_accumulation_dtype(values.dtype)),
    )


@torch.library.register_fake("nuir::gmm_backward")
def _(grad_image, grad_weight, image, weight, points, values, cov3, weights, cutoff, mask=None):
    return tuple(t.new_empty(t.shape) for t in (points, values, cov3, weights))  # contiguous


def _setup_context(ctx, inputs, output):
    points, values, cov3, weights, height, width, cutoff, fill = inputs
    image, weight = output
    ctx.save_for_backward(points, values, cov3, weights, image, weight)
    ctx.cutoff = cutoff


def _backward(ctx, grad_image, grad_weight):
    points, values, cov3, weights, image, weight = ctx.saved_tensors
    if grad_image is None:
        grad_image = torch.zeros_like(image)
    grads = torch.ops.nuir.gmm_backward(
        grad_image.contiguous(),
        None if grad_weight is None else grad_weight.contiguous(),
        image,
        weight,
        points,
        values,
        cov3,
        weights,
        ctx.cutoff,
        list(ctx.needs_input_grad[:4]),
    )
    grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])]
    return (*grads, None, None, None, None)


torch.library.register_autograd("nuir::gmm_forward", _backward, setup_context=_setup_context)


def _compiled_kernels_serve(device: torch.device) -> bool:
    """Loads or builds the compiled kernels; whether they serve `device` (else the reference).

    Raises for CUDA tensors where there are no compiled CUDA kernels, saying why.
    """
    if not _backend.use_compiled(device):
        return False
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("nuir::gmm_forward", key):
        raise RuntimeError(f"nuir: the compiled operator was loaded without {key} kernels")
    return True


def _forward_any_device(points, values, cov3, weights, height, width, cutoff, fill):
    if _compiled_kernels_serve(values.device):  # now registered: the call goes to them
        return torch.ops.nuir.gmm_forward(
            points, values, cov3, weights, height, width, cutoff, fill
        )
    check_scalar("cutoff", cutoff, positive=True, allow_inf=True)  # as the kernels do
    image, weight = reference.interpolate_cov3(
        points, values, cov3, weights, height, width, cutoff, fill
    )
    return image.contiguous(), weight.to(_accumulation_dtype(values.dtype)).contiguous()


def _backward_any_device(
    grad_image,
    grad_weight,
    image,
    weight,
    points,
    values,
    cov3,
    weights,
    cutoff,
    output_mask=(True,) * 4,  # the schema's default, which some callers leave out
):
    inputs = (points, values, cov3, weights)
    if _compiled_kernels_serve(values.device):
        return torch.ops.nuir.gmm_backward(
            grad_image, grad_weight, image, weight, *inputs, cutoff, output_mask
        )
    check_scalar("cutoff", cutoff, positive=True, allow_inf=True)
    # The reference's gradients by autograd, which is off where a kernel runs. The fill value
    # gets no gradient: 0 stands in for it.
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        height, width = image.shape[-2:]
        new_image, new_weight = reference.interpolate_cov3(*leaves, height, width, cutoff, 0.0)
        if grad_weight is None:
            grad_weight = torch.zeros_like(new_weight)
        grad_outputs = (grad_image.to(new_image.dtype), grad_weight.to(new_weight.dtype))
        grads = torch.autograd.grad((new_image, new_weight), leaves, grad_outputs)
    return tuple(
        g.contiguous() if keep else g.new_zeros(g.shape) for g, keep in zip(grads, output_mask)
    )


# CompositeExplicitAutograd: a kernel for every device, which a device's own kernel overrides.
_library.impl("gmm_forward", _forward_any_device, "CompositeExplicitAutograd")
_library.impl("gmm_backward", _backward_any_device, "CompositeExplicitAutograd")


def ensure_registered() -> bool:
    """Loads (building if needed) the compiled kernels, which register themselves for the CPU
    (and CUDA); True if they did. The ops work without: see the module's docstring."""
    return _backend.compiled_available()
