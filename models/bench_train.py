"""Training benchmark: sparse and dense training of the same network at equal wall time.

    python -m models.bench_train --budget 300

Every variant is built from a config through the same CLI as ``train.py``, then fitted by a
Lightning Trainer for ``--budget`` seconds of training-step time. Every ``--eval-every`` seconds the
clock pauses and the model is scored, so scoring costs the variant nothing; the learning-rate
schedule runs on the same clock. The variants take turns in slices of ``--slice`` seconds (each in
its own thread, one running at a time), so a change in the machine's load hits them alike.
Variants (same network unless said, same photo):

- ``implicit``:           the main job (configs/default.yaml): the implicit objective, points
                          grown from 4096 to 16384 where the network's error is largest
- ``implicit_static``:    the same with a static grid of 16384 points (no adaptation)
- ``reconstruction``:     the reconstruction objective (the model is the point set)
- ``dense``:              the network at every pixel per step (configs/dense.yaml)
- ``dense_random``:       the network at N random pixels per step
- ``dense_random_wide``:  the same with the network widened to the sparse model's parameter count
                          (network + 3 per point: x, y, sigma)
- ``implicit_wide``:      the main job with that widened network (like with like: the same
                          network as ``dense_random_wide``)

Scores: the network's dense PSNR against the photo (the implicit image: what training leaves
behind) and, for the sparse variants, the PSNR of the reconstruction from the points. Prints a
table with parameter counts, steps and network evaluations; writes the curves (CSV) and plots of
the network's PSNR against wall time and against network evaluations into ``--out``; then times
the renders of the implicit model (``models.bench_render``). Speed figures are only meaningful
against each other within one run on one machine.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from models.bench_render import benchmark_render, render_table
from models.cli import build
from models.system import ImplicitImageSystem

ROOT = Path(__file__).resolve().parent.parent
SPARSE, DENSE = ROOT / "configs" / "default.yaml", ROOT / "configs" / "dense.yaml"
# The main job's final point count from the start, without adaptation.
STATIC = ["--model.n_points=16384", "--model.max_points=null", "--model.adapt_interval=0"]
VARIANTS: dict[str, tuple[Path, list[str]]] = {
    "implicit": (SPARSE, []),
    "implicit_static": (SPARSE, STATIC),
    "reconstruction": (  # as the main job trained before the implicit objective
        SPARSE,
        ["--model.objective=reconstruction", "--model.lr_points=0.01", *STATIC],
    ),
    "dense": (DENSE, []),
    "dense_random": (DENSE, ["--model.mode=dense_random"]),
    "dense_random_wide": (DENSE, ["--model.mode=dense_random"]),  # width set in variant_list
    "implicit_wide": (SPARSE, []),  # width set in variant_list
}
WIDE = ("dense_random_wide", "implicit_wide")


@dataclass
class Curve:
    """A variant's scores over its training time."""

    name: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    psnr_network: list[float] = field(default_factory=list)
    psnr_reconstruction: list[float] = field(default_factory=list)


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
            self.score(trainer, pl_module)
            self.next_eval += self.eval_every_s
        if done:
            trainer.should_stop = True
        elif self.turns is not None and self.elapsed >= self.slice_end:
            self.slice_end += self.slice_s
            self.turns.pass_on(self.curve.name)
            self.turns.wait(self.curve.name)

    def score(self, trainer, system: ImplicitImageSystem) -> None:
        metrics = system.image_metrics(system.target)
        self.curve.seconds.append(self.elapsed)
        self.curve.steps.append(int(trainer.global_step))
        self.curve.evaluations.append(int(system.network_evaluations))
        self.curve.psnr_network.append(metrics["psnr_network"])
        self.curve.psnr_reconstruction.append(metrics.get("psnr_reconstruction", math.nan))


def fit_steps(config: Path, overrides: list[str], steps: int):
    """The system and data of a config, trained for ``steps`` steps without logging,
    checkpoints or validation: (system in eval mode, data)."""
    system, data = build(config, overrides)
    system.show_summary = False
    pl.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(system, datamodule=data)
    return system.eval(), data


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

    def fit(name: str, system: ImplicitImageSystem, data) -> None:
        clock = TrainingClock(curves[name], budget_s, eval_every_s, turns, slice_s)
        system.show_summary = False
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


