"""Soft Mining: importance sampling of the pixels by their error with Langevin updates (Kheradmand
et al., "Accelerating Neural Field Training via Soft Mining", CVPR 2024), after its released code
(github ubc-vision/nf-soft-mining at commit ce17cb1, ``examples/datasets/lmc.py``, the loop of
``examples/train_ngp_nerf_prop.py``) and EVOS's 2D adaptation of it (github zwx-open/EVOS-INR at
commit 3261484, ``components/lmc``); re-implemented here, no code copied.

A fixed number of samples (``ratio`` of the pixels) live at continuous positions. Each step they
move along the gradient of the log of their loss (Langevin: ``step_size`` x the score plus
``noise`` x a normal draw), the lowest-loss 10 % and those that left the image are re-drawn from
a Sobel-edge prior, and the last 10 % are drawn uniformly; each looks up its nearest pixel. The
loss of each sample is weighted by q^-rho (q: its absolute error), rho rising to ``alpha`` over
the first ``warmup`` steps, clamped to [0.2, mean + std] (the correction that makes the mined
samples an estimate of the whole image's loss). The score is the upstream rule after its fix
``ce17cb1`` (gradient / the weighted loss), not the extra 1/w of EVOS's earlier copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.sampling.base import PixelBatch, PixelSampler, StepContext, check_fraction
from models.sampling.evos import GREY

FP16_EPS = 9.77e-4  # the floor of q (the code's fp16 epsilon)


def sobel_prior(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image [C, H, W], over its maximum, in [1e-5, 1]:
    [H * W] unnormalised probabilities."""
    grey = image[0] if image.shape[0] == 1 else sum(w * c for w, c in zip(GREY, image[:3]))
    kx = grey.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx = F.conv2d(grey[None, None], kx[None, None], padding=1)[0, 0]
    gy = F.conv2d(grey[None, None], kx.T[None, None], padding=1)[0, 0]
    magnitude = (gx.square() + gy.square()).sqrt()
    return (magnitude / magnitude.max().clamp_min(1e-12)).clamp(1e-5, 1.0).flatten()


class SoftMining(PixelSampler):
    """Soft Mining (see the module docstring).

    Args:
        ratio: samples per step as a share of the pixels (0.5 in EVOS's comparison).
        step_size, noise: the Langevin step (a) and noise (b) of the released code (20, 0.02).
        alpha: the exponent of the loss correction (0.6), reached after ``warmup`` steps x 0.6.
        warmup: steps over which rho rises by 1 / warmup per step (1000).
        uniform_share, reset_share: the share of samples drawn uniformly every step, and of the
            lowest-loss samples re-drawn from the edge prior (0.1 and 0.1).
    """

    whole_image = True
    wants_coordinate_grad = True

    def __init__(
        self,
        ratio: float = 0.5,
        step_size: float = 20.0,
        noise: float = 0.02,
        alpha: float = 0.6,
        warmup: int = 1000,
        uniform_share: float = 0.1,
        reset_share: float = 0.1,
    ) -> None:
        super().__init__()
        self.ratio = check_fraction("ratio", ratio)
        for name, value in (("step_size", step_size), ("noise", noise), ("alpha", alpha)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {warmup!r}")
        self.step_size, self.noise, self.alpha, self.warmup = step_size, noise, alpha, warmup
        self.uniform_share = check_fraction("uniform_share", uniform_share)
        self.reset_share = check_fraction("reset_share", reset_share)
        # Sample state: positions (row, col) in [0, 1]^2, the score for the next move, the
        # weighted loss of each sample at its last step.
        self.register_buffer("positions", torch.zeros(0, 2))
        self.register_buffer("score", torch.zeros(0, 2))
        self.register_buffer("weighted_loss", torch.zeros(0))
        self.prior: torch.Tensor | None = None
        self.size = (0, 0)

    def setup(self, image, size, generator) -> None:
        if image is None:
            raise ValueError(
                "Soft Mining draws from an edge prior of the whole image: unset crop_size"
            )
        self.size = tuple(size)
        self.prior = sobel_prior(image)
        if self.positions.numel() == 0:  # not restored from a checkpoint
            count = math.ceil(self.ratio * size[0] * size[1])
            pixels = torch.randint(0, size[0] * size[1], (count,), generator=generator)
            self.positions = self.to_unit(pixels).to(self.positions.device)

    def to_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        """Flat pixel indices -> (row, col) / (H - 1, W - 1)."""
        height, width = self.size
        scale = torch.tensor([max(height - 1, 1), max(width - 1, 1)], dtype=torch.float32)
        return torch.stack([pixels // width, pixels % width], 1).float() / scale

    def draw(self, context: StepContext) -> PixelBatch:
        height, width = self.size
        if self.score.numel() > 0:
            self.move(context.generator)
        scale = self.positions.new_tensor([max(height - 1, 1), max(width - 1, 1)])
        pixel = (self.positions * scale).round().long()
        return PixelBatch(pixel[:, 0], pixel[:, 1])

    @torch.no_grad()
    def move(self, generator: torch.Generator) -> None:
        count = self.positions.shape[0]
        noise = torch.randn(count, 2, generator=generator).to(self.positions)
        moved = self.positions + self.step_size * self.score + self.noise * noise
        resets = int(self.reset_share * count)
        threshold = torch.kthvalue(self.weighted_loss, min(resets + 1, count)).values
        bad = ((moved < 0) | (moved > 1)).any(1) | (self.weighted_loss <= threshold)
        uniform = int(self.uniform_share * count)
        if uniform:
            moved[-uniform:] = torch.rand(uniform, 2, generator=generator).to(moved)
        redraw = int(bad.sum())
        if redraw:
            pixels = torch.multinomial(self.prior, redraw, replacement=True, generator=generator)
            moved[bad] = self.to_unit(pixels).to(moved)
        self.positions = moved.clamp(0, 1)

    def observe(self, batch, prediction, target, context) -> None:
        difference = prediction.detach() - target
        q = difference.abs().mean(1).clamp_min(FP16_EPS)  # [n]
        rho = min((context.step + 1) / self.warmup, self.alpha)
        weights = q.pow(-rho)
        upper = float(weights.mean() + weights.std()) if weights.numel() > 1 else float(weights)
        batch.weights = weights.clamp(0.2, max(upper, 0.2))
        self.weighted_loss = batch.weights * difference.square().mean(1)
        return None

    def after_backward(self, batch, coordinate_grad: torch.Tensor) -> None:
        # coordinate_grad is (x, y) in network units; the positions are (row, col)
        grad = coordinate_grad.detach().flip(1)
        self.score = grad / (self.weighted_loss[:, None] + 1e-12)

    def expected_fraction(self) -> float:
        return self.ratio
