"""Loading of the compiled operator: every build flag lives here (setup.py reads them too).

Order: the extension built at install time (``nuir._C``, by ``pip install .``), else a JIT build of
``csrc/`` with ninja through ``torch.utils.cpp_extension.load`` (cached by torch under
``TORCH_EXTENSIONS_DIR``), else the pure-PyTorch reference with one warning. Nothing is built at
import time: the first call of the operator does it. CUDA tensors never fall back to the
reference (about 100x slower there): without CUDA kernels they raise an error that says why.
``NUIR_BACKEND=reference`` forces the reference, ``NUIR_BACKEND=compiled`` turns a failed build
into an error. Both builds use the same portable flags (target_flags); ``NUIR_CPU_ISA`` picks the
instruction set of the CPU kernels (cpu_isa).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

_lock = threading.Lock()
# "ok": compiled kernels are loaded; "origin": "prebuilt" or "jit"; "library": the path of the
# loaded library; "no_cuda": why there are no CUDA kernels, where torch has CUDA.
_state: dict[str, object] = {}


def target_flags(machine: str | None = None) -> list[str]:
    """The instruction-set baseline of every build, prebuilt or JIT: one that any CPU of the
    architecture runs, so that a wheel, an image or a shared JIT cache works on other machines.

    On x86-64 the CPU kernels are also compiled for AVX2 and AVX-512 and chosen at run time
    (csrc/cpu/gmm_cpu.cpp; NUIR_CPU_ISA overrides), as fast as a -march=native build
    (docs/speed.md). On aarch64 the baseline has NEON.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return ["-march=x86-64"]
    if machine in ("aarch64", "arm64"):
        return ["-march=armv8-a"]
    return []  # the compiler's default target


# -fno-trapping-math lets the masked lane loops vectorise; no result depends on FP traps.
CXX_FLAGS = ["-O3", *target_flags(), "-fno-trapping-math", "-fno-math-errno"]
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


def cuda_toolkit_problem() -> str | None:
    """Why the CUDA kernels cannot be built with this PyTorch here; None if they can."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a build without CUDA"
    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    return None


def has_cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("nuir::gmm_forward", "CUDA")


def _load_prebuilt() -> bool:
    """Loads nuir._C if it was built at install time and fits this PyTorch."""
    spec = importlib.util.find_spec("nuir._C")
    if spec is None or spec.origin is None:
        return False
    try:
        torch.ops.load_library(spec.origin)
    except OSError as exc:  # built against another PyTorch: build again instead
        warnings.warn(
            f"nuir: the installed nuir._C does not load ({exc}); building the operator instead. "
            "Reinstall nuir to build it against this PyTorch.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    _state["origin"] = "prebuilt"
    _state["library"] = spec.origin
    if torch.cuda.is_available() and not has_cuda_kernels():
        problem = cuda_toolkit_problem() or "the CUDA toolkit was missing when nuir was installed"
        _state["no_cuda"] = (
            f"the installed nuir._C was built without them ({problem}); reinstall nuir where "
            "nvcc is found"
        )
    return True


def _jit_build() -> None:
    """Builds csrc/ (with CUDA where a GPU and the toolkit are present) and loads it."""
    from torch.utils.cpp_extension import load

    def build(with_cuda: bool) -> None:
        _state["library"] = load(
            name="nuir_ops_cuda" if with_cuda else "nuir_ops_cpu",
            sources=sources(with_cuda),
            extra_cflags=CXX_FLAGS + openmp_flags(),
            extra_cuda_cflags=NVCC_FLAGS,
            extra_ldflags=openmp_flags(),
            extra_include_paths=[str(source_dir())],
            is_python_module=False,
            verbose=os.environ.get("NUIR_VERBOSE_BUILD", "") == "1",
        )

    _state["origin"] = "jit"
    if torch.cuda.is_available():
        problem = cuda_toolkit_problem()
        if problem is None:
            try:
                build(with_cuda=True)
                return
            except Exception as exc:  # e.g. nvcc and PyTorch disagree on the CUDA version
                problem = f"building them failed: {_first_error(exc)}"
        _state["no_cuda"] = problem  # the CPU kernels alone, then
    build(with_cuda=False)


def compiled_available() -> bool:
    """True when torch.ops.nuir is backed by compiled kernels; loads or builds them once."""
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
            if not _load_prebuilt():
                _jit_build()
            _state["ok"] = True
        except Exception as exc:  # no compiler, no ninja, a build error: fall back, loudly once
            if choice == "compiled":
                raise RuntimeError(f"nuir: building the compiled operator failed: {exc}") from exc
            _state["ok"] = False
            _state["no_cuda"] = f"building the compiled operator failed: {_first_error(exc)}"
            warnings.warn(
                f"nuir: could not build the compiled operator ({_first_error(exc)}); "
                "using the pure-PyTorch reference, which is much slower. "
                "Set NUIR_VERBOSE_BUILD=1 to see the build log.",
                RuntimeWarning,
                stacklevel=4,
            )
        return bool(_state["ok"])


def use_compiled(device: torch.device) -> bool:
    """Whether nuir.interpolate runs the compiled kernels on `device` (else the reference).

    Raises for a CUDA device without compiled CUDA kernels, saying why, unless
    NUIR_BACKEND=reference asks for the reference. Devices without kernels of their own (MPS,
    XPU, ...) run the reference.
    """
    if os.environ.get("NUIR_BACKEND", "auto") == "reference":
        return False
    ok = compiled_available()
    if device.type in ("cpu", "meta"):
        return ok
    if device.type != "cuda":
        return False
    if ok and has_cuda_kernels():
        return True
    raise RuntimeError(
        f"nuir: no CUDA kernels for these CUDA tensors: {_state.get('no_cuda', 'unknown')}. "
        "NUIR_VERBOSE_BUILD=1 shows the build log; NUIR_BACKEND=reference runs the pure-PyTorch "
        "reference instead (about 100x slower)."
    )


def _first_error(exc: Exception) -> str:
    """The most telling line of a build failure's message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for marker in ("error:", "fatal", "error"):
        hits = [line for line in lines if marker in line.lower() and "build stopped" not in line]
        if hits:
            return hits[0][:300]
    return (lines or [type(exc).__name__])[-1][:300]


def _kernel_library() -> ctypes.CDLL | None:
    if not compiled_available() or not _state.get("library"):
        return None
    library = ctypes.CDLL(str(_state["library"]))  # the handle of the loaded library
    for name in ("nuir_cpu_isa", "nuir_cpu_isas"):
        getattr(library, name).restype = ctypes.c_char_p
    return library


def cpu_isas() -> list[str]:
    """The instruction sets the compiled CPU kernels can run here, best last (of baseline, avx2,
    avx512); empty without compiled kernels."""
    library = _kernel_library()
    return library.nuir_cpu_isas().decode().split() if library else []


def cpu_isa() -> str | None:
    """The instruction set the compiled CPU kernels run: the best of cpu_isas(), or the one
    NUIR_CPU_ISA names (read at every call of the kernels). None without compiled kernels."""
    library = _kernel_library()
    if library is None:
        return None
    chosen = library.nuir_cpu_isa()
    if chosen is None:
        raise ValueError(
            f"NUIR_CPU_ISA={os.environ.get('NUIR_CPU_ISA')!r} must be auto or one of "
            f"{' '.join(cpu_isas())}"
        )
    return chosen.decode()


def backend_name() -> str:
    if not compiled_available():
        return "reference"
    devices = "cpu+cuda" if has_cuda_kernels() else "cpu"
    return f"compiled ({devices}, {_state['origin']})"
