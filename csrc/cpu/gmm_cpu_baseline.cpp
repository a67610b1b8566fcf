// The CPU kernels compiled for the build's portable target (nuir/_backend.py: x86-64, armv8-a)
// with 16-byte registers; gmm_cpu.cpp runs them where no faster variant runs.
#include "gmm_cpu_variant.h"

#define NUIR_SIMD_BYTES 16
namespace nuir::isa_baseline {
#include "gmm_cpu_kernels.h"
}  // namespace nuir::isa_baseline
