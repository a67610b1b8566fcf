"""CUDA speed of the operator against its peers on the same GPU, measured in one run.

    python -m nuir.bench speed --device cuda [--sizes 512 1024 2048 4096] [--out DIR_OR_CSV]

For each output size S x S (C = 3, float32 unless --dtype):
  scattered  N = S*S / density random points, sigma 2, cutoff 3:
             "nuir op" (torch.ops.nuir.gmm_forward / gmm_backward on kernel-form tensors: the
             kernels alone), "nuir interpolate" (the public API with validation and autograd),
             and the pure-PyTorch "reference" on the same GPU where H*W*N is small enough;
  uniform    (S/4)^2 -> S^2 upsampling: "nuir upsample" (nuir.upsample) against
             "torch bicubic" (torch.nn.functional.interpolate, mode="bicubic").
Times are medians of CUDA-event timings after a warm-up. Every row also gives the achieved
memory bandwidth -- the bytes the operation must move at least (inputs read once, outputs written
once) over its time -- as GB/s and as a fraction of the device's peak, beside a measured
device-to-device copy for scale.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from nuir.bench._common import fmt

# Peak DRAM bandwidth (GB/s) by device-name fragment, where the device properties lack the memory
# clock and bus width. First match wins: keep the specific names first.
_PEAK_GBS_BY_NAME = [
    ("H100 NVL", 3938.0),
    ("H100 PCIe", 2039.0),
    ("H100", 3352.0),  # SXM5, HBM3
    ("H200", 4800.0),
    ("GH200", 4000.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("V100", 900.0),
    ("T4", 320.0),
]

DEVICE = "cuda"

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def peak_bandwidth_gbs(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak DRAM bandwidth in GB/s or None, where the number comes from)."""
    if override:
        return override, "--peak-gbs"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:  # double data rate: two transfers per clock
        return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width"
    for fragment, gbs in _PEAK_GBS_BY_NAME:
        if fragment in props.name:
            return gbs, f"datasheet value for {fragment}"
    return None, "unknown (pass --peak-gbs)"


def cuda_median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median time of fn in milliseconds from CUDA events around each call, after a warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def gmm_bytes(n: int, channels: int, height: int, width: int, itemsize: int) -> tuple[int, int]:
    """Least bytes moved by the forward, and by forward + backward, of the operator.

    Forward: read points, values, cov3, weights (N * (2 + C + 3 + 1)); write image and weight
    map ((C + 1) * H * W). Backward: read the same inputs, grad_image, image and weight map
    ((2 C + 1) * H * W); write the four gradients."""
    per_point = n * (2 + channels + 3 + 1) * itemsize
    pixels = height * width * itemsize
    forward = per_point + (channels + 1) * pixels
    backward = 2 * per_point + (2 * channels + 1) * pixels
    return forward, forward + backward


def row(case, size, n, impl, fwd_ms, fb_ms, nbytes, fb_bytes, base, peak) -> dict:
    """One result; ratios are this time over the "nuir" row of the case (base), > 1 is slower."""

    def gbs(b, ms):
        return b / (ms * 1e-3) / 1e9 if ms else None

    fwd_gbs, fb_gbs = gbs(nbytes, fwd_ms), gbs(fb_bytes, fb_ms)
    return {
        "case": case,
        "size": f"{size}x{size}",
        "points": n,
        "impl": impl,
        "forward_ms": fwd_ms,
        "forward_backward_ms": fb_ms,
        "forward_vs_nuir": fwd_ms / base[0] if base and fwd_ms else None,
        "forward_backward_vs_nuir": fb_ms / base[1] if base and fb_ms else None,
        "bytes": nbytes,
        "forward_backward_bytes": fb_bytes,
        "forward_gbs": fwd_gbs,
        "forward_peak_fraction": fwd_gbs / peak if peak and fwd_gbs else None,
        "forward_backward_gbs": fb_gbs,
        "forward_backward_peak_fraction": fb_gbs / peak if peak and fb_gbs else None,
    }


