"""The CUDA kernels, run on the CPU: csrc/cuda's real kernels and launch sequences on a SIMT
emulator (tests/simt/simt.h), against the reference, with ASan and UBSan.

tests/simt is built once (and again when a source changes) into a program that also holds the
CPU kernel under the same sanitizers. All cases go through one run of it; each test below then
checks one case's results. The run fails on any emulator or sanitizer report.
"""

from __future__ import annotations

import copy
import fcntl
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _cases import assert_close_scaled, make_case

from nuir import reference
from nuir._backend import source_dir
from nuir._validate import prepare

SIMT = Path(__file__).resolve().parent / "simt"
SANITIZERS = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
# -O0 builds in two thirds of -O1's time, for a third more run time.
CFLAGS = ["-std=c++20", "-fPIC", "-O0", "-g1", "-Wno-unknown-pragmas", "-Wno-psabi", *SANITIZERS]
# The emulated kernels: ASan checks each load and store with a call, which the link hands to
# simt.cpp's hooks (races on global memory are reported; a store yields).
HOOKED = ["--param", "asan-instrumentation-with-call-threshold=0"]
WRAPS = [f"-Wl,--wrap=__asan_{op}{n}" for op in ("load", "store") for n in "1 2 4 8 16 N".split()]
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
ALL_MASKS = [[bool(m >> k & 1) for k in range(4)] for m in range(16)]
FULL = [[True] * 4]
# The schedules every emulated case runs under: (seed, resident blocks).
SCHEDULES = [(1, 4), (2, 2)]


def build_folder() -> Path:
    """Where the harness is built (as torch builds its extensions: TORCH_EXTENSIONS_DIR)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "nuir_simt"


def ninja_path(path: Path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def build(objects: dict, programs: dict) -> Path:
    """Builds, with ninja, in build_folder() (kept: only what changed is built again), the objects
    {name: (source, extra compiler flags)} and the programs {name: [object names]}; returns the
    folder. The harness's own objects are always in the build file, so programs may use them."""
    from torch.utils.cpp_extension import (
        include_paths,
        library_paths,
        verify_ninja_availability,
    )

    verify_ninja_availability()
    csrc = source_dir()
    objects = (
        {
            "harness": (SIMT / "harness.cpp", []),
            "simt": (SIMT / "simt.cpp", ["-O2"]),  # the scheduler: 1/3 of the run time at -O0
            "emulated_forward": (SIMT / "emulated_forward.cpp", HOOKED),
            "emulated_backward": (SIMT / "emulated_backward.cpp", HOOKED),
            "nuir": (csrc / "nuir.cpp", []),
        }
        | {f"cpu_{path.stem}": (path, []) for path in cpu_sources()}
        | objects
    )
    includes = [f"-I{csrc}", f"-I{SIMT}"] + [f"-isystem {p}" for p in include_paths()]
    libraries = [f"-L{p} -Wl,-rpath,{p}" for p in library_paths()] + ["-lc10 -ltorch_cpu -ltorch"]
    compiler = os.environ.get("CXX", "c++")
    lines = [
        f"cflags = {' '.join(includes + CFLAGS)}",
        f"ldflags = {' '.join(SANITIZERS + WRAPS + libraries)}",
        "rule compile",
        f"  command = {compiler} -MMD -MF $out.d $cflags $extra -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "rule link",
        f"  command = {compiler} $in $ldflags -o $out",
    ]
    for name, (source, extra) in objects.items():
        lines += [f"build {name}.o: compile {ninja_path(source)}", f"  extra = {' '.join(extra)}"]
    for name, parts in programs.items():
        lines.append(f"build {name}: link {' '.join(f'{part}.o' for part in parts)}")
    folder = build_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time in the folder
        (folder / "build.ninja").write_text("\n".join(lines) + "\n")
        run = subprocess.run(["ninja", *programs], cwd=folder, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"building the SIMT harness failed:\n{run.stdout[-6000:]}")
    return folder


