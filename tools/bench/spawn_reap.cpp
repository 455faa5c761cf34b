// Benchmark: kin's reaping when the parent has many children.
//
// (a) spawn_reap_idle<K>: spawn+reap of a short child (kin-bench-tiny-true), one at a time,
//     while K idle children (kin-bench-tiny-pause, spawned with kin, so each has its pidfd open
//     in the parent) are alive, in us per spawn+reap (lower is better). kin (kin::spawn, the
//     next spawn from the exit callback, on the loop that also owns the idle children) is
//     compared with its own cost at K = 0 in the same invocation (`kin_idle0`) and with a raw
//     baseline at the same K (`raw_block`: posix_spawn, then a blocking waitpid(pid)).
// (b) mass_reap_<M>: M idle children are killed at once (kill(-pgid, SIGKILL): they share a
//     process group) and the clock runs from just before the kill until the last is reaped, in
//     ms: kin (every exit callback called) against a raw loop of posix_spawn'd children in their
//     own group reaped with a blocking waitpid(-1).
//
// One round: K = 0 (kin, raw), idle children spawned up to each next K (kin, raw), then the
// kin mass kill of all of them, then the raw mass kill. Rounds repeat --runs times after a short
// warm-up round (K = 0 only); the medians over the rounds are reported. Every child is killed
// and reaped by the end of each round; if the benchmark stops early, its groups are killed.
#include <kin/loop.hpp>
#include <kin/process.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "bench.hpp"
#include "spawn_common.hpp"

extern char** environ;

