"""The public operator ``nuir.interpolate``.

Autograd and fake kernels of ``torch.ops.nuir.*`` are registered here, in Python; the schemas
live in csrc/nuir.cpp and the device kernels in csrc/cpu and csrc/cuda.
"""

from __future__ import annotations

import torch

from nuir import _backend, reference
from nuir._validate import Prepared, prepare


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
        ensure_registered()
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


# --- autograd and fake kernels of torch.ops.nuir.* -------------------------------------------


def _register() -> None:
    """Registers Python-side pieces of the op; runs once the schema library is loaded."""

    @torch.library.register_fake("nuir::gmm_forward")
    def _(points, values, cov3, weights, height, width, cutoff, fill):
        batch, _, channels = values.shape
        # The weight map comes in the accumulation type: float32 for half-precision inputs.
        acc = torch.float64 if values.dtype == torch.float64 else torch.float32
        return (
            values.new_empty(batch, channels, height, width),
            values.new_empty(batch, height, width, dtype=acc),
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
