// Benchmark: spawn+reap throughput (spawns/s, higher is better) of a short child, one at a time
// (--inflight 1) or with 64 in flight, with the parent's resident set grown to 0, 1 or 4 GiB,
// for kin::spawn against raw posix_spawn + waitpid, raw fork + execve with a close-on-exec error
// pipe (libuv 1.44's method), libuv 1.44 uv_spawn and Node's child_process.spawn, all in one run.
//
// Every implementation starts the same child the same way: argv = {target}, the parent's
// environment, descriptors 0-2 opened on /dev/null (three opens each: stdio ignore). The next
// child is started when one has been reaped (from the exit callback for kin, libuv and Node),
// until N children have run or the time cap has passed (then no new child is started, the ones
// in flight are reaped, and the run reports the n actually done). The clock runs from the first
// spawn to the last reap. Runs alternate between the implementations (kin, posix_spawn,
// fork_errpipe, libuv, node, kin, ...) after one shorter warm-up run of each
// (N/10 spawns, capped at --warm-cap-ms; printed as a `#` line, not counted).
//
// Node is its own process (tools/bench/spawn_node.js), started once per resident-set size and
// kept for all the runs of that size: it grows its own resident set (it is the parent of its
// children), then runs each command it is sent and answers with its own timing. The benchmark
// blocks while Node runs.
#include <kin/loop.hpp>
#include <kin/process.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "bench.hpp"
#include "spawn_common.hpp"

extern char** environ;

#ifndef KIN_BENCH_SOURCE_DIR
#define KIN_BENCH_SOURCE_DIR "tools/bench"
#endif

namespace {

using kin_bench::cpu_ns;
using kin_bench::wall_ns;
using kin_bench::spawn::die;
using kin_bench::spawn::note;

/// What one run did.
struct run_result {
  long n = 0;           // children spawned and reaped
  bool capped = false;  // stopped by the time cap before N
  std::uint64_t wall_ns = 0;
  std::uint64_t cpu_ns = 0;  // the parent's CPU time (user + system)
};

/// One run's work: `n` spawns of `path`, `inflight` at a time, none started after `cap_ns`.
struct run_spec {
  std::string path;
  long n;
  long inflight;
  std::uint64_t cap_ns;
};

/// Decides whether another child may start, and counts.
struct pacer {
  long n;
  std::uint64_t deadline = 0;
  long started = 0;
  long done = 0;
  bool capped = false;

  void begin(std::uint64_t t0, std::uint64_t cap_ns) { deadline = t0 + cap_ns; }
  bool may_start() {
    if (started >= n) return false;
    if (wall_ns() >= deadline) {
      capped = true;
      return false;
    }
    return true;
  }
};

void check_status(const char* who, int wstatus) {
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    die(std::string(who) + ": a child did not exit with status 0 (wait status " +
        std::to_string(wstatus) + ")");
  }
}

// ---- kin ------------------------------------------------------------------------------------

run_result run_kin(const run_spec& s) {
  kin::loop loop;
  kin::spawn_options o;
  o.file = s.path;
  o.args = {s.path};
  o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  std::vector<std::optional<kin::process>> slots(static_cast<std::size_t>(s.inflight));
  pacer p{s.n};
  std::function<void(std::size_t)> start = [&](std::size_t i) {
    auto r = kin::spawn(loop, o);
    if (!r) die("kin::spawn: " + r.error().message());
    ++p.started;
    // Replaces the process whose exit callback is running, if any: kin allows an exit callback
    // to destroy its own process.
    slots[i] = std::move(*r);
    slots[i]->on_exit([&, i](std::error_code ec, int status, int sig) {
      if (ec) die("kin: exit callback with an error: " + ec.message());
      if (status != 0 || sig != 0) {
        die("kin: a child ended with status " + std::to_string(status) + ", signal " +
            std::to_string(sig));
      }
      ++p.done;
      if (p.may_start()) start(i);
    });
  };
  loop.update_time();
  run_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  p.begin(t0, s.cap_ns);
  for (std::size_t i = 0; i < slots.size() && (i == 0 || p.may_start()); ++i) start(i);
  loop.run();
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  if (p.done != p.started) die("kin: the loop returned before every child was reaped");
  for (const auto& slot : slots) {
    if (slot && !slot->has_exited()) die("kin: a process not reaped after the run");
  }
  slots.clear();
  res.n = p.done;
  res.capped = p.capped;
  return res;
}

