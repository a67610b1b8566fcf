"""Training benchmark: sparse against dense training at equal wall-clock time.

    python -m models.bench_train --budget 300

Every variant is built from a config through LightningCLI (exactly as ``train.py`` builds it), then
fitted by a Lightning Trainer for ``--budget`` seconds of training-step time. Every
``--eval-every`` seconds the clock pauses and the model's full-image reconstruction is scored (PSNR
against the target), so the evaluations cost the variant nothing; the learning-rate schedule runs on
the same clock. The variants take turns in slices of ``--slice`` seconds (each in its own thread,
one running at a time), so a change in the machine's load hits them alike. Variants (same network,
same photo):

- ``sparse``:       the network at N learnable points + ``nuir.interpolate`` (configs/default.yaml)
- ``dense``:        the network at every pixel (configs/dense.yaml)
- ``dense_random``: the network at N random pixels per step (configs/dense.yaml, mode
  dense_random)

Prints a table (PSNR against wall time and network evaluations), writes the curves as CSV and a
plot (PSNR against time and against evaluations) into ``--out``, then runs the render benchmark of
``models.render`` (sparse against dense rendering at 1x, 2x, 4x) on the trained networks.
Speed figures are only meaningful against each other within one run on one machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningCLI
from torchmetrics.functional.image import peak_signal_noise_ratio

from models.data import ImageDataModule
from models.system import ImplicitImageSystem

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "sparse": (ROOT / "configs" / "default.yaml", []),
    "dense": (ROOT / "configs" / "dense.yaml", []),
    "dense_random": (ROOT / "configs" / "dense.yaml", ["--model.mode", "dense_random"]),
}


@dataclass
class Curve:
    """PSNR of one variant's reconstruction over its training time."""

    name: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    psnr_network: list[float] = field(default_factory=list)


class Turns:
    """Round-robin turns between variants: one trains at a time, each for a slice of its clock."""

    def __init__(self, names: list[str]) -> None:
        self.order = list(names)
        self.active = set(names)
        self.current = self.order[0] if self.order else None
        self.condition = threading.Condition()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.current == name)

    def _advance(self) -> None:
        if not self.active:
            self.current = None
            return
        index = self.order.index(self.current)
        for step in range(1, len(self.order) + 1):
            candidate = self.order[(index + step) % len(self.order)]
            if candidate in self.active:
                self.current = candidate
                return

    def pass_on(self, name: str) -> None:
        with self.condition:
            if self.current == name:
                self._advance()
            self.condition.notify_all()

    def finish(self, name: str) -> None:
        with self.condition:
            self.active.discard(name)
            if self.current == name:
                self._advance()
            self.condition.notify_all()


class TrainingClock(Callback):
    """Stops training after ``budget_s`` seconds spent in training steps; scores the model every
    ``eval_every_s`` of them, with the clock paused. The system's learning-rate schedule runs on
    this clock (``external_progress``), so it ends with the budget. With ``turns``, it hands over
    to the next variant after every ``slice_s`` seconds of its own clock."""

    def __init__(
        self,
        curve: Curve,
        budget_s: float,
        eval_every_s: float,
        turns: Turns | None = None,
        slice_s: float = 10.0,
    ) -> None:
        self.curve = curve
        self.budget_s = budget_s
        self.eval_every_s = eval_every_s
        self.turns = turns
        self.slice_s = slice_s
        self.elapsed = 0.0
        self.next_eval = 0.0
        self.slice_end = slice_s
        self.started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if self.turns is not None:
            self.turns.wait(self.curve.name)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.external_progress = self.elapsed / self.budget_s
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.elapsed += time.perf_counter() - self.started
        done = self.elapsed >= self.budget_s
        if done or self.elapsed >= self.next_eval:
            self.score(trainer, pl_module, batch[0])
            self.next_eval += self.eval_every_s
        if done:
            trainer.should_stop = True
        elif self.turns is not None and self.elapsed >= self.slice_end:
            self.slice_end += self.slice_s
            self.turns.pass_on(self.curve.name)
            self.turns.wait(self.curve.name)

    @torch.no_grad()
    def score(self, trainer, system: ImplicitImageSystem, target: torch.Tensor) -> None:
        reconstruction = system.reconstruct().clamp(0, 1)
        psnr = float(peak_signal_noise_ratio(reconstruction, target, data_range=1.0))
        network = system.network_image().clamp(0, 1) if system.mode == "sparse" else None
        self.curve.seconds.append(self.elapsed)
        self.curve.steps.append(int(trainer.global_step))
        self.curve.evaluations.append(int(system.network_evaluations))
        self.curve.psnr.append(psnr)
        self.curve.psnr_network.append(
            psnr if network is None else float(peak_signal_noise_ratio(network, target, 1.0))
        )


