"""Pure-PyTorch twin of the operator: the specification every kernel is tested against.

The operator (docs/operator.md). Point i has mean mu_i (x, y in pixels; pixel (row r, column s)
has its centre at (s, r)), covariance Sigma_i, weight a_i >= 0 and value c_i in R^C. At pixel q,
with d = q - mu_i and m_iq = d^T Sigma_i^-1 d,

    w_iq = a_i / (2 pi sqrt(det Sigma_i)) * exp(-m_iq / 2)   where m_iq <= cutoff^2, else 0
    W_q  = sum_i w_iq                                        (the weight map)
    v_q  = sum_i w_iq c_i / W_q                              (fill where W_q == 0)

Gradients, for a loss L with g_q = dL/dv_q and dL/dW_q, are those of this definition (the cutoff
indicator is not differentiated). With G_q = g_q / W_q and k_iq = <G_q, c_i> - <G_q, v_q> + dL/dW_q
(G_q = 0, k_iq = dL/dW_q where W_q == 0), and u = Sigma_i^-1 d:

    dL/dc_i     = sum_q w_iq G_q
    dL/da_i     = sum_q k_iq w_iq / a_i
    dL/dmu_i    = sum_q k_iq w_iq u
    dL/dSigma_i = 1/2 sum_q k_iq w_iq (u u^T - Sigma_i^-1)

This module evaluates the definition literally, pixel chunk by pixel chunk, and lets autograd
differentiate it. Chunks are checkpointed, so the backward keeps no per-pair tensors either.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from nuir._validate import prepare

_PAIRS_PER_CHUNK = 1 << 22


def interpolate(points, values, size, sigma=None, *, return_weight=False, **options):
    """:func:`nuir.interpolate` (the same arguments and result), in plain PyTorch."""
    p = prepare(points, values, size, sigma, **options)
    image, weight = interpolate_cov3(
        p.points, p.values, p.cov3, p.weights, p.height, p.width, p.cutoff, p.fill
    )
    return p.finish(image, weight, return_weight)


def interpolate_cov3(
    points: torch.Tensor,  # [B, N, 2]
    values: torch.Tensor,  # [B, N, C]
    cov3: torch.Tensor,  # [B, N, 3] (sxx, sxy, syy)
    weights: torch.Tensor,  # [B, N]
    height: int,
    width: int,
    cutoff: float,
    fill: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel-form reference: returns image [B, C, H, W] and weight map [B, H, W]."""
    batch, n_points, channels = values.shape
    compute_dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    args = [t.to(compute_dtype) for t in (points, values, cov3, weights)]
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // max(1, width * n_points))
    images, weight_maps = [], []
    for row0 in range(0, height, rows_per_chunk):
        rows = min(rows_per_chunk, height - row0)
        chunk = _ChunkFn(row0, rows, width, cutoff, fill)
        if torch.is_grad_enabled() and any(t.requires_grad for t in args):
            image, weight = checkpoint(chunk, *args, use_reentrant=False)
        else:
            image, weight = chunk(*args)
        images.append(image)
        weight_maps.append(weight)
    image = torch.cat(images, dim=2) if images else values.new_zeros(batch, channels, 0, width)
    weight = torch.cat(weight_maps, dim=1)
    return image.to(values.dtype), weight.to(values.dtype)


class _ChunkFn:
    """Rows [row0, row0 + rows) of the output, every pixel against every point."""

    def __init__(self, row0: int, rows: int, width: int, cutoff: float, fill: float):
        self.row0, self.rows, self.width, self.cutoff, self.fill = row0, rows, width, cutoff, fill

    def __call__(self, points, values, cov3, weights):
        batch, _, channels = values.shape
        ys, xs = torch.meshgrid(
            torch.arange(
                self.row0, self.row0 + self.rows, device=points.device, dtype=points.dtype
            ),
            torch.arange(self.width, device=points.device, dtype=points.dtype),
            indexing="ij",
        )
        dx = xs.reshape(1, -1, 1) - points[:, None, :, 0]  # [B, P, N]
        dy = ys.reshape(1, -1, 1) - points[:, None, :, 1]  # [B, P, N]
        sxx, sxy, syy = cov3[..., 0], cov3[..., 1], cov3[..., 2]  # [B, N]
        det = sxx * syy - sxy * sxy
        # Sigma^-1 = [[syy, -sxy], [-sxy, sxx]] / det
        maha2 = (
            syy[:, None] * dx * dx - 2 * sxy[:, None] * dx * dy + sxx[:, None] * dy * dy
        ) / det[:, None]
        density = torch.exp(-0.5 * maha2) / (2 * math.pi * torch.sqrt(det))[:, None]
        w = weights[:, None, :] * density  # [B, P, N]
        if math.isfinite(self.cutoff):
            w = torch.where(maha2 <= self.cutoff * self.cutoff, w, torch.zeros_like(w))
        total = w.sum(-1)  # [B, P]
        numer = torch.einsum("bpn,bnc->bcp", w, values)  # [B, C, P]
        reached = total > 0
        safe_total = torch.where(reached, total, torch.ones_like(total))
        image = torch.where(
            reached[:, None], numer / safe_total[:, None], torch.full_like(numer, self.fill)
        )
        return (
            image.reshape(batch, channels, self.rows, self.width),
            total.reshape(batch, self.rows, self.width),
        )
