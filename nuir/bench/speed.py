"""Speed of the operator against its peers, measured in one run.

    python -m nuir.bench speed [--sizes 256 512 1024 2048] [--device cpu|cuda] [--out DIR]

CPU: for each output size H x W, N = H * W / density random points (sigma 2, cutoff 3, C = 3,
float32): nuir forward and forward + backward, the pure-PyTorch reference (where it fits),
scipy.interpolate.griddata (linear) on the same points; and the uniform case, nuir.upsample
by 4 against PIL's bicubic resize. Medians over repeats, after a warm-up; ratios against the
peers are printed beside the times. ``--device cuda`` runs the CUDA benchmark instead.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from nuir.bench._common import fmt, width


def machine_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"


CLOCK = time.perf_counter  # --cpu-time switches to time.process_time


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return 1e3 * statistics.median(times)


def bench_size(size: int, args, rng: torch.Generator) -> dict:
    import nuir
    from nuir import reference

    height = width = size
    n = height * width // args.density
    points = torch.rand(n, 2, generator=rng) * torch.tensor([width - 1.0, height - 1.0])
    values = torch.rand(n, args.channels, generator=rng)
    row: dict = {"size": f"{height}x{width}", "points": n}

    row["nuir_fwd_ms"] = median_ms(
        lambda: nuir.interpolate(points, values, (height, width), args.sigma), args.repeats
    )

    def forward_backward():
        p = points.clone().requires_grad_()
        v = values.clone().requires_grad_()
        nuir.interpolate(p, v, (height, width), args.sigma).sum().backward()

    row["nuir_fwd_bwd_ms"] = median_ms(forward_backward, args.repeats)

    pairs = height * width * n
    if pairs <= args.reference_max_pairs:
        row["reference_fwd_ms"] = median_ms(
            lambda: reference.interpolate(points, values, (height, width), args.sigma),
            max(1, args.repeats // 3),
            warmup=1,
        )
    if not args.no_griddata:
        from scipy.interpolate import griddata

        grid_y, grid_x = np.mgrid[0:height, 0:width]
        pts, vals = points.numpy().astype(np.float64), values.numpy()
        row["griddata_linear_ms"] = median_ms(
            lambda: griddata(pts, vals, (grid_x, grid_y), method="linear"),
            max(1, args.repeats // 3),
            warmup=1,
        )

    # Uniform case: low-resolution image upsampled by 4.
    from PIL import Image

    low = torch.rand(1, args.channels, height // 4, width // 4, generator=rng)
    low_u8 = (low[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(args.channels)
    row["upsample_nuir_ms"] = median_ms(
        lambda: nuir.upsample(low, 4, sigma=args.sigma), args.repeats
    )
    if mode is not None:
        image = Image.fromarray(low_u8 if args.channels > 1 else low_u8[..., 0], mode)
        row["upsample_pil_bicubic_u8_ms"] = median_ms(
            lambda: image.resize((width, height), Image.Resampling.BICUBIC), args.repeats
        )
    planes = [Image.fromarray(low[0, c].numpy(), "F") for c in range(args.channels)]
    row["upsample_pil_bicubic_f32_ms"] = median_ms(
        lambda: [p.resize((width, height), Image.Resampling.BICUBIC) for p in planes], args.repeats
    )
    return row


# Ratio columns: (numerator, denominator), two times of the same row (the same run).
RATIOS = {
    "fwd_bwd_over_fwd": ("nuir_fwd_bwd_ms", "nuir_fwd_ms"),
    "reference_over_fwd": ("reference_fwd_ms", "nuir_fwd_ms"),
    "griddata_over_fwd": ("griddata_linear_ms", "nuir_fwd_ms"),
    "upsample_over_pil_u8": ("upsample_nuir_ms", "upsample_pil_bicubic_u8_ms"),
    "upsample_over_pil_f32": ("upsample_nuir_ms", "upsample_pil_bicubic_f32_ms"),
}


def add_ratios(row: dict) -> dict:
    """The row with its ratio columns and the forward's time per output pixel."""
    for name, (numerator, denominator) in RATIOS.items():
        if numerator in row and denominator in row:
            row[name] = row[numerator] / row[denominator]
    height, width = (int(side) for side in row["size"].split("x"))
    row["fwd_ns_per_pixel"] = 1e6 * row["nuir_fwd_ms"] / (height * width)
    return row