def cpu_sources() -> list[Path]:
    return sorted((source_dir() / "cpu").glob("*.cpp"))


def build_harness() -> str:
    """The harness program: emulated ops and the CPU kernel, with ASan and UBSan."""
    parts = ["harness", "simt", "emulated_forward", "emulated_backward", "nuir"]
    parts += [f"cpu_{path.stem}" for path in cpu_sources()]
    return str(build({}, {"nuir_simt": parts}) / "nuir_simt")


@dataclass
class Case:
    """One call of the forward (then the backward for each mask) on the emulator or the CPU."""

    name: str
    op: str  # "emulated" or "cpu"
    points: torch.Tensor  # kernel form, the op's dtype
    values: torch.Tensor
    cov3: torch.Tensor
    weights: torch.Tensor
    size: tuple[int, int]
    cutoff: float
    masks: list = field(default_factory=lambda: FULL)
    fill: float = 0.25
    grad_weight: bool = True  # also a gradient on the weight map
    check: str = "reference"  # how check_case judges the results; see there
    twin: str | None = None  # check "half": the name of its float32 twin
    backward_inputs: tuple | None = None  # (image, weight) for the backward instead of its own
    schedule: tuple[int, int] = SCHEDULES[0]  # the emulator's (seed, resident blocks)
    # reference_outputs by `keep`, shared with the case's copies under other schedules
    references: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        g = torch.Generator().manual_seed(len(self.name))
        batch, channels = self.values.shape[0], self.values.shape[2]
        shape = (batch, channels, *self.size)
        self.grad_image = torch.randn(shape, generator=g, dtype=torch.float64)
        self.grad_weight_map = torch.randn((batch, *self.size), generator=g, dtype=torch.float64)

    def payload(self) -> dict:
        dtype = self.points.dtype
        given = {}
        if self.backward_inputs is not None:
            given = dict(zip(("backward_image", "backward_weight"), self.backward_inputs))
        return given | {
            "name": self.name,
            "op": self.op,
            "seed": self.schedule[0],
            "resident": self.schedule[1],
            "points": self.points,
            "values": self.values,
            "cov3": self.cov3,
            "weights": self.weights,
            "height": self.size[0],
            "width": self.size[1],
            "cutoff": self.cutoff,
            "fill": self.fill,
            "grad_image": self.grad_image.to(dtype),
            "grad_weight": self.grad_weight_map.to(dtype) if self.grad_weight else None,
            "masks": self.masks,
        }


def kernel_form(form, dtype=torch.float64, **kwargs):
    """make_case's inputs as the ops take them: points, values, cov3, weights in dtype."""
    size, cutoff = kwargs.get("size", (17, 23)), kwargs.get("cutoff", 3.0)
    margin = 1e-9 if dtype == torch.float64 else 1e-4
    points, values, kw = make_case(form, margin=margin, **kwargs)
    p = prepare(points, values, size, kw.get("sigma"), kw.get("cov"), kw.get("weights"), cutoff, 0)
    return [t.to(dtype).contiguous() for t in (p.points, p.values, p.cov3, p.weights)]


