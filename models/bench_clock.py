"""Equal-wall-time training for the benchmarks: a clock that counts only training time, and turns
that interleave several runs so that the machine's load hits them alike."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


@dataclass
class Curve:
    """A run's scores over its training time."""

    name: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    psnr_network: list[float] = field(default_factory=list)
    psnr_reconstruction: list[float] = field(default_factory=list)


class Turns:
    """Round-robin turns between runs: one trains at a time, each for a slice of its clock."""

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
    """Stops training after ``budget_s`` seconds of training and scores the network every
    ``eval_every_s`` of them, with the clock paused. Training time runs from the start of a step
    to the start of the next one, so it includes everything the loop does between them (the
    sampler's passes and adaptation, the module's end-of-step hooks, the optimiser), and excludes
    only the scoring and the waits for a turn. The system's schedules run on this clock
    (``external_progress``), so they end with the budget. With ``turns``, it hands over to the
    next run after every ``slice_s`` seconds of its own clock."""

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
        self.started: float | None = None  # when the current stretch of training time began

    def on_train_start(self, trainer, pl_module) -> None:
        if self.turns is not None:
            self.turns.wait(self.curve.name)
        pl_module.external_progress = 0.0
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.external_progress = min(self.elapsed_now() / self.budget_s, 1.0)

    def elapsed_now(self) -> float:
        return self.elapsed + (time.perf_counter() - self.started if self.started else 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.elapsed = self.elapsed_now()
        self.started = None  # paused
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
        # The module's own end-of-step hook (adaptation) runs after this: it counts.
        pl_module.external_progress = min(self.elapsed / self.budget_s, 1.0)
        self.started = time.perf_counter()

    def score(self, trainer, system) -> None:
        metrics = system.image_metrics(system.target)
        self.curve.seconds.append(self.elapsed)
        self.curve.steps.append(int(trainer.global_step))
        self.curve.evaluations.append(int(system.network_evaluations))
        self.curve.psnr_network.append(metrics["psnr_network"])
        self.curve.psnr_reconstruction.append(metrics.get("psnr_reconstruction", math.nan))


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


def train_interleaved(
    systems: dict[str, tuple],
    budget_s: float,
    eval_every_s: float,
    accelerator: str = "cpu",
    slice_s: float = 10.0,
) -> dict[str, Curve]:
    """Fit every (system, data) of ``systems`` for ``budget_s`` seconds of training time, taking
    turns of ``slice_s`` seconds (each in its own thread, one running at a time; 0: one after
    another). Returns the curves by name."""
    curves = {name: Curve(name) for name in systems}
    turns = Turns(list(systems)) if slice_s > 0 else None
    failures: list[BaseException] = []

    def fit(name: str) -> None:
        system, data = systems[name]
        clock = TrainingClock(curves[name], budget_s, eval_every_s, turns, slice_s)
        system.show_summary = False
        try:
            make_trainer(clock, accelerator).fit(system, datamodule=data)
        except BaseException as exc:  # reported after the other runs finish
            failures.append(exc)
        finally:
            if turns is not None:
                turns.finish(name)

    if turns is None:
        for name in systems:
            fit(name)
    else:
        threads = [
            threading.Thread(target=fit, args=(name,), name=f"bench-{name}") for name in systems
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return curves