// ---- raw posix_spawn and raw fork + error pipe ------------------------------------------------

/// fork(); in the child 0-2 on /dev/null, then execve; the parent reads a close-on-exec pipe
/// to EOF (nothing: exec succeeded; an errno: it failed), as libuv 1.44 does.
class raw_fork_errpipe {
 public:
  explicit raw_fork_errpipe(const std::string& path) : path_(path) { argv_[0] = path_.data(); }

  pid_t start() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) die("pipe2 failed");
    const pid_t pid = ::fork();
    if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      int err = 0;
      for (int fd = 0; fd < 3 && err == 0; ++fd) {
        const int d = ::open("/dev/null", O_RDWR);
        if (d < 0) {
          err = errno;
        } else if (d != fd) {
          if (::dup2(d, fd) < 0) err = errno;
          ::close(d);
        }
      }
      if (err == 0) {
        ::execve(path_.c_str(), argv_, environ);
        err = errno;
      }
      (void)!::write(p[1], &err, sizeof err);
      ::_exit(127);
    }
    ::close(p[1]);
    int err = 0;
    ssize_t got;
    do {
      got = ::read(p[0], &err, sizeof err);
    } while (got < 0 && errno == EINTR);
    ::close(p[0]);
    if (got != 0) die("fork_errpipe: the child failed before or in execve");
    return pid;
  }

 private:
  std::string path_;
  char* argv_[2] = {nullptr, nullptr};
};