# The printed table: (heading, CSV column, cell format); "|" separates groups of columns.
# fmt: off
TABLE = [
    ("size", "size", ">10"), ("N", "points", ">8"), "|",
    ("fwd ms", "nuir_fwd_ms", "8.2f"), ("f+b ms", "nuir_fwd_bwd_ms", "8.2f"),
    ("f+b/fwd", "fwd_bwd_over_fwd", "7.2f"), ("ns/px", "fwd_ns_per_pixel", "6.2f"), "|",
    ("ref ms", "reference_fwd_ms", "9.1f"), ("ref/fwd", "reference_over_fwd", "8.1f"), "|",
    ("griddata", "griddata_linear_ms", "9.1f"), ("grid/fwd", "griddata_over_fwd", "8.1f"), "|",
    ("upsample", "upsample_nuir_ms", "8.2f"), ("PIL u8", "upsample_pil_bicubic_u8_ms", "7.2f"),
    ("ratio", "upsample_over_pil_u8", "6.2f"), ("PIL f32", "upsample_pil_bicubic_f32_ms", "7.2f"),
    ("ratio", "upsample_over_pil_f32", "6.2f"),
]
# fmt: on


def table_line(cells) -> str:
    return " ".join(cell if cell == "|" else fmt(*cell) for cell in cells)


def print_table(rows: list[dict]) -> None:
    header = table_line(c if c == "|" else (c[0], ">" + width(c[2])) for c in TABLE)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(table_line(c if c == "|" else (r.get(c[1]), c[2]) for c in TABLE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--density", type=int, default=16, help="output pixels per point")
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--reference-max-pairs",
        type=float,
        default=3e8,
        help="skip the O(H*W*N) reference above this many pixel-point pairs",
    )
    parser.add_argument("--no-griddata", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time instead of the wall clock: steadier on a machine "
        "shared with other jobs (use with --threads 1)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for speed_cpu.csv")
    args, rest = parser.parse_known_args(argv)
    if args.device == "cuda":
        from nuir.bench import _speed_cuda

        return _speed_cuda.main(argv if argv is not None else [])
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    for name in ("sizes", "density", "channels", "repeats"):
        value = getattr(args, name)
        if any(v <= 0 for v in (value if isinstance(value, list) else [value])):
            parser.error(f"--{name} must be positive, got {value}")
    if args.sizes and min(args.sizes) < 8:
        parser.error("--sizes must be at least 8 (the uniform case upsamples size / 4 by 4)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time

    import nuir
    from nuir import _backend

    print(f"machine: {machine_name()}")
    print(f"backend: {nuir.backend_name()}")
    if _backend.cpu_isa() is not None:
        print(
            f"CPU kernels: {_backend.cpu_isa()} (runs here: {' '.join(_backend.cpu_isas())}; "
            f"NUIR_CPU_ISA picks), compiled with {' '.join(_backend.CXX_FLAGS)}"
        )
    print(
        f"N = H*W/{args.density} random points, sigma {args.sigma}, cutoff 3, C = {args.channels}, "
        f"float32; medians of {args.repeats} runs (reference and griddata: fewer); "
        f"clock: {'process CPU time' if args.cpu_time else 'wall'}"
    )
    rng = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        rows.append(add_ratios(bench_size(size, args, rng)))
    print()
    print_table(rows)
    print(
        "\nf+b/fwd: forward+backward over forward. ref/fwd, grid/fwd: times slower than the nuir "
        "forward.\nupsample: nuir.upsample of (size/4)^2 by 4; ratio = nuir time / PIL bicubic "
        "time (uint8 RGB, and float32 per channel)."
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        keys = sorted(
            {k for r in rows for k in r},
            key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99,
        )
        with open(args.out / "speed_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out / 'speed_cpu.csv'}")
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
