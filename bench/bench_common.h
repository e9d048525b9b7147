// Shared plumbing of bench_paged: timing statistics, command-line flags, table and JSON output.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace pagedcore::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median / p99 / mean of samples (any unit).
struct Summary {
  double median = 0, p99 = 0, mean = 0;
  size_t count = 0;
};

inline Summary summarize(std::vector<double> samples) {
  Summary s;
  s.count = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.median = samples[samples.size() / 2];
  s.p99 = samples[std::min(samples.size() - 1, static_cast<size_t>(samples.size() * 0.99))];
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / samples.size();
  return s;
}

// "--name value" and "--flag" options after the mode word.
class Flags {
 public:
  Flags(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) values_[a.substr(2)] = argv[++i];
      else values_[a.substr(2)] = "";
    }
  }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  long get_int(const std::string& name, long fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    try {
      return std::stol(it->second);
    } catch (const std::exception&) {
      throw std::invalid_argument("--" + name + " needs an integer, got '" + it->second + "'");
    }
  }

 private:
  std::map<std::string, std::string> values_;
};

// A result table printed either aligned for people or as JSON (an array of row objects).
class Table {
 public:
  explicit Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}
  void add_row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }

  void print(bool json, const std::string& title) const {
    if (json) {
      std::printf("{\"benchmark\": \"%s\", \"rows\": [", title.c_str());
      for (size_t r = 0; r < rows_.size(); ++r) {
        std::printf("%s{", r ? ", " : "");
        for (size_t c = 0; c < columns_.size(); ++c) {
          const std::string& v = rows_[r][c];
          const bool numeric = !v.empty() && v.find_first_not_of("0123456789.-e+") == std::string::npos;
          std::printf("%s\"%s\": %s%s%s", c ? ", " : "", columns_[c].c_str(), numeric ? "" : "\"", v.c_str(),
                      numeric ? "" : "\"");
        }
        std::printf("}");
      }
      std::printf("]}\n");
      return;
    }
    std::vector<size_t> width(columns_.size());
    for (size_t c = 0; c < columns_.size(); ++c) {
      width[c] = columns_[c].size();
      for (const auto& row : rows_) width[c] = std::max(width[c], row[c].size());
    }
    std::printf("%s\n", title.c_str());
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t c = 0; c < cells.size(); ++c) std::printf(c ? "  %*s" : "%-*s", static_cast<int>(width[c]), cells[c].c_str());
      std::printf("\n");
    };
    line(columns_);
    for (const auto& row : rows_) line(row);
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<std::string>> rows_;
};

inline std::string fmt(double v, int precision = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

int run_pool_bench(const Flags& flags);
int run_scheduler_bench(const Flags& flags);
// Defined in bench_attention.cu, compiled only with CUDA.
int run_attention_bench(const Flags& flags);

}  // namespace pagedcore::bench
