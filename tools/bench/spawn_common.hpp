// What the spawn benchmarks (spawn.cpp, spawn_reap.cpp) share: finding the target programs,
// option lists, the descriptor and child checks every benchmark ends with, the parent's memory
// ballast, and the emergency cleanup that kills every child still running when a benchmark
// stops on an error or a signal.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"

extern char** environ;

namespace kin_bench::spawn {

/// Stops the benchmark with a message built at run time.
[[noreturn]] inline void die(const std::string& what) { kin_bench::die(what.c_str()); }

/// A `#` line, flushed at once (stdout is a pipe under tools/bench/run).
template <class... A>
void note(const char* fmt, A... args) {
  std::printf(fmt, args...);
  std::fflush(stdout);
}

/// The directory of this executable: the tiny programs are built beside it.
inline std::string self_dir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) die("readlink /proc/self/exe failed");
  std::string p(buf, static_cast<std::size_t>(n));
  return p.substr(0, p.rfind('/'));
}

/// `tiny` (kin-bench-tiny-true, built beside the benchmark), `pause` (kin-bench-tiny-pause),
/// `true` (/bin/true), or a path; the result is an absolute or relative path that exists and is
/// executable.
inline std::string resolve_target(const std::string& t) {
  std::string path = t;
  if (t == "tiny") path = self_dir() + "/kin-bench-tiny-true";
  if (t == "pause") path = self_dir() + "/kin-bench-tiny-pause";
  if (t == "true") path = "/bin/true";
  if (::access(path.c_str(), X_OK) != 0) die("target '" + t + "' (" + path + ") is not executable");
  return path;
}

/// The short name of a target in benchmark names: tiny, true, or the file name of a path.
inline std::string label_of(const std::string& t) {
  const std::size_t slash = t.rfind('/');
  std::string l = slash == std::string::npos ? t : t.substr(slash + 1);
  for (char& c : l) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) c = '_';
  }
  return l;
}

/// `name` looked up in $PATH; empty if not found.
inline std::string find_in_path(const char* name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return {};
  std::string all = path;
  std::size_t start = 0;
  while (start <= all.size()) {
    std::size_t end = all.find(':', start);
    if (end == std::string::npos) end = all.size();
    const std::string dir = all.substr(start, end - start);
    const std::string cand = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return {};
}

/// A comma-separated list of non-negative integers (`0,1024,4096`).
inline std::vector<long> parse_counts(const std::string& text, const char* option) {
  std::vector<long> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    char* stop = nullptr;
    const long v = std::strtol(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || v < 0) {
      std::fprintf(stderr, "%s wants a list of non-negative integers, not '%s'\n", option,
                   text.c_str());
      std::exit(2);
    }
    out.push_back(v);
    start = end + 1;
  }
  return out;
}

/// A comma-separated list of words.
inline std::vector<std::string> parse_words(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

using kin_bench::open_fd_count;

/// Every process whose parent is this one (zombies included), from /proc, as "pid(state)".
inline std::vector<std::string> own_children() {
  std::vector<std::string> out;
  const pid_t self = ::getpid();
  DIR* d = ::opendir("/proc");
  if (d == nullptr) die("opendir /proc failed");
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string file = std::string("/proc/") + e->d_name + "/stat";
    std::FILE* f = std::fopen(file.c_str(), "r");
    if (f == nullptr) continue;  // gone meanwhile
    char buf[1024] = {};
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    const char* close_paren = std::strrchr(buf, ')');
    if (n == 0 || close_paren == nullptr) continue;
    char state = '?';
    long ppid = 0;
    if (std::sscanf(close_paren + 1, " %c %ld", &state, &ppid) != 2) continue;
    if (ppid == self) out.push_back(std::string(e->d_name) + "(" + state + ")");
  }
  ::closedir(d);
  return out;
}

/// Stops the benchmark if any child of this process is left (running or a zombie).
inline void check_no_children(const char* when) {
  const std::vector<std::string> left = own_children();
  if (left.empty()) return;
  std::string list;
  for (std::size_t i = 0; i < left.size() && i < 10; ++i) list += " " + left[i];
  die(std::string(when) + ": " + std::to_string(left.size()) + " child process(es) left:" + list);
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
inline long raise_nofile() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) die("getrlimit(RLIMIT_NOFILE) failed");
  lim.rlim_cur = lim.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) die("setrlimit(RLIMIT_NOFILE) failed");
  return lim.rlim_cur == RLIM_INFINITY ? 1L << 30 : static_cast<long>(lim.rlim_cur);
}

inline long read_long_file(const char* path) {
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return -1;
  long v = -1;
  if (std::fscanf(f, "%ld", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}

/// The number of tasks (threads) on the system now: /proc/loadavg's "running/total".
inline long tasks_now() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return -1;
  double a, b, c;
  long running = 0, total = -1;
  if (std::fscanf(f, "%lf %lf %lf %ld/%ld", &a, &b, &c, &running, &total) != 5) total = -1;
  std::fclose(f);
  return total;
}

inline std::string loadavg() {
  std::string s;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    char line[128] = {};
    if (std::fgets(line, sizeof line, f) != nullptr) s = line;
    std::fclose(f);
  }
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

/// VmRSS of this process, in MiB.
inline long rss_mib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib < 0 ? -1 : kib / 1024;
}

