"""Uniform upsampling with the operator: the paper's experiment (``nuir.upsample``)."""

from __future__ import annotations

import numbers

import torch

from nuir._validate import check_float_tensor, check_size
from nuir.ops import interpolate


def upsample(
    image: torch.Tensor,
    scale_factor: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    sigma: float | None = None,
    *,
    cutoff: float = 3.0,
) -> torch.Tensor:
    """Uniform upsampling (the paper's experiment): one point per low-resolution pixel.

    The low-resolution pixel (r, s) becomes a point at x = (s + 0.5) * sx - 0.5,
    y = (r + 0.5) * sy - 0.5 on the output grid, with sx = W / w, sy = H / h.

    Args:
        image: [B, C, h, w] or [C, h, w].
        scale_factor: a number or (sy, sx); exactly one of scale_factor and size.
        size: (H, W) of the output.
        sigma: Gaussian standard deviation in output pixels (default 0.5 * max(sx, sy)).
    Returns:
        [B, C, H, W] (or [C, H, W]).
    """
    image = check_float_tensor("image", image)
    if image.dim() not in (3, 4):
        raise ValueError(
            f"image must have shape [B, C, h, w] or [C, h, w], got {list(image.shape)}"
        )
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
        if not (sy > 0 and sx > 0):
            raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}")
        size = (max(1, int(round(h * sy))), max(1, int(round(w * sx))))
    height, width = check_size(size)
    sy, sx = height / h, width / w
    if sigma is None:
        sigma = 0.5 * max(sx, sy)
    ys = (torch.arange(h, device=image.device, dtype=image.dtype) + 0.5) * sy - 0.5
    xs = (torch.arange(w, device=image.device, dtype=image.dtype) + 0.5) * sx - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y], dim=-1).reshape(1, h * w, 2).expand(batch, -1, -1)
    values = image.reshape(batch, channels, h * w).transpose(1, 2)  # [B, h*w, C]
    out = interpolate(points, values, (height, width), sigma, cutoff=cutoff)
    return out[0] if unbatched else out
