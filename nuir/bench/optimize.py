"""Optimising the points themselves: the paper's Section 3.3, with exact gradients.

    python -m nuir.bench optimize [--photo coffee] [--crop 256] [--points N] [--steps 300]

A fixed number N of points is placed uniformly at random over a photo (values: the photo sampled
bilinearly at the points; sigma: half the mean spacing, nuir's default) and optimised with Adam
to minimise the L1 error of ``nuir.interpolate`` against the photo. Runs compare what is
optimised: values only, positions only, positions + sigma, and all three, and the same N on a
uniform grid (fixed, values only, all), and plain gradient descent (SGD) on positions as the
paper did. Parametrisation: positions in pixels (Adam moves each by about `lr` pixels per step,
whatever the size of its gradient), sigma as log(sigma) (scale-free and always positive), values
as they are. After every step positions are kept inside the image, sigma >= 0.3 px, and, when
sigma is learnt, every pixel that no Gaussian reached in that step's forward pass makes its
nearest point's sigma grow until it reaches it (``--no-cover`` turns this off): a pixel beyond
every cutoff has an error but no gradient, so without this shrinking sigmas open holes that the
gradient cannot see and the loss climbs back up.

Writes ``results.csv`` (one row per run: L1 / PSNR / SSIM before and after), ``curves.csv``,
``summary.md``, ``optimize_curves.png`` (L1 against step) and ``optimize_points.png`` (points
before and after over the photo, and the reconstructions).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import nuir
from nuir._cli import reading_input
from nuir._validate import sigma_from_spacing
from nuir.bench._common import (
    L1_SCALE,
    check_ranges,
    covering_sigma,
    image_metrics,
    markdown_table,
    pyplot,
    save_figure,
    to_pixels,
    to_tensor,
    write_csv,
)
from nuir.bench._images import load_images

MIN_SIGMA = 0.3
# A pixel that no Gaussian reaches gets no gradient at all; a wider cutoff than nuir's default 3
# keeps the far tails (density exp(-8) at 4 sigma) so that gaps feel their neighbours.
CUTOFF = 4.0
SIGMA_SCALE = 0.5  # initial sigma = 0.5 * mean spacing, nuir.interpolate's default


@dataclass(frozen=True)
class RunSpec:
    name: str
    layout: str  # "random" or "grid"
    learn: tuple[str, ...]  # subset of ("positions", "sigma", "values")
    sgd_lr: float | None = None  # plain gradient descent with this step instead of Adam


RUNS = (
    RunSpec("random: values", "random", ("values",)),
    RunSpec("random: positions", "random", ("positions",)),
    RunSpec("random: positions+sigma", "random", ("positions", "sigma")),
    RunSpec("random: all", "random", ("positions", "sigma", "values")),
    # Plain gradient descent on positions, as the paper did: per-point gradients of the mean L1
    # span three orders of magnitude, so one step size is too small for most points or too large
    # for some.
    RunSpec("random: positions, SGD lr=1e2", "random", ("positions",), sgd_lr=1e2),
    RunSpec("random: positions, SGD lr=1e4", "random", ("positions",), sgd_lr=1e4),
    RunSpec("grid: fixed", "grid", ()),
    RunSpec("grid: values", "grid", ("values",)),
    RunSpec("grid: all", "grid", ("positions", "sigma", "values")),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench optimize",
        description="Optimise point positions, sigma and values with Adam (paper Section 3.3).",
    )
    parser.add_argument("--photo", default="coffee", help="scikit-image photo name")
    parser.add_argument("--image", type=Path, default=None, help="an image file instead")
    parser.add_argument("--crop", type=int, default=256, help="centre crop (0: full size)")
    parser.add_argument(
        "--points", type=int, default=0, help="number of points N (default H * W / 16)"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr-positions", type=float, default=0.1, help="pixels per step")
    parser.add_argument("--lr-sigma", type=float, default=0.02, help="log-sigma per step")
    parser.add_argument("--lr-values", type=float, default=0.03, help="intensity per step")
    parser.add_argument(
        "--cutoff",
        type=float,
        default=CUTOFF,
        help=f"Mahalanobis cutoff of the Gaussians (default {CUTOFF})",
    )
    parser.add_argument(
        "--no-cover",
        dest="cover",
        action="store_false",
        help="do not grow sigma where pixels become unreached (see the module docstring)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_out/optimize"))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these runs (by name, e.g. 'random: all'); default: all",
    )
    args = parser.parse_args(argv)
    check_ranges(
        parser,
        args,
        above=("cutoff", "lr_positions", "lr_sigma", "lr_values"),
        at_least={"steps": 1, "points": 0},
    )
    names = [r.name for r in RUNS]
    if args.runs is not None and not set(args.runs) <= set(names):
        parser.error(f"--runs must be among {names}, got {args.runs}")
    return args


def sample_bilinear(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """image [C, H, W] at points [N, 2] (x, y) in pixel units, bilinear; [N, C]."""
    channels, height, width = image.shape
    grid = torch.stack(
        [2 * points[:, 0] / max(width - 1, 1) - 1, 2 * points[:, 1] / max(height - 1, 1) - 1],
        dim=-1,
    )  # [N, 2] in [-1, 1]
    sampled = torch.nn.functional.grid_sample(
        image[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )  # [1, C, 1, N]
    return sampled[0, :, 0].T


def initial_points(layout: str, n_points: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[N', 2] positions: uniform random (N' = N), or the most square grid with N' ~ N."""
    if layout == "random":
        generator = torch.Generator().manual_seed(seed)
        unit = torch.rand(n_points, 2, generator=generator, dtype=torch.float64)
        return (unit * torch.tensor([width, height]) - 0.5).float()
    columns = max(1, round(math.sqrt(n_points * width / height)))
    rows = max(1, round(n_points / columns))
    xs = (torch.arange(columns) + 0.5) * (width / columns) - 0.5
    ys = (torch.arange(rows) + 0.5) * (height / rows) - 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2).float()


