#!/usr/bin/env bash
# Compile-only check of the CUDA sources (csrc/cuda/*.cu) with nvcc, against the installed torch's
# headers, with the flags torch.utils.cpp_extension uses for the JIT build. Needs nvcc, not a GPU;
# works with the CPU-only torch wheel (which ships the c10/cuda and ATen/cuda headers but not the
# generated c10/cuda/impl/cuda_cmake_macros.h, hence C10_CUDA_NO_CMAKE_CONFIGURE_FILE; that file
# only sets a Windows export macro). Exits non-zero on any compile error or warning in our sources.
#   NUIR_CUDA_ARCHS="90 80" .ci/compile_cuda.sh   # architectures to compile for (default: 90)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "compile_cuda: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 1
fi
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "compile_cuda: no csrc/cuda/*.cu sources" >&2
  exit 1
fi

# Include paths and nvcc flags from the installed torch, as its JIT build sets them.
mapfile -t torch_flags < <(python - <<'PY'
import sysconfig
from torch.utils import cpp_extension as ce
for path in ce.include_paths("cpu") + [sysconfig.get_path("include")]:
    print("-isystem")
    print(path)
for flag in ce.COMMON_NVCC_FLAGS:
    print(flag)
PY
)
arch_flags=()
for arch in ${NUIR_CUDA_ARCHS:-90}; do
  arch_flags+=("-gencode=arch=compute_${arch},code=sm_${arch}")
done

out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT
echo "compile_cuda: $("$NVCC" --version | tail -n 1)"
pids=()
for src in "${sources[@]}"; do
  obj="$out_dir/$(basename "$src").o"
  log="$out_dir/$(basename "$src").log"
  (
    "$NVCC" -c "$src" -o "$obj" -std=c++20 -O3 -lineinfo \
      -DTORCH_EXTENSION_NAME=nuir_ops_cuda -DTORCH_API_INCLUDE_EXTENSION_H \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
      -Icsrc "${torch_flags[@]}" "${arch_flags[@]}" \
      --compiler-options -fPIC -Xcompiler -Wall -Xptxas -warn-spills >"$log" 2>&1
  ) &
  pids+=("$!")
done
status=0
for i in "${!sources[@]}"; do
  src="${sources[$i]}"
  log="$out_dir/$(basename "$src").log"
  if ! wait "${pids[$i]}"; then
    echo "compile_cuda: FAILED $src" >&2
    cat "$log" >&2
    status=1
  elif grep -q "csrc/" "$log"; then
    # A warning that points at our own sources fails the check too.
    echo "compile_cuda: warnings in $src" >&2
    cat "$log" >&2
    status=1
  else
    echo "compile_cuda: ok $src"
  fi
done
exit $status
