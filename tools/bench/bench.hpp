// Helpers shared by the benchmarks in tools/bench: clocks, medians, option parsing and the
// `BENCH <name> <unit> kin=<v> <peer>=<v> ratio=<kin/peer>` output format.
#pragma once

#include <dirent.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace kin_bench {

/// Stops the benchmark with a message: a benchmark whose work went wrong has no figure to give.
[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "FATAL: %s\n", what);
  std::abort();
}

/// The number of descriptors this process holds (checked at the end: no run may leak one).
inline int open_fd_count() {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) die("opendir /proc/self/fd failed");
  int n = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n - 1;  // the directory's own descriptor
}

inline std::uint64_t read_clock(clockid_t id) noexcept {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

/// Monotonic wall clock, in ns.
inline std::uint64_t wall_ns() noexcept { return read_clock(CLOCK_MONOTONIC); }
/// CPU time (user + system) of every thread of this process, in ns.
inline std::uint64_t cpu_ns() noexcept { return read_clock(CLOCK_PROCESS_CPUTIME_ID); }

inline double median(std::vector<double> v) {
  if (v.empty()) die("median of no runs");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 != 0 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// One `--name value` option: a positive integer (`value`) or a word (`text`).
struct option {
  const char* name;
  long* value = nullptr;
  std::string* text = nullptr;
};

/// Reads the options into their slots; anything else is a usage error.

inline void parse_options(int argc, char** argv, std::vector<option> options, const char* usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::printf("usage: %s %s\n", argv[0], usage);
      std::exit(0);
    }
    auto it = std::find_if(options.begin(), options.end(),
                           [&](const option& o) { return arg == o.name; });
    if (it == options.end() || i + 1 >= argc) {
      std::fprintf(stderr, "usage: %s %s\n", argv[0], usage);
      std::exit(2);
    }
    if (it->text != nullptr) {
      *it->text = argv[++i];
      continue;
    }
    char* end = nullptr;
    const long v = std::strtol(argv[++i], &end, 10);
    if (*end != '\0' || v <= 0) {
      std::fprintf(stderr, "%s wants a positive integer, not '%s'\n", it->name, argv[i]);
      std::exit(2);
    }
    *it->value = v;
  }
}

/// Prints every run as a `#` line, then the BENCH line with the medians and their ratio.
inline void report(const char* name, const char* unit, const std::vector<double>& kin,
                   const char* peer_name, const std::vector<double>& peer) {
  std::string runs_kin, runs_peer;
  char buf[64];
  for (double v : kin) {
    std::snprintf(buf, sizeof buf, " %.1f", v);
    runs_kin += buf;
  }
  for (double v : peer) {
    std::snprintf(buf, sizeof buf, " %.1f", v);
    runs_peer += buf;
  }
  std::printf("# %s %s runs: kin:%s | %s:%s\n", name, unit, runs_kin.c_str(), peer_name,
              runs_peer.c_str());
  const double k = median(kin);
  const double p = median(peer);
  std::printf("BENCH %s %s kin=%.1f %s=%.1f ratio=%.3f\n", name, unit, k, peer_name, p, k / p);
  std::fflush(stdout);
}

}  // namespace kin_bench
