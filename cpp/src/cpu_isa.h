// Which x86 vector instructions the CPU kernels use: the build targets baseline x86-64 (SSE2), and
// the hot kernels are compiled again for AVX2 and AVX-512 (PAGEDCORE_TARGET_* below) and picked at
// run time. Every variant computes the same operations in the same order (explicit 16-lane vectors,
// no FMA contraction: -ffp-contract=off), so results are bit-identical whichever one runs.
#pragma once

#include <string>
#include <vector>

#include "cpu_math.h"

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

// Kernel<V, Ts...>::run(args...) compiled once per variant, V its register width (Vec4, Vec8, Vec16:
// cpu_math.h's Lanes16); run's body (declared PAGEDCORE_VEC_INLINE) is inlined into each, so its
// vector code is built for that instruction set. pick(isa) gives the variant's function.
template <template <typename...> class Kernel, typename... Ts>
struct Variants {
  template <typename... Args>
  static void baseline(Args... args) {
    Kernel<Vec4, Ts...>::run(args...);
  }
#if PAGEDCORE_CPU_X86_VARIANTS
  template <typename... Args>
  PAGEDCORE_TARGET_AVX2 static void avx2(Args... args) {
    Kernel<Vec8, Ts...>::run(args...);
  }
  template <typename... Args>
  PAGEDCORE_TARGET_AVX512 static void avx512(Args... args) {
    Kernel<Vec16, Ts...>::run(args...);
  }
#endif
  template <typename... Args>
  static auto pick(Isa isa) -> void (*)(Args...) {
#if PAGEDCORE_CPU_X86_VARIANTS
    if (isa == Isa::kAvx512) return &avx512<Args...>;
    if (isa == Isa::kAvx2) return &avx2<Args...>;
#endif
    (void)isa;
    return &baseline<Args...>;
  }
};

}  // namespace pagedcore::cpu