def matrix_cases(op: str, dtype) -> list[Case]:
    """The case matrix of one op and dtype: the shapes and paths every kernel must handle."""
    d = "f64" if dtype == torch.float64 else "f32"

    def case(name, form, masks=FULL, grad_weight=True, **kwargs):
        size, cutoff = kwargs.get("size", (17, 23)), kwargs.get("cutoff", 3.0)
        return Case(
            f"{op}-{d}-{name}",
            op,
            *kernel_form(form, dtype, **kwargs),
            size,
            cutoff,
            masks=masks,
            grad_weight=grad_weight,
        )

    cases = [
        # B = 2, C = 3, sigma 0.05 to 3 px (some Gaussians smaller than a pixel).
        case("c3-tiny-sigma", "per_point", n=60, size=(20, 31), sigma_range=(0.05, 3.0)),
        case("c1-per-axis-inf", "per_axis", channels=1, cutoff=math.inf, sigma_range=(1.0, 8.0)),
        case("c4-cov", "cov", channels=4, size=(19, 26), seed=1),
        case("c5-zero-weights", "weights", channels=5, size=(18, 21), seed=2),
        case("c9-cov-cutoff2.5", "cov", channels=9, cutoff=2.5, seed=3, grad_weight=False),
    ]
    if dtype == torch.float32:
        # More candidates per tile than one shared-memory stage holds: every point reaches every
        # tile (and no pixel lies near a cutoff that float32 could round across).
        dense = dict(n=300, size=(33, 40), cutoff=math.inf, sigma_range=(1.0, 3.0), seed=6)
        return cases + [case("dense", "per_point", batch=1, **dense)]
    # float64 only: wide Gaussians have pixels within float32 rounding of their cutoff, and the
    # masks take the same paths in every dtype.
    return cases + [
        case("dense", "per_point", batch=1, n=700, size=(40, 40), sigma_range=(1.0, 3.0), seed=6),
        # Every output_mask: each gradient alone, and any combination.
        case("masks", "cov", channels=5, n=30, seed=7, masks=ALL_MASKS),
        # 70 x 90 > 2048 pixels, sigma up to 60 px: every level of the forward's cell grid, and
        # the backward's block-per-point path for the boxes over 2048 pixels.
        case("big-boxes", "per_axis", n=90, size=(70, 90), sigma_range=(0.3, 60.0), seed=4),
        case(
            "big-boxes-inf",
            "per_point",
            batch=1,
            n=25,
            size=(50, 60),
            cutoff=math.inf,
            sigma_range=(2.0, 60.0),
            seed=5,
        ),
    ]


def far_outside(op: str) -> Case:
    """Points far outside the raster, among ordinary ones."""
    points, values, cov3, weights = kernel_form("per_point", seed=8)
    points[:, ::4] = points[:, ::4] * 1e4 + torch.tensor([5e4, -3e4], dtype=torch.float64)
    return Case(f"{op}-far-outside", op, points, values, cov3, weights, (17, 23), 3.0)


def no_points(op: str) -> Case:
    empty = [torch.zeros(2, 0, k, dtype=torch.float64) for k in (2, 3, 3)]
    return Case(f"{op}-n0", op, *empty, torch.zeros(2, 0, dtype=torch.float64), (9, 7), 3.0)


# Points the ops must survive without undefined behaviour, each of which reaches no pixel:
# point index: (input, its new value).
BAD_POINTS = {
    0: ("points", [math.nan, 4.0]),
    3: ("points", [5.0, math.inf]),
    6: ("cov3", [math.nan, 0.0, 1.0]),
    9: ("cov3", [1.0, math.inf, 1.0]),
    12: ("cov3", [1.0, 0.0, -1.0]),  # a negative variance
    15: ("cov3", [1.0, 2.0, 4.0]),  # det = 0
    18: ("cov3", [1.0, 3.0, 2.0]),  # det < 0
}


def bad_points(op: str, dtype=torch.float64) -> Case:
    """BAD_POINTS among valid ones: the result must be that of the valid points alone."""
    inputs = dict(zip(("points", "values", "cov3", "weights"), kernel_form("cov", dtype, n=30)))
    for i, (name, value) in BAD_POINTS.items():
        inputs[name][:, i] = torch.tensor(value)
    name = f"{op}-bad-points-{str(dtype)[6:]}"
    return Case(name, op, **inputs, size=(17, 23), cutoff=3.0, check="bad_points")


def bad_cutoffs(op: str) -> list[Case]:
    points, values, cov3, weights = kernel_form("per_point", n=10, seed=10)
    return [
        Case(f"{op}-cutoff-{c}", op, points, values, cov3, weights, (9, 7), c, check="error")
        for c in (math.nan, 0.0, -1.0)
    ]


