"""The speed benchmark: the columns it promises, ratios of times from the same run, the table it
prints from them; and the CUDA benchmark's refusal without a GPU."""

import contextlib
import csv
import io

import pytest
import torch

from nuir.bench import __main__ as bench_cli
from nuir.bench import speed

TIMES = [
    "nuir_fwd_ms",
    "nuir_fwd_bwd_ms",
    "reference_fwd_ms",
    "griddata_linear_ms",
    "upsample_nuir_ms",
    "upsample_pil_bicubic_u8_ms",
    "upsample_pil_bicubic_f32_ms",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the benchmark on two tiny sizes: (printed text, CSV rows)."""
    out = tmp_path_factory.mktemp("speed")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert speed.main(["--sizes", "16", "32", "--repeats", "1", "--out", str(out)]) == 0
    with open(out / "speed_cpu.csv") as handle:
        rows = list(csv.DictReader(handle))
    return printed.getvalue(), rows


def test_writes_every_promised_column(run):
    _, rows = run
    assert [r["size"] for r in rows] == ["16x16", "32x32"]
    assert [int(r["points"]) for r in rows] == [16, 64]  # N = H * W / 16
    for r in rows:
        assert set(r) == {"size", "points", *TIMES, *speed.RATIOS, "fwd_ns_per_pixel"}
        assert all(float(r[key]) > 0 for key in TIMES)


def test_ratios_are_those_of_the_times_of_the_same_run(run):
    _, rows = run
    for r in rows:
        for name, (numerator, denominator) in speed.RATIOS.items():
            want = float(r[numerator]) / float(r[denominator])
            assert float(r[name]) == pytest.approx(want, rel=1e-12), name
        pixels = int(r["size"].split("x")[0]) ** 2
        want = 1e6 * float(r["nuir_fwd_ms"]) / pixels
        assert float(r["fwd_ns_per_pixel"]) == pytest.approx(want, rel=1e-12)


def test_prints_the_same_numbers(run):
    printed, rows = run
    assert "machine:" in printed and "backend: compiled" in printed
    lines = printed.splitlines()
    for r in rows:
        line = next(line for line in lines if line.strip().startswith(r["size"]))
        values = dict(r, points=int(r["points"]))
        values.update({key: float(r[key]) for key in [*TIMES, *speed.RATIOS, "fwd_ns_per_pixel"]})
        expected = speed.table_line(c if c == "|" else (values[c[1]], c[2]) for c in speed.TABLE)
        assert line == expected


def test_bench_cli_lists_benchmarks(capsys):
    assert bench_cli.main([]) == 0
    assert "speed" in capsys.readouterr().out
    assert bench_cli.main(["no-such-benchmark"]) == 2


def test_cuda_benchmark_without_cuda_fails_clearly(monkeypatch, capsys):
    from nuir.bench import _speed_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _speed_cuda.main(["--sizes", "64"]) != 0
    assert "CUDA is not available" in capsys.readouterr().err
