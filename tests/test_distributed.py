"""Every shipped config trained by two CPU processes (DDP over gloo) through train.py.

Each case is ``python train.py fit --config configs/X.yaml --trainer.strategy ddp
--trainer.devices 2`` in a subprocess (Lightning's DDP launcher starts the second process by
running the same command again) for STEPS steps and one validation, on a photo of two
validation tiles (one per process), with the config's sampler, crops and reconstruction
schedule, a tiny network and point counts scaled to the photo. :class:`RecordRanks` writes what
each process holds; the tests check exactly:

- the first update is Adam's step on the mean of both processes' gradients, each process with
  its own crop and samples (recomputed here from the same start);
- both processes hold the same parameters and points after every step;
- the validation logged (tiles split across the processes, squared errors summed) equals one
  process scoring every tile with the same weights;
- each process's error tallies stay its own (DDP does not copy process 0's into the others).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from _helpers import ROOT
from PIL import Image
from pytorch_lightning.callbacks import Callback

from models.bench_distributed import train_in_processes
from models.cli import build
from models.data import DEFAULT_IMAGE
from models.sampling import AllPixels
from models.system import ImplicitImageSystem
from nuir.geometry import tile_windows

# Validation tiles are 1024 x 1024: a 1088 x 64 photo has two (1024 x 64 and 64 x 64, both
# scored for SSIM), so each process scores one.
HEIGHT, WIDTH = 1088, 64
PIXELS = HEIGHT * WIDTH
STEPS = 4  # every=4 leaves steps 2-4 without the reconstruction; DDP would fail at step 3
TINY_NETWORK = [
    "--model.network.init_args.hidden_features=16",
    "--model.network.init_args.hidden_layers=1",
]
# Each config with its point counts in the same share of the photo's pixels as in the config
# (debug: 2048 of 256^2; default: 4096 grown to 16384 of 256^2; large: a quarter of the pixels,
# crops of 256 -> 32; gpu: 65536 of 512^2), on the CPU.
CASES = {
    "debug": ("debug.yaml", [f"--model.sampler.n_points={PIXELS // 32}"]),
    "default": (
        "default.yaml",
        [f"--model.sampler.n_points={PIXELS // 16}", f"--model.sampler.max_points={PIXELS // 4}"],
    ),
    "dense": ("dense.yaml", []),
    "large": ("large.yaml", [f"--model.sampler.n_points={PIXELS // 4}", "--model.crop_size=32"]),
    "gpu": ("gpu.yaml", [f"--model.sampler.n_points={PIXELS // 4}"]),
    "reconstruction every 4": (
        "debug.yaml",
        [
            f"--model.sampler.n_points={PIXELS // 32}",
            "--model.reconstruction.weight=1",
            "--model.reconstruction.every=4",
        ],
    ),
}
PER_PROCESS = ("network_evaluations", "sampler.point_set.error", "sampler.point_set.visits")


class RecordRanks(Callback):
    """Writes into ``folder``, per process r: the state at the start and after the first step
    (start_r.pt, step1_r.pt), each step's window and error tallies (steps_r.pt), and at the last
    validation the state and the logged metrics (final_r.pt, metrics_r.json)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.steps: list[dict] = []

    def _save(self, system, name: str, rank: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu().clone() for key, value in system.state_dict().items()}
        torch.save(state, self.folder / f"{name}_{rank}.pt")

    def on_train_start(self, trainer, system) -> None:
        self._save(system, "start", trainer.global_rank)

    def on_train_batch_end(self, trainer, system, *args) -> None:
        # Before the system's own hook: after the optimiser step, before any adaptation.
        if trainer.global_step == 1:
            self._save(system, "step1", trainer.global_rank)
        record = {"window": system.last_window}
        if system.point_set is not None:
            point_set = system.point_set
            record |= {
                "error": point_set.error.clone(),
                "visits": point_set.visits.clone(),
                "adaptations": int(point_set.adaptations),
            }
        self.steps.append(record)

    def on_validation_end(self, trainer, system) -> None:
        self._save(system, "final", trainer.global_rank)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k[:4] == "val/"}
        (self.folder / f"metrics_{trainer.global_rank}.json").write_text(json.dumps(metrics))

    def on_train_end(self, trainer, system) -> None:
        torch.save(self.steps, self.folder / f"steps_{trainer.global_rank}.pt")


def options(case: str, photo: Path) -> list[str]:
    """The case's options for both train.py and :func:`models.cli.build`."""
    return [
        f"--data.path={photo}",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        *TINY_NETWORK,
        *CASES[case][1],
    ]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "strip.png"
    with Image.open(DEFAULT_IMAGE) as image:
        image.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module", params=list(CASES))