def half_cases() -> list[Case]:
    """float16 / bfloat16 on the emulator, each with its float32 twin: the same rounded inputs,
    and the same (rounded) image and float32 weight map given to both backwards. Light points
    keep the total weight W under float16's smallest normal number (6e-5) almost everywhere: a
    backward that divided by W rounded to float16 would be off by several roundings there."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16):
        points, values, cov3, weights = kernel_form(
            "per_axis",
            torch.float32,
            n=60,
            size=(30, 40),
            cutoff=math.inf,
            sigma_range=(1.0, 40.0),
            seed=11,
        )
        rounded = [t.to(dtype) for t in (points, values, cov3, weights * 1e-3)]
        twin = [t.float() for t in rounded]
        image, weight = reference.interpolate_cov3(*(t.double() for t in twin), 30, 40, math.inf, 0)
        name = str(dtype)[6:]
        half = Case(f"half-{name}", "emulated", *rounded, (30, 40), math.inf, check="half")
        half.twin = f"half-{name}-twin"
        # Small loss gradients keep the weights' gradients (which grow as 1 / weight) in range.
        half.grad_image = (0.1 * half.grad_image).to(dtype).double()
        half.grad_weight_map = (0.1 * half.grad_weight_map).to(dtype).double()
        half.backward_inputs = (image.to(dtype), weight.float())
        twin = Case(f"half-{name}-twin", "emulated", *twin, (30, 40), math.inf, check="twin")
        twin.grad_image, twin.grad_weight_map = half.grad_image, half.grad_weight_map
        twin.backward_inputs = (image.to(dtype).float(), weight.float())
        cases += [half, twin]
    return cases


def under_schedule(case: Case, seed: int, resident: int) -> Case:
    """The emulated case again, under another schedule (the same inputs)."""
    again = copy.copy(case)
    again.name, again.schedule = f"{case.name}-seed{seed}", (seed, resident)
    if case.twin is not None:
        again.twin = f"{case.twin}-seed{seed}"
    return again


def all_cases() -> list[Case]:
    cases = []
    for op in ("emulated", "cpu"):
        cases += matrix_cases(op, torch.float64) + matrix_cases(op, torch.float32)
        cases += [far_outside(op), no_points(op), bad_points(op), *bad_cutoffs(op)]
        cases.append(bad_points(op, torch.float32))
    cases += half_cases()
    emulated = [c for c in cases if c.op == "emulated"]
    return cases + [under_schedule(c, *schedule) for schedule in SCHEDULES[1:] for c in emulated]


CASES = {c.name: c for c in all_cases()}


def start_harness(program: str, cases: list[Case], folder: Path, tag: str) -> tuple:
    """Starts `program` on `cases` (files in `folder`, named with `tag`); see finish_harness."""
    torch.save([c.payload() for c in cases], folder / f"cases-{tag}.pt")
    command = [program, str(folder / f"cases-{tag}.pt"), str(folder / f"results-{tag}.pt")]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True), cases, folder, tag


def finish_harness(started: tuple) -> dict:
    """The results of a started harness by case name; fails on any emulator or sanitizer
    report."""
    run, cases, folder, tag = started
    _, stderr = run.communicate(timeout=600)
    check_clean(run.returncode, stderr)
    results = torch.load(folder / f"results-{tag}.pt", weights_only=False)
    return {case.name: result for case, result in zip(cases, results)}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Every case through the harness, in two processes at once (one per core); fails on any
    emulator or sanitizer report."""
    program = build_harness()
    folder = tmp_path_factory.mktemp("simt")
    runs = [start_harness(program, list(CASES.values())[k::2], folder, str(k)) for k in range(2)]
    out = {}
    for run in runs:
        out.update(finish_harness(run))
    return out


def check_clean(returncode: int, stderr: str) -> None:
    """Fails with the case and the head of the first report if the harness reported anything."""
    lines = stderr.splitlines()
    markers = ("simt error", "Sanitizer", "runtime error")
    first = next((i for i, line in enumerate(lines) if any(m in line for m in markers)), None)
    if returncode != 0 or first is not None:
        start = first if first is not None else max(0, len(lines) - 40)
        case = next((line for line in reversed(lines[:start]) if line.startswith("case ")), "")
        report = "\n".join(lines[start : start + 40])
        raise AssertionError(f"harness exit {returncode} in {case}:\n{report}")


