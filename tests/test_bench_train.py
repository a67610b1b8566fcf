"""The training benchmark command (python -m models.bench_train) at a tiny budget, on the CPU."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

from _helpers import tiny_photo

from models import bench_train

SIZE = 24


def test_bench_train_interleaves_variants_and_writes_curves(tmp_path: Path, capsys) -> None:
    photo = tiny_photo(tmp_path / "photo.png", SIZE)
    overrides = [
        f"--data.path={photo}",
        "--model.n_points=144",
        "--model.network.init_args.hidden_features=16",
        "--model.network.init_args.hidden_layers=1",
        "--trainer.accelerator=cpu",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = bench_train.main(
            [
                "--budget", "1.2",
                "--eval-every", "0.4",
                "--slice", "0.3",
                "--accelerator", "cpu",
                "--render-scales", "1", "2",
                "--out", str(tmp_path / "out"),
                *(f"--override={argument}" for argument in overrides),
            ]
        )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "interleaved in 0.3 s slices" in printed

    with open(tmp_path / "out" / "train_curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    assert set(by_variant) == {"sparse", "dense", "dense_random"}
    for name, curve in by_variant.items():
        seconds = [float(row["seconds"]) for row in curve]
        steps = [int(row["steps"]) for row in curve]
        evaluations = [int(row["network_evaluations"]) for row in curve]
        assert seconds == sorted(seconds) and steps == sorted(steps), name
        assert seconds[-1] >= 1.2 and steps[-1] > 1, name
        # Evaluations per step: N points, every pixel, or N random pixels.
        per_step = {"sparse": 144, "dense": SIZE * SIZE, "dense_random": 144}[name]
        assert evaluations[-1] == steps[-1] * per_step, name
        assert float(curve[-1]["psnr"]) > float(curve[0]["psnr"]), name  # it trained
    assert (tmp_path / "out" / "train_psnr.png").stat().st_size > 0

    table = re.findall(r"^\| (sparse|dense|dense_random) \| (\d+) \|", printed, re.MULTILINE)
    assert [name for name, _ in table] == ["sparse", "dense", "dense_random"]
    assert "## render benchmark: network trained sparse" in printed
    assert "## render benchmark: network trained dense" in printed
    assert "| 2x | 48x48 |" in printed
