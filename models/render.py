"""Render a trained checkpoint to an image file at any size.

    python -m models.render runs/default/checkpoints/last.ckpt --scale 4 --out astronaut_4x.png
    python -m models.render CKPT --scale 4 --tolerance 0.01          # closer to dense, slower
    python -m models.render CKPT --size 8192 8192 --method dense --out big.tif --bits 16

Methods (``--method``):

- ``adaptive`` (default): the network where Gaussian-mixture interpolation of coarser samples is
  wrong, measured by probes, refined until ``--tolerance`` (RMS error per channel) is met, on a
  sampling raster of at most twice the training resolution, then resized to the output by a
  Lanczos filter (``nuir.adaptive.AdaptiveRenderer``).
- ``grid``: one sample per training pixel, interpolated by Gaussians whose values are solved so
  the mixture passes through the samples (``nuir.renderers.GridRenderer``).
- ``points``: the point set's own reconstruction (trained positions and sigma, rescaled); at
  large scales it shows each Gaussian.
- ``dense``: the network at every output pixel (the reference).

Everything works tile by tile (``--tile``), so memory stays bounded by the tile and the output
array. The command prints what it chose and the render time and, unless ``--no-compare``, the
PSNR against the dense render (computed tile by tile). The file is written only when the render is
complete. Rendering needs the network's class and weights only: it does not import Lightning.
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

from models.checkpoint import Trained, load_trained
from nuir.adaptive import AdaptiveRenderer
from nuir.geometry import pixel_to_unit, rescale_points, tile_windows
from nuir.image_files import to_integers, write_image
from nuir.renderers import DenseRenderer, GridRenderer, PointRenderer, evaluate_network

METHODS = ("adaptive", "grid", "points", "dense")
DEFAULT_TOLERANCE = 0.02


def renderer_for(
    trained: Trained,
    size: tuple[int, int],
    method: str = "adaptive",
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    sigma: float = 0.5,
    prefilter: int = 3,
    chunk_size: int = 65536,
):
    """The renderer of a trained network on an output raster of ``size`` (evaluates the network
    where the method needs it): see the module docstring for the methods."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "dense":
        return DenseRenderer(trained.network, size, chunk_size=chunk_size)
    if method == "adaptive":
        return AdaptiveRenderer(
            trained.network,
            size,
            native_size=trained.size,
            tolerance=tolerance,
            chunk_size=chunk_size,
        )
    if method == "points":
        if trained.points is None:
            raise ValueError("method 'points' needs a checkpoint trained with a point set")
        train_size = trained.size
        scale = torch.tensor([size[1] / train_size[1], size[0] / train_size[0]])  # (x, y)
        points = trained.points.to(trained.device)
        positions = rescale_points(points.float().cpu(), train_size, size)
        values = evaluate_network(trained.network, pixel_to_unit(points, train_size), chunk_size)
        renderer = PointRenderer(
            positions.to(values),
            (trained.sigma.float().cpu()[:, None] * scale).to(values),
            values,
            cutoff=trained.cutoff,
        )
        renderer.evaluations = positions.shape[0]
        return renderer
    return GridRenderer(
        trained.network,
        trained.size,
        size,
        sigma=sigma,
        prefilter=prefilter,
        chunk_size=chunk_size,
    )


def output_size(trained: Trained, scale: float | None, size: list[int] | None) -> tuple[int, int]:
    height, width = trained.size
    if size is not None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"--size takes two positive ints H W, got {size}")
        return int(size[0]), int(size[1])
    scale = 1.0 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class RenderResult:
    pixels: np.ndarray  # [H, W, C] uint8 / uint16
    seconds: float  # building the renderer (network evaluations) and all tiles
    evaluations: int
    compare_seconds: float = float("nan")
    psnr_vs_dense: float = float("nan")


