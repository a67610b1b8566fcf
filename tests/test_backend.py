"""How nuir finds its compiled operator: the module built at install time, else a JIT build, else
the reference; and CUDA tensors that the compiled kernels do not cover raise a clear error."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.utils.cpp_extension

from nuir import _backend


@pytest.fixture
def fresh_state(monkeypatch):
    """A loader that has not run yet, and one that restores the real state afterwards."""
    state: dict = {}
    monkeypatch.setattr(_backend, "_state", state)
    monkeypatch.delenv("NUIR_BACKEND", raising=False)
    return state


def loaded_library() -> str:
    """The path of the operator library this test session built and loaded."""
    paths = [p for p in torch.ops.loaded_libraries if "nuir" in Path(p).name]
    assert paths, torch.ops.loaded_libraries
    return paths[0]


def test_an_installed_module_is_loaded_and_used_without_building(compiled, tmp_path):
    """A real nuir._C inside the package (here the library this session built, copied there; CI
    also installs nuir from its sdist in a fresh venv: .ci/check_installed.py) is loaded in a
    fresh process: nothing is built, and the op gives the reference's answer."""
    package_dir = tmp_path / "package"
    package_dir.mkdir()
    shutil.copy(loaded_library(), package_dir / "_C.so")
    extensions = tmp_path / "ext"
    script = (
        "import sys, torch, nuir\n"
        "from nuir import _backend, reference\n"
        f"nuir.__path__.append({str(package_dir)!r})  # where pip install . puts nuir._C\n"
        "p, v = torch.rand(300, 2) * 40, torch.rand(300, 3)\n"
        "got = nuir.interpolate(p, v, (40, 40), 1.5)\n"
        "want = reference.interpolate(p.double(), v.double(), (40, 40), 1.5)\n"
        "torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)\n"
        "print(nuir.backend_name(), _backend._state['library'], _backend.cpu_isa(), sep='|')\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), NUIR_BACKEND="compiled")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    name, library, isa = out.stdout.strip().split("|")
    assert name == "compiled (cpu, prebuilt)" and library == str(package_dir / "_C.so")
    assert isa == _backend.cpu_isas()[-1]
    assert not extensions.exists()  # no JIT build


def test_every_build_targets_a_portable_baseline():
    """No -march=native: a wheel or a shared JIT cache must run on other CPUs of the
    architecture (the x86-64 kernels add AVX2 and AVX-512 variants chosen at run time)."""
    assert not any("native" in flag for flag in _backend.CXX_FLAGS)
    assert _backend.target_flags("x86_64") == ["-march=x86-64"]
    assert _backend.target_flags("aarch64") == ["-march=armv8-a"]
    assert _backend.target_flags("riscv64") == []


def test_a_prebuilt_module_that_does_not_load_is_built_again(
    compiled, fresh_state, monkeypatch, tmp_path
):
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=broken))
    built = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kw: built.append(kw["name"]))
    with pytest.warns(RuntimeWarning, match="does not load"):
        assert _backend.compiled_available()
    assert fresh_state["origin"] == "jit" and built == ["nuir_ops_cpu"]


def test_a_failed_cuda_build_keeps_the_cpu_kernels_and_says_why(fresh_state, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_backend, "cuda_toolkit_problem", lambda: None)
    built = []

    def load(**kwargs):
        built.append(kwargs["name"])
        if any(source.endswith(".cu") for source in kwargs["sources"]):
            raise RuntimeError(
                "Error building extension 'nuir_ops_cuda': [1/4] nvcc ...\nFAILED: a.cuda.o\n"
                "nvcc fatal   : Unsupported gpu architecture 'compute_120'\n"
                "ninja: build stopped: subcommand failed."
            )

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    assert _backend.compiled_available()
    assert built == ["nuir_ops_cuda", "nuir_ops_cpu"]
    assert "Unsupported gpu architecture" in fresh_state["no_cuda"]


def test_cuda_tensors_without_cuda_kernels_raise_instead_of_running_the_reference(
    compiled, fresh_state, monkeypatch
):
    fresh_state.update(ok=True, origin="jit", no_cuda="building them failed: nvcc fatal")
    cuda = torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="no CUDA kernels for these CUDA tensors: building them"):
        _backend.use_compiled(cuda)
    assert _backend.use_compiled(torch.device("cpu"))
    monkeypatch.setenv("NUIR_BACKEND", "reference")  # asked for: the reference, on any device
    assert not _backend.use_compiled(cuda)


def test_cuda_tensors_after_a_failed_build_raise(fresh_state, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def load(**kwargs):
        raise RuntimeError("c++: error: no such compiler")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference"):
        assert not _backend.use_compiled(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="building the compiled operator failed: c\\+\\+: error"):
        _backend.use_compiled(torch.device("cuda"))


def test_falls_back_to_reference_without_a_compiler(tmp_path):
    script = (
        "import warnings, torch, nuir\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    a = nuir.interpolate(torch.rand(5, 2) * 4, torch.rand(5, 1), (4, 4), 1.0)\n"
        "    b = nuir.interpolate(torch.rand(5, 2) * 4, torch.rand(5, 1), (4, 4), 1.0)\n"
        "msgs = [str(w.message) for w in caught if 'nuir' in str(w.message)]\n"
        "assert len(msgs) == 1 and 'reference' in msgs[0], msgs\n"
        "print(nuir.backend_name())\n"
    )
    env = dict(
        os.environ,
        CXX=str(tmp_path / "no-such-compiler"),
        TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
        NUIR_BACKEND="auto",
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"


def test_import_never_builds(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    code = "import nuir, nuir.ops, nuir.reference; import os, sys; sys.exit(0)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not (tmp_path / "ext").exists()
