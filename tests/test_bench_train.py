"""The training benchmark command (python -m models.bench_train) at a tiny budget, on the CPU."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from _helpers import tiny_photo

from models import bench_train

SIZE = 24


def test_bench_train_interleaves_methods_and_writes_curves(tmp_path: Path, capsys) -> None:
    photos = [tiny_photo(tmp_path / f"photo{i}.png", SIZE + 8 * i) for i in range(2)]
    methods = ["all-pixels", "nuir", "evos", "int", "soft-mining"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = bench_train.main(
            [
                "--photos", *map(str, photos),
                "--networks", "siren-3x128",
                "--methods", *methods,
                "--seeds", "0", "1",
                "--budget", "0.8",
                "--evals", "4",
                "--slice", "0.2",
                "--streams", "1",
                "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "out" / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = {(r["photo"], r["method"], r["seed"]) for r in rows}
    assert len(runs) == 2 * len(methods) * 2
    for photo, method, seed in runs:
        curve = [r for r in rows if (r["photo"], r["method"], r["seed"]) == (photo, method, seed)]
        seconds = [float(r["seconds"]) for r in curve]
        steps = [int(r["steps"]) for r in curve]
        assert seconds == sorted(seconds) and seconds[-1] >= 0.8, (photo, method)
        assert steps == sorted(steps) and steps[-1] >= 1, (photo, method)
        if method == "all-pixels":
            pixels = {"photo0": SIZE**2, "photo1": (SIZE + 8) ** 2}[photo]
            assert int(curve[-1]["evaluations"]) == steps[-1] * pixels
    assert "| mean over photos (± spread over seeds) |" in printed
    assert (
        "(a) nuir reaches the all-pixels run's final PSNR" in printed or "never reaches" in printed
    )
    assert "(b) nuir - " in printed
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# training benchmark")


def test_time_to_reach_interpolates_between_scores() -> None:
    curve = [(0.0, 10.0, 0), (10.0, 20.0, 5), (20.0, 30.0, 10)]
    assert bench_train.time_to_reach(curve, 25.0) == 15.0
    assert bench_train.time_to_reach(curve, 10.0) == 0.0
    assert math.isinf(bench_train.time_to_reach(curve, 31.0))


def test_summary_states_the_targets_from_the_runs() -> None:
    rows = []
    for photo in ("a", "b"):
        for seed in (0, 1):
            for method, slope in (("all-pixels", 1.0), ("nuir", 3.0), ("evos", 2.0)):
                for t in range(11):
                    rows.append(
                        {"photo": photo, "network": "siren-3x128", "method": method,
                         "seed": seed, "seconds": t, "steps": t * 10, "evaluations": t,
                         "psnr": 10 + slope * t + seed * 0.1}
                    )  # fmt: skip
    text = bench_train.summarise(rows, budget=10)
    # all-pixels ends at 20 dB; nuir (10 + 3t) gets there at t = 3.33: a third of the budget.
    assert "after 33 % of the budget on average" in text
    assert "within 40 % in 4 of 4 runs" in text
    assert "(b) nuir - evos (the best re-implemented method) = +10.00 dB" in text
    assert "| mean over photos (± spread over seeds) | **20.05** ± 0.07 |" in text