/// One at a time: start, waitpid(pid). In flight: keep `inflight` children, reap with
/// waitpid(-1) (every reaped pid must be one of this run's).
template <class Spawner>
run_result run_raw(const run_spec& s, const char* who) {
  Spawner sp(s.path);
  pacer p{s.n};
  run_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  p.begin(t0, s.cap_ns);
  if (s.inflight == 1) {
    do {
      const pid_t pid = sp.start();
      ++p.started;
      int st = 0;
      pid_t r;
      do {
        r = ::waitpid(pid, &st, 0);
      } while (r < 0 && errno == EINTR);
      if (r != pid) die(std::string(who) + ": waitpid failed");
      check_status(who, st);
      ++p.done;
    } while (p.may_start());
  } else {
    std::unordered_set<pid_t> live;
    for (long i = 0; i < s.inflight && (i == 0 || p.may_start()); ++i) {
      live.insert(sp.start());
      ++p.started;
    }
    while (!live.empty()) {
      int st = 0;
      const pid_t r = ::waitpid(-1, &st, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        die(std::string(who) + ": waitpid(-1) failed");
      }
      if (live.erase(r) != 1) die(std::string(who) + ": waitpid(-1) reaped a stranger");
      check_status(who, st);
      ++p.done;
      if (p.may_start()) {
        live.insert(sp.start());
        ++p.started;
      }
    }
  }
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  res.n = p.done;
  res.capped = p.capped;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

/// uv_spawn with UV_IGNORE for 0-2; exit_cb → uv_close → close_cb → the next uv_spawn in the
/// same handle.
struct uv_runner {
  uv_loop_t loop;
  std::vector<uv_process_t> procs;
  uv_process_options_t opts{};
  uv_stdio_container_t stdio[3];
  std::string path;
  char* argv[2] = {nullptr, nullptr};
  pacer p{0};

  static void on_exit(uv_process_t* h, int64_t status, int sig) {
    if (status != 0 || sig != 0) {
      die("libuv: a child ended with status " + std::to_string(status) + ", signal " +
          std::to_string(sig));
    }
    ++static_cast<uv_runner*>(h->data)->p.done;
    uv_close(reinterpret_cast<uv_handle_t*>(h), on_close);
  }
  static void on_close(uv_handle_t* h) {
    auto* u = static_cast<uv_runner*>(h->data);
    if (u->p.may_start()) u->start(reinterpret_cast<uv_process_t*>(h));
  }
  void start(uv_process_t* h) {
    const int r = uv_spawn(&loop, h, &opts);
    if (r != 0) die(std::string("uv_spawn: ") + uv_strerror(r));
    h->data = this;
    ++p.started;
  }
};

run_result run_libuv(const run_spec& s) {
  auto u = std::make_unique<uv_runner>();
  if (uv_loop_init(&u->loop) != 0) die("uv_loop_init failed");
  u->procs.resize(static_cast<std::size_t>(s.inflight));
  u->path = s.path;
  u->argv[0] = u->path.data();
  for (auto& c : u->stdio) c.flags = UV_IGNORE;
  u->opts.file = u->path.c_str();
  u->opts.args = u->argv;
  u->opts.exit_cb = uv_runner::on_exit;
  u->opts.stdio_count = 3;
  u->opts.stdio = u->stdio;
  u->p.n = s.n;
  uv_update_time(&u->loop);
  run_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  u->p.begin(t0, s.cap_ns);
  for (std::size_t i = 0; i < u->procs.size() && (i == 0 || u->p.may_start()); ++i) {
    u->start(&u->procs[i]);
  }
  uv_run(&u->loop, UV_RUN_DEFAULT);
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  if (u->p.done != u->p.started) die("libuv: the loop returned before every child was reaped");
  if (uv_loop_close(&u->loop) != 0) die("uv_loop_close failed");
  res.n = u->p.done;
  res.capped = u->p.capped;
  return res;
}

// ---- Node -----------------------------------------------------------------------------------

/// A Node process running spawn_node.js, fed one command per run.
class node_peer {
 public:
  node_peer(const std::string& node, const std::string& script, long rss_mib) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) die("pipe2 failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::string rss = std::to_string(rss_mib);
    std::vector<char*> argv = {const_cast<char*>(node.c_str()), const_cast<char*>(script.c_str()),
                               rss.data(), nullptr};
    const int e = posix_spawn(&pid_, node.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    if (e != 0) die(std::string("posix_spawn node: ") + std::strerror(e));
    kin_bench::spawn::guard(pid_);
    to_ = in[1];
    from_ = out[0];
    const std::string ready = read_line();
    long rss_seen = -1;
    if (std::sscanf(ready.c_str(), "ready %ld", &rss_seen) != 1) {
      die("spawn_node.js did not start: '" + ready + "'");
    }
    rss_mib_ = rss_seen;
  }
  node_peer(const node_peer&) = delete;
  node_peer& operator=(const node_peer&) = delete;
  ~node_peer() {
    ::close(to_);  // EOF on Node's stdin: it exits
    ::close(from_);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    kin_bench::spawn::unguard(pid_);
  }

  [[nodiscard]] long rss_mib() const noexcept { return rss_mib_; }

  run_result run(const run_spec& s) {
    if (s.path.find_first_of(" \t\n") != std::string::npos) die("node: a target path with blanks");
    const std::string cmd = "run " + std::to_string(s.n) + " " + std::to_string(s.inflight) + " " +
                            std::to_string(s.cap_ns / 1000000) + " " + s.path + "\n";
    if (::write(to_, cmd.data(), cmd.size()) != static_cast<ssize_t>(cmd.size())) {
      die("write to node failed");
    }
    const std::string answer = read_line();
    long done = 0, bad = 0;
    unsigned long long elapsed = 0, user_us = 0, sys_us = 0;
    if (std::sscanf(answer.c_str(), "done %ld %llu %llu %llu %ld", &done, &elapsed, &user_us,
                    &sys_us, &bad) != 5) {
      die("node: unexpected answer '" + answer + "'");
    }
    if (bad != 0) die("node: " + std::to_string(bad) + " children did not exit with status 0");
    run_result res;
    res.n = done;
    res.capped = done < s.n;
    res.wall_ns = elapsed;
    res.cpu_ns = (user_us + sys_us) * 1000;
    return res;
  }

 private:
  std::string read_line() {
    std::string line;
    char c;
    while (true) {
      const ssize_t r = ::read(from_, &c, 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) die("node: its output ended (did it fail?)");
      if (c == '\n') return line;
      line += c;
    }
  }

  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  long rss_mib_ = -1;
};

// ---- the driver -----------------------------------------------------------------------------

struct impl {
  std::string name;
  std::function<run_result(const run_spec&)> run;
};

void print_run(const std::string& bench, const char* what, const std::string& name,
               const run_result& r) {
  const double n = static_cast<double>(r.n);
  note("# %s %s %s: n=%ld%s wall_ms=%.1f spawns/s=%.1f us/spawn=%.1f parent_cpu_us/spawn=%.1f\n",
       bench.c_str(), what, name.c_str(), r.n, r.capped ? " (time cap)" : "",
       static_cast<double>(r.wall_ns) / 1e6, n * 1e9 / static_cast<double>(r.wall_ns),
       static_cast<double>(r.wall_ns) / 1e3 / n, static_cast<double>(r.cpu_ns) / 1e3 / n);
}

double rate_of(const run_result& r) {
  return static_cast<double>(r.n) * 1e9 / static_cast<double>(r.wall_ns);
}

struct settings {
  long runs = 5;
  long spawns = 2000;
  long cap_ms = 3000;
  long warm_cap_ms = 1000;
  std::string only;
};

void run_config(const std::string& bench, const std::vector<impl>& impls, const run_spec& spec,
                const settings& o) {
  if (!o.only.empty()) {
    for (const impl& im : impls) {
      if (im.name != o.only) continue;
      for (long r = 1; r <= o.runs; ++r) {
        print_run(bench, ("run " + std::to_string(r)).c_str(), im.name, im.run(spec));
      }
    }
    return;
  }
  run_spec warm = spec;
  warm.n = std::max(1L, spec.n / 10);
  warm.cap_ns = static_cast<std::uint64_t>(std::min(o.warm_cap_ms, o.cap_ms)) * 1000000;
  for (const impl& im : impls) print_run(bench, "warm-up", im.name, im.run(warm));
  std::map<std::string, std::vector<double>> rates, cpu;
  for (long r = 1; r <= o.runs; ++r) {
    for (const impl& im : impls) {
      const run_result res = im.run(spec);
      print_run(bench, ("run " + std::to_string(r)).c_str(), im.name, res);
      rates[im.name].push_back(rate_of(res));
      cpu[im.name].push_back(static_cast<double>(res.cpu_ns) / 1e3 / static_cast<double>(res.n));
    }
  }
  for (const impl& im : impls) {
    note("# %s median: %s us/spawn=%.1f parent_cpu_us/spawn=%.1f\n", bench.c_str(), im.name.c_str(),
         1e6 / kin_bench::median(rates[im.name]), kin_bench::median(cpu[im.name]));
  }
  for (const impl& im : impls) {
    if (im.name == "kin") continue;
    kin_bench::report(bench.c_str(), "spawns/s", rates["kin"], im.name.c_str(), rates[im.name]);
  }
}

void prime_libuv() {
  // libuv opens a process-wide pipe (its signal lock) with its first loop and keeps it: open it
  // before counting descriptors, so that the leak check sees only what the runs leave.
  uv_loop_t l;
  if (uv_loop_init(&l) != 0 || uv_loop_close(&l) != 0) die("uv_loop_init failed");
}

}  // namespace

