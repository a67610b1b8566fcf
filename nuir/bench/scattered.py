"""Scattered-data reconstruction: photos rebuilt from a subset of their pixels.

    python -m nuir.bench scattered [--images DIR] [--patterns random-4 random-16 ...] [--out DIR]

Patterns (which pixels are known): a uniformly random subset of 1/4, 1/16 or 1/64 of the pixels,
a blue-noise (Poisson-disk) subset of about 1/16, and the full image with square blocks missing.
Methods:

- ``griddata-nearest``, ``griddata-linear``, ``griddata-cubic``: ``scipy.interpolate.griddata``;
  the NaNs of linear and cubic outside the convex hull are filled with the nearest result.
- ``nuir-global``: ``nuir.interpolate`` with one sigma, a * the mean spacing sqrt(H W / N).
- ``nuir-knn``: per-point sigma, a * the mean distance to the K nearest other points.
- ``nuir-knn-consistent``: the same Gaussians, with point values solved so that the rendered image
  passes through the known pixels (``nuir.upsample.solve_consistent``): an interpolant.

If a rendering leaves pixels that no Gaussian reaches (large gaps, missing blocks), the nearest
point of each such pixel gets a sigma large enough to reach it (distance / cutoff) and the image
is rendered again: no pixel is left at `fill`.
Every method keeps the known pixels (pasted back into its output, a no-op for interpolants).
Times cover everything a method computes from the points (the sigma estimates included) and are
compared as ratios against griddata-linear measured in the same run.
Writes ``results.csv``, ``summary.md``, ``scattered.png`` (L1 per pattern, L1 against time) and
``scattered_example.png`` (crops of one photo).
"""

from __future__ import annotations

import argparse
import math
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import griddata
from tqdm import tqdm

import nuir
from nuir._cli import reading_input
from nuir._validate import sigma_from_spacing
from nuir.bench._common import (
    add_sweep_argument,
    check_ranges,
    covering_sigma,
    image_metrics,
    limit_scipy_blas_threads,
    markdown_table,
    mean_by,
    metric_tables,
    pyplot,
    save_figure,
    timed,
    write_csv,
)
from nuir.bench._images import Photo, add_photo_arguments, load_images
from nuir.samplers import local_spacing
from nuir.upsample import solve_consistent

