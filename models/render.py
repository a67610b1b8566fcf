"""Render a trained checkpoint to an image file at any resolution, sparsely or densely.

    python -m models.render runs/default/checkpoints/last.ckpt --scale 4 --out astronaut_4x.png
    python -m models.render CKPT --size 8192 8192 --mode dense --out big.png

Sparse (default): the network is evaluated once at N points, then every tile of the output is
reconstructed from them with ``nuir.interpolate``. The points are the trained ones for a checkpoint
trained sparsely (positions and sigma rescaled to the output: x -> (x + 0.5) k - 0.5,
sigma -> sigma k), and a grid of ``--grid-density`` points per training pixel otherwise. Dense: the
network at every output pixel. Both work tile by tile (``--tile``), so memory stays bounded by the
tile and the output array, even at 8192^2. The command prints the render time and, for a sparse
render, the PSNR against the dense render (computed tile by tile; ``--no-compare`` skips it).

``--benchmark 1 2 4`` instead times sparse against dense rendering at those scales and prints a
table (used by ``python -m models.bench_train``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.system import ImplicitImageSystem
from nuir.render import (
    DenseRenderer,
    SparseRenderer,
    evaluate_network,
    interpolating_values,
    pixel_centres,
    pixel_to_unit,
    rescale_points,
    tile_windows,
)


def load_system(checkpoint: str | Path, device: str = "cpu") -> ImplicitImageSystem:
    """A trained system from a Lightning checkpoint written by train.py, in eval mode."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    system = ImplicitImageSystem.load_from_checkpoint(path, map_location=device)
    if not bool(system.initialised):
        raise ValueError(f"{path}: the checkpoint holds an untrained system (no image size)")
    return system.eval()


def sparse_renderer(
    system: ImplicitImageSystem,
    size: tuple[int, int],
    points: str = "auto",
    *,
    grid_density: float = 1.0,
    sigma_scale: float = 0.5,
    prefilter: int = 3,
    chunk_size: int = 65536,
) -> SparseRenderer:
    """The sparse renderer of a system on an output raster of ``size`` (evaluates the network).

    Args:
        points: ``"trained"`` (the system's own points and sigma, rescaled; sparse checkpoints
            only: this reproduces the model's training reconstruction at any size), ``"grid"``
            (a regular grid of ``grid_density`` points per training pixel and axis, sigma =
            ``sigma_scale`` grid spacings) or ``"auto"`` (trained if the system has points).
        prefilter: grid only: iterations of :func:`nuir.render.interpolating_values`, so the
            interpolation passes through the network's values at the grid points instead of
            blurring them (0 = plain values).
    """
    if points not in ("auto", "trained", "grid"):
        raise ValueError(f"points must be 'auto', 'trained' or 'grid', got {points!r}")
    train_size = system.size
    has_points = system.mode == "sparse"
    if points == "trained" and not has_points:
        raise ValueError(f"points='trained' needs a sparse checkpoint, this one is {system.mode}")
    if points == "trained" or (points == "auto" and has_points):
        scale = torch.tensor([size[1] / train_size[1], size[0] / train_size[0]])  # (x, y)
        positions = rescale_points(system.points.detach().float().cpu(), train_size, size)
        sigma = system.sigma().detach().float().cpu()[:, None] * scale  # [N, 2]
        return SparseRenderer(
            system.network, positions, sigma, size, cutoff=system.cutoff, chunk_size=chunk_size
        )
    if not grid_density > 0:
        raise ValueError(f"grid_density must be > 0, got {grid_density!r}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    grid_size = (
        max(1, round(train_size[0] * grid_density)),
        max(1, round(train_size[1] * grid_density)),
    )
    device, dtype = system.device, system.coordinate_dtype
    centres = pixel_centres((0, 0, *grid_size), dtype=dtype, device=device)  # [N, 2]
    values = evaluate_network(system.network, pixel_to_unit(centres, grid_size), chunk_size)
    if prefilter > 0:
        samples = values.T.reshape(-1, *grid_size)  # [C, h, w]
        fitted = interpolating_values(
            samples, sigma_scale, iterations=prefilter, cutoff=system.cutoff
        )
        values = fitted.reshape(samples.shape[0], -1).T  # [N, C]
    positions = rescale_points(centres, grid_size, size)
    spacing = torch.tensor([size[1] / grid_size[1], size[0] / grid_size[0]], dtype=dtype)
    sigma = (sigma_scale * spacing).to(device).expand(positions.shape[0], 2)
    renderer = SparseRenderer(
        system.network, positions, sigma, size, cutoff=system.cutoff, values=values
    )
    renderer.evaluations = positions.shape[0]
    return renderer


@dataclass
class RenderResult:
    seconds: float
    evaluations: int
    compare_seconds: float = float("nan")
    psnr_vs_dense: float = float("nan")


