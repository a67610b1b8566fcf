"""Distributed training through train.py: two CPU processes (gloo) against one.

Each run is ``python train.py fit`` in a subprocess (Lightning's DDP launcher starts the second
process by running the same command again). ``_helpers.RecordSteps`` writes every process's
training windows and final parameters, so the test compares the ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, tiny_photo

from models.bench_distributed import train_in_processes

SIZE, CROP, STEPS = 48, 16, 40
# Measured on this test's setting (torch 2.13 CPU): two processes of STEPS steps ended at 11.64 dB,
# 0.84 dB above one process of STEPS steps (10.80) and 3.15 dB below one process of 2 * STEPS
# steps (14.79): this early in training the number of updates limits progress, and more processes
# add pixels per update, not updates (docs/distributed.md).
ABOVE_ONE, BELOW_TWICE = 0.4, 3.6


def train(folder: Path, photo: Path, devices: int, steps: int) -> dict:
    record = folder / f"{devices}x{steps}"
    options = [
        f"--data.path={photo}",
        f"--model.sampler.n_points={SIZE * SIZE // 4}",
        f"--model.sampler.max_points={SIZE * SIZE // 3}",
        "--model.sampler.adaptation.times=4",
        "--model.sampler.adaptation.start=0",
        "--model.sampler.adaptation.end=0.75",
        f"--model.crop_size={CROP}",
        f"--trainer.max_steps={steps}",
        "--trainer.logger=false",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={record}",
    ]
    recorder = {"class_path": "_helpers.RecordSteps", "init_args": {"folder": str(record)}}
    train_in_processes(
        ROOT / "configs" / "debug.yaml", devices, options, callback=recorder, threads=1
    )
    windows = [
        [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in range(devices)
    ]
    states = [torch.load(record / f"rank{rank}.pt") for rank in range(devices)]
    metrics = json.loads((record / "metrics.json").read_text())
    return {"windows": windows, "states": states, "metrics": metrics}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("ddp")
    photo = tiny_photo(folder / "photo.png", SIZE)
    return {
        "two": train(folder, photo, 2, STEPS),
        "one": train(folder, photo, 1, STEPS),
        "one_twice": train(folder, photo, 1, 2 * STEPS),
    }


def test_each_process_trains_on_its_own_crops(runs) -> None:
    first, second = runs["two"]["windows"]
    assert [r["step"] for r in first] == [r["step"] for r in second] == list(range(1, STEPS + 1))
    same = sum(a["window"] == b["window"] for a, b in zip(first, second))
    assert same <= 2  # different crops in (almost) every step
    assert all(r["window"][2:] == [CROP, CROP] for r in first + second)


def test_processes_hold_identical_parameters_and_points(runs) -> None:
    first, second = runs["two"]["states"]
    assert (
        int(first["sampler.point_set.active"]) > SIZE * SIZE // 4
    )  # the set grew (and was pruned)
    for name in first:
        if name in ("network_evaluations", "sampler.point_set.error", "sampler.point_set.visits"):
            continue  # per-process tallies (the error tallies are summed when the set adapts)
        assert torch.equal(first[name], second[name]), name


def test_two_processes_learn_more_than_one_in_the_same_steps(runs) -> None:
    two = runs["two"]["metrics"]["psnr_network"]
    one = runs["one"]["metrics"]["psnr_network"]
    twice = runs["one_twice"]["metrics"]["psnr_network"]
    assert two > one + ABOVE_ONE
    assert two > twice - BELOW_TWICE
