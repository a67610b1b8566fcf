"""Loading of the compiled operator: every build flag lives here.

Order: an extension built ahead of time (``nuir._C``), else a JIT build of ``csrc/`` with ninja
through ``torch.utils.cpp_extension.load`` (cached by torch under ``TORCH_EXTENSIONS_DIR``), else
the pure-PyTorch reference with one warning. Nothing is built at import time: the first call of
the operator does it. ``NUIR_BACKEND=reference`` forces the reference, ``NUIR_BACKEND=compiled``
turns a failed build into an error.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import torch

_lock = threading.Lock()
_state: dict[str, object] = {}

# -fno-trapping-math lets the masked lane loops vectorise; no result depends on FP traps.
CXX_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def openmp_flags() -> list[str]:
    """-fopenmp where ATen's parallel backend is OpenMP and the compiler is GCC-like (Linux).

    With that backend at::parallel_for is inline: without -fopenmp its ``#pragma omp parallel``
    is dropped and every "parallel" loop of the kernels runs on one thread. Linked with -fopenmp,
    the extension's libgomp.so.1 resolves to the copy torch has already loaded, so
    torch.set_num_threads applies. (Apple's clang has no plain -fopenmp; there the loops stay
    serial.)
    """
    openmp_backend = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    if openmp_backend and sys.platform.startswith("linux"):
        return ["-fopenmp"]
    return []


def source_dir() -> Path:
    """The csrc/ folder: beside the package in a checkout, inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "nuir.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"nuir: csrc/ sources not found next to {here}")


def sources(with_cuda: bool) -> list[str]:
    root = source_dir()
    files = [root / "nuir.cpp", *sorted((root / "cpu").glob("*.cpp"))]
    if with_cuda:
        files += sorted((root / "cuda").glob("*.cu"))
    return [str(f) for f in files]


def cuda_build_wanted() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None and torch.version.cuda is not None


def _build() -> None:
    try:
        import nuir._C  # noqa: F401  (prebuilt: registers the ops on import)

        return
    except ImportError:
        pass
    from torch.utils.cpp_extension import load

    with_cuda = cuda_build_wanted()
    load(
        name="nuir_ops_cuda" if with_cuda else "nuir_ops_cpu",
        sources=sources(with_cuda),
        extra_cflags=CXX_FLAGS + openmp_flags(),
        extra_cuda_cflags=NVCC_FLAGS,
        extra_ldflags=openmp_flags(),
        extra_include_paths=[str(source_dir())],
        is_python_module=False,
        verbose=os.environ.get("NUIR_VERBOSE_BUILD", "") == "1",
    )


def compiled_available() -> bool:
    """True when torch.ops.nuir is backed by compiled kernels; builds them on first call."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" in _state:
            return bool(_state["ok"])
        choice = os.environ.get("NUIR_BACKEND", "auto")
        if choice == "reference":
            _state["ok"] = False
            return False
        try:
            _build()
            _state["ok"] = True
        except Exception as exc:  # no compiler, no ninja, a build error: fall back, loudly once
            if choice == "compiled":
                raise RuntimeError(f"nuir: building the compiled operator failed: {exc}") from exc
            _state["ok"] = False
            _state["error"] = exc
            warnings.warn(
                f"nuir: could not build the compiled operator ({_first_error(exc)}); "
                "using the pure-PyTorch reference, which is much slower. "
                "Set NUIR_VERBOSE_BUILD=1 to see the build log.",
                RuntimeWarning,
                stacklevel=3,
            )
        return bool(_state["ok"])


def _first_error(exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    errors = [line for line in lines if "error:" in line] or [
        line for line in lines if "error" in line.lower() and "build stopped" not in line
    ]
    return (errors or lines)[0 if errors else -1].strip()[:300]


def backend_name() -> str:
    if not compiled_available():
        return "reference"
    return "compiled (cpu+cuda)" if cuda_build_wanted() else "compiled (cpu)"
