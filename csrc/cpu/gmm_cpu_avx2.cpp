// The CPU kernels compiled for x86-64-v3 (AVX2, FMA) with 32-byte registers; gmm_cpu.cpp runs
// them on CPUs that have it. Only the code inside the pragma region is compiled for it: the
// headers, included first, stay baseline.
#include "gmm_cpu_variant.h"

#if NUIR_CPU_DISPATCH
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define NUIR_SIMD_BYTES 32
namespace nuir::isa_avx2 {
#include "gmm_cpu_kernels.h"
}  // namespace nuir::isa_avx2
#pragma GCC pop_options
#endif