def parameter_counts(system: ImplicitImageSystem) -> tuple[int, int]:
    """(network parameters, per-point parameters: x, y and sigma of every slot of the set)."""
    network = sum(p.numel() for p in system.network.parameters())
    points = 0 if system.point_set is None else 3 * system.point_set.capacity
    return network, points


def siren_width_for(parameters: int, hidden_layers: int, channels: int) -> int:
    """The hidden width of a SIREN (2 -> C) with about ``parameters`` parameters."""
    # 3w + L (w^2 + w) + (w + 1) C = parameters, for w.
    a, b, c = hidden_layers, 3 + hidden_layers + channels, channels - parameters
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def write_csv(curves: list[Curve], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["variant", "seconds", "steps", "network_evaluations", "psnr_network", "psnr_rec"]
        )
        for curve in curves:
            for row in zip(
                curve.seconds,
                curve.steps,
                curve.evaluations,
                curve.psnr_network,
                curve.psnr_reconstruction,
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
        by_time.plot(curve.seconds, curve.psnr_network, marker=".", label=curve.name)
        by_evals.plot(curve.evaluations, curve.psnr_network, marker=".", label=curve.name)
    by_time.set_xlabel("training wall time (s)")
    by_evals.set_xlabel("network evaluations")
    by_evals.set_xscale("log")
    for axis in (by_time, by_evals):
        axis.set_ylabel("PSNR of the network at every pixel (dB)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def value_at(curve: Curve, values: list[float], seconds: float) -> float:
    """The value at the evaluation nearest to ``seconds`` (evaluations land a little late)."""
    nearest = min(range(len(curve.seconds)), key=lambda i: abs(curve.seconds[i] - seconds))
    return values[nearest]


def results_table(curves: list[Curve], systems: dict, budget: float) -> str:
    fractions = (0.25, 0.5, 1.0)
    lines = [
        "| variant | network params | per-point params | steps | network evals | "
        + " | ".join(f"network PSNR @ {f * budget:.0f} s" for f in fractions)
        + " | reconstruction PSNR |",
        "|" + "---|" * (6 + len(fractions)),
    ]
    for curve in curves:
        network, points = parameter_counts(systems[curve.name])
        reconstruction = curve.psnr_reconstruction[-1]
        cells = [
            curve.name,
            f"{network:,}",
            f"{points:,}" if points else "-",
            str(curve.steps[-1]),
            f"{curve.evaluations[-1]:.3g}",
            *(f"{value_at(curve, curve.psnr_network, f * budget):.2f}" for f in fractions),
            "-" if math.isnan(reconstruction) else f"{reconstruction:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def variant_list(names: list[str], overrides: list[str]) -> list[tuple[str, Path, list[str]]]:
    """(name, config, overrides) per variant; the wide ones sized after the implicit model."""
    variants = []
    for name in names:
        config, own = VARIANTS[name]
        extra = list(own) + list(overrides)
        if name in WIDE:
            reference, _ = build(SPARSE, list(overrides))
            network, points = parameter_counts(reference)
            siren = reference.network
            layers = len(siren.body) - 1 if hasattr(siren, "body") else 3
            width = siren_width_for(network + points, layers, siren.out_features)
            extra.append(f"--model.network.init_args.hidden_features={width}")
        variants.append((name, config, extra))
    return variants


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra CLI argument for every variant, repeatable: "
        "--override=--data.path=my.png --override=--trainer.accelerator=gpu",
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
        type=float,
        nargs="*",
        default=[2, 4, 8],
        help="render benchmark scales for the implicit model after training (none to skip)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/train"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    variants = variant_list(args.variants, args.override)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    curves, systems = train_variants(
        variants, args.budget, eval_every, args.accelerator, args.slice
    )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    schedule = f"interleaved in {args.slice:g} s slices" if args.slice > 0 else "run in turn"
    print(f"variants {schedule}; load average {load_before:.2f} before, {load_after:.2f} after\n")
    print(results_table(curves, systems, args.budget))
    write_csv(curves, args.out / "train_curves.csv")
    plot(curves, args.out / "train_psnr.png", f"{args.budget:.0f} s per variant, {device}")
    print(f"\nwrote {args.out / 'train_curves.csv'} and {args.out / 'train_psnr.png'}")

    renderable = [name for name in ("implicit", "dense") if name in systems]
    if args.render_scales and renderable:
        rows = benchmark_render(systems[renderable[0]], args.render_scales, ["adaptive", "grid"])
        print(f"\n## render benchmark: the network trained {renderable[0]}")
        print(render_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