PATTERNS = ("random-4", "random-16", "random-64", "blue-noise-16", "blocks")
GRIDDATA_METHODS = ("griddata-nearest", "griddata-linear", "griddata-cubic")
NUIR_METHODS = ("nuir-global", "nuir-knn", "nuir-knn-consistent")
# sigma scales a, picked by `--sweep` on the held-out photos (--photos tuning) with the random-16
# pattern; see docs/quality.md.
SIGMA_SCALE = {"nuir-global": 0.4, "nuir-knn": 0.5, "nuir-knn-consistent": 0.3}
CUTOFF = 5.0  # wider than nuir's default 3: fewer unreached pixels, picked on the tuning photos


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench scattered",
        description="Reconstruct photos from scattered pixels: scipy griddata against nuir.",
    )
    add_photo_arguments(parser, "")
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--knn", type=int, default=4, help="K of the per-point sigma (default 4)")
    parser.add_argument(
        "--cutoff", type=float, default=CUTOFF, help=f"nuir's Mahalanobis cutoff (default {CUTOFF})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for nuir (default 1: scipy's griddata is single-threaded)",
    )
    parser.add_argument(
        "--iterations", type=int, default=10, help="nuir-knn-consistent solver iterations"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="time each method this many times, keep the best"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_out/scattered"))
    for method in NUIR_METHODS:
        parser.add_argument(
            f"--{method.removeprefix('nuir-')}-sigma-scale",
            type=float,
            default=SIGMA_SCALE[method],
            help=f"{method}: sigma scale a (default {SIGMA_SCALE[method]})",
        )
    add_sweep_argument(parser, "the nuir methods")
    args = parser.parse_args(argv)
    check_ranges(
        parser,
        args,
        above=("cutoff",),
        at_least={"threads": 1, "knn": 1, "iterations": 0, "repeats": 1},
    )
    scales = [sigma_scale_of(args, m) for m in NUIR_METHODS]
    if not all(a > 0 for a in scales + (args.sweep or [])):
        parser.error("sigma scales must be > 0")
    return args


def sigma_scale_of(args: argparse.Namespace, method: str) -> float:
    """The --<method>-sigma-scale value of a nuir method."""
    return getattr(args, method.removeprefix("nuir-").replace("-", "_") + "_sigma_scale")


# --- patterns ----------------------------------------------------------------------------------


def known_pixels(pattern: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices (row * W + column) of the known pixels of a pattern."""
    n_pixels = height * width
    if pattern.startswith("random-"):
        fraction = 1 / int(pattern.removeprefix("random-"))
        count = max(3, round(n_pixels * fraction))
        return np.sort(rng.choice(n_pixels, size=count, replace=False))
    if pattern.startswith("blue-noise-"):
        count = max(3, round(n_pixels / int(pattern.removeprefix("blue-noise-"))))
        return blue_noise_pixels(height, width, count, rng)
    if pattern == "blocks":
        return blocks_pixels(height, width, rng)
    raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")


def blue_noise_pixels(height: int, width: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """About `count` pixels from a Poisson-disk sample (scipy.stats.qmc.PoissonDisk)."""
    from scipy.stats import qmc

    # A maximal Poisson-disk set of radius 0.75 * spacing holds a few % more than `count` points.
    radius = 0.75 * math.sqrt(height * width / count)
    engine = qmc.PoissonDisk(d=2, radius=radius, l_bounds=[0, 0], u_bounds=[width, height], rng=rng)
    samples = engine.fill_space()  # [M, 2] (x, y) in [0, W) x [0, H)
    if len(samples) > count:
        samples = samples[rng.choice(len(samples), size=count, replace=False)]
    columns = np.clip(samples[:, 0].astype(np.int64), 0, width - 1)
    rows = np.clip(samples[:, 1].astype(np.int64), 0, height - 1)
    return np.unique(rows * width + columns)


def blocks_pixels(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Every pixel except 12 random square blocks of side min(H, W) / 16 (at least 2)."""
    side = max(2, min(height, width) // 16)
    known = np.ones((height, width), dtype=bool)
    for _ in range(12):
        top = int(rng.integers(0, max(1, height - side + 1)))
        left = int(rng.integers(0, max(1, width - side + 1)))
        known[top : top + side, left : left + side] = False
    return np.flatnonzero(known)


# --- reconstructions ---------------------------------------------------------------------------


def pixel_points(indices: np.ndarray, width: int) -> np.ndarray:
    """Flat pixel indices -> [N, 2] (x, y) pixel centres."""
    return np.stack([indices % width, indices // width], axis=1).astype(np.float64)


# Pixel-aligned samples put thousands of query pixels exactly on Delaunay edges, where scipy's
# find_simplex falls back to a brute-force search over all triangles (a minute instead of 0.1 s at
# 384 x 384); querying 1e-3 px off the pixel centres avoids that and moves the result by at most
# 1e-3 times the local gradient.
QUERY_OFFSET = 1e-3


def griddata_reconstruct(
    indices: np.ndarray, values: np.ndarray, height: int, width: int, method: str
) -> np.ndarray:
    """scipy griddata at the unknown pixels; [H, W, C]. NaNs (outside the hull) take the nearest."""
    points = pixel_points(indices, width)  # [N, 2]
    unknown = np.ones(height * width, dtype=bool)
    unknown[indices] = False
    query = pixel_points(np.flatnonzero(unknown), width) + QUERY_OFFSET  # [M, 2]
    image = np.zeros((height * width, values.shape[1]))
    image[indices] = values
    filled = griddata(points, values, query, method=method)  # [M, C]
    missing = np.isnan(filled).any(axis=1)
    if missing.any():
        filled[missing] = griddata(points, values, query[missing], method="nearest")
    image[unknown] = filled
    return image.reshape(height, width, -1)


def nuir_sigma(
    method: str, points: np.ndarray, height: int, width: int, scale: float, k: int
) -> np.ndarray | float:
    """One sigma (nuir-global: a * mean spacing) or [N] per-point sigmas (a * kNN spacing)."""
    if method == "nuir-global":
        return sigma_from_spacing((height, width), len(points), scale)
    spacing = local_spacing(torch.from_numpy(points), k, fallback=1.0)
    return scale * spacing.numpy()


def nuir_reconstruct(
    method: str,
    indices: np.ndarray,
    values: np.ndarray,
    height: int,
    width: int,
    scale: float,
    k: int,
    iterations: int,
    cutoff: float = 3.0,
) -> np.ndarray:
    """One nuir method, end to end from the known pixels; [H, W, C].

    The first rendering also returns the weight map; only if some pixel is unreached are the
    sigmas raised with :func:`covering_sigma` and the image rendered again.
    """
    points = pixel_points(indices, width)  # [N, 2]
    points_t = torch.from_numpy(points).float()
    values_t = torch.from_numpy(values).float()  # [N, C]
    channels = values_t.shape[1]
    sigma = nuir_sigma(method, points, height, width, scale, k)

    def as_tensor(sigma):
        return sigma if isinstance(sigma, float) else torch.from_numpy(sigma).float()  # [N]

    with torch.no_grad():
        image, weight = nuir.interpolate(
            points_t,
            values_t,
            (height, width),
            as_tensor(sigma),
            cutoff=cutoff,
            return_weight=True,
        )  # [C, H, W], [H, W]
        unreached = torch.nonzero(weight <= 0)  # [M, 2] (row, column)
        if len(unreached):
            sigma = covering_sigma(sigma, points, unreached.flip(1).double().numpy(), cutoff)
            image = nuir.interpolate(
                points_t, values_t, (height, width), as_tensor(sigma), cutoff=cutoff
            )
        if method == "nuir-knn-consistent":
            sigma_t = as_tensor(sigma)
            index_t = torch.from_numpy(indices)

            def render(low: torch.Tensor) -> torch.Tensor:  # [1, C, 1, N] -> [1, C, H, W]
                point_values = low[0, :, 0, :].T  # [N, C]
                rendered = nuir.interpolate(
                    points_t, point_values, (height, width), sigma_t, cutoff=cutoff
                )
                return rendered[None]

            def sample(image: torch.Tensor) -> torch.Tensor:  # [1, C, H, W] -> [1, C, 1, N]
                return image.reshape(1, channels, height * width)[:, :, index_t].unsqueeze(2)

            target = values_t.T.reshape(1, channels, 1, -1)  # [1, C, 1, N]
            image = solve_consistent(target, render, sample, iterations)[0]
    return image.permute(1, 2, 0).numpy()


def reconstruct(
    method: str,
    indices: np.ndarray,
    values: np.ndarray,
    height: int,
    width: int,
    args: argparse.Namespace,
    scale: float | None = None,
) -> np.ndarray:
    if method in GRIDDATA_METHODS:
        return griddata_reconstruct(
            indices, values, height, width, method.removeprefix("griddata-")
        )
    if scale is None:
        scale = sigma_scale_of(args, method)
    return nuir_reconstruct(
        method, indices, values, height, width, scale, args.knn, args.iterations, args.cutoff
    )


# --- the benchmark -----------------------------------------------------------------------------


def pattern_rng(seed: int, photo: str, pattern: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(photo.encode()), zlib.crc32(pattern.encode())])


def evaluate(
    photos: list[Photo],
    patterns: list[str],
    methods: list[tuple[str, float | None]],
    args: argparse.Namespace,
) -> tuple[list[dict[str, object]], dict[str, dict[str, np.ndarray]]]:
    """Rows (image, pattern, method, sigma_scale, points, l1, psnr, ssim, seconds) and the
    reconstructions of the first photo, per pattern and method, for the example figure."""
    rows: list[dict[str, object]] = []
    examples: dict[str, dict[str, np.ndarray]] = {}
    for photo_number, photo in enumerate(tqdm(photos, desc="images", unit="img")):
        target = photo.pixels
        height, width, _ = target.shape
        flat = target.reshape(height * width, -1)
        for pattern in patterns:
            indices = known_pixels(
                pattern, height, width, pattern_rng(args.seed, photo.name, pattern)
            )
            values = flat[indices].astype(np.float64)  # [N, C]
            for method, scale in methods:
                run = partial(reconstruct, method, indices, values, height, width, args, scale)
                prediction, seconds = timed(run, args.repeats)
                prediction = prediction.reshape(height * width, -1).copy()
                prediction[indices] = values  # keep the known pixels
                prediction = prediction.reshape(height, width, -1).astype(np.float32)
                row = {"image": photo.name, "pattern": pattern, "method": method}
                row.update({"sigma_scale": "" if scale is None else scale, "points": len(indices)})
                row.update(image_metrics(prediction, target))
                row["seconds"] = seconds
                rows.append(row)
                if photo_number == 0:
                    examples.setdefault(pattern, {"target": target})[method] = prediction
                    examples[pattern]["indices"] = indices
    return rows, examples


def summary_tables(rows: list[dict[str, object]], patterns: list[str]) -> str:
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    blocks = metric_tables(rows, "pattern", patterns)
    if "griddata-linear" in methods:
        l1 = mean_by(rows, ("method", "pattern"), "l1")
        speed = speedups(rows)
        table = [
            [m]
            + [
                f"{100 * (l1[(m, p)] / l1[('griddata-linear', p)] - 1):+.1f}% / "
                f"{speed[(m, p)]:.1f}x"
                for p in patterns
            ]
            for m in methods
            if m != "griddata-linear"
        ]
        blocks.append(
            "against griddata-linear: L1 difference (negative: better) / speed-up (geometric "
            "mean over images of time(griddata-linear) / time(method), same run)\n\n"
            + markdown_table(["method"] + patterns, table)
        )
    return "\n\n".join(blocks)


def speedups(rows: list[dict[str, object]]) -> dict[tuple[str, str], float]:
    """Geometric mean over images of t(griddata-linear) / t(method), per (method, pattern)."""
    linear = {
        (r["image"], r["pattern"]): float(r["seconds"])
        for r in rows
        if r["method"] == "griddata-linear"
    }
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        key = (str(r["method"]), str(r["pattern"]))
        ratios.setdefault(key, []).append(
            math.log(linear[(r["image"], r["pattern"])] / max(float(r["seconds"]), 1e-9))
        )
    return {key: math.exp(float(np.mean(v))) for key, v in ratios.items()}


def plot_results(rows: list[dict[str, object]], patterns: list[str], path: Path) -> None:
    plt = pyplot()
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    l1 = mean_by(rows, ("method", "pattern"), "l1")
    seconds = mean_by(rows, ("method", "pattern"), "seconds")
    fig, (ax_bar, ax_time) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        positions = np.arange(len(patterns)) + (i - (len(methods) - 1) / 2) * width
        ax_bar.bar(positions, [l1[(method, p)] for p in patterns], width, label=method)
    ax_bar.set_xticks(np.arange(len(patterns)), patterns, fontsize=8, rotation=15)
    ax_bar.set_ylabel("mean L1 (0-255)")
    ax_bar.legend(fontsize=8)
    ax_bar.grid(axis="y", alpha=0.3)
    focus = "random-16" if "random-16" in patterns else patterns[0]
    for method in methods:
        ax_time.scatter(seconds[(method, focus)], l1[(method, focus)], s=50, label=method)
        ax_time.annotate(
            method,
            (seconds[(method, focus)], l1[(method, focus)]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax_time.set_xscale("log")
    ax_time.set_xlabel("seconds per image (log)")
    ax_time.set_ylabel("mean L1 (0-255)")
    ax_time.set_title(f"{focus}: quality against time")
    ax_time.grid(alpha=0.3)
    save_figure(fig, path)


def plot_example(
    examples: dict[str, dict[str, np.ndarray]], methods: list[str], path: Path
) -> None:
    """Crops of the first photo: known pixels and each method's reconstruction, per pattern."""
    plt = pyplot()
    patterns = list(examples)
    columns = ["known", *methods]
    fig, axes = plt.subplots(
        len(patterns),
        len(columns),
        figsize=(1.6 * len(columns), 1.6 * len(patterns)),
        squeeze=False,
    )
    for row, pattern in enumerate(patterns):
        target = examples[pattern]["target"]
        height, width, _ = target.shape
        side = min(128, height, width)
        top, left = (height - side) // 2, (width - side) // 2
        indices = examples[pattern]["indices"]
        known = np.zeros((height * width, target.shape[2]), dtype=np.float32)
        known[indices] = target.reshape(height * width, -1)[indices]
        panels = {**examples[pattern], "known": known.reshape(target.shape)}
        for col, name in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(np.clip(panels[name][top : top + side, left : left + side], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("griddata-", "gd-"), fontsize=7)
            if col == 0:
                ax.set_ylabel(pattern, fontsize=7)
    save_figure(fig, path, dpi=80, palette=True)


def run_sweep(args: argparse.Namespace, photos: list[Photo]) -> int:
    methods = [(m, a) for m in NUIR_METHODS for a in args.sweep]
    methods.append(("griddata-linear", None))
    rows, _ = evaluate(photos, args.patterns, methods, args)
    write_csv(args.out / "sweep.csv", rows)
    l1 = mean_by(rows, ("method", "sigma_scale", "pattern"), "l1")
    table = [[m] + [l1[(m, a, p)] for p in args.patterns for a in args.sweep] for m in NUIR_METHODS]
    header = ["method"] + [f"{p} a={a:g}" for p in args.patterns for a in args.sweep]
    linear = [["griddata-linear"] + [l1[("griddata-linear", "", p)] for p in args.patterns]]
    text = (
        f"sigma sweep, {len(photos)} images: mean L1 (0-255)\n\n"
        + markdown_table(header, table)
        + "\n\n"
        + markdown_table(["reference"] + list(args.patterns), linear)
    )
    print(text)
    (args.out / "sweep.md").write_text(text + "\n")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with reading_input():
        photos = load_images(args.images, args.photos, args.crop, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    # Build / load the compiled operator before anything is timed.
    nuir.interpolate(torch.zeros(1, 2), torch.zeros(1, 1), (2, 2), 1.0)
    torch.set_num_threads(args.threads)
    limit_scipy_blas_threads(1)
    if args.sweep is not None:
        return run_sweep(args, photos)
    methods = [(m, None) for m in GRIDDATA_METHODS + NUIR_METHODS]
    rows, examples = evaluate(photos, args.patterns, methods, args)
    for row in rows:
        del row["sigma_scale"]
    write_csv(args.out / "results.csv", rows)
    scales = ", ".join(f"{m} a={sigma_scale_of(args, m):g}" for m in NUIR_METHODS)
    text = (
        f"scattered: {len(photos)} images, {torch.get_num_threads()} torch thread(s), "
        f"cutoff {args.cutoff:g}, K={args.knn}, "
        f"{scales}, {args.iterations} iterations, best of {args.repeats} timings\n\n"
        + summary_tables(rows, args.patterns)
    )
    print(text)
    (args.out / "summary.md").write_text(text + "\n")
    plot_results(rows, args.patterns, args.out / "scattered.png")
    plot_example(examples, [m for m, _ in methods], args.out / "scattered_example.png")
    print(f"\nwrote results.csv, summary.md, scattered.png and scattered_example.png in {args.out}")
    return 0
