"""The CPU kernels' instruction-set variants (csrc/cpu/gmm_cpu.cpp): each one that runs here
against the reference, the SIMD ones bit for bit against each other, NUIR_CPU_ISA, and a build
whose code outside the AVX2 / AVX-512 variants runs on any x86-64."""

import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch
from _cases import assert_close_scaled, make_case

import nuir
from nuir import _backend, reference

ISAS = ["baseline", "avx2", "avx512"]
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def run_here(isa: str) -> None:
    if isa not in _backend.cpu_isas():
        pytest.skip(f"this CPU or build does not run {isa} (runs {_backend.cpu_isas()})")


def results(fn, form, channels, dtype, size=(20, 31), n=60, seed=3, margin=1e-4):
    """Image, weight map and the gradients of a random loss, from fn (nuir or the reference)."""
    points, values, kwargs = make_case(
        form, channels=channels, n=n, size=size, seed=seed, margin=margin
    )
    leaves = [points.to(dtype).requires_grad_(), values.to(dtype).requires_grad_()]
    kw = {}
    for key, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(dtype).requires_grad_()
            leaves.append(v)
        kw[key] = v
    image, weight = fn(*leaves[:2], size, return_weight=True, **kw)
    g = torch.Generator().manual_seed(1)
    r_image, r_weight = (
        torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (image, weight)
    )
    loss = (image * r_image.to(image.dtype)).sum() + (weight * r_weight.to(weight.dtype)).sum()
    return [image.detach(), weight.detach(), *torch.autograd.grad(loss, leaves)]


def test_the_kernels_report_their_instruction_sets(compiled):
    isas = _backend.cpu_isas()
    assert isas[0] == "baseline" and set(isas) <= set(ISAS), isas
    assert _backend.cpu_isa() == isas[-1]  # the best, unless NUIR_CPU_ISA says otherwise
    if X86_64 and sys.platform.startswith("linux"):
        flags = open("/proc/cpuinfo").read()
        assert ("avx2" in isas) == bool(re.search(r"\bavx2\b", flags) and " fma " in flags)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "form, channels, dtype",
    [
        ("per_axis", 3, torch.float32),
        ("cov", 5, torch.float32),  # the generic channel count, and full covariances
        ("weights", 1, torch.float64),
        ("cov", 4, torch.float64),
    ],
)
def test_every_instruction_set_matches_the_reference(
    compiled, monkeypatch, isa, form, channels, dtype
):
    run_here(isa)
    monkeypatch.setenv("NUIR_CPU_ISA", isa)
    assert _backend.cpu_isa() == isa
    got = results(nuir.interpolate, form, channels, dtype)
    want = results(reference.interpolate, form, channels, torch.float64)
    # As tests/test_ops.py: image and weight map, then the gradients.
    tolerances = (2e-5, 1e-3) if dtype == torch.float32 else (1e-9, 1e-8)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype
        assert_close_scaled(g, w.to(dtype), tolerances[i >= 2])


def test_avx2_and_avx512_give_the_same_bits(compiled, monkeypatch):
    run_here("avx2")
    run_here("avx512")
    runs = {}
    for isa in ("avx2", "avx512"):
        monkeypatch.setenv("NUIR_CPU_ISA", isa)
        runs[isa] = [
            results(nuir.interpolate, form, channels, dtype, size=(70, 90), n=900, margin=None)
            for form, channels, dtype in [
                ("per_point", 3, torch.float32),
                ("cov", 5, torch.float32),
                ("cov", 3, torch.float64),
            ]
        ]
    for case_avx2, case_avx512 in zip(runs["avx2"], runs["avx512"]):
        for a, b in zip(case_avx2, case_avx512):
            assert torch.equal(a, b)


def test_an_unknown_or_unavailable_NUIR_CPU_ISA_is_an_error_naming_it(compiled, monkeypatch):
    points, values = torch.rand(5, 2) * 4, torch.rand(5, 1)
    monkeypatch.setenv("NUIR_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="NUIR_CPU_ISA must be auto or one of .*got 'sse9'"):
        nuir.interpolate(points, values, (4, 4), 1.0)
    with pytest.raises(ValueError, match="NUIR_CPU_ISA='sse9' must be auto or one of"):
        _backend.cpu_isa()
    missing = [isa for isa in ISAS if isa not in _backend.cpu_isas()]
    if missing:
        monkeypatch.setenv("NUIR_CPU_ISA", missing[0])
        with pytest.raises(RuntimeError, match=f"NUIR_CPU_ISA={missing[0]} is not available"):
            nuir.interpolate(points, values, (4, 4), 1.0)
    monkeypatch.setenv("NUIR_CPU_ISA", "auto")
    assert _backend.cpu_isa() == _backend.cpu_isas()[-1]


@pytest.mark.skipif(
    not (X86_64 and sys.platform.startswith("linux")), reason="x86-64 Linux builds only"
)
def test_only_the_simd_variants_use_avx(compiled):
    """Everything but the avx2 / avx512 variants runs on any x86-64: no VEX or EVEX encoded
    instruction (their mnemonics start with v) and no ymm / zmm register anywhere else; and
    there is no AVX-512 in the avx2 variant."""
    assert shutil.which("objdump"), "objdump (binutils) is needed to check the build's code"
    library = _backend._state["library"]
    listing = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    function, avx_outside, avx512_in_avx2, seen = "", set(), set(), set()
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip():
            continue
        mnemonic = parts[1].split()[0]
        avx = mnemonic.startswith("v") or re.search(r"%[yz]mm", parts[1])
        variant = re.search(r"nuir::isa_(avx2|avx512)::", function)
        if variant:
            seen.add(variant.group(1))
            if variant.group(1) == "avx2" and re.search(r"%zmm|%k[0-7]", parts[1]):
                avx512_in_avx2.add(function)
        elif avx and "@plt" not in function:
            avx_outside.add(function)
    assert seen == {"avx2", "avx512"}, "the SIMD variants are missing from the build"
    assert not avx_outside, sorted(avx_outside)[:5]
    assert not avx512_in_avx2, sorted(avx512_in_avx2)[:5]


def test_the_speed_benchmark_names_the_instruction_set(compiled, capsys):
    from nuir.bench import speed

    assert speed.main(["--sizes", "8", "--repeats", "1", "--no-griddata"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "CPU kernels:" in line)
    assert header.startswith(f"CPU kernels: {_backend.cpu_isa()} (runs here: ")
    assert " ".join(_backend.CXX_FLAGS) in header


def test_the_isa_benchmark_times_every_variant_against_the_best(compiled, capsys):
    from nuir.bench import isa as isa_bench

    assert isa_bench.main(["--sizes", "16", "--rounds", "1", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("16 ")]
    assert [r[1] for r in rows] == _backend.cpu_isas()
    assert rows[-1][3] == rows[-1][5] == "1.00"  # the best variant against itself
    times = {(16, name, op): [t] for name in ISAS for op, t in (("fwd", 2.0), ("bwd", 6.0))}
    times[(16, "avx512", "fwd")] = [1.0, 0.5, 1.5]  # the median, 1.0
    rows = isa_bench.table(times, [16], ISAS)
    assert [r["fwd_over_best"] for r in rows] == [2.0, 2.0, 1.0]
    assert [r["bwd_over_best"] for r in rows] == [1.0, 1.0, 1.0]
