"""The public operator ``nuir.interpolate``.

Autograd and fake kernels of ``torch.ops.nuir.*`` are registered here, in Python; the schemas
live in csrc/nuir.cpp and the device kernels in csrc/cpu and csrc/cuda.
"""

from __future__ import annotations

import torch

from nuir import _backend, reference
from nuir._validate import prepare


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

    Returns:
        image [B, C, H, W] (or [C, H, W] unbatched), and the weight map when asked for.
        Differentiable with respect to points, values, sigma / cov and weights.
    """
    p = prepare(points, values, size, sigma, cov, weights, cutoff, fill)
    if ensure_registered():
        compute = torch.float32 if p.values.dtype in (torch.float16, torch.bfloat16) else None
        if compute is not None and p.values.device.type == "cpu":
            # CPU kernels take float32 / float64; half inputs are computed in float32.
            image, weight = _call_op(p, compute)
            image, weight = image.to(p.values.dtype), weight.to(p.values.dtype)
        else:
            image, weight = _call_op(p, None)
    else:
        image, weight = reference.interpolate_cov3(
            p.points, p.values, p.cov3, p.weights, p.height, p.width, p.cutoff, p.fill
        )
    if p.unbatched:
        image, weight = image[0], weight[0]
    return (image, weight) if return_weight else image


def _call_op(p, dtype):
    args = [p.points, p.values, p.cov3, p.weights]
    if dtype is not None:
        args = [t.to(dtype) for t in args]
    args = [t.contiguous() for t in args]
    try:
        return torch.ops.nuir.gmm_forward(*args, p.height, p.width, p.cutoff, p.fill)
    except torch.OutOfMemoryError as exc:
        raise ValueError(
            f"size=({p.height}, {p.width}) is too large to allocate on {p.values.device}: {exc}"
        ) from exc


# --- autograd and fake kernels of torch.ops.nuir.* -------------------------------------------


def _register() -> None:
    """Registers Python-side pieces of the op; runs once the schema library is loaded."""

    @torch.library.register_fake("nuir::gmm_forward")
    def _(points, values, cov3, weights, height, width, cutoff, fill):
        batch, _, channels = values.shape
        return (
            values.new_empty(batch, channels, height, width),
            values.new_empty(batch, height, width),
        )

    @torch.library.register_fake("nuir::gmm_backward")
    def _(grad_image, grad_weight, image, weight, points, values, cov3, weights, cutoff, mask=None):
        return (
            torch.empty_like(points),
            torch.empty_like(values),
            torch.empty_like(cov3),
            torch.empty_like(weights),
        )

    def setup_context(ctx, inputs, output):
        points, values, cov3, weights, height, width, cutoff, fill = inputs
        image, weight = output
        ctx.save_for_backward(points, values, cov3, weights, image, weight)
        ctx.cutoff = cutoff

    def backward(ctx, grad_image, grad_weight):
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

    torch.library.register_autograd("nuir::gmm_forward", backward, setup_context=setup_context)


_registered = False


def ensure_registered() -> bool:
    """Build / load the kernels if needed and register autograd once. True if compiled."""
    global _registered
    ok = _backend.compiled_available()
    if ok and not _registered:
        _register()
        _registered = True
    return ok