@dataclass
class RunResult:
    spec: RunSpec
    n_points: int
    curve: list[float]  # L1 (0-255) before each step, then after the last
    before: dict[str, float]
    after: dict[str, float]
    points_before: np.ndarray  # [N, 2]
    points_after: np.ndarray
    image_before: np.ndarray  # [H, W, C]
    image_after: np.ndarray
    seconds_per_step: float


def optimise(
    spec: RunSpec, target: torch.Tensor, n_points: int, args: argparse.Namespace
) -> RunResult:
    """One optimisation run (Adam, or SGD where the spec says so); target [C, H, W] in [0, 1]."""
    _, height, width = target.shape
    points = initial_points(spec.layout, n_points, height, width, args.seed)  # [N, 2]
    n_points = len(points)
    values = sample_bilinear(target, points)  # [N, C]
    sigma = sigma_from_spacing((height, width), n_points, SIGMA_SCALE)
    log_sigma = torch.full((n_points,), math.log(sigma))  # [N]
    parameters = {"positions": points.clone(), "sigma": log_sigma, "values": values.clone()}
    learning_rates = {
        "positions": args.lr_positions,
        "sigma": args.lr_sigma,
        "values": args.lr_values,
    }
    groups = []
    for name in spec.learn:
        parameters[name].requires_grad_(True)
        groups.append({"params": [parameters[name]], "lr": spec.sgd_lr or learning_rates[name]})
    optimizer = None
    if groups:
        optimizer = torch.optim.SGD(groups) if spec.sgd_lr else torch.optim.Adam(groups)
    steps = args.steps if groups else 0
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if groups else None
    )

    def render(return_weight: bool = False):  # [C, H, W] (and the weight map [H, W])
        return nuir.interpolate(
            parameters["positions"],
            parameters["values"],
            (height, width),
            parameters["sigma"].exp(),
            cutoff=args.cutoff,
            return_weight=return_weight,
        )

    def reconstruct() -> np.ndarray:
        with torch.no_grad():
            return to_pixels(render())

    target_pixels = to_pixels(target)
    image_before = reconstruct()
    curve: list[float] = []
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        image, weight = render(return_weight=True)  # [C, H, W], [H, W]
        loss = (image - target).abs().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        curve.append(float(loss.detach()) * L1_SCALE)
        with torch.no_grad():
            positions = parameters["positions"]
            positions[:, 0].clamp_(-0.5, width - 0.5)
            positions[:, 1].clamp_(-0.5, height - 0.5)
            log_sigma = parameters["sigma"]
            log_sigma.clamp_(min=math.log(MIN_SIGMA))
            unreached = torch.nonzero(weight <= 0)  # [M, 2] (row, column)
            if args.cover and len(unreached) and "sigma" in spec.learn:
                # An unreached pixel has error but no gradient: grow its nearest point instead.
                covering = covering_sigma(
                    log_sigma.exp().double().numpy(),
                    positions.double().numpy(),
                    unreached.flip(1).double().numpy(),
                    args.cutoff,
                )
                log_sigma.copy_(torch.from_numpy(np.log(covering)).to(log_sigma.dtype))
    seconds = (time.perf_counter() - start) / max(steps, 1)
    image_after = reconstruct()
    after = image_metrics(image_after, target_pixels)
    curve.append(after["l1"])
    return RunResult(
        spec=spec,
        n_points=n_points,
        curve=curve,
        before=image_metrics(image_before, target_pixels),
        after=after,
        points_before=points.numpy(),
        points_after=parameters["positions"].detach().numpy().copy(),
        image_before=image_before,
        image_after=image_after,
        seconds_per_step=seconds,
    )


