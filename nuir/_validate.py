"""Argument checking and normalisation shared by the compiled op and the reference, and the
spacing rule behind the default sigma.

Everything the kernels see has been brought to one form here:

    points  [B, N, 2]   (x, y) pixel units
    values  [B, N, C]
    cov3    [B, N, 3]   (sxx, sxy, syy): the symmetric covariance of each Gaussian
    weights [B, N]      non-negative
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Prepared:
    points: torch.Tensor  # [B, N, 2]
    values: torch.Tensor  # [B, N, C]
    cov3: torch.Tensor  # [B, N, 3]
    weights: torch.Tensor  # [B, N]
    height: int
    width: int
    cutoff: float
    fill: float
    unbatched: bool

    def finish(self, image: torch.Tensor, weight: torch.Tensor, return_weight: bool):
        """The public result from the kernel-form image [B, C, H, W] and weight map [B, H, W]:
        unbatched if the input was, the weight map in the values' dtype."""
        weight = weight.to(self.values.dtype)
        if self.unbatched:
            image, weight = image[0], weight[0]
        return (image, weight) if return_weight else image


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_float_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    return t


def check_size(size: object) -> tuple[int, int]:
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"size must be a pair (H, W) of ints, got {size!r}")
    out = []
    for axis, s in zip("HW", size):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"size must be a pair (H, W) of ints, got {axis}={s!r}")
        if int(s) <= 0:
            raise ValueError(f"size must be positive, got {axis}={int(s)} in size={tuple(size)}")
        out.append(int(s))
    return out[0], out[1]


def mean_spacing(size: tuple[int, int], n: int) -> float:
    """Mean distance between n points spread evenly over an (H, W) raster: sqrt(H W / n)."""
    height, width = check_size(size)
    return math.sqrt(height * width / max(int(n), 1))


def sigma_from_spacing(size: tuple[int, int], n: int, fraction: float = 0.5) -> float:
    """The usual shared sigma of n points on an (H, W) raster: ``fraction`` of their mean spacing
    (half by default: neighbouring Gaussians overlap without blurring much). nuir.interpolate's
    default sigma."""
    return fraction * mean_spacing(size, n)


def check_scalar(name: str, x: object, *, positive: bool, allow_inf: bool) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    if math.isinf(x) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {x}")
    if positive and x <= 0:
        raise ValueError(f"{name} must be > 0, got {x}")
    return x


def prepare(
    points, values, size, sigma=None, cov=None, weights=None, cutoff=3.0, fill=0.0, *, check=True
) -> Prepared:
    """Validate nuir.interpolate's arguments (see there) and bring them to the batched kernel form.

    Types, shapes, devices and dtypes are always checked (no device synchronisation). The checks
    of tensor values (finite points, sigma > 0, SPD covariances, weights >= 0) and of the output
    size against free memory need one host synchronisation; ``check=False`` skips them, as does
    tracing by torch.compile.
    """
    points = check_float_tensor("points", points)
    values = check_float_tensor("values", values)
    height, width = check_size(size)
    cutoff = check_scalar("cutoff", cutoff, positive=True, allow_inf=True)
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f"fill must be a real number, got {type(fill).__name__}")
    unbatched = _check_points_values(points, values)
    if unbatched:
        points, values = points.unsqueeze(0), values.unsqueeze(0)
    batched = _Batched(points, unbatched)

    value_checks = [("points must be finite (found NaN or inf)", lambda: torch.isfinite(points))]
    if sigma is not None and cov is not None:
        raise ValueError("give either sigma or cov, not both")
    if cov is not None:
        cov3 = _cov3_from_cov(batched(check_float_tensor("cov", cov), "cov", (2, 2)), value_checks)
    else:
        cov3 = _cov3_from_sigma(sigma, batched, height, width, value_checks)
    if weights is None:
        weights = points.new_ones(()).expand(points.shape[:2])
    else:
        weights = batched(check_float_tensor("weights", weights), "weights", ())
        value_checks.append(
            ("weights must be >= 0 and finite", lambda: torch.isfinite(weights) & (weights >= 0))
        )

    if check and not torch.compiler.is_compiling():
        batch, channels = values.shape[0], values.shape[-1]
        check_output_size(batch, channels, height, width, values.dtype, values.device)
        _raise_first_failure(value_checks)
    return Prepared(points, values, cov3, weights, height, width, cutoff, float(fill), unbatched)


def _check_points_values(points: torch.Tensor, values: torch.Tensor) -> bool:
    """Shapes of points [B, N, 2] or [N, 2] and values to match; returns whether unbatched."""
    if points.dim() not in (2, 3) or points.shape[-1] != 2:
        raise ValueError(f"points must have shape [B, N, 2] or [N, 2], got {_shape(points)}")
    unbatched = points.dim() == 2
    if values.dim() != points.dim():
        want = "[N, C]" if unbatched else "[B, N, C]"
        raise ValueError(
            f"values must have shape {want} to match points {_shape(points)}, got {_shape(values)}"
        )
    if values.shape[:-1] != points.shape[:-1]:
        raise ValueError(
            f"values {_shape(values)} and points {_shape(points)} disagree on the batch / point "
            "dimensions"
        )
    if values.shape[-1] < 1:
        raise ValueError(f"values must have at least one channel, got {_shape(values)}")
    _same_device_dtype("values", values, points)
    return unbatched


