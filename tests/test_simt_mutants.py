"""Mutants of the CUDA kernels, which the SIMT emulator (tests/simt/simt.h) must catch.

Each mutant is a copy of csrc/cuda's headers with one bug a kernel could have: a barrier
removed, an atomic made a plain read-modify-write, a bound check removed. Its emulated ops are
built (float64 only, sharing the harness's other objects; kept in the build folder, so only a
changed mutant is built again) and run on a few cases under each of the CI's schedules; under
every one the run must end in the expected emulator or sanitizer report, or give results that the
checks of tests/test_simt.py reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import test_simt as emulated

from nuir._backend import source_dir


@dataclass(frozen=True)
class Mutant:
    name: str
    header: str  # in csrc/cuda
    original: str  # occurs once in it
    mutated: str
    cases: tuple[str, ...]  # float64 cases of tests/test_simt.py
    caught_by: str  # "wrong results", or the text of the report that must stop the run

    @property
    def op(self) -> str:
        return "forward" if self.header == "forward.cuh" else "backward"


MUTANTS = [
    # The tables read the staged points before the other threads have staged them.
    Mutant(
        "no-barrier-before-tables",
        "forward.cuh",
        "    __syncthreads();\n    // Separable tables of the staged diagonal Gaussians",
        "    // Separable tables of the staged diagonal Gaussians",
        ("emulated-f64-c1-per-axis-inf", "emulated-f64-c5-zero-weights"),
        "wrong results",
    ),
    # A warp of gather_big_points overwrites its partial sum while another still reads the last.
    Mutant(
        "no-barrier-in-block-sum",
        "backward.cuh",
        "  __syncthreads();  // scratch may still be read from the previous call\n",
        "",
        ("emulated-f64-big-boxes-inf",),
        "wrong results",
    ),
    # Two warps that list their big points at once may take one slot: a point is lost.
    Mutant(
        "plain-add-for-atomic",
        "backward.cuh",
        "big_list[atomicAdd(big_count, 1)] = int32_t(bi);",
        "big_list[(*big_count)++] = int32_t(bi);",
        ("emulated-f64-big-boxes-inf",),
        "data race on global memory",
    ),
    # Threads past the range table's end write beyond it, into the next shared variable.
    Mutant(
        "no-bound-on-range-table",
        "forward.cuh",
        "  if (tid < kMaxRanges) {\n    range_start[tid] = my_start;",
        "  {\n    range_start[tid] = my_start;",
        ("emulated-f64-c4-cov",),
        "out of bounds for type 'int [128]'",
    ),
    # The warps past the last point (B N not a multiple of 8) read beyond the point order.
    Mutant(
        "no-bound-in-gather-points",
        "backward.cuh",
        "  if (position >= in.total) return;  // whole warps leave together\n",
        "",
        ("emulated-f64-masks",),
        "heap-buffer-overflow",
    ),
]


def mutated_sources(mutant: Mutant, folder: Path) -> Path:
    """csrc/cuda's headers with the mutant's change, under folder/cuda; files are rewritten only
    when they change, so that the build keeps what it has."""
    real = source_dir() / "cuda"
    text = (real / mutant.header).read_text()
    assert text.count(mutant.original) == 1, f"{mutant.name}: its site is not in {mutant.header}"
    (folder / "cuda").mkdir(parents=True, exist_ok=True)
    for header in real.glob("*.cuh"):
        content = header.read_text()
        if header.name == mutant.header:
            content = text.replace(mutant.original, mutant.mutated)
        target = folder / "cuda" / header.name
        if not target.is_file() or target.read_text() != content:
            target.write_text(content)
    return folder


@pytest.fixture(scope="module")
def programs() -> dict:
    """The mutants' harness programs, built together."""
    emulated.build_harness()  # the objects they share
    root = emulated.build_folder() / "mutants"
    objects, programs = {}, {}
    for mutant in MUTANTS:
        include = mutated_sources(mutant, root / mutant.name)
        # -iquote: "cuda/..." resolves to the mutated copies before csrc's own.
        flags = [*emulated.HOOKED, "-DSIMT_FLOAT64_ONLY", f"-iquote {include}"]
        source = emulated.SIMT / f"emulated_{mutant.op}.cpp"
        objects[f"mutant-{mutant.name}"] = (source, flags)
        other = "emulated_backward" if mutant.op == "forward" else "emulated_forward"
        programs[f"mutant-{mutant.name}"] = ["harness", "simt", f"mutant-{mutant.name}", other]
    folder = emulated.build(objects, programs)
    return {name: str(folder / name) for name in programs}


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_caught(programs, mutant, tmp_path):
    program = programs[f"mutant-{mutant.name}"]
    runs = {}
    for seed, resident in emulated.SCHEDULES:  # one process each, at once
        cases = [emulated.CASES[name] for name in mutant.cases]
        cases = [emulated.under_schedule(case, seed, resident) for case in cases]
        runs[seed] = emulated.start_harness(program, cases, tmp_path, str(seed))
    for seed, run in runs.items():
        try:
            results = emulated.finish_harness(run)
        except AssertionError as report:
            assert mutant.caught_by in str(report), f"seed {seed}: not the expected report"
            continue
        assert mutant.caught_by == "wrong results", f"seed {seed}: no {mutant.caught_by} report"
        wrong = []
        for case in run[1]:
            try:
                emulated.check_case(case, results)
            except AssertionError:
                wrong.append(case.name)
        assert wrong, f"seed {seed}: the mutant's results pass the checks"
