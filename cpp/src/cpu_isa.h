// Which x86 vector instructions the CPU kernels use: the build targets baseline x86-64 (SSE2), and
// the hot kernels are compiled again for AVX2 and AVX-512 (PAGEDCORE_TARGET_* below) and picked at
// run time. Every variant computes the same operations in the same order (explicit 16-lane vectors,
// no FMA contraction: -ffp-contract=off), so results are bit-identical whichever one runs.
#pragma once

#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PAGEDCORE_CPU_X86_VARIANTS 1
// No "fma": a fused multiply-add rounds once where the baseline rounds twice.
#define PAGEDCORE_TARGET_AVX2 __attribute__((target("avx2")))
#define PAGEDCORE_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2")))
#else
#define PAGEDCORE_CPU_X86_VARIANTS 0
#endif

namespace pagedcore::cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The variant the kernels run: PAGEDCORE_CPU_ISA (baseline | avx2 | avx512) if set, else the widest
// this CPU (and its operating system) supports. Throws std::invalid_argument for an unknown name or
// one this CPU cannot run, naming the ones it can.
Isa isa();
const char* isa_name(Isa isa);
// The variants this build and CPU can run, narrowest first.
std::vector<Isa> supported_isas();

}  // namespace pagedcore::cpu