class _Batched:
    """Checks a per-point tensor against points (batched [B, N, 2]) and gives it batched."""

    def __init__(self, points: torch.Tensor, unbatched: bool):
        self.points, self.unbatched = points, unbatched
        self.lead = tuple(points.shape[:2])

    def __call__(self, t: torch.Tensor, name: str, trailing: tuple[int, ...]) -> torch.Tensor:
        _same_device_dtype(name, t, self.points)
        want = (self.lead[1:] if self.unbatched else self.lead) + trailing
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name} must have shape {list(want)} to match points, got {_shape(t)}"
            )
        return t.unsqueeze(0) if self.unbatched else t


# A check of tensor values: (message, function giving a bool tensor that must be all True).
ValueCheck = tuple[str, Callable[[], torch.Tensor]]


def _cov3_from_cov(cov: torch.Tensor, value_checks: list[ValueCheck]) -> torch.Tensor:
    """cov [B, N, 2, 2] -> (sxx, sxy, syy) [B, N, 3]; adds the checks of symmetry and SPD."""
    sxx, sxy, syx, syy = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 0], cov[..., 1, 1]

    def symmetric():
        scale = cov.abs().amax(dim=(-1, -2)).clamp_min(torch.finfo(cov.dtype).tiny)
        return (sxy - syx).abs() <= 1e-5 * scale

    def positive_definite():
        finite = torch.isfinite(cov).flatten(-2).all(-1)
        return finite & (sxx > 0) & (sxx * syy - sxy * syx > 0)

    value_checks.append(("cov must be symmetric (cov[..., 0, 1] == cov[..., 1, 0])", symmetric))
    value_checks.append(
        (
            "cov must be positive definite and finite (cov[..., 0, 0] > 0 and det > 0)",
            positive_definite,
        )
    )
    return torch.stack([sxx, 0.5 * (sxy + syx), syy], dim=-1)


def _cov3_from_sigma(
    sigma: float | torch.Tensor | None,
    batched: _Batched,
    height: int,
    width: int,
    value_checks: list[ValueCheck],
) -> torch.Tensor:
    """sigma (None, a float, [B, N] or [B, N, 2]) -> (sxx, 0, syy) [B, N, 3]; adds its check."""
    points, lead = batched.points, batched.lead
    if sigma is None:
        sigma = sigma_from_spacing((height, width), lead[1])
    if not isinstance(sigma, torch.Tensor):
        s = check_scalar("sigma", sigma, positive=True, allow_inf=False)
        return points.new_tensor([s * s, 0.0, s * s]).expand(*lead, 3)
    sigma = check_float_tensor("sigma", sigma)
    base_dim = 1 if batched.unbatched else 2
    if sigma.dim() == base_dim + 1:
        sigma = batched(sigma, "sigma", (2,))  # [B, N, 2]
    elif sigma.dim() == base_dim:
        sigma = batched(sigma, "sigma", ()).unsqueeze(-1).expand(*lead, 2)
    else:
        want = "[N] or [N, 2]" if batched.unbatched else "[B, N] or [B, N, 2]"
        raise ValueError(f"sigma must be a float or have shape {want}, got {_shape(sigma)}")
    var = sigma * sigma
    value_checks.append(
        ("sigma must be > 0 and finite", lambda: torch.isfinite(sigma) & (sigma > 0))
    )
    return torch.stack([var[..., 0], torch.zeros_like(var[..., 0]), var[..., 1]], dim=-1)


def _raise_first_failure(checks: list[ValueCheck]) -> None:
    """Evaluates every check with one host synchronisation; raises the first that fails."""
    results = torch.stack([fn().all() for _, fn in checks]).tolist()
    for (message, _), good in zip(checks, results):
        if not good:
            raise ValueError(message)


def _same_device_dtype(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but points is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but points has dtype {ref.dtype}")


def check_output_size(batch: int, channels: int, height: int, width: int, dtype, device) -> None:
    """Refuse outputs that cannot be allocated before any kernel runs."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    n_bytes = batch * (channels + 1) * height * width * itemsize
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limit = free
    else:
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            limit = 1 << 50
    if n_bytes > limit or height * width > 2**40:
        raise ValueError(
            f"size=({height}, {width}) with batch {batch} and {channels} channels needs "
            f"{n_bytes / 2**30:.1f} GiB for the output, more than the {limit / 2**30:.1f} GiB "
            f"available on {device}"
        )