def _synchronise(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def render_to_array(
    build,
    size: tuple[int, int],
    *,
    tile_size: int | None = None,
    bits: int = 8,
    compare: DenseRenderer | None = None,
    device: torch.device | None = None,
) -> RenderResult:
    """Render tile by tile into an integer array [H, W, C]; ``build()`` makes the renderer (its
    network evaluations are timed with the tiles; tiles of the renderer's preferred size when
    ``tile_size`` is None). With ``compare`` (a dense renderer), the PSNR
    against it, accumulated over tiles so nothing full-size is kept in float."""
    started = time.perf_counter()
    renderer = build()
    _synchronise(device)
    seconds = time.perf_counter() - started
    if tile_size is None:
        tile_size = renderer.preferred_tile() if hasattr(renderer, "preferred_tile") else 1024
    pixels = None
    squared_error, compare_seconds = 0.0, 0.0
    for window in tile_windows(size, tile_size):
        row0, col0, h, w = window
        started = time.perf_counter()
        tile = renderer.render_tile(window)  # [C, h, w]
        _synchronise(device)
        seconds += time.perf_counter() - started
        if pixels is None:
            dtype = np.uint8 if bits == 8 else np.uint16
            pixels = np.zeros((*size, tile.shape[0]), dtype=dtype)
        pixels[row0 : row0 + h, col0 : col0 + w] = to_integers(tile, bits)
        if compare is not None:
            started = time.perf_counter()
            reference = compare.render_tile(window)
            _synchronise(device)
            compare_seconds += time.perf_counter() - started
            difference = tile.clamp(0, 1).double() - reference.clamp(0, 1).double()
            squared_error += float(difference.square().sum())
    result = RenderResult(pixels, seconds, int(renderer.evaluations))
    if compare is not None:
        mse = squared_error / pixels.size
        result.compare_seconds = compare_seconds
        result.psnr_vs_dense = math.inf if mse == 0 else -10.0 * math.log10(mse)
    return result


def peak_memory_mb() -> float | None:
    """Peak resident set size of this process in MB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def describe(renderer) -> str:
    """What an adaptive render chose: its tolerance, sampling raster, evaluations by level and
    the share of blocks refined at each level."""
    if not isinstance(renderer, AdaptiveRenderer) or renderer.stats.blocks == 0:
        return ""
    stats = renderer.stats
    levels = " + ".join(f"{count:,}" for count in stats.evaluations)
    refined = " / ".join(f"{100 * count / stats.blocks:.0f} %" for count in stats.refined[1:])
    return (
        f"  tolerance {renderer.tolerance:g} (RMS per channel); sampling raster "
        f"{renderer.raster[0]}x{renderer.raster[1]}; evaluations by level {levels}; "
        f"blocks refined at levels 1 / 2: {refined}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by train.py")
    parser.add_argument("--scale", type=float, default=None, help="output size / training size")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--method", choices=METHODS, default="adaptive")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="adaptive: RMS error per channel a block may keep (smaller: slower, closer to dense)",
    )
    parser.add_argument("--sigma", type=float, default=0.5, help="grid: sigma in grid spacings")
    parser.add_argument(
        "--prefilter",
        type=int,
        default=3,
        help="grid: iterations making the mixture pass through the network's samples",
    )
    parser.add_argument("--tile", type=int, default=None, help="tile side in output pixels")
    parser.add_argument("--chunk", type=int, default=65536, help="network evaluations per call")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8)
    parser.add_argument("--out", type=Path, default=None, help="output image (.png or .tif)")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the dense render used for the PSNR"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.suffix.lower() not in (".png", ".tif", ".tiff"):
        parser.error(f"--out must end in .png, .tif or .tiff, got {args.out}")
    if args.bits == 16 and args.out is not None and args.out.suffix.lower() == ".png":
        parser.error("--bits 16 needs a .tif / .tiff output (Pillow writes 8-bit colour PNGs)")
    if not args.tolerance > 0:
        parser.error(f"--tolerance must be > 0, got {args.tolerance}")
    if args.tile is not None and args.tile < 1:
        parser.error(f"--tile must be a positive int, got {args.tile}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trained = load_trained(args.checkpoint, args.device)
        size = output_size(trained, args.scale, args.size)
    except (FileNotFoundError, ValueError) as exc:
        from nuir._cli import input_error

        return input_error(exc)
    built = []
    with torch.no_grad():

        def build():
            built.append(
                renderer_for(
                    trained,
                    size,
                    args.method,
                    tolerance=args.tolerance,
                    sigma=args.sigma,
                    prefilter=args.prefilter,
                    chunk_size=args.chunk,
                )
            )
            return built[-1]

        compare = None
        if args.method != "dense" and not args.no_compare:
            compare = DenseRenderer(trained.network, size, chunk_size=args.chunk)
        result = render_to_array(
            build,
            size,
            tile_size=args.tile,
            bits=args.bits,
            compare=compare,
            device=trained.device,
        )
    print(
        f"{args.method} render {size[0]}x{size[1]} ({size[0] / trained.size[0]:g}x the training "
        f"size): {result.seconds:.3f} s, {result.evaluations} network evaluations"
    )
    chose = describe(built[0])
    if chose:
        print(chose)
    if compare is not None:
        print(
            f"dense render for comparison: {result.compare_seconds:.3f} s; "
            f"PSNR {args.method} vs dense: {result.psnr_vs_dense:.2f} dB "
            f"(speed-up {result.compare_seconds / result.seconds:.1f}x)"
        )
    if args.out is not None:
        write_image(args.out, result.pixels)
        print(f"wrote {args.out}")
    peak = peak_memory_mb()
    if peak is not None:
        print(f"peak resident memory of this process: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    sys.exit(run_command(main))
