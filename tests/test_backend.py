"""How nuir finds its compiled operator: the module built at install time, else a JIT build, else
the reference; and CUDA tensors that the compiled kernels do not cover raise a clear error."""

import importlib.util
import os
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


def test_a_prebuilt_module_is_loaded_without_building(compiled, fresh_state, monkeypatch):
    library = loaded_library()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=library))

    def no_build(*args, **kwargs):
        raise AssertionError("built although a prebuilt module is there")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_build)
    assert _backend.compiled_available()
    assert fresh_state["origin"] == "prebuilt"
    assert _backend.backend_name() == "compiled (cpu, prebuilt)"


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