def _to_integers(tile: torch.Tensor, bits: int) -> np.ndarray:
    """[C, h, w] float in [0, 1] -> [h, w, C] uint8 / uint16."""
    peak = (1 << bits) - 1
    scaled = (tile.clamp(0, 1) * peak).round().permute(1, 2, 0).cpu().numpy()
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def render_to_array(
    renderer,
    size: tuple[int, int],
    channels: int,
    *,
    tile_size: int,
    bits: int = 8,
    compare: DenseRenderer | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, RenderResult]:
    """Render tile by tile into an integer array [H, W, C]; optionally the PSNR against
    ``compare`` (a dense renderer), accumulated over tiles so nothing full-size is kept.

    ``renderer`` is a SparseRenderer / DenseRenderer or a callable building one (timed too).
    """
    height, width = size
    out = np.zeros((height, width, channels), dtype=np.uint8 if bits == 8 else np.uint16)
    started = time.perf_counter()
    if not hasattr(renderer, "render_tile"):
        renderer = renderer()
    seconds = time.perf_counter() - started
    squared_error, compare_seconds = 0.0, 0.0
    for window in tile_windows(size, tile_size):
        row0, col0, h, w = window
        started = time.perf_counter()
        tile = renderer.render_tile(window)  # [C, h, w]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        out[row0 : row0 + h, col0 : col0 + w] = _to_integers(tile, bits)
        if compare is not None:
            started = time.perf_counter()
            reference = compare.render_tile(window)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            compare_seconds += time.perf_counter() - started
            difference = tile.clamp(0, 1).double() - reference.clamp(0, 1).double()
            squared_error += float(difference.square().sum())
    result = RenderResult(seconds, int(renderer.evaluations))
    if compare is not None:
        mse = squared_error / (height * width * channels)
        result.compare_seconds = compare_seconds
        result.psnr_vs_dense = math.inf if mse == 0 else -10.0 * math.log10(mse)
    return out, result