namespace {

using kin_bench::cpu_ns;
using kin_bench::wall_ns;
using kin_bench::spawn::die;
using kin_bench::spawn::note;
using kin_bench::spawn::raw_spawner;

kin::spawn_options options_for(const std::string& path) {
  kin::spawn_options o;
  o.file = path;
  o.args = {path};
  o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  return o;
}

struct churn_result {
  long n = 0;
  bool capped = false;
  std::uint64_t wall_ns = 0;
  std::uint64_t cpu_ns = 0;
  [[nodiscard]] double us_per_spawn() const {
    return static_cast<double>(wall_ns) / 1e3 / static_cast<double>(n);
  }
  [[nodiscard]] double cpu_us_per_spawn() const {
    return static_cast<double>(cpu_ns) / 1e3 / static_cast<double>(n);
  }
};

/// kin: spawn the short child, the next from the exit callback, until n or the cap. The loop
/// also holds the idle children, unref'd, so run() returns after the last short child.
churn_result churn_kin(kin::loop& loop, const std::string& tiny, long n, std::uint64_t cap_ns) {
  const kin::spawn_options o = options_for(tiny);
  std::optional<kin::process> cur;
  long started = 0, done = 0;
  bool capped = false;
  std::uint64_t deadline = 0;
  std::function<void()> start = [&] {
    auto r = kin::spawn(loop, o);
    if (!r) die("kin::spawn (short child): " + r.error().message());
    ++started;
    cur = std::move(*r);  // the previous one, if any, is running its exit callback: allowed
    cur->on_exit([&](std::error_code ec, int status, int sig) {
      if (ec || status != 0 || sig != 0) {
        die("kin: a short child ended with status " + std::to_string(status) + ", signal " +
            std::to_string(sig) + (ec ? ", error " + ec.message() : std::string()));
      }
      ++done;
      if (started >= n) return;
      if (wall_ns() >= deadline) {
        capped = true;
        return;
      }
      start();
    });
  };
  loop.update_time();
  churn_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  deadline = t0 + cap_ns;
  start();
  loop.run();
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  if (done != started) die("kin: the loop returned before the short children were reaped");
  cur.reset();
  res.n = done;
  res.capped = capped;
  return res;
}

/// raw: posix_spawn, then a blocking waitpid(pid), until n or the cap.
churn_result churn_raw(raw_spawner& sp, long n, std::uint64_t cap_ns) {
  churn_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  long done = 0;
  while (true) {
    const pid_t pid = sp.start();
    int st = 0;
    pid_t r;
    do {
      r = ::waitpid(pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    if (r != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) die("raw: a short child failed");
    ++done;
    if (done >= n) break;
    if (wall_ns() - t0 >= cap_ns) {
      res.capped = true;
      break;
    }
  }
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  res.n = done;
  return res;
}

/// The idle children of one round, spawned with kin in one process group, unref'd (they do not
/// keep the loop running); each must end by the mass kill's SIGKILL, nothing else.
class idle_set {
 public:
  idle_set(kin::loop& l, const std::string& pause_path)
      : loop_(l), opts_(options_for(pause_path)) {}
  idle_set(const idle_set&) = delete;
  idle_set& operator=(const idle_set&) = delete;
  ~idle_set() {
    if (reaped_ != static_cast<long>(procs_.size())) die("idle_set: children left unreaped");
    procs_.clear();
    if (pgid_ != 0) kin_bench::spawn::unguard(-pgid_);
  }

  [[nodiscard]] long size() const noexcept { return static_cast<long>(procs_.size()); }

  /// Spawns children until there are k; returns the wall time it took, in ns.
  std::uint64_t grow_to(long k) {
    procs_.reserve(static_cast<std::size_t>(k));
    const std::uint64_t t0 = wall_ns();
    while (size() < k) {
      opts_.process_group = pgid_;  // 0: the first child leads a new group
      auto r = kin::spawn(loop_, opts_);
      if (!r) die("kin::spawn (idle child): " + r.error().message());
      if (pgid_ == 0) {
        pgid_ = r->pid();
        kin_bench::spawn::guard(-pgid_);
      }
      r->unref();
      r->on_exit([this](std::error_code ec, int status, int sig) {
        if (!killing_) {
          die("kin: an idle child ended before it was killed (status " + std::to_string(status) +
              ", signal " + std::to_string(sig) + ")");
        }
        if (ec || sig != SIGKILL) {
          die("kin: a killed idle child was reported with status " + std::to_string(status) +
              ", signal " + std::to_string(sig) + (ec ? ", error " + ec.message() : std::string()));
        }
        if (reaped_++ == 0) first_ns_ = wall_ns();
      });
      procs_.push_back(std::move(*r));
    }
    return wall_ns() - t0;
  }

  struct mass_result {
    long n = 0;
    std::uint64_t total_ns = 0;
    std::uint64_t kill_ns = 0;   // the kill() call itself
    std::uint64_t first_ns = 0;  // until the first exit callback
  };

  /// Kills every child at once and runs the loop until kin has reaped them all.
  mass_result kill_all() {
    for (kin::process& p : procs_) p.ref();
    mass_result m;
    m.n = size();
    if (m.n == 0) return m;
    killing_ = true;
    loop_.update_time();
    const std::uint64_t t0 = wall_ns();
    if (::kill(-pgid_, SIGKILL) != 0) die("kill(-pgid, SIGKILL) failed");
    m.kill_ns = wall_ns() - t0;
    loop_.run();
    m.total_ns = wall_ns() - t0;
    m.first_ns = first_ns_ - t0;
    if (reaped_ != m.n) {
      die("kin: " + std::to_string(reaped_) + " of " + std::to_string(m.n) +
          " killed children reported when the loop returned");
    }
    for (const kin::process& p : procs_) {
      if (!p.has_exited() || p.term_signal() != SIGKILL) die("kin: a killed child not reaped");
    }
    return m;
  }

 private:
  kin::loop& loop_;
  kin::spawn_options opts_;
  std::vector<kin::process> procs_;
  pid_t pgid_ = 0;
  bool killing_ = false;
  long reaped_ = 0;
  std::uint64_t first_ns_ = 0;
};

/// The raw mass kill: m posix_spawn'd idle children in one group, kill(-pgid), waitpid(-1)
/// until all are reaped. No other child of this process may be alive (waitpid(-1) would take it).
idle_set::mass_result mass_raw(const std::string& pause_path, long m) {
  raw_spawner sp(pause_path);
  std::unordered_set<pid_t> live;
  live.reserve(static_cast<std::size_t>(m));
  pid_t pgid = 0;
  for (long i = 0; i < m; ++i) {
    const pid_t pid = sp.start(pgid);
    if (pgid == 0) {
      pgid = pid;
      kin_bench::spawn::guard(-pgid);
    }
    live.insert(pid);
  }
  idle_set::mass_result res;
  res.n = m;
  const std::uint64_t t0 = wall_ns();
  if (::kill(-pgid, SIGKILL) != 0) die("kill(-pgid, SIGKILL) failed");
  res.kill_ns = wall_ns() - t0;
  while (!live.empty()) {
    int st = 0;
    const pid_t r = ::waitpid(-1, &st, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("raw: waitpid(-1) failed");
    }
    if (live.erase(r) != 1) die("raw: waitpid(-1) reaped a child that is not one of the group");
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) die("raw: a killed child not by SIGKILL");
    if (res.first_ns == 0) res.first_ns = wall_ns() - t0;
  }
  res.total_ns = wall_ns() - t0;
  kin_bench::spawn::unguard(-pgid);
  return res;
}

double ms(std::uint64_t ns) { return static_cast<double>(ns) / 1e6; }

/// How many children at once the system allows this process now (pid_max, threads-max,
/// RLIMIT_NPROC, RLIMIT_NOFILE for the pidfds), with a margin; prints a note for each limit
/// below `want`.
long children_allowed(long want, long nofile) {
  constexpr long margin = 200;
  long allowed = want;
  const long tasks = kin_bench::spawn::tasks_now();
  const auto check = [&](const char* what, long limit) {
    if (limit < 0) return;
    if (limit < want) {
      note("# %s allows only %ld more children (want %ld): using %ld\n", what, limit, want,
           std::max(0L, limit));
    }
    allowed = std::min(allowed, std::max(0L, limit));
  };
  const long pid_max = kin_bench::spawn::read_long_file("/proc/sys/kernel/pid_max");
  const long threads_max = kin_bench::spawn::read_long_file("/proc/sys/kernel/threads-max");
  if (tasks >= 0) {
    if (pid_max > 0) check("kernel.pid_max", pid_max - tasks - margin);
    if (threads_max > 0) check("kernel.threads-max", threads_max - tasks - margin);
  }
  rlimit np{};
  if (::getrlimit(RLIMIT_NPROC, &np) == 0 && np.rlim_cur != RLIM_INFINITY) {
    check("RLIMIT_NPROC", static_cast<long>(np.rlim_cur) - std::max(0L, tasks) - margin);
  }
  check("RLIMIT_NOFILE (one pidfd per kin child)", nofile - margin);
  note("# limits: pid_max %ld, threads-max %ld, tasks now %ld, RLIMIT_NOFILE %ld\n", pid_max,
       threads_max, tasks, nofile);
  return allowed;
}

}  // namespace

int main(int argc, char** argv) {
  long runs = 5;
  long spawns = 2000;
  long cap_ms = 3000;
  long mass = 5000;
  std::string idle = "0,1000,5000";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &runs},
       {"--spawns", &spawns},
       {"--time-cap-ms", &cap_ms},
       {"--mass", &mass},
       {"--idle", nullptr, &idle}},
      "[--runs N (5)] [--spawns N short children per measurement (2000)] [--time-cap-ms N "
      "(3000: no short child started after it)] [--idle LIST (0,1000,5000: idle children alive "
      "during the spawns; 0 is always measured)] [--mass N (5000: children killed at once; at "
      "least the largest --idle)]");
  kin_bench::spawn::install_cleanup();
  std::vector<long> levels = kin_bench::spawn::parse_counts(idle, "--idle");
  levels.push_back(0);
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  mass = std::max(mass, levels.back());

  const long nofile = kin_bench::spawn::raise_nofile();
  const long allowed = children_allowed(mass, nofile);
  if (allowed < mass) {
    mass = allowed;
    std::erase_if(levels, [&](long k) { return k > allowed; });
  }
  const std::string tiny = kin_bench::spawn::resolve_target("tiny");
  const std::string pause = kin_bench::spawn::resolve_target("pause");
  const std::uint64_t cap_ns = static_cast<std::uint64_t>(cap_ms) * 1000000;
  const int fds_before = kin_bench::spawn::open_fd_count();
  kin_bench::spawn::check_no_children("at the start");
  note(
      "# spawn_reap: %ld runs, %ld short children per measurement (time cap %ld ms), mass %ld, "
      "loadavg at start: %s\n",
      runs, spawns, cap_ms, mass, kin_bench::spawn::loadavg().c_str());

  raw_spawner raw_tiny(tiny);
  {  // warm-up: K = 0 only, unreported
    kin::loop loop;
    (void)churn_kin(loop, tiny, std::max(1L, spawns / 10), cap_ns);
    (void)churn_raw(raw_tiny, std::max(1L, spawns / 10), cap_ns);
  }

  std::map<long, std::vector<double>> kin_us, raw_us;
  std::vector<double> mass_kin_ms, mass_raw_ms;
  for (long r = 1; r <= runs; ++r) {
    {
      kin::loop loop;
      idle_set idle_children(loop, pause);
      for (long k : levels) {
        const std::uint64_t grow = idle_children.grow_to(k);
        if (k > 0) {
          note(
              "# run %ld: %ld idle children alive (spawned with kin in %.1f ms), VmRSS %ld MiB, "
              "%d fds open\n",
              r, k, ms(grow), kin_bench::spawn::rss_mib(), kin_bench::spawn::open_fd_count());
        }
        const churn_result a = churn_kin(loop, tiny, spawns, cap_ns);
        const churn_result b = churn_raw(raw_tiny, spawns, cap_ns);
        for (const auto& [name, c] : {std::pair{"kin", a}, std::pair{"raw_block", b}}) {
          note("# spawn_reap_idle%ld run %ld %s: n=%ld%s us/spawn=%.1f parent_cpu_us/spawn=%.1f\n",
               k, r, name, c.n, c.capped ? " (time cap)" : "", c.us_per_spawn(),
               c.cpu_us_per_spawn());
        }
        kin_us[k].push_back(a.us_per_spawn());
        raw_us[k].push_back(b.us_per_spawn());
      }
      idle_children.grow_to(mass);
      const idle_set::mass_result m = idle_children.kill_all();
      note("# mass_reap_%ld run %ld kin: total_ms=%.1f kill_ms=%.1f first_reap_ms=%.1f\n", mass, r,
           ms(m.total_ns), ms(m.kill_ns), ms(m.first_ns));
      mass_kin_ms.push_back(ms(m.total_ns));
    }
    kin_bench::spawn::check_no_children("after kin's mass kill");
    const idle_set::mass_result m = mass_raw(pause, mass);
    note("# mass_reap_%ld run %ld raw_waitpid_any: total_ms=%.1f kill_ms=%.1f first_reap_ms=%.1f\n",
         mass, r, ms(m.total_ns), ms(m.kill_ns), ms(m.first_ns));
    mass_raw_ms.push_back(ms(m.total_ns));
    kin_bench::spawn::check_no_children("after the raw mass kill");
  }

  for (long k : levels) {
    const std::string name = "spawn_reap_idle" + std::to_string(k);
    if (k > 0) kin_bench::report(name.c_str(), "us/spawn", kin_us[k], "kin_idle0", kin_us[0]);
    kin_bench::report(name.c_str(), "us/spawn", kin_us[k], "raw_block", raw_us[k]);
  }
  const std::string name = "mass_reap_" + std::to_string(mass);
  kin_bench::report(name.c_str(), "ms", mass_kin_ms, "raw_waitpid_any", mass_raw_ms);
  kin_bench::spawn::check_no_children("at the end");
  if (kin_bench::spawn::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
