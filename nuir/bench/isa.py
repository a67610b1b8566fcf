"""The CPU kernels' instruction-set variants against each other, in one process.

    python -m nuir.bench isa [--sizes 256 512 1024 2048] [--threads N] [--rounds 5]

For each output size H x W: N = H * W / 16 random points, sigma 2, cutoff 3, C = 3, float32;
the forward and the backward (gradients of positions and values) of torch.ops.nuir.* with every
instruction set the kernels run here (NUIR_CPU_ISA: baseline, avx2, avx512), the variants taking
turns in each round. A round keeps each variant's fastest repeat; the table prints the median
over rounds and each time over the best variant's time of the same size. With one thread the
clock is the thread's CPU time (steadier on a shared machine), else the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from nuir.bench._common import check_ranges


def cases(sizes: list[int], rng: torch.Generator) -> dict:
    """Per size: the forward's and the backward's arguments."""
    out = {}
    for size in sizes:
        n = max(1, size * size // 16)
        points = torch.rand(1, n, 2, generator=rng) * (size - 1)
        values = torch.rand(1, n, 3, generator=rng)
        cov3 = torch.tensor([4.0, 0.0, 4.0]).expand(1, n, 3).contiguous()
        weights = torch.ones(1, n)
        forward = (points, values, cov3, weights, size, size, 3.0, 0.0)
        image, weight = torch.ops.nuir.gmm_forward(*forward)
        grad = torch.rand(image.shape, generator=rng)
        backward = (grad, None, image, weight, points, values, cov3, weights, 3.0)
        out[size] = (forward, (*backward, [True, True, False, False]))
    return out


def fastest_ms(op, args: tuple, repeats: int, clock) -> float:
    op(*args)  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        op(*args)
        times.append(clock() - start)
    return 1e3 * min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nuir.bench isa",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=0, help="per round and variant (0: about 0.2 s of work)"
    )
    args = parser.parse_args(argv)
    check_ranges(parser, args, at_least={"rounds": 1, "threads": 0, "repeats": 0})
    if min(args.sizes) < 1:
        parser.error(f"--sizes must be positive, got {args.sizes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import nuir  # noqa: F401  (defines the ops)
    from nuir import _backend
    from nuir.bench.speed import machine_name

    if not _backend.compiled_available():
        parser.error("the compiled kernels are not available (nuir.backend_name() is 'reference')")
    isas = _backend.cpu_isas()
    threads = torch.get_num_threads()
    clock = time.thread_time if threads == 1 else time.perf_counter
    print(f"machine: {machine_name()}")
    print(f"CPU kernels: {' '.join(isas)}, compiled with {' '.join(_backend.CXX_FLAGS)}")
    print(
        f"N = H*W/16 random points, sigma 2, cutoff 3, C = 3, float32; torch.ops.nuir kernels; "
        f"median over {args.rounds} rounds of each round's fastest repeat; clock: "
        f"{'thread CPU time' if threads == 1 else 'wall'}"
    )
    data = cases(args.sizes, torch.Generator().manual_seed(0))
    ops = {"fwd": torch.ops.nuir.gmm_forward, "bwd": torch.ops.nuir.gmm_backward}
    times: dict[tuple, list[float]] = {}
    saved = os.environ.get("NUIR_CPU_ISA")
    try:
        for _ in range(args.rounds):
            for size, op_args in data.items():
                repeats = args.repeats or max(2, round(20 * (512 / size) ** 2))
                for isa in isas:
                    os.environ["NUIR_CPU_ISA"] = isa
                    for (name, op), arguments in zip(ops.items(), op_args):
                        ms = fastest_ms(op, arguments, repeats, clock)
                        times.setdefault((size, isa, name), []).append(ms)
    finally:
        if saved is None:
            os.environ.pop("NUIR_CPU_ISA", None)
        else:
            os.environ["NUIR_CPU_ISA"] = saved
    rows = table(times, args.sizes, isas)
    print()
    print(f"{'size':>6} {'isa':>9} {'fwd ms':>8} {'fwd/best':>8} {'bwd ms':>8} {'bwd/best':>8}")
    for r in rows:
        print(
            f"{r['size']:>6} {r['isa']:>9} {r['fwd_ms']:8.2f} {r['fwd_over_best']:8.2f} "
            f"{r['bwd_ms']:8.2f} {r['bwd_over_best']:8.2f}"
        )
    print(
        f"\nbest: {isas[-1]}, the variant the kernels run here unless NUIR_CPU_ISA says otherwise"
    )
    return 0


def table(times: dict, sizes: list[int], isas: list[str]) -> list[dict]:
    """Rows (size, isa) with the median times and their ratios to the best variant's."""
    rows = []
    for size in sizes:
        best = {op: statistics.median(times[(size, isas[-1], op)]) for op in ("fwd", "bwd")}
        for isa in isas:
            row = {"size": size, "isa": isa}
            for op in ("fwd", "bwd"):
                row[f"{op}_ms"] = statistics.median(times[(size, isa, op)])
                row[f"{op}_over_best"] = row[f"{op}_ms"] / best[op]
            rows.append(row)
    return rows


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