def save_png(array: np.ndarray, path: Path) -> None:
    """[H, W, C] uint8 / uint16 -> PNG (16-bit only for one channel, a Pillow limit; 16-bit
    colour goes to TIFF through tifffile when the suffix is .tif / .tiff)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array if array.shape[-1] > 1 else array[..., 0])
        return
    if array.dtype == np.uint16 and array.shape[-1] != 1:
        raise ValueError("16-bit colour needs a .tif / .tiff output (Pillow writes 16-bit grey)")
    channels = array.shape[-1]
    if channels == 1:
        image = Image.fromarray(array[..., 0])
    elif channels == 2:
        image = Image.fromarray(array, mode="LA")
    else:
        image = Image.fromarray(array)
    image.save(path)


def output_size(system: ImplicitImageSystem, scale: float | None, size: list[int] | None):
    height, width = system.size
    if size is not None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"--size takes two positive ints H W, got {size}")
        return int(size[0]), int(size[1])
    scale = 1.0 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return max(1, round(height * scale)), max(1, round(width * scale))


def _timed_render(renderer, size: tuple[int, int], tile_size: int, device: str):
    """(image [C, H, W] float, seconds, evaluations); ``renderer`` may be a builder (timed)."""
    started = time.perf_counter()
    if not hasattr(renderer, "render_tile"):
        renderer = renderer()
    image = None
    for window in tile_windows(size, tile_size):
        row0, col0, h, w = window
        tile = renderer.render_tile(window)
        if image is None:
            image = tile.new_empty(tile.shape[0], *size)
        image[:, row0 : row0 + h, col0 : col0 + w] = tile
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return image, time.perf_counter() - started, int(renderer.evaluations)


def default_render_methods(system: ImplicitImageSystem) -> list[tuple[str, str, int]]:
    """(label, points, prefilter iterations) of the sparse renders the benchmark times."""
    if system.mode == "sparse":
        return [("trained points", "trained", 0), ("grid", "grid", 0)]
    return [("grid", "grid", 0), ("grid + prefilter 3", "grid", 3)]  # plain and the default


def benchmark_render(
    system: ImplicitImageSystem,
    scales: list[float],
    *,
    methods: list[tuple[str, str, int]] | None = None,
    tile_size: int = 1024,
    grid_density: float = 1.0,
    sigma_scale: float = 0.5,
    chunk_size: int = 65536,
) -> list[dict]:
    """Sparse against dense rendering of one system at each scale, in one run on one machine.

    The dense render is kept whole in memory for the comparison, so this is for moderate sizes
    (the render command itself compares tile by tile).

    Args:
        methods: (label, points, prefilter) per sparse render, see :func:`sparse_renderer`;
            default :func:`default_render_methods`.
    Returns:
        One dict per (scale, method): sizes, seconds, evaluations, speedup, PSNR vs dense.
    """
    system = system.eval()
    device = str(system.device)
    methods = methods or default_render_methods(system)
    rows = []
    with torch.no_grad():
        for scale in scales:
            size = output_size(system, scale, None)
            dense_renderer = DenseRenderer(system.network, size, chunk_size=chunk_size)
            dense, dense_s, dense_evaluations = _timed_render(
                dense_renderer, size, tile_size, device
            )
            dense = dense.clamp(0, 1)
            for label, points, prefilter in methods:

                def build(size=size, points=points, prefilter=prefilter):
                    return sparse_renderer(
                        system,
                        size,
                        points,
                        grid_density=grid_density,
                        sigma_scale=sigma_scale,
                        prefilter=prefilter,
                        chunk_size=chunk_size,
                    )

                sparse, sparse_s, sparse_evaluations = _timed_render(build, size, tile_size, device)
                mse = float((sparse.clamp(0, 1) - dense).double().square().mean())
                rows.append(
                    {
                        "scale": scale,
                        "size": size,
                        "method": label,
                        "dense_s": dense_s,
                        "dense_evaluations": dense_evaluations,
                        "sparse_s": sparse_s,
                        "sparse_evaluations": sparse_evaluations,
                        "speedup": dense_s / sparse_s,
                        "psnr_vs_dense": math.inf if mse == 0 else -10 * math.log10(mse),
                    }
                )
    return rows


def print_render_table(rows: list[dict]) -> None:
    print(
        "| scale | output | sparse method | dense s | dense evals | sparse s | sparse evals | "
        "speedup | PSNR sparse vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['scale']:g}x | {row['size'][0]}x{row['size'][1]} | {row['method']} | "
            f"{row['dense_s']:.3f} | {row['dense_evaluations']} | {row['sparse_s']:.3f} | "
            f"{row['sparse_evaluations']} | {row['speedup']:.1f}x | "
            f"{row['psnr_vs_dense']:.2f} dB |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by train.py")
    parser.add_argument("--scale", type=float, default=None, help="output size / training size")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--mode", choices=("sparse", "dense"), default="sparse")
    parser.add_argument(
        "--points",
        choices=("auto", "trained", "grid"),
        default="auto",
        help="sparse points: trained ones, or a grid (default: trained if any)",
    )
    parser.add_argument(
        "--grid-density",
        type=float,
        default=1.0,
        help="grid points per training pixel along each axis",
    )
    parser.add_argument(
        "--sigma-scale",
        type=float,
        default=0.5,
        help="grid sigma as a fraction of the grid spacing",
    )
    parser.add_argument(
        "--prefilter",
        type=int,
        default=3,
        help="grid: iterations making the interpolation pass through the network's values",
    )
    parser.add_argument("--tile", type=int, default=1024, help="tile side in output pixels")
    parser.add_argument("--chunk", type=int, default=65536, help="network evaluations per call")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8)
    parser.add_argument("--out", type=Path, default=None, help="output image (.png or .tif)")
    parser.add_argument(
        "--no-compare", action="store_true", help="sparse: skip the dense render used for the PSNR"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--benchmark",
        type=float,
        nargs="+",
        default=None,
        metavar="SCALE",
        help="time sparse against dense rendering at these scales instead",
    )
    args = parser.parse_args(argv)

    system = load_system(args.checkpoint, args.device)
    if args.benchmark:
        methods = None
        if args.points != "auto":
            methods = [(f"{args.points}, prefilter {args.prefilter}", args.points, args.prefilter)]
        rows = benchmark_render(
            system,
            args.benchmark,
            methods=methods,
            tile_size=args.tile,
            grid_density=args.grid_density,
            sigma_scale=args.sigma_scale,
            chunk_size=args.chunk,
        )
        print(
            f"# render benchmark: {args.checkpoint} (trained {system.mode}, "
            f"{system.size[0]}x{system.size[1]}) on {args.device}"
        )
        print_render_table(rows)
        return 0

    size = output_size(system, args.scale, args.size)
    probe = torch.zeros(1, 2, device=system.device, dtype=system.coordinate_dtype)
    channels = int(system.network(probe).shape[-1])
    with torch.no_grad():
        if args.mode == "dense":
            renderer = DenseRenderer(system.network, size, chunk_size=args.chunk)
            compare = None
        else:

            def renderer():
                return sparse_renderer(
                    system,
                    size,
                    args.points,
                    grid_density=args.grid_density,
                    sigma_scale=args.sigma_scale,
                    prefilter=args.prefilter,
                    chunk_size=args.chunk,
                )

            compare = (
                None
                if args.no_compare
                else DenseRenderer(system.network, size, chunk_size=args.chunk)
            )
        array, result = render_to_array(
            renderer,
            size,
            channels,
            tile_size=args.tile,
            bits=args.bits,
            compare=compare,
            device=args.device,
        )
    print(
        f"{args.mode} render {size[0]}x{size[1]} ({size[0] / system.size[0]:g}x the training "
        f"size): {result.seconds:.3f} s, {result.evaluations} network evaluations"
    )
    if compare is not None:
        print(
            f"dense render for comparison: {result.compare_seconds:.3f} s; "
            f"PSNR sparse vs dense: {result.psnr_vs_dense:.2f} dB "
            f"(speedup {result.compare_seconds / result.seconds:.1f}x)"
        )
    if args.out is not None:
        save_png(array, args.out)
        print(f"wrote {args.out}")
    peak = peak_memory_mb()
    if peak is not None:
        print(f"peak resident memory of this process: {peak:.0f} MB")
    return 0


def peak_memory_mb() -> float | None:
    """Peak resident set size of this process in MB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


if __name__ == "__main__":
    sys.exit(main())
