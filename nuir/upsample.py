"""Uniform upsampling with the operator (``nuir.upsample``), and PIL-equivalent resampling.

Two modes:

- ``"plain"`` is the paper's experiment: one Gaussian per low-resolution pixel, its value the pixel
  value, so every output pixel is a Gaussian-weighted average of nearby input pixels.
- ``"consistent"`` solves for the point values instead, so that downsampling the output with a
  given operator (PIL's box filter by default: the area average a camera sensor performs) gives back
  the input. This is iterative back-projection: a linear system ``D G v = y`` (G renders the points,
  D downsamples) solved by minimal-residual iterations that need only the forward operator, so the
  whole solve is an ordinary autograd graph.

:func:`resample` reproduces ``PIL.Image.resize`` (all six filters, float images) as a separable,
differentiable PyTorch operation on any device; it is the downsampling model of the consistent mode.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable

import torch

from nuir._validate import check_float_tensor, check_size
from nuir.ops import interpolate

PIL_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
MODES = ("plain", "consistent")

# sigma = a * scale: the best `a` of the sweeps over factors 2-16 on held-out photos with PIL's
# box (area-average) downsampling; see docs/quality.md.
DEFAULT_SIGMA_SCALE = {"plain": 0.325, "consistent": 0.475}


def _check_image(image: object) -> torch.Tensor:
    """A floating-point [B, C, H, W] or [C, H, W] tensor, else an error naming ``image``."""
    image = check_float_tensor("image", image)
    if image.dim() not in (3, 4):
        raise ValueError(
            f"image must have shape [B, C, H, W] or [C, H, W], got {list(image.shape)}"
        )
    return image


def upsample(
    image: torch.Tensor,
    scale_factor: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    sigma: float | None = None,
    *,
    cutoff: float = 3.0,
    mode: str = "plain",
    downsample: str | Callable[[torch.Tensor], torch.Tensor] = "box",
    iterations: int = 10,
    tolerance: float = 1e-4,
) -> torch.Tensor:
    """Uniform upsampling with Gaussian-mixture interpolation: one point per low-resolution pixel.

    The low-resolution pixel (r, s) becomes a point at x = (s + 0.5) * sx - 0.5,
    y = (r + 0.5) * sy - 0.5 on the output grid, with sx = W / w, sy = H / h.

    Args:
        image: [B, C, h, w] or [C, h, w].
        scale_factor: a number or (sy, sx); exactly one of scale_factor and size.
        size: (H, W) of the output.
        sigma: Gaussian standard deviation in output pixels. Default ``a * max(sx, sy)`` with
            a = 0.325 for ``"plain"`` and a = 0.475 for ``"consistent"`` (DEFAULT_SIGMA_SCALE).
        cutoff: Mahalanobis radius of each Gaussian (see :func:`nuir.interpolate`).
        mode: ``"plain"`` (point values = input pixels, the paper's method) or ``"consistent"``
            (point values solved so that ``downsample(output) == image``).
        downsample: consistent mode only: the downsampling the output must be consistent with,
            a PIL filter name from PIL_FILTERS (as ``PIL.Image.resize`` applies it, see
            :func:`resample`) or a linear callable mapping [B, C, H, W] to [B, C, h, w].
        iterations: consistent mode only: maximum number of minimal-residual iterations, each
            one operator forward and one downsampling. 0 gives the plain result.
        tolerance: consistent mode only: stop once ||downsample(output) - image|| <=
            tolerance * ||image|| (norms over the whole batch); 0 always runs ``iterations``
            (and, on a GPU, avoids one host synchronisation per iteration).

    Returns:
        [B, C, H, W] (or [C, H, W]), on the device and in the dtype of ``image``. The consistent
        mode is differentiable with respect to ``image`` by ordinary autograd through the
        unrolled iterations (memory grows with ``iterations``); it is linear in ``image`` up to
        the data-dependent step sizes.
    """
    image = _check_image(image)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unbatched = image.dim() == 3
    if unbatched:
        image = image.unsqueeze(0)
    batch, channels, h, w = image.shape
    if (scale_factor is None) == (size is None):
        raise ValueError("give exactly one of scale_factor and size")
    if size is None:
        if isinstance(scale_factor, numbers.Real) and not isinstance(scale_factor, bool):
            sy = sx = float(scale_factor)
        elif isinstance(scale_factor, (tuple, list)) and len(scale_factor) == 2:
            sy, sx = (float(s) for s in scale_factor)
        else:
            raise TypeError(f"scale_factor must be a number or a pair, got {scale_factor!r}")
        if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
            raise ValueError(f"scale_factor must be > 0 and finite, got {scale_factor!r}")
        size = (max(1, int(round(h * sy))), max(1, int(round(w * sx))))
    height, width = check_size(size)
    sy, sx = height / h, width / w
    if sigma is None:
        sigma = DEFAULT_SIGMA_SCALE[mode] * max(sx, sy)

    ys = (torch.arange(h, device=image.device, dtype=image.dtype) + 0.5) * sy - 0.5
    xs = (torch.arange(w, device=image.device, dtype=image.dtype) + 0.5) * sx - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y], dim=-1).reshape(1, h * w, 2).expand(batch, -1, -1)

    def render(low: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> [B, C, H, W]
        values = low.reshape(batch, channels, h * w).transpose(1, 2)  # [B, h*w, C]
        return interpolate(points, values, (height, width), sigma, cutoff=cutoff)

    if mode == "plain":
        out = render(image)
    else:
        degrade = _downsampler(downsample, (h, w))
        if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
            raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
            raise TypeError(f"tolerance must be a real number, got {type(tolerance).__name__}")
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be >= 0 and finite, got {tolerance}")
        out = solve_consistent(image, render, degrade, int(iterations), float(tolerance))
    return out[0] if unbatched else out


def solve_consistent(
    target: torch.Tensor,
    render: Callable[[torch.Tensor], torch.Tensor],
    degrade: Callable[[torch.Tensor], torch.Tensor],
    iterations: int,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """Minimal-residual solve of ``degrade(render(v)) = target``; returns ``render(v)``.

    Both maps must be linear. Starting from v = target, each iteration takes the residual
    r = target - degrade(render(v)) as the search direction and the step that minimises the new
    residual, separately for every (batch, channel) plane. It converges when the symmetric part of
    ``degrade o render`` is positive definite (true for Gaussian rendering followed by the PIL
    filters on a uniform grid). ``render`` is linear, so the output is updated incrementally:
    one render and one degrade per iteration.

    Args:
        target: [B, C, h, w] the low-resolution image y.
        render: [B, C, h, w] -> [B, C, H, W].
        degrade: [B, C, H, W] -> [B, C, h, w].
        iterations: maximum number of iterations.
        tolerance: stop once ||residual|| <= tolerance * ||target|| over the whole batch.

    Returns:
        [B, C, H, W] the rendered solution.
    """
    out = render(target)  # [B, C, H, W]
    residual = target - degrade(out)  # [B, C, h, w]
    target_norm = target.detach().norm()
    tiny = torch.finfo(target.dtype).tiny
    for _ in range(iterations):
        if tolerance > 0 and residual.detach().norm() <= tolerance * target_norm:
            break
        direction_hi = render(residual)  # [B, C, H, W]
        direction_lo = degrade(direction_hi)  # [B, C, h, w]
        numerator = (residual * direction_lo).sum(dim=(-1, -2), keepdim=True)  # [B, C, 1, 1]
        denominator = (direction_lo * direction_lo).sum(dim=(-1, -2), keepdim=True)
        step = numerator / denominator.clamp_min(tiny)
        out = out + step * direction_hi
        residual = residual - step * direction_lo
    return out


def _downsampler(
    downsample: str | Callable[[torch.Tensor], torch.Tensor], low_size: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(downsample, str):
        if downsample not in PIL_FILTERS:
            raise ValueError(
                f"downsample must be one of {PIL_FILTERS} or a callable, got {downsample!r}"
            )
        return lambda high: resample(high, low_size, downsample)
    if callable(downsample):

        def checked(high: torch.Tensor) -> torch.Tensor:
            low = downsample(high)
            if not isinstance(low, torch.Tensor) or low.shape[-2:] != low_size:
                got = list(low.shape) if isinstance(low, torch.Tensor) else type(low).__name__
                raise ValueError(
                    f"downsample must map [B, C, H, W] to [B, C, {low_size[0]}, {low_size[1]}], "
                    f"got {got}"
                )
            return low

        return checked
    raise TypeError(
        f"downsample must be a PIL filter name or a callable, got {type(downsample).__name__}"
    )


# --- PIL-equivalent separable resampling -----------------------------------------------------


def _pil_kernel(name: str, x: torch.Tensor) -> torch.Tensor:
    """The filter functions of Pillow's Resample.c, evaluated at x (float64)."""
    ax = x.abs()
    if name == "box":
        return ((x > -0.5) & (x <= 0.5)).to(x.dtype)
    if name == "bilinear":
        return (1.0 - ax).clamp_min(0.0)
    if name == "hamming":
        px = math.pi * ax
        value = torch.sin(px) / px.clamp_min(1e-300) * (0.54 + 0.46 * torch.cos(px))
        return torch.where(ax == 0, torch.ones_like(x), torch.where(ax >= 1, 0.0, value))
    if name == "bicubic":
        a = -0.5
        inner = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
        outer = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
        return torch.where(ax < 1, inner, torch.where(ax < 2, outer, 0.0))
    if name == "lanczos":
        return torch.where((x >= -3) & (x < 3), _sinc(x) * _sinc(x / 3.0), 0.0)
    raise ValueError(f"filter must be one of {PIL_FILTERS}, got {name!r}")


def _sinc(x: torch.Tensor) -> torch.Tensor:
    px = math.pi * x
    safe = torch.where(x == 0, torch.ones_like(px), px)
    return torch.where(x == 0, torch.ones_like(x), torch.sin(safe) / safe)


_SUPPORT = {"box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def resampling_taps(
    in_size: int, out_size: int, filter: str, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's resampling coefficients along one axis, as (index [out, K], weight [out, K]).

    Output sample i is sum_k weight[i, k] * input[index[i, k]], exactly as Pillow's
    ``precompute_coeffs`` (centre (i + 0.5) * in/out, filter support widened by the reduction
    factor) or, for "nearest", input index floor((i + 0.5) * in / out) as Pillow rounds it.
    Weights are float64.
    """
    scale = in_size / out_size
    out_index = torch.arange(out_size, dtype=torch.float64, device=device)  # [out]
    centre = (out_index + 0.5) * scale
    if filter == "nearest":
        # Pillow accumulates the source coordinate in double precision, step by step; summing the
        # same way reproduces its choice where (i + 0.5) * scale rounds to an integer.
        source = itertools.accumulate([scale] * (out_size - 1), initial=0.5 * scale)
        index = torch.tensor([int(x) for x in source], dtype=torch.long, device=device)
        index = index.clamp(0, in_size - 1).unsqueeze(1)  # [out, 1]
        return index, torch.ones(out_size, 1, dtype=torch.float64, device=device)
    if filter not in _SUPPORT:
        raise ValueError(f"filter must be one of {PIL_FILTERS}, got {filter!r}")
    filter_scale = max(scale, 1.0)
    support = _SUPPORT[filter] * filter_scale
    taps = int(math.ceil(support)) * 2 + 1
    first = torch.trunc(centre - support + 0.5).clamp_min(0)  # [out]
    last = torch.trunc(centre + support + 0.5).clamp_max(in_size)  # [out], exclusive
    index = first.unsqueeze(1) + torch.arange(taps, dtype=torch.float64, device=device)  # [out, K]
    weight = _pil_kernel(filter, (index - centre.unsqueeze(1) + 0.5) / filter_scale)
    weight = torch.where(index < last.unsqueeze(1), weight, 0.0)
    total = weight.sum(dim=1, keepdim=True)
    weight = torch.where(total != 0, weight / torch.where(total != 0, total, 1.0), weight)
    return index.long().clamp(0, in_size - 1), weight


def resample(image: torch.Tensor, size: tuple[int, int], filter: str = "box") -> torch.Tensor:
    """``PIL.Image.resize(size, filter)`` of a float image, in PyTorch (any device, differentiable).

    Separable: along the width, then along the height, as Pillow does. Matches Pillow's float
    ("F" mode) resize to float32 rounding, for downsampling and upsampling alike.

    Args:
        image: [B, C, H, W] or [C, H, W] floating-point.
        size: (h, w) of the result (note: PIL's ``resize`` takes (w, h)).
        filter: one of PIL_FILTERS.
    Returns:
        [B, C, h, w] (or [C, h, w]).
    """
    image = _check_image(image)
    if not isinstance(filter, str) or filter not in PIL_FILTERS:
        raise ValueError(f"filter must be one of {PIL_FILTERS}, got {filter!r}")
    out_h, out_w = check_size(size)
    in_h, in_w = image.shape[-2:]
    out = image
    if out_w != in_w:
        out = _resample_last_axis(out, in_w, out_w, filter)
    if out_h != in_h:
        out = _resample_last_axis(out.transpose(-1, -2), in_h, out_h, filter).transpose(-1, -2)
    return out.contiguous() if out is not image else out.clone()


def _resample_last_axis(x: torch.Tensor, in_size: int, out_size: int, filter: str) -> torch.Tensor:
    index, weight = resampling_taps(in_size, out_size, filter, x.device)  # [out, K] each
    gathered = x[..., index]  # [..., out, K]
    return (gathered * weight.to(x.dtype)).sum(dim=-1)