def reference_outputs(case: Case, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Image, weight map and the gradients of sum(image * grad_image + weight * grad_weight)
    for points, values, cov3 and weights, from the reference in float64 (over the points `keep`
    only, if given; the others get zero gradients)."""
    key = None if keep is None else tuple(keep.tolist())
    if key not in case.references:
        case.references[key] = reference_computed(case, keep)
    return case.references[key]


def reference_computed(case: Case, keep: torch.Tensor | None) -> list[torch.Tensor]:
    leaves = [t.double().requires_grad_() for t in (case.points, case.values, case.cov3)]
    leaves.append(case.weights.double().requires_grad_())
    used = leaves if keep is None else [t[:, keep] for t in leaves]
    image, weight = reference.interpolate_cov3(*used, *case.size, case.cutoff, case.fill)
    loss = (image * case.grad_image).sum()
    if case.grad_weight:
        loss = loss + (weight * case.grad_weight_map).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return [image.detach(), weight.detach(), *grads]


def got_outputs(result: dict, mask_index: int = 0) -> list[torch.Tensor]:
    return [result["image"], result["weight"], *result["grads"][mask_index]]


def assert_matches(got, want, rtol):
    names = ["image", "weight", "grad points", "grad values", "grad cov3", "grad weights"]
    for name, g, w in zip(names, got, want):
        try:
            assert_close_scaled(g.double(), w, rtol)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def check_case(case: Case, results: dict) -> None:
    """Fails if the results of `case` (among `results`, by name) are not what they must be."""
    result = results[case.name]
    if case.check == "error":
        assert "cutoff must be > 0" in result.get("error", ""), result
        return
    assert "error" not in result, result["error"]
    batch, channels = case.values.shape[0], case.values.shape[2]
    image, weight = result["image"], result["weight"]
    assert image.shape == (batch, channels, *case.size) and image.dtype == case.values.dtype
    # The weight map comes back in the accumulation type: float32 for half-precision inputs.
    assert weight.dtype == (torch.float64 if case.values.dtype == torch.float64 else torch.float32)
    if case.check == "twin":
        return  # judged with its half-precision case
    if case.check == "half":
        # float32 arithmetic, the twin's in the same order, and one rounding at the end.
        names = ["image", "weight", "grad points", "grad values", "grad cov3", "grad weights"]
        twin = got_outputs(results[case.twin])
        for what, got, want in zip(names, got_outputs(result), twin):
            want = want.to(got.dtype)
            worst = (got.double() - want.double()).abs().max().item()
            assert torch.equal(got, want), f"{what}: off the float32 result by {worst}"
        return
    rtol = RTOL[case.points.dtype]
    if case.check == "bad_points":
        valid = torch.ones(case.points.shape[1], dtype=torch.bool)
        valid[list(BAD_POINTS)] = False
        assert_matches(got_outputs(result), reference_outputs(case, keep=valid), rtol)
        return
    full = got_outputs(result, case.masks.index([True] * 4))
    assert_matches(full, reference_outputs(case), rtol)
    for mask, grads in zip(case.masks, result["grads"]):
        for need, g, g_full in zip(mask, grads, full[2:]):
            assert torch.equal(g, g_full if need else torch.zeros_like(g_full)), (mask, need)


@pytest.mark.parametrize("name", list(CASES))
def test_case(results, name):
    check_case(CASES[name], results)


def test_harness_is_built_with_the_sanitizers():
    # The fixture trusts a clean run only because ASan and UBSan would have spoken.
    libraries = subprocess.run(["ldd", build_harness()], capture_output=True, text=True).stdout
    assert "libasan" in libraries and "libubsan" in libraries, libraries