def plot_curves(results: list[RunResult], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for result in results:
        style = "--" if result.spec.layout == "grid" else "-"
        if len(result.curve) == 1:
            ax.axhline(result.curve[0], color="k", ls=":", lw=1, label=result.spec.name)
        else:
            ax.plot(result.curve, style, label=result.spec.name)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("L1 (0-255)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_points(result: RunResult, target: np.ndarray, path: Path) -> None:
    """Points before (blue) and after (red) over the photo, and both reconstructions."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    height, width, _ = target.shape
    side = min(96, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    window = (left - 0.5, left + side - 0.5, top + side - 0.5, top - 0.5)
    before, after = result.points_before, result.points_after
    axes[0].imshow(target)
    axes[0].scatter(before[:, 0], before[:, 1], s=1, c="tab:blue", label="before")
    axes[0].scatter(after[:, 0], after[:, 1], s=1, c="tab:red", label="after")
    axes[0].legend(loc="lower right", fontsize=7, markerscale=5)
    axes[0].set_title(f"{result.spec.name}: all points", fontsize=9)
    axes[1].imshow(target)
    inside = (
        (before[:, 0] >= window[0])
        & (before[:, 0] <= window[1])
        & (before[:, 1] >= window[3])
        & (before[:, 1] <= window[2])
    )
    for (x0, y0), (x1, y1) in zip(before[inside], after[inside]):
        axes[1].plot([x0, x1], [y0, y1], color="w", lw=0.5)
    axes[1].scatter(before[inside, 0], before[inside, 1], s=6, c="tab:blue")
    axes[1].scatter(after[inside, 0], after[inside, 1], s=6, c="tab:red")
    axes[1].set_xlim(window[0], window[1])
    axes[1].set_ylim(window[2], window[3])
    axes[1].set_title("centre crop: moves", fontsize=9)
    for ax, image, label, metrics in (
        (axes[2], result.image_before, "before", result.before),
        (axes[3], result.image_after, "after", result.after),
    ):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(f"{label}: L1 {metrics['l1']:.2f}, PSNR {metrics['psnr']:.2f} dB", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path, dpi=80, palette=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with reading_input():
        if args.image is not None:
            photo = load_images(args.image.parent, crop=args.crop)
            photo = [p for p in photo if p.name == args.image.stem]
            if not photo:
                raise ValueError(f"image: cannot read {str(args.image)!r}")
        else:
            photo = load_images(photos=[args.photo], crop=args.crop)
    pixels = photo[0].pixels
    height, width, _ = pixels.shape
    target = to_tensor(pixels)[0]  # [C, H, W]
    n_points = args.points or max(1, height * width // 16)
    specs = [r for r in RUNS if args.runs is None or r.name in args.runs]
    torch.manual_seed(args.seed)
    results = [optimise(spec, target, n_points, args) for spec in tqdm(specs, desc="runs")]

    rows, curves = [], []
    for r in results:
        reduction = 100 * (1 - r.after["l1"] / r.before["l1"])
        rows.append(
            {
                "run": r.spec.name,
                "points": r.n_points,
                "steps": len(r.curve) - 1,
                "l1_before": r.before["l1"],
                "l1_after": r.after["l1"],
                "l1_reduction_percent": reduction,
                "psnr_before": r.before["psnr"],
                "psnr_after": r.after["psnr"],
                "ssim_before": r.before["ssim"],
                "ssim_after": r.after["ssim"],
                "seconds_per_step": r.seconds_per_step,
            }
        )
        curves += [{"run": r.spec.name, "step": i, "l1": v} for i, v in enumerate(r.curve)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "results.csv", rows)
    write_csv(args.out / "curves.csv", curves)
    header = [
        "run",
        "N",
        "L1 before",
        "L1 after",
        "L1 change",
        "PSNR before",
        "PSNR after",
        "SSIM after",
        "s/step",
    ]
    table = [
        [
            row["run"],
            row["points"],
            row["l1_before"],
            row["l1_after"],
            f"{-row['l1_reduction_percent']:+.1f}%",
            row["psnr_before"],
            row["psnr_after"],
            row["ssim_after"],
            f"{row['seconds_per_step']:.3f}",
        ]
        for row in rows
    ]
    text = (
        f"optimize: {photo[0].name} {height}x{width}, N = {n_points}, {args.steps} steps, Adam "
        "unless marked SGD "
        f"(lr positions {args.lr_positions} px, log-sigma {args.lr_sigma}, values "
        f"{args.lr_values}), L1 on the 0-255 scale\n\n" + markdown_table(header, table)
    )
    print(text)
    (args.out / "summary.md").write_text(text + "\n")
    plot_curves(results, args.out / "optimize_curves.png")
    showcase = next((r for r in results if r.spec.name == "random: all"), results[-1])
    plot_points(showcase, pixels, args.out / "optimize_points.png")
    print(f"\nwrote results.csv, curves.csv, summary.md and the plots in {args.out}")
    return 0
