"""Distributed-training benchmark: one process against several on a large image.

    python -m models.bench_distributed --side 4096 --steps 1000 --processes 1 2

Runs ``train.py fit --config configs/large.yaml`` on a SIDE x SIDE mosaic of scikit-image's
photographs (no download) once per process count K, with Lightning's DDP strategy for K > 1
(gloo on CPU, NCCL on GPU). K processes train ``steps * max(processes) / K`` steps each, so every
run supervises the same number of pixels (steps x K x crop^2) and validates at the same pixel
counts. Reported per validation: step, wall seconds since training started, pixels supervised
and the network's PSNR over the whole image (tile by tile); and each process's peak memory.
Everything the runs write goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from nuir._cli import InputError, debugging, run_command

ROOT = Path(__file__).resolve().parent.parent


class Recorder(Callback):
    """Writes each validation's network PSNR with the step and the wall time (rank 0), and
    every process's peak resident memory at the end, as JSON lines into ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.started = time.perf_counter()

    def _write(self, name: str, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / name, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, system) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, system) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        self._write(
            "validation.jsonl",
            {
                "step": int(trainer.global_step),
                "seconds": time.perf_counter() - self.started,
                "psnr_network": float(metrics["val/psnr_network"]),
            },
        )

    def on_train_end(self, trainer, system) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MB (Linux)
        self._write("memory.jsonl", {"rank": trainer.global_rank, "peak_mb": peak})


def train_in_processes(
    config: Path, processes: int, options: list[str], *, callback: dict, threads: int = 0
) -> None:
    """``train.py fit --config CONFIG OPTIONS`` with ``processes`` DDP processes (one plain
    process for 1) and a recording ``callback`` ({class_path, init_args}), in a subprocess
    (Lightning's launcher starts the other processes by running the same command again)."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "fit",
        "--config",
        str(config),
        f"--trainer.devices={processes}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=" + json.dumps(callback),
        *options,
    ]
    if processes > 1:
        command.append("--trainer.strategy=ddp")
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=7200)
    if done.returncode == 2 and not debugging():  # train.py refused its input, in one line
        raise InputError(
            f"train.py: {done.stderr.strip().splitlines()[-1].removeprefix('error: ')}"
        )
    if done.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{done.stderr[-4000:]}")


def run(args: argparse.Namespace, processes: int) -> dict:
    """One training run with ``processes`` processes; its records."""
    folder = args.out / f"{processes}proc"
    steps = args.steps * max(args.processes) // processes
    options = [
        f"--data.path=skimage-mosaic:{args.side}",
        f"--model.sampler.n_points={args.side * args.side // 4}",
        f"--model.crop_size={args.crop}",
        f"--model.network.init_args.hidden_features={args.width}",
        f"--trainer.max_steps={steps}",
        f"--trainer.accelerator={args.accelerator}",
        f"--data.steps_per_epoch={steps // args.validations}",
        f"--trainer.logger.init_args.save_dir={folder / 'runs'}",
        *args.override,
    ]
    recorder = {
        "class_path": "models.bench_distributed.Recorder",
        "init_args": {"folder": str(folder)},
    }
    started = time.perf_counter()
    train_in_processes(
        ROOT / "configs" / "large.yaml", processes, options, callback=recorder, threads=args.threads
    )
    validations = [
        json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()
    ]
    memory = [json.loads(line) for line in (folder / "memory.jsonl").read_text().splitlines()]
    for record in validations:
        record["pixels"] = record["step"] * processes * args.crop**2
    return {
        "processes": processes,
        "steps": steps,
        "seconds": time.perf_counter() - started,
        "validations": validations,
        "peak_mb": sorted(m["peak_mb"] for m in memory),
    }


def report(results: list[dict]) -> str:
    lines = [
        "| processes | step | wall s | pixels supervised | network PSNR |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        for record in result["validations"]:
            lines.append(
                f"| {result['processes']} | {record['step']} | {record['seconds']:.0f} | "
                f"{record['pixels'] / 1e6:.1f} M | {record['psnr_network']:.2f} dB |"
            )
    lines.append("")
    for result in results:
        peaks = ", ".join(f"{peak:.0f}" for peak in result["peak_mb"])
        lines.append(
            f"{result['processes']} process(es): {result['steps']} steps, "
            f"{result['seconds']:.0f} s in all, peak memory per process {peaks} MB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bench_distributed", description=__doc__)
    parser.add_argument("--side", type=int, default=4096, help="mosaic side in pixels")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the largest K")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--width", type=int, default=128, help="SIREN hidden width")
    parser.add_argument("--validations", type=int, default=4, help="validations per run")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (0: torch's)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG")
    parser.add_argument("--out", type=Path, default=Path("bench_out/distributed"))
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    results = [run(args, processes) for processes in sorted(args.processes)]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"# {args.side} x {args.side} mosaic, crops of {args.crop}, SIREN width {args.width}")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
