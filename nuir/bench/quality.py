"""Reconstruction quality of uniform upsampling: the paper's Figure 3, on real photographs.

    python -m nuir.bench quality [--images DIR] [--factors 2 3 4 6 8 12 16]
                                 [--downsample box|nearest|bilinear] [--out DIR]

Each image is centre-cropped to a multiple of the factor, downsampled with PIL (float images, so
nothing is rounded), and upsampled back with PIL's six filters and with nuir:

- ``nuir-plain``: ``nuir.upsample`` with sigma = a * factor (the paper's method);
- ``nuir-consistent``: ``nuir.upsample(mode="consistent")`` with the benchmark's own downsampling
  as the consistency constraint (back-projection).

Writes ``results.csv`` (one row per image, method and factor), ``summary.md`` (mean tables) and
``quality.png`` (L1 against factor, and L1 relative to the best PIL filter). With ``--sweep`` it
instead sweeps the sigma scale `a` of both nuir modes and writes ``sweep.csv`` and ``sweep.png``;
run the sweep on the held-out photos (``--photos tuning``) to pick `a` without touching the
benchmark photos.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import nuir
from nuir._cli import reading_input
from nuir.bench._common import (
    PIL_RESAMPLING,
    add_sweep_argument,
    image_metrics,
    markdown_table,
    mean_by,
    metric_tables,
    pil_resize,
    pyplot,
    save_figure,
    timed,
    to_pixels,
    to_tensor,
    write_csv,
)
from nuir.bench._images import Photo, add_photo_arguments, load_images

DEFAULT_FACTORS = (2, 3, 4, 6, 8, 12, 16)
DOWNSAMPLING = ("box", "nearest", "bilinear")
PIL_METHODS = tuple(PIL_RESAMPLING)
NUIR_METHODS = ("nuir-plain", "nuir-consistent")
# sigma = a * factor. Picked from `--sweep` on the held-out photos (--photos tuning), per
# downsampling protocol; see docs/quality.md for the sweep tables.
# (The bilinear protocol was not swept; it uses the values of the box protocol.)
PLAIN_SIGMA_SCALE = {"box": 0.325, "nearest": 0.375, "bilinear": 0.325}
CONSISTENT_SIGMA_SCALE = {"box": 0.475, "nearest": 0.425, "bilinear": 0.475}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench quality",
        description="Downsample photographs and upsample them back: PIL's filters against nuir.",
    )
    add_photo_arguments(parser, " (default: the 6 benchmark photos)")
    parser.add_argument("--factors", type=int, nargs="+", default=list(DEFAULT_FACTORS))
    parser.add_argument("--downsample", choices=DOWNSAMPLING, default="box")
    parser.add_argument("--out", type=Path, default=Path("bench_out/quality"))
    parser.add_argument(
        "--sigma-scale",
        type=float,
        default=None,
        help="nuir-plain sigma = a * factor (default: the tuned a of the protocol, "
        f"{PLAIN_SIGMA_SCALE})",
    )
    parser.add_argument(
        "--consistent-sigma-scale",
        type=float,
        default=None,
        help=f"nuir-consistent sigma = a * factor (default {CONSISTENT_SIGMA_SCALE})",
    )
    parser.add_argument(
        "--iterations", type=int, default=10, help="consistent mode: solver iterations"
    )
    add_sweep_argument(parser, "both nuir modes")
    args = parser.parse_args(argv)
    if any(f < 1 for f in args.factors):
        parser.error(f"--factors must be integers >= 1, got {args.factors}")
    if args.iterations < 0:
        parser.error(f"--iterations must be >= 0, got {args.iterations}")
    for name in ("sigma_scale", "consistent_sigma_scale"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.sweep is not None and not all(a > 0 for a in args.sweep):
        parser.error(f"--sweep values must be > 0, got {args.sweep}")
    return args


def crop_to_multiple(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Central crop of [H, W, C] whose sides are multiples of `factor`."""
    height, width = pixels.shape[:2]
    ch, cw = height - height % factor, width - width % factor
    if ch == 0 or cw == 0:
        raise ValueError(f"image of size {height}x{width} is smaller than the factor {factor}")
    top, left = (height - ch) // 2, (width - cw) // 2
    return pixels[top : top + ch, left : left + cw]