def run(request, photo, tmp_path_factory) -> dict:
    """One case trained by two processes; what RecordRanks wrote, per rank."""
    case = request.param
    folder = tmp_path_factory.mktemp("ddp")
    train_in_processes(
        ROOT / "configs" / CASES[case][0],
        2,
        [
            *options(case, photo),
            f"--trainer.max_steps={STEPS}",
            f"--data.steps_per_epoch={STEPS}",  # one validation, after the last step
            f"--trainer.default_root_dir={folder}",
            "--trainer.enable_model_summary=false",
        ],
        callback={
            "class_path": "test_distributed.RecordRanks",
            "init_args": {"folder": str(folder)},
        },
        threads=1,
    )
    recorded = {"case": case, "photo": photo}
    for name in ("start", "step1", "final", "steps"):
        recorded[name] = [torch.load(folder / f"{name}_{rank}.pt") for rank in range(2)]
    recorded["metrics"] = [
        json.loads((folder / f"metrics_{rank}.json").read_text()) for rank in range(2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recorded["built"] = build(ROOT / "configs" / CASES[case][0], options(case, photo))
    return recorded


def holding(run: dict, state: dict) -> tuple[ImplicitImageSystem, object]:
    """The case's system built in this process (as train.py builds it), holding ``state``, and
    its data."""
    system, data = run["built"]
    system.load_state_dict(state)
    system.zero_grad(set_to_none=True)
    system.initialise(data.size, data.num_channels, data.image)  # crops read from memory here
    return system, data


def test_processes_hold_identical_parameters_and_points(run) -> None:
    for when in ("step1", "final"):
        first, second = run[when]
        for name in first:
            if name not in PER_PROCESS:
                assert torch.equal(first[name], second[name]), (run["case"], when, name)


def test_validation_splits_the_tiles_and_equals_one_process_scoring_them_all(run) -> None:
    logged, logged_by_rank_1 = run["metrics"]
    assert logged == logged_by_rank_1
    system, data = holding(run, run["final"][0])
    assert len(tile_windows(system.size, 1024)) == 2  # one tile per process
    expected = system.image_metrics(data.window)
    assert set(expected) == {name.removeprefix("val/") for name in logged} - {"points"}
    for name, value in expected.items():
        # Summed in float64 in both; logged as float32.
        assert logged[f"val/{name}"] == pytest.approx(value, rel=1e-6), (run["case"], name)


def test_first_update_is_the_step_on_both_processes_mean_gradient(run) -> None:
    start, after = run["start"][0], run["step1"][0]
    gradients = []
    for rank in (0, 1):  # each process's first step, with its own draws
        system, _ = holding(run, start)
        with (
            mock.patch.object(ImplicitImageSystem, "global_rank", rank),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # self.log without a trainer
            system.training_step(0, 0).backward()
        gradients.append(
            {n: p.grad.clone() for n, p in system.named_parameters() if p.requires_grad}
        )
    assert gradients[0].keys() == {n for n, p in system.named_parameters() if p.requires_grad}
    # Every process draws its own crop and samples, except where every process evaluates every
    # pixel (AllPixels without crops: train.py warns that they duplicate each other).
    duplicates = isinstance(system.sampler, AllPixels) and system.crop_size is None
    same = all(torch.equal(gradients[0][n], gradients[1][n]) for n in gradients[0])
    assert same == duplicates

    def step(gradient: dict) -> dict:
        """The parameters after one step of the system's optimiser on ``gradient``."""
        system, _ = holding(run, start)
        parameters = dict(system.named_parameters())
        for name, value in gradient.items():
            parameters[name].grad = value.clone()
        optimisation = system.configure_optimizers()
        optimizer = optimisation["optimizer"] if isinstance(optimisation, dict) else optimisation
        optimizer.step()
        return {name: parameters[name].detach().clone() for name in gradient}

    mean = step({n: (gradients[0][n] + gradients[1][n]) / 2 for n in gradients[0]})
    for name, value in mean.items():
        torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-7, msg=name)
    if not same:  # the check tells the processes apart: process 0's gradient gives another step
        alone = step(gradients[0])
        assert any(not torch.allclose(after[n], alone[n], rtol=1e-5, atol=1e-7) for n in alone)


def test_each_process_keeps_its_own_error_tallies_and_crops(run) -> None:
    first, second = run["steps"]
    assert len(first) == len(second) == STEPS
    system, _ = holding(run, run["final"][0])
    if system.crop_size is not None:
        crop = [system.crop_size, system.crop_size]
        assert all(list(r["window"][2:]) == crop for r in first + second)
        assert all(a["window"] != b["window"] for a, b in zip(first, second))
    if system.point_set is None:
        return
    for records in (first, second):  # tallies only grow between adaptations
        for before, now in zip(records, records[1:]):
            if now["adaptations"] == before["adaptations"]:
                assert (now["visits"] >= before["visits"]).all(), run["case"]
                assert (now["error"] >= before["error"]).all(), run["case"]
    assert not torch.equal(first[-1]["error"], second[-1]["error"])