def bench_scattered(size: int, args, peak: float | None, gen: torch.Generator) -> list[dict]:
    import nuir
    from nuir import reference
    from nuir._validate import prepare

    dev, dtype, channels = torch.device(DEVICE), _DTYPES[args.dtype], args.channels
    n = max(1, size * size // args.density)
    span = torch.tensor([size - 1.0, size - 1.0], device=dev)
    points = (torch.rand(n, 2, generator=gen, device=dev) * span).to(dtype)
    values = torch.rand(n, channels, generator=gen, device=dev).to(dtype)
    p = prepare(points, values, (size, size), args.sigma, None, None, args.cutoff, 0.0)
    kernel_args = [t.contiguous() for t in (p.points, p.values, p.cov3, p.weights)]
    op_forward, op_backward = torch.ops.nuir.gmm_forward, torch.ops.nuir.gmm_backward
    image, weight = op_forward(*kernel_args, size, size, args.cutoff, 0.0)
    grad_image = torch.randn(image.shape, generator=gen, device=dev).to(dtype)
    nbytes, fb_bytes = gmm_bytes(n, channels, size, size, image.element_size())
    reps, warm = args.repeats, args.warmup

    def op_fb():
        img, w = op_forward(*kernel_args, size, size, args.cutoff, 0.0)
        op_backward(grad_image, None, img, w, *kernel_args, args.cutoff)

    base = (
        cuda_median_ms(lambda: op_forward(*kernel_args, size, size, args.cutoff, 0.0), reps, warm),
        cuda_median_ms(op_fb, reps, warm),
    )
    rows = [row("scattered", size, n, "nuir op", *base, nbytes, fb_bytes, base, peak)]

    def api(fn):
        def forward():
            return fn(points, values, (size, size), args.sigma, cutoff=args.cutoff)

        def forward_backward():
            leaves = [points.clone().requires_grad_(), values.clone().requires_grad_()]
            out = fn(*leaves, (size, size), args.sigma, cutoff=args.cutoff)
            out.backward(grad_image[0])

        return forward, forward_backward

    forward, forward_backward = api(nuir.interpolate)
    times = cuda_median_ms(forward, reps, warm), cuda_median_ms(forward_backward, reps, warm)
    rows.append(row("scattered", size, n, "nuir interpolate", *times, nbytes, fb_bytes, base, peak))
    if size * size * n <= args.reference_max_pairs:
        forward, forward_backward = api(reference.interpolate)
        few = max(1, reps // 5)
        times = cuda_median_ms(forward, few, 1), cuda_median_ms(forward_backward, few, 1)
        rows.append(row("scattered", size, n, "reference", *times, nbytes, fb_bytes, base, peak))
    return rows


def bench_uniform(size: int, args, peak: float | None, gen: torch.Generator) -> list[dict]:
    import torch.nn.functional as F

    import nuir

    dev, dtype, channels = torch.device(DEVICE), _DTYPES[args.dtype], args.channels
    low_size = max(1, size // 4)
    low = torch.rand(1, channels, low_size, low_size, generator=gen, device=dev).to(dtype)
    grad = torch.randn(1, channels, size, size, generator=gen, device=dev).to(dtype)
    n = low_size * low_size
    itemsize = low.element_size()
    nbytes, fb_bytes = gmm_bytes(n, channels, size, size, itemsize)
    reps, warm = args.repeats, args.warmup

    def timings(fn):
        def forward_backward():
            x = low.clone().requires_grad_()
            fn(x).backward(grad)

        return cuda_median_ms(lambda: fn(low), reps, warm), cuda_median_ms(
            forward_backward, reps, warm
        )

    base = timings(lambda x: nuir.upsample(x, size=(size, size), cutoff=args.cutoff))
    rows = [row("uniform x4", size, n, "nuir upsample", *base, nbytes, fb_bytes, base, peak)]
    # bicubic reads the low-resolution image and writes the output; its backward the reverse.
    bicubic_bytes = channels * (n + size * size) * itemsize
    times = timings(
        lambda x: F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    )
    rows.append(
        row(
            "uniform x4",
            size,
            n,
            "torch bicubic",
            *times,
            bicubic_bytes,
            2 * bicubic_bytes,
            base,
            peak,
        )
    )
    return rows


def copy_bandwidth_gbs() -> float:
    """Measured device-to-device copy bandwidth (read + write) of a 256 MiB buffer."""
    src = torch.empty(64 << 20, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), 10, 3)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':<11} {'size':>9} {'N':>8} {'impl':<17} | {'fwd ms':>8} {'f+b ms':>8} | "
        f"{'fwd/nuir':>8} {'f+b/nuir':>8} | {'fwd GB/s':>8} {'%peak':>6} | "
        f"{'f+b GB/s':>8} {'%peak':>6}"
    )
    print(header)
    print("-" * len(header))

    def percent(fraction):
        return None if fraction is None else 100 * fraction

    for r in rows:
        print(
            f"{r['case']:<11} {r['size']:>9} {r['points']:>8} {r['impl']:<17} | "
            f"{fmt(r['forward_ms'], '8.3f')} {fmt(r['forward_backward_ms'], '8.3f')} | "
            f"{fmt(r['forward_vs_nuir'], '8.2f')} {fmt(r['forward_backward_vs_nuir'], '8.2f')} | "
            f"{fmt(r['forward_gbs'], '8.0f')} {fmt(percent(r['forward_peak_fraction']), '6.1f')} | "
            f"{fmt(r['forward_backward_gbs'], '8.0f')} "
            f"{fmt(percent(r['forward_backward_peak_fraction']), '6.1f')}"
        )


def write_csv(rows: list[dict], out: Path) -> Path:
    path = out if out.suffix == ".csv" else out / "speed_cuda.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench speed --device cuda",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", choices=["cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--density", type=int, default=16, help="output pixels per point")
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--cutoff", type=float, default=3.0)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=list(_DTYPES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--reference-max-pairs",
        type=float,
        default=1e10,
        help="skip the O(H*W*N) reference above this many pixel-point pairs",
    )
    parser.add_argument("--peak-gbs", type=float, default=None, help="override the peak GB/s")
    parser.add_argument("--out", type=Path, default=None, help="a .csv file, or a folder for it")
    # Options of the CPU benchmark that `speed` passes along; they do not apply on the GPU.
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-griddata", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("sizes", "density", "channels", "repeats"):
        value = getattr(args, name)
        if any(v <= 0 for v in (value if isinstance(value, list) else [value])):
            parser.error(f"--{name} must be positive, got {value}")
    if args.warmup < 0 or args.sigma <= 0 or args.cutoff <= 0:
        parser.error("--warmup must be >= 0, --sigma and --cutoff > 0")
    if min(args.sizes) < 4:
        parser.error("--sizes must be at least 4 (the uniform case upsamples size / 4 by 4)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(list(argv))
    if not torch.cuda.is_available():
        print(
            "nuir.bench speed --device cuda: CUDA is not available (torch.cuda.is_available() is "
            "False). Run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use "
            "--device cpu.",
            file=sys.stderr,
        )
        return 2
    import nuir
    from nuir.ops import ensure_registered

    if not ensure_registered() or not torch._C._dispatch_has_kernel_for_dispatch_key(
        "nuir::gmm_forward", "CUDA"
    ):
        print(
            "nuir.bench speed --device cuda: the compiled operator has no CUDA kernel (the CUDA "
            "build failed or CUDA_HOME is not set); NUIR_VERBOSE_BUILD=1 shows the build log.",
            file=sys.stderr,
        )
        return 2

    device = torch.device(DEVICE)
    peak, peak_source = peak_bandwidth_gbs(device, args.peak_gbs)
    print(
        f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, backend {nuir.backend_name()}"
    )
    peak_text = f"{peak:.0f} GB/s" if peak else "?"
    print(
        f"peak memory bandwidth: {peak_text} ({peak_source}); measured copy: "
        f"{copy_bandwidth_gbs():.0f} GB/s"
    )
    print(
        f"scattered: N = S*S/{args.density} random points, sigma {args.sigma}, cutoff "
        f"{args.cutoff}; uniform: (S/4)^2 -> S^2; C = {args.channels}, {args.dtype}; medians of "
        f"{args.repeats} CUDA-event timings after {args.warmup} warm-up runs (reference: fewer)"
    )
    gen = torch.Generator(device=device).manual_seed(0)
    rows: list[dict] = []
    for size in args.sizes:
        rows += bench_scattered(size, args, peak, gen)
        rows += bench_uniform(size, args, peak, gen)
    print()
    print_table(rows)
    print(
        '\nfwd/nuir, f+b/nuir: time over the nuir row of the same case and size ("nuir op" for '
        'scattered points, "nuir upsample" for the uniform case); > 1 is slower than nuir.\n'
        "GB/s: least bytes the operation must move (inputs read once, outputs written once) "
        "over its time; %peak against the peak above."
    )
    if args.out is not None:
        print(f"wrote {write_csv(rows, args.out)}")
    return 0
