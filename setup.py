"""Builds nuir._C, the compiled operator, ahead of time on ``pip install .``.

The CPU kernels, and the CUDA kernels too when PyTorch has CUDA and nvcc is found, with the
flags of the build on first use (nuir/_backend.py). Skipped, leaving that build on first use:
with NUIR_NO_PREBUILD=1; in editable installs (``pip install -e .``), whose sources stay live
and whose build on first use follows their edits; and where PyTorch cannot be imported. A failed
build does not fail the install: nuir then builds on first use, and if the CUDA kernels fail
again there, CUDA tensors raise an error that says why.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def import_torch():
    """PyTorch: the build environment's, else the one pip installs into.

    pip builds in an isolated environment that has no PyTorch; the extension must be built
    against the PyTorch it will run with, which is that of the interpreter pip runs for.
    """
    try:
        import torch

        return torch
    except ImportError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if found.returncode != 0:
        return None
    sys.path.append(found.stdout.strip())
    import torch

    return torch


def load_backend():
    """nuir/_backend.py (the build flags) without importing the nuir package."""
    spec = importlib.util.spec_from_file_location("nuir_backend", ROOT / "nuir" / "_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prebuild() -> dict:
    """setup() arguments that build nuir._C, or none."""
    editable = {"editable_wheel", "develop"} & set(sys.argv)
    if os.environ.get("NUIR_NO_PREBUILD") == "1" or editable:
        return {}
    if import_torch() is None:
        print("nuir: PyTorch not found, nuir._C not built: nuir builds it on first use")
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    backend = load_backend()
    with_cuda = backend.cuda_toolkit_problem() is None
    extension = (CUDAExtension if with_cuda else CppExtension)(
        name="nuir._C",
        sources=[os.path.relpath(s, ROOT) for s in backend.sources(with_cuda)],
        include_dirs=[str(backend.source_dir())],
        extra_compile_args={
            "cxx": backend.CXX_FLAGS + backend.openmp_flags(),
            "nvcc": backend.NVCC_FLAGS,
        },
        extra_link_args=backend.openmp_flags(),
    )

    class Build(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # a failed build must not fail the install
                print(f"nuir: building nuir._C failed: {exc}", file=sys.stderr)
                print("nuir: nuir._C not built: nuir builds it on first use", file=sys.stderr)
                self.extensions = []

    return {"ext_modules": [extension], "cmdclass": {"build_ext": Build}}


setup(**prebuild())