/// --pin none|same: `same` pins this process, and so every child it starts, to the first CPU
/// it may use. Returns the suffix of the benchmark names ("" or "_same_cpu").
inline const char* apply_pin(const std::string& pin) {
  if (pin == "none") return "";
  if (pin != "same") die("--pin is none or same");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) die("sched_getaffinity failed");
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed)) ++cpu;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (::sched_setaffinity(0, sizeof one, &one) != 0) die("sched_setaffinity failed");
  return "_same_cpu";
}

// ---- the parent's resident set ---------------------------------------------------------------

/// Memory the parent holds to make its resident set large: anonymous mappings with
/// MADV_NOHUGEPAGE (4 KiB pages, as most heaps are), every byte written.
class ballast {
 public:
  ballast() = default;
  ballast(const ballast&) = delete;
  ballast& operator=(const ballast&) = delete;
  ~ballast() {
    for (auto [p, n] : maps_) ::munmap(p, n);
  }
  /// Grows the ballast to `mib` MiB (it never shrinks).
  void grow_to(long mib) {
    if (mib <= mib_) return;
    const std::size_t n = static_cast<std::size_t>(mib - mib_) << 20;
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("ballast: mmap of " + std::to_string(mib - mib_) + " MiB failed");
    if (::madvise(p, n, MADV_NOHUGEPAGE) != 0) die("ballast: madvise(MADV_NOHUGEPAGE) failed");
    std::memset(p, 1, n);
    maps_.emplace_back(p, n);
    mib_ = mib;
  }
  [[nodiscard]] long mib() const noexcept { return mib_; }

 private:
  std::vector<std::pair<void*, std::size_t>> maps_;
  long mib_ = 0;
};

// ---- emergency cleanup ------------------------------------------------------------------------

/// Children and process groups to kill if the benchmark stops early: a positive entry is a pid,
/// a negative one a process group (-pgid), as kill(2) takes them.
inline std::atomic<pid_t> guarded[16];

inline void kill_guarded() noexcept {
  for (auto& g : guarded) {
    const pid_t v = g.load();
    if (v != 0) (void)::kill(v, SIGKILL);
  }
}

/// Registers a pid (or -pgid) to kill on an early stop.
inline void guard(pid_t target) {
  for (auto& g : guarded) {
    pid_t expected = 0;
    if (g.compare_exchange_strong(expected, target)) return;
  }
  die("too many guarded children");
}

inline void unguard(pid_t target) noexcept {
  for (auto& g : guarded) {
    pid_t expected = target;
    if (g.compare_exchange_strong(expected, 0)) return;
  }
}

inline void on_fatal_signal(int sig) {
  kill_guarded();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

/// Kills the guarded children at exit and on SIGABRT (die()), SIGINT, SIGTERM, SIGHUP and the
/// crash signals; killed children are reparented and reaped by init once this process is gone.
inline void install_cleanup() {
  std::atexit(kill_guarded);
  for (int sig : {SIGABRT, SIGINT, SIGTERM, SIGHUP, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGPIPE}) {
    struct sigaction sa {};
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(sig, &sa, nullptr);
  }
}

/// posix_spawn with 0-2 on /dev/null, optionally into a process group.
class raw_spawner {
 public:
  explicit raw_spawner(const std::string& path) : path_(path) {
    argv_[0] = path_.data();
    if (posix_spawn_file_actions_init(&fa_) != 0) die("posix_spawn_file_actions_init failed");
    for (int fd = 0; fd < 3; ++fd) {
      if (posix_spawn_file_actions_addopen(&fa_, fd, "/dev/null", O_RDWR, 0) != 0) {
        die("posix_spawn_file_actions_addopen failed");
      }
    }
  }
  raw_spawner(const raw_spawner&) = delete;
  raw_spawner& operator=(const raw_spawner&) = delete;
  ~raw_spawner() { posix_spawn_file_actions_destroy(&fa_); }

  /// pgid: nullopt for none, 0 for a new group led by the child, else that group.
  pid_t start(std::optional<pid_t> pgid = std::nullopt) {
    posix_spawnattr_t attr;
    posix_spawnattr_t* ap = nullptr;
    if (pgid) {
      posix_spawnattr_init(&attr);
      posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
      posix_spawnattr_setpgroup(&attr, *pgid);
      ap = &attr;
    }
    pid_t pid = -1;
    const int e = posix_spawn(&pid, path_.c_str(), &fa_, ap, argv_, environ);
    if (ap != nullptr) posix_spawnattr_destroy(ap);
    if (e != 0) die(std::string("posix_spawn: ") + std::strerror(e));
    return pid;
  }

 private:
  std::string path_;
  char* argv_[2] = {nullptr, nullptr};
  posix_spawn_file_actions_t fa_;
};

}  // namespace kin_bench::spawn
