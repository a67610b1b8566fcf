"""Every sampler through train.py on a small photo: it learns, it is deterministic, and a resumed
run equals an uninterrupted one, bitwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import fit
from pytorch_lightning.callbacks import Callback

from models.sampling import EVOS, INT, SoftMining, StratifiedPoints, UniformRandom
from models.sampling.base import scheduled_ratio
from models.sampling.evos import fitness_interval
from models.sampling.teaching import refresh_interval

SAMPLERS = {
    "all-pixels": ["--model.sampler", "models.sampling.AllPixels"],
    "uniform": ["--model.sampler", "models.sampling.UniformRandom", "--model.sampler.ratio", "0.3"],
    "strata": ["--model.sampler.n_points", "64", "--model.sampler.max_points", "160",
               "--model.sampler.adaptation.times", "4", "--model.sampler.adaptation.start", "0.2"],
    "evos": ["--model.sampler", "models.sampling.EVOS"],
    "int": ["--model.sampler", "models.sampling.INT"],
    "soft-mining": ["--model.sampler", "models.sampling.SoftMining"],
}  # fmt: skip
STEPS = 12


class FirstStepPSNR(Callback):
    """The network's PSNR at every pixel after the first step, kept on the system."""

    def on_train_batch_end(self, trainer, system, *args) -> None:
        if trainer.global_step == 1:
            system.first_step_psnr = system.image_metrics(system.target)["psnr_network"]


def run(tmp: Path, name: str, run_dir: str, *extra: str):
    callbacks = '[{"class_path": "test_sampling.FirstStepPSNR"}]'
    return fit(
        tmp,
        *SAMPLERS[name],
        "--model.reconstruction.weight", "0",
        "--model.network.init_args.hidden_features", "24",
        "--model.optimisation.lr_network", "0.01",
        "--data.steps_per_epoch", "6",
        "--trainer.logger", "false",
        "--trainer.callbacks+", callbacks,
        *extra,
        run_dir=run_dir,
        steps=STEPS,
    )  # fmt: skip


def state(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_learns_and_resumes_bitwise(tmp_path: Path, name: str) -> None:
    whole = run(tmp_path, name, "whole")
    system = whole.model
    final = system.image_metrics(system.target)["psnr_network"]
    assert final > system.first_step_psnr + 1.0, (name, system.first_step_psnr, final)
    # Interrupted after the first epoch (6 steps, where the checkpoint is written), resumed.
    stop = '{"class_path": "_helpers.StopAfter", "init_args": {"step": 6}}'
    run(tmp_path, name, "parts", "--trainer.callbacks+", stop)
    resumed = run(tmp_path, name, "parts", "--ckpt_path", "last")
    assert resumed.trainer.global_step == STEPS
    expected, got = state(whole), state(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), (name, key)


def test_schedules_follow_the_papers() -> None:
    # INT and EVOS's "step" ratio: 10 equal stages from r0 towards 1.
    assert scheduled_ratio("step", 0.2, 0.0) == 0.2
    assert scheduled_ratio("step", 0.2, 0.55) == pytest.approx(0.2 + 5 * 0.08)
    assert scheduled_ratio("constant", 0.5, 0.9) == 0.5
    assert scheduled_ratio("cosine", 0.2, 1.0) == pytest.approx(1.0)
    # INT's incremental refreshes: every step for the first quarter, then 10, 20, ..., 50.
    assert [refresh_interval("incremental", p) for p in (0.1, 0.3, 0.5, 0.6, 0.8, 0.9)] == [
        1, 10, 20, 30, 40, 50
    ]  # fmt: skip
    assert refresh_interval("dense", 0.9) == 1
    # EVOS's fitness interval falls from 100 to 50 steps over the run.
    assert fitness_interval(0.0) == 100 and fitness_interval(1.0) == 50


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: UniformRandom(), "exactly one of count and ratio"),
        (lambda: UniformRandom(ratio=1.5), "ratio must be in"),
        (lambda: EVOS(schedule="weekly"), "schedule must be one of"),
        (lambda: INT(strategy="sometimes"), "strategy must be one of"),
        (lambda: SoftMining(warmup=0), "warmup must be a positive int"),
        (lambda: StratifiedPoints(n_points=-5), "n_points must be a positive int"),
        (lambda: StratifiedPoints(sample_from="air"), "sample_from"),
    ],
)
def test_bad_sampler_options_are_named(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_whole_image_samplers_refuse_crops(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="needs the whole image each step: unset --model.crop_size"
    ):
        fit(tmp_path, *SAMPLERS["evos"], "--model.reconstruction.weight", "0",
            "--model.crop_size", "16", "--trainer.logger", "false")  # fmt: skip