int main(int argc, char** argv) {
  settings o;
  std::string targets = "tiny,true";
  std::string inflight = "1,64";
  std::string rss = "0,1024,4096";
  std::string pin = "none";
  std::string node = "auto";
  std::string node_script = std::string(KIN_BENCH_SOURCE_DIR) + "/spawn_node.js";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--spawns", &o.spawns},
       {"--time-cap-ms", &o.cap_ms},
       {"--warm-cap-ms", &o.warm_cap_ms},
       {"--target", nullptr, &targets},
       {"--inflight", nullptr, &inflight},
       {"--rss-mib", nullptr, &rss},
       {"--pin", nullptr, &pin},
       {"--node", nullptr, &node},
       {"--node-script", nullptr, &node_script},
       {"--only", nullptr, &o.only}},
      "[--runs N (5)] [--spawns N per run (2000)] [--time-cap-ms N (3000: no spawn started after "
      "it, the n done is reported)] [--warm-cap-ms N (1000: the warm-up run, of N/10 spawns)] "
      "[--target LIST (tiny,true: tiny = kin-bench-tiny-true, true = /bin/true, or paths)] "
      "[--inflight LIST (1,64)] [--rss-mib LIST (0,1024,4096: the parent's resident set is "
      "grown to each in turn)] [--pin none|same (same: everything on the first allowed CPU)] "
      "[--node PATH|auto|none (auto: node from PATH, skipped if absent)] [--node-script PATH] "
      "[--only kin|posix_spawn|fork_errpipe|libuv|node (that one alone, no warm-up, no BENCH "
      "line)]");
  kin_bench::spawn::install_cleanup();
  const char* suffix = kin_bench::spawn::apply_pin(pin);
  std::vector<long> rss_list = kin_bench::spawn::parse_counts(rss, "--rss-mib");
  std::sort(rss_list.begin(), rss_list.end());
  const std::vector<long> inflight_list = kin_bench::spawn::parse_counts(inflight, "--inflight");
  for (long j : inflight_list) {
    if (j < 1) die("--inflight wants positive counts");
  }
  std::vector<std::pair<std::string, std::string>> target_list;  // label, path
  for (const std::string& t : kin_bench::spawn::parse_words(targets)) {
    target_list.emplace_back(kin_bench::spawn::label_of(t), kin_bench::spawn::resolve_target(t));
  }
  if (node == "auto") node = kin_bench::spawn::find_in_path("node");
  if (node == "none") node.clear();

  prime_libuv();
  const int fds_before = kin_bench::spawn::open_fd_count();
  note(
      "# spawn: %ld runs of up to %ld spawns, time cap %ld ms, libuv %s, pin %s, loadavg at "
      "start: %s\n",
      o.runs, o.spawns, o.cap_ms, uv_version_string(), pin.c_str(),
      kin_bench::spawn::loadavg().c_str());
  for (const auto& [label, path] : target_list)
    note("# target %s: %s\n", label.c_str(), path.c_str());
  if (node.empty()) {
    note("# node not found (or --node none): no node peer\n");
  } else {
    note("# node: %s, script %s\n", node.c_str(), node_script.c_str());
  }

  kin_bench::spawn::ballast mem;
  for (long mib : rss_list) {
    mem.grow_to(mib);
    note("# parent resident set grown to %ld MiB (VmRSS %ld MiB)\n", mib,
         kin_bench::spawn::rss_mib());
    std::unique_ptr<node_peer> nodep;
    if (!node.empty() && (o.only.empty() || o.only == "node")) {
      nodep = std::make_unique<node_peer>(node, node_script, mib);
      note("# node started with its resident set grown to %ld MiB (VmRSS %ld MiB)\n", mib,
           nodep->rss_mib());
    }
    for (const auto& [label, path] : target_list) {
      for (long j : inflight_list) {
        const std::string bench =
            "spawn_" + label + "_j" + std::to_string(j) + "_rss" + std::to_string(mib) + suffix;
        const run_spec spec{path, o.spawns, j, static_cast<std::uint64_t>(o.cap_ms) * 1000000};
        std::vector<impl> impls = {
            {"kin", run_kin},
            {"posix_spawn",
             [](const run_spec& s) {
               return run_raw<kin_bench::spawn::raw_spawner>(s, "posix_spawn");
             }},
            {"fork_errpipe",
             [](const run_spec& s) { return run_raw<raw_fork_errpipe>(s, "fork_errpipe"); }},
            {"libuv", run_libuv}};
        if (nodep) impls.push_back({"node", [&](const run_spec& s) { return nodep->run(s); }});
        run_config(bench, impls, spec, o);
      }
    }
  }
  kin_bench::spawn::check_no_children("at the end");
  if (kin_bench::spawn::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
