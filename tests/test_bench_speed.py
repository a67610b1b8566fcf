"""The speed benchmark runs end to end on a tiny size and writes its table."""

import csv

from nuir.bench import __main__ as bench_cli
from nuir.bench import speed


def test_speed_benchmark_runs_and_writes_csv(tmp_path, capsys):
    assert speed.main(["--sizes", "16", "32", "--repeats", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "griddata" in printed and "machine:" in printed
    rows = list(csv.DictReader(open(tmp_path / "speed_cpu.csv")))
    assert [r["size"] for r in rows] == ["16x16", "32x32"]
    for r in rows:
        for key in (
            "nuir_fwd_ms",
            "nuir_fwd_bwd_ms",
            "reference_fwd_ms",
            "griddata_linear_ms",
            "upsample_nuir_ms",
            "upsample_pil_bicubic_u8_ms",
        ):
            assert float(r[key]) > 0, key


def test_bench_cli_lists_benchmarks(capsys):
    assert bench_cli.main([]) == 0
    assert "speed" in capsys.readouterr().out
    assert bench_cli.main(["no-such-benchmark"]) == 2