def nuir_upsample(
    low: np.ndarray,
    size: tuple[int, int],
    factor: int,
    mode: str,
    sigma_scale: float,
    downsample: str,
    iterations: int,
) -> np.ndarray:
    """nuir.upsample of [h, w, C] to size, in either mode; [H, W, C]."""
    kwargs = {"mode": mode}
    if mode == "consistent":
        kwargs.update(downsample=downsample, iterations=iterations)
    with torch.no_grad():
        up = nuir.upsample(to_tensor(low), size=size, sigma=sigma_scale * factor, **kwargs)
    return to_pixels(up)


def evaluate(
    photos: list[Photo],
    factors: list[int],
    downsample: str,
    plain_scales: list[float],
    consistent_scales: list[float],
    iterations: int,
    with_pil: bool = True,
) -> list[dict[str, object]]:
    """One row per (image, method, sigma scale, factor) with l1, psnr, ssim and seconds."""
    rows: list[dict[str, object]] = []
    for photo in tqdm(photos, desc="images", unit="img"):
        for factor in factors:
            target = crop_to_multiple(photo.pixels, factor)
            height, width = target.shape[:2]
            low = pil_resize(target, (height // factor, width // factor), downsample)
            methods = [(filter, None) for filter in (PIL_METHODS if with_pil else ())]
            methods += [("nuir-plain", a) for a in plain_scales]
            methods += [("nuir-consistent", a) for a in consistent_scales]
            for method, scale in methods:
                if scale is None:
                    prediction, seconds = timed(partial(pil_resize, low, (height, width), method))
                else:
                    mode = method.removeprefix("nuir-")
                    run = partial(
                        nuir_upsample,
                        low,
                        (height, width),
                        factor,
                        mode,
                        scale,
                        downsample,
                        iterations,
                    )
                    prediction, seconds = timed(run)
                row = {"image": photo.name, "method": method, "sigma_scale": scale or ""}
                row.update({"factor": factor, "downsample": downsample})
                row.update(image_metrics(prediction, target))
                row["seconds"] = seconds
                rows.append(row)
    return rows


def summary_tables(rows: list[dict[str, object]], factors: list[int]) -> str:
    """Mean L1 / PSNR / SSIM tables (method x factor) and the mean time per image."""
    blocks = metric_tables(rows, "factor", factors)
    l1 = mean_by(rows, ("method", "factor"), "l1")
    best_pil = {f: min(PIL_METHODS, key=lambda m: l1[(m, f)]) for f in factors}
    gains = [
        [m] + [f"{100 * (1 - l1[(m, f)] / l1[(best_pil[f], f)]):+.1f}%" for f in factors]
        for m in NUIR_METHODS
        if (m, factors[0]) in l1
    ]
    gains.append(["best PIL filter"] + [best_pil[f] for f in factors])
    blocks.append(
        "L1 improvement of nuir over the best PIL filter at each factor (positive: nuir better)"
        "\n\n" + markdown_table(["method"] + factors, gains)
    )
    return "\n\n".join(blocks)


def plot_quality(rows: list[dict[str, object]], factors: list[int], title: str, path: Path) -> None:
    plt = pyplot()
    l1 = mean_by(rows, ("method", "factor"), "l1")
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    best_pil = [min(l1[(m, f)] for m in PIL_METHODS) for f in factors]
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    nuir_colours = {"nuir-plain": "tab:red", "nuir-consistent": "black"}
    lowest = 0.0
    for method in methods:
        values = [l1[(method, f)] for f in factors]
        if method in nuir_colours:
            style = {"lw": 2.5, "marker": "o", "color": nuir_colours[method]}
        else:
            style = {"lw": 1.2, "ls": ":" if method == "box" else "--"}
        ax_abs.plot(factors, values, label=method, **style)
        relative = [100 * (v / b - 1) for v, b in zip(values, best_pil)]
        lowest = min(lowest, *relative)
        ax_rel.plot(factors, relative, label=method, **style)
    for ax in (ax_abs, ax_rel):
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [str(f) for f in factors])
        ax.set_xlabel("downsampling factor")
        ax.grid(alpha=0.3)
    ax_abs.set_ylabel("mean L1 (0-255)")
    ax_rel.set_ylabel("L1 relative to the best PIL filter (%)")
    ax_rel.axhline(0, color="k", lw=0.8)
    ax_rel.set_ylim(min(-8.0, lowest - 2), 25)
    ax_abs.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_sweep(rows: list[dict[str, object]], factors: list[int], title: str, path: Path) -> None:
    plt = pyplot()
    l1 = mean_by(rows, ("method", "sigma_scale", "factor"), "l1")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, method in zip(axes, NUIR_METHODS):
        scales = sorted({k[1] for k in l1 if k[0] == method})
        for factor in factors:
            reference = min(l1[(method, a, factor)] for a in scales)
            ax.plot(
                scales,
                [l1[(method, a, factor)] / reference for a in scales],
                marker="o",
                label=f"factor {factor}",
            )
        ax.set_title(method)
        ax.set_xlabel("sigma scale a (sigma = a * factor)")
        ax.set_ylabel("L1 / best L1 of the sweep")
        ax.set_ylim(0.99, 1.15)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def best_overall_scale(
    l1: dict[tuple[float, int], float], scales: list[float], factors: list[int]
) -> float:
    """The scale whose L1, relative to the best scale of each factor, is lowest on average."""
    best = {f: min(l1[(a, f)] for a in scales) for f in factors}
    excess = [np.mean([l1[(a, f)] / best[f] for f in factors]) for a in scales]
    return scales[int(np.argmin(excess))]


def run_sweep(args: argparse.Namespace, photos: list[Photo]) -> int:
    rows = evaluate(
        photos,
        args.factors,
        args.downsample,
        args.sweep,
        args.sweep,
        args.iterations,
        with_pil=False,
    )
    write_csv(args.out / "sweep.csv", rows)
    blocks = []
    for method in NUIR_METHODS:
        l1 = mean_by([r for r in rows if r["method"] == method], ("sigma_scale", "factor"), "l1")
        table = [[f"a = {a:g}"] + [l1[(a, f)] for f in args.factors] for a in args.sweep]
        best = ["best a"] + [
            f"{min(args.sweep, key=lambda a, f=f: l1[(a, f)]):g}" for f in args.factors
        ]
        overall = best_overall_scale(l1, args.sweep, args.factors)
        blocks.append(
            f"{method}: mean L1 (0-255) by sigma scale a, downsample={args.downsample}, "
            f"{len(photos)} images\n\n"
            + markdown_table(["a"] + args.factors, table + [best])
            + f"\n\nbest a over all factors (least mean excess over the best a of each factor):"
            f" {overall:g}"
        )
    text = "\n\n".join(blocks)
    print(text)
    (args.out / "sweep.md").write_text(text + "\n")
    title = f"sigma sweep, downsample={args.downsample}"
    plot_sweep(rows, args.factors, title, args.out / "sweep.png")
    print(f"\nwrote sweep.csv, sweep.md and sweep.png in {args.out}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with reading_input():
        photos = load_images(args.images, args.photos, args.crop, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    nuir.upsample(torch.zeros(1, 1, 2, 2), 2)  # build / load the operator before any timing
    if args.sweep is not None:
        return run_sweep(args, photos)
    plain = args.sigma_scale or PLAIN_SIGMA_SCALE[args.downsample]
    consistent = args.consistent_sigma_scale or CONSISTENT_SIGMA_SCALE[args.downsample]
    rows = evaluate(photos, args.factors, args.downsample, [plain], [consistent], args.iterations)
    for row in rows:
        del row["sigma_scale"]
    write_csv(args.out / "results.csv", rows)
    header = (
        f"quality: {len(photos)} images, downsample={args.downsample}, nuir-plain sigma = "
        f"{plain:g} * factor, nuir-consistent sigma = {consistent:g} * factor, "
        f"{args.iterations} iterations"
    )
    text = header + "\n\n" + summary_tables(rows, args.factors)
    print(text)
    (args.out / "summary.md").write_text(text + "\n")
    plot_quality(
        rows,
        args.factors,
        f"upsampling quality, downsample={args.downsample}, {len(photos)} photos",
        args.out / "quality.png",
    )
    print(f"\nwrote results.csv, summary.md and quality.png in {args.out}")
    return 0
