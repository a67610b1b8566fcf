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
        "--model.max_points=180",
        "--model.adapt_interval=2",
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
                "--render-scales", "2",
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
    assert list(by_variant) == list(bench_train.VARIANTS)
    for name, curve in by_variant.items():
        seconds = [float(row["seconds"]) for row in curve]
        steps = [int(row["steps"]) for row in curve]
        evaluations = [int(row["network_evaluations"]) for row in curve]
        assert seconds == sorted(seconds) and steps == sorted(steps), name
        assert seconds[-1] >= 1.2 and steps[-1] > 1, name
        if name.startswith("dense"):  # every pixel, or N random pixels, per step
            per_step = SIZE * SIZE if name == "dense" else 144
            assert evaluations[-1] == steps[-1] * per_step, name
        else:  # one per point in use: between N and the budget
            assert 144 * steps[-1] <= evaluations[-1] <= 180 * steps[-1], name
        assert float(curve[-1]["psnr_network"]) > float(curve[0]["psnr_network"]), name
        reconstruction = [row["psnr_rec"] for row in curve]
        assert (reconstruction[-1] == "nan") == name.startswith("dense"), name
    assert (tmp_path / "out" / "train_psnr.png").stat().st_size > 0

    table = re.findall(r"^\| (\w+) \| ([\d,]+) \| ([\d,]+|-) \| (\d+) \|", printed, re.MULTILINE)
    assert [name for name, *_ in table] == list(bench_train.VARIANTS)
    params = {name: (int(net.replace(",", "")), points) for name, net, points, _ in table}
    assert params["implicit"][1] == "540" and params["dense"][1] == "-"  # 3 per slot of 180
    # The wide baseline has the sparse model's parameter count (network + points), within a
    # width step of the SIREN.
    total = params["implicit"][0] + 540
    assert abs(params["dense_random_wide"][0] - total) < 0.1 * total
    assert "## render benchmark: the network trained implicit" in printed
    assert "| 2x | 48x48 | adaptive |" in printed


def test_siren_width_for_a_parameter_count() -> None:
    from models.siren import Siren

    for target in (5_000, 50_000, 100_000):
        width = bench_train.siren_width_for(target, hidden_layers=3, channels=3)
        count = sum(p.numel() for p in Siren(2, 3, width, 3).parameters())
        wider = sum(p.numel() for p in Siren(2, 3, width + 1, 3).parameters())
        assert abs(count - target) <= wider - count
