"""Render benchmark: the sample-grid renders of a trained network against its dense render.

    python -m models.bench_render runs/default/checkpoints/last.ckpt --scales 1 2 4 8

For each scale, the dense render (the network at every output pixel) and each other method of
``models.render`` are timed in the same run on the same machine, whole images in memory (so this
is for moderate sizes; the render command itself works tile by tile). Reported: seconds, network
evaluations, the speed-up over dense and the PSNR against the dense render.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from models.checkpoint import load_system
from models.render import output_size, renderer_for
from models.system import ImplicitImageSystem
from nuir.renderers import render


def timed_render(build, size: tuple[int, int], tile_size: int, device: torch.device):
    """(image [C, H, W], seconds including ``build()``, network evaluations)."""
    started = time.perf_counter()
    renderer = build()
    image = render(renderer, size, tile_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return image, time.perf_counter() - started, int(renderer.evaluations)


def default_methods(system: ImplicitImageSystem) -> list[str]:
    methods = ["adaptive", "grid"]
    return methods + ["points"] if system.point_set is not None else methods


def benchmark_render(
    system: ImplicitImageSystem,
    scales: list[float],
    methods: list[str] | None = None,
    *,
    tile_size: int = 1024,
) -> list[dict]:
    """One row per (scale, method): sizes, seconds, evaluations, speed-up and PSNR vs dense."""
    system = system.eval()
    methods = methods or default_methods(system)
    rows = []
    with torch.no_grad():
        for scale in scales:
            size = output_size(system, scale, None)
            dense, dense_s, dense_evaluations = timed_render(
                lambda size=size: renderer_for(system, size, "dense"),
                size,
                tile_size,
                system.device,
            )
            dense = dense.clamp(0, 1)
            for method in methods:
                image, seconds, evaluations = timed_render(
                    lambda size=size, method=method: renderer_for(system, size, method),
                    size,
                    tile_size,
                    system.device,
                )
                mse = float((image.clamp(0, 1) - dense).double().square().mean())
                rows.append(
                    {
                        "scale": scale,
                        "size": size,
                        "method": method,
                        "dense_s": dense_s,
                        "dense_evaluations": dense_evaluations,
                        "seconds": seconds,
                        "evaluations": evaluations,
                        "speedup": dense_s / seconds,
                        "psnr_vs_dense": math.inf if mse == 0 else -10 * math.log10(mse),
                    }
                )
    return rows


def render_table(rows: list[dict]) -> str:
    lines = [
        "| scale | output | method | dense s | dense evals | method s | method evals | "
        "speed-up | PSNR vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scale']:g}x | {row['size'][0]}x{row['size'][1]} | {row['method']} | "
            f"{row['dense_s']:.3f} | {row['dense_evaluations']} | {row['seconds']:.3f} | "
            f"{row['evaluations']} | {row['speedup']:.1f}x | {row['psnr_vs_dense']:.2f} dB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bench_render", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by train.py")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--methods", nargs="+", default=None, choices=("adaptive", "grid", "points")
    )
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        system = load_system(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = benchmark_render(system, args.scales, args.methods, tile_size=args.tile)
    print(
        f"# render benchmark: {args.checkpoint} (trained {system.mode}, "
        f"{system.size[0]}x{system.size[1]}) on {args.device}"
    )
    print(render_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
