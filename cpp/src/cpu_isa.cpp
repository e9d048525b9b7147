// Run-time choice of the CPU kernels' instruction-set variant (cpu_isa.h).
#include "cpu_isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "pagedcore/kernels.h"

namespace pagedcore::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "baseline";
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas{Isa::kBaseline};
#if PAGEDCORE_CPU_X86_VARIANTS
  // __builtin_cpu_supports also checks that the operating system saves the wider registers.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    isas.push_back(Isa::kAvx2);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      isas.push_back(Isa::kAvx512);
    }
  }
#endif
  return isas;
}

namespace {

struct Choice {
  Isa isa = Isa::kBaseline;
  std::string error;  // non-empty: PAGEDCORE_CPU_ISA named something this CPU cannot run
};

Choice choose() {
  const std::vector<Isa> isas = supported_isas();
  std::string names;
  for (Isa isa : isas) names += std::string(names.empty() ? "" : ", ") + isa_name(isa);
  const char* env = std::getenv("PAGEDCORE_CPU_ISA");
  if (env == nullptr || *env == '\0') return {isas.back(), {}};
  const std::string wanted = env;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (wanted != isa_name(isa)) continue;
    for (Isa have : isas) {
      if (have == isa) return {isa, {}};
    }
    return {Isa::kBaseline, "PAGEDCORE_CPU_ISA=" + wanted + ": this CPU (or build) cannot run it; it runs " + names};
  }
  return {Isa::kBaseline, "PAGEDCORE_CPU_ISA=" + wanted + " is not one of baseline, avx2, avx512 (this CPU runs " +
                              names + ")"};
}

}  // namespace

Isa isa() {
  static const Choice choice = choose();
  if (!choice.error.empty()) throw std::invalid_argument(choice.error);
  return choice.isa;
}

}  // namespace pagedcore::cpu

namespace pagedcore {

std::string cpu_isa() { return cpu::isa_name(cpu::isa()); }

std::vector<std::string> cpu_supported_isas() {
  std::vector<std::string> names;
  for (cpu::Isa isa : cpu::supported_isas()) names.emplace_back(cpu::isa_name(isa));
  return names;
}

}  // namespace pagedcore