def build(config: Path, overrides: list[str]) -> tuple[ImplicitImageSystem, ImageDataModule]:
    """The system and data of a config, built by LightningCLI as train.py builds them."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI must read args, not this command
    try:
        cli = LightningCLI(
            ImplicitImageSystem,
            ImageDataModule,
            args=["--config", str(config), *overrides],
            run=False,
            save_config_callback=None,
        )
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule


def make_trainer(clock: TrainingClock, accelerator: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=-1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[clock],
    )


def train_variants(
    variants: list[tuple[str, Path, list[str]]],
    budget_s: float,
    eval_every_s: float,
    accelerator: str,
    slice_s: float,
) -> tuple[list[Curve], dict[str, ImplicitImageSystem]]:
    """Fit every (name, config, overrides) variant for budget_s of training time.

    With slice_s > 0 the variants take turns (each in its own thread, one running at a time);
    with slice_s = 0 they run one after the other.
    """
    built = [(name, *build(config, overrides)) for name, config, overrides in variants]
    curves = {name: Curve(name) for name, _, _ in built}
    turns = Turns([name for name, _, _ in built]) if slice_s > 0 else None
    failures: list[BaseException] = []

    def fit(name: str, system: ImplicitImageSystem, data: ImageDataModule) -> None:
        clock = TrainingClock(curves[name], budget_s, eval_every_s, turns, slice_s)
        try:
            make_trainer(clock, accelerator).fit(system, datamodule=data)
        except BaseException as exc:  # reported after the other variants finish
            failures.append(exc)
        finally:
            if turns is not None:
                turns.finish(name)

    if turns is None:
        for name, system, data in built:
            fit(name, system, data)
    else:
        threads = [
            threading.Thread(target=fit, args=item, name=f"bench-{item[0]}") for item in built
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return [curves[name] for name, _, _ in built], {name: system for name, system, _ in built}


def write_csv(curves: list[Curve], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seconds", "steps", "network_evaluations", "psnr", "psnr_net"])
        for curve in curves:
            for row in zip(
                curve.seconds,
                curve.steps,
                curve.evaluations,
                curve.psnr,
                curve.psnr_network,
            ):
                writer.writerow(
                    [curve.name, f"{row[0]:.2f}", row[1], row[2], f"{row[3]:.3f}", f"{row[4]:.3f}"]
                )


def plot(curves: list[Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_evals) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve in curves:
        by_time.plot(curve.seconds, curve.psnr, marker=".", label=curve.name)
        by_evals.plot(curve.evaluations, curve.psnr, marker=".", label=curve.name)
    by_time.set_xlabel("training wall time (s)")
    by_evals.set_xlabel("network evaluations")
    by_evals.set_xscale("log")
    for axis in (by_time, by_evals):
        axis.set_ylabel("PSNR of the reconstruction (dB)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def psnr_at(curve: Curve, seconds: float) -> float:
    """PSNR at the last evaluation not later than ``seconds``."""
    best = float("nan")
    for t, p in zip(curve.seconds, curve.psnr):
        if t <= seconds + 1e-9:
            best = p
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per variant")
    parser.add_argument(
        "--eval-every",
        type=float,
        default=None,
        help="seconds of training between evaluations (default budget / 20)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sparse-config", type=Path, default=VARIANTS["sparse"][0])
    parser.add_argument("--dense-config", type=Path, default=VARIANTS["dense"][0])
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra LightningCLI argument for every variant, repeatable: "
        "--override=--data.path=my.png --override=--model.n_points=20000",
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--slice",
        type=float,
        default=10.0,
        help="seconds of training per turn when interleaving the variants (0: one after another)",
    )
    parser.add_argument(
        "--render-scales",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="render benchmark scales after training (none to skip)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/train"))
    args = parser.parse_args(argv)
    eval_every = args.eval_every or args.budget / 20
    args.out.mkdir(parents=True, exist_ok=True)

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
        else f"CPU ({os.cpu_count()} cores)"
    )
    print(
        f"# training benchmark: {args.budget:.0f} s per variant on {device}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    variants = []
    for name in args.variants:
        config = args.sparse_config if name == "sparse" else args.dense_config
        variants.append((name, config, VARIANTS[name][1] + list(args.override)))
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    curves, systems = train_variants(
        variants, args.budget, eval_every, args.accelerator, args.slice
    )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    schedule = f"interleaved in {args.slice:g} s slices" if args.slice > 0 else "run in turn"
    print(f"variants {schedule}; load average {load_before:.2f} before, {load_after:.2f} after")

    checkpoints = sorted({0.25, 0.5, 1.0})
    header = (
        "| variant | steps | steps/s | network evals | "
        + " | ".join(f"PSNR @ {fraction * args.budget:.0f} s" for fraction in checkpoints)
        + " |"
    )
    print()
    print(header)
    print("|" + "---|" * (4 + len(checkpoints)))
    for curve in curves:
        cells = [
            curve.name,
            str(curve.steps[-1]),
            f"{curve.steps[-1] / curve.seconds[-1]:.2f}",
            f"{curve.evaluations[-1]:.3g}",
            *(f"{psnr_at(curve, f * args.budget):.2f}" for f in checkpoints),
        ]
        print("| " + " | ".join(cells) + " |")
    if "sparse" in systems:
        sparse = next(c for c in curves if c.name == "sparse")
        print(
            f"\nsparse: PSNR of the network evaluated densely (not the model's image): "
            f"{sparse.psnr_network[-1]:.2f} dB"
        )
        for curve in curves:
            if curve.name != "sparse":
                print(
                    f"sparse - {curve.name}: {sparse.psnr[-1] - curve.psnr[-1]:+.2f} dB "
                    f"at {args.budget:.0f} s"
                )
    write_csv(curves, args.out / "train_curves.csv")
    plot(
        curves,
        args.out / "train_psnr.png",
        f"Sparse vs dense training, {args.budget:.0f} s each, {device}",
    )
    print(f"\nwrote {args.out / 'train_curves.csv'} and {args.out / 'train_psnr.png'}")

    if args.render_scales:
        from models.render import benchmark_render, print_render_table

        for name, system in systems.items():
            if name == "dense_random":
                continue
            rows = benchmark_render(system, args.render_scales)
            print(f"\n## render benchmark: network trained {name}")
            print_render_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
