"""Render a trained checkpoint to an image file at any size.

    python -m models.render runs/default/checkpoints/last.ckpt --scale 4 --out astronaut_4x.png
    python -m models.render CKPT --size 8192 8192 --method dense --out big.tif --bits 16

Methods (``--method``):

- ``adaptive`` (default): the network evaluated on a grid of one sample per 2 x 2 training
  pixels, and on a grid of one per pixel over the 8 x 8 blocks where training split its points'
  strata to 4 square pixels or less (where the network's error was large: the image's detail),
  values prefiltered so that the mixture passes through every sample
  (``nuir.renderers.GridRenderer``). The cost hardly grows with the output size.
- ``grid``: one sample per training pixel everywhere.
- ``points``: the point set's own reconstruction (trained positions and sigma, rescaled), the
  model of the ``reconstruction`` objective; at large scales it shows each Gaussian.
- ``dense``: the network at every output pixel (the reference).

Everything works tile by tile (``--tile``), so memory stays bounded by the tile and the output
array. The command prints the render time and, unless ``--no-compare``, the PSNR against the dense
render (computed tile by tile). The file is written only when the render is complete.
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

from models.checkpoint import load_system
from models.system import ImplicitImageSystem
from nuir.geometry import pixel_to_unit, rescale_points, tile_windows
from nuir.image_files import to_integers, write_image
from nuir.renderers import DenseRenderer, GridRenderer, PointRenderer, evaluate_network

METHODS = ("adaptive", "grid", "points", "dense")


def detail_levels(
    system: ImplicitImageSystem,
    spacing: float = 2.0,
    block: int = 8,
    max_level: int = 1,
    ratio: float = 4.0,
) -> torch.Tensor:
    """Per block of ``block`` x ``block`` training pixels, the finest grid level it needs:
    level l (grid spacing ``spacing / 2**l``) where training split a point's stratum in the
    block down to at most ``ratio`` times that grid's cell area (training splits where the
    network's error is large: the image's detail).

    Returns:
        [ceil(H / block), ceil(W / block)] int64 (all 0 without a point set).
    """
    height, width = system.size
    shape = (math.ceil(height / block), math.ceil(width / block))
    if system.point_set is None or max_level == 0:
        return torch.zeros(shape, dtype=torch.int64)
    count = system.point_set.count
    strata = system.point_set.strata[:count].detach().cpu().double()
    area = strata[:, 2:].prod(1)
    level = torch.zeros(count, dtype=torch.int64)
    for finer in range(1, max_level + 1):
        level[area <= ratio * (spacing / 2**finer) ** 2 + 1e-9] = finer
    column = ((strata[:, 0] + 0.5).clamp(0, width - 1) / block).long()  # block of its pixel
    row = ((strata[:, 1] + 0.5).clamp(0, height - 1) / block).long()
    levels = torch.zeros(shape[0] * shape[1], dtype=torch.int64)
    levels.scatter_reduce_(0, row * shape[1] + column, level, reduce="amax")
    return levels.reshape(shape)


def renderer_for(
    system: ImplicitImageSystem,
    size: tuple[int, int],
    method: str = "adaptive",
    *,
    spacing: float | None = None,
    max_level: int = 1,
    block: int = 8,
    sigma: float = 0.5,
    prefilter: int = 3,
    chunk_size: int = 65536,
):
    """The renderer of a trained system on an output raster of ``size`` (evaluates the network
    where the method needs it): see the module docstring for the methods."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "dense":
        return DenseRenderer(system.network, size, chunk_size=chunk_size)
    if method == "points":
        if system.point_set is None:
            raise ValueError(f"method 'points' needs a sparse checkpoint, not {system.mode}")
        train_size = system.size
        scale = torch.tensor([size[1] / train_size[1], size[0] / train_size[0]])  # (x, y)
        positions = rescale_points(system.points.detach().float().cpu(), train_size, size)
        values = evaluate_network(
            system.network, pixel_to_unit(system.points.detach(), train_size), chunk_size
        )
        renderer = PointRenderer(
            positions.to(values),
            (system.sigma().detach().float().cpu()[:, None] * scale).to(values),
            values,
            cutoff=system.cutoff,
        )
        renderer.evaluations = positions.shape[0]
        return renderer
    adaptive = method == "adaptive" and system.point_set is not None
    if spacing is None:  # adaptive: coarse where training left its points coarse
        spacing = 2.0 if adaptive else 1.0
    levels = detail_levels(system, spacing, block, max_level if adaptive else 0)
    return GridRenderer(
        system.network,
        system.size,
        size,
        levels=levels,
        block=block,
        spacing=spacing,
        sigma=sigma,
        prefilter=prefilter,
        cutoff=system.cutoff,
        chunk_size=chunk_size,
    )


def output_size(
    system: ImplicitImageSystem, scale: float | None, size: list[int] | None
) -> tuple[int, int]:
    height, width = system.size
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
    tile_size: int,
    bits: int = 8,
    compare: DenseRenderer | None = None,
    device: torch.device | None = None,
) -> RenderResult:
    """Render tile by tile into an integer array [H, W, C]; ``build()`` makes the renderer (its
    network evaluations are timed with the tiles). With ``compare`` (a dense renderer), the PSNR
    against it, accumulated over tiles so nothing full-size is kept in float."""
    started = time.perf_counter()
    renderer = build()
    _synchronise(device)
    seconds = time.perf_counter() - started
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
        "--spacing",
        type=float,
        default=None,
        help="base grid spacing in training pixels (default: 2 adaptive, 1 grid)",
    )
    parser.add_argument(
        "--max-level", type=int, default=1, help="adaptive: finest grid is spacing / 2**max_level"
    )
    parser.add_argument("--sigma", type=float, default=0.5, help="grid sigma in grid spacings")
    parser.add_argument(
        "--prefilter",
        type=int,
        default=3,
        help="grid methods: iterations making the mixture pass through the network's samples",
    )
    parser.add_argument("--tile", type=int, default=1024, help="tile side in output pixels")
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        system = load_system(args.checkpoint, args.device)
        size = output_size(system, args.scale, args.size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with torch.no_grad():

        def build():
            return renderer_for(
                system,
                size,
                args.method,
                spacing=args.spacing,
                max_level=args.max_level,
                sigma=args.sigma,
                prefilter=args.prefilter,
                chunk_size=args.chunk,
            )

        compare = None
        if args.method != "dense" and not args.no_compare:
            compare = DenseRenderer(system.network, size, chunk_size=args.chunk)
        result = render_to_array(
            build,
            size,
            tile_size=args.tile,
            bits=args.bits,
            compare=compare,
            device=system.device,
        )
    print(
        f"{args.method} render {size[0]}x{size[1]} ({size[0] / system.size[0]:g}x the training "
        f"size): {result.seconds:.3f} s, {result.evaluations} network evaluations"
    )
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
    sys.exit(main())
