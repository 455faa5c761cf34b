// Benchmark: run-to-completion throughput (spawns/s, higher is better) of a short child whose
// output is captured, one child after another: kin::spawn_sync against a raw posix_spawn +
// poll + waitpid loop, Node's child_process.spawnSync and Python's subprocess.run, all in one
// run.
//
// Every implementation gives the child three pipes: stdin a pipe the parent closes at once
// (empty input), stdout and stderr pipes the parent reads to their end, and then reaps the
// child; each checks, for every child, exit status 0, nothing on stderr and the expected number
// of bytes on stdout. The children: `tiny` (kin-bench-tiny-true, a static program without libc:
// the spawn is everything), `true` (/bin/true: the loader and libc start-up) and `echo`
// (/bin/echo with a 1000-byte argument: 1001 bytes captured).
//
// - kin: kin::spawn_sync with its default options (three pipes, input empty), file and args set
//   once; its private loop is created and destroyed by every call, as a user's call does.
// - raw: the minimal C a user would write: pipe2(O_CLOEXEC) three times, posix_spawn with file
//   actions that dup2 the child's ends onto 0, 1 and 2, the parent's stdin end closed at once,
//   stdout and stderr read to EOF with poll() on both (appended to two std::strings), then a
//   blocking waitpid.
// - node and python: tools/bench/spawn_sync_node.js and spawn_sync_python.py, each started
//   once and kept for the whole benchmark; the benchmark sends each run as a command and blocks
//   until the answer (the script's own wall and CPU time) comes back.
//
// Runs alternate (kin, raw, node, python, kin, ...) after one warm-up run of each (n/10 spawns,
// printed as a `#` line, not counted); the medians over the runs are reported.
#include <kin/process.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
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

/// A child to run: its argument vector (argv[0] is the path) and what it writes to stdout.
struct target {
  std::string label;
  std::vector<std::string> argv;
  std::size_t out_bytes = 0;
};

/// What one run did.
struct run_result {
  long n = 0;
  std::uint64_t wall_ns = 0;
  std::uint64_t cpu_ns = 0;  // the parent's CPU time (user + system)
};

void check_child(const char* who, bool exited_zero, std::size_t out, std::size_t err,
                 const target& t) {
  if (!exited_zero) die(std::string(who) + ": a child did not exit with status 0");
  if (out != t.out_bytes || err != 0) {
    die(std::string(who) + ": a child wrote " + std::to_string(out) + " bytes to stdout (want " +
        std::to_string(t.out_bytes) + ") and " + std::to_string(err) + " to stderr");
  }
}

// ---- kin ------------------------------------------------------------------------------------

run_result run_kin(const target& t, long n) {
  kin::spawn_sync_options o;
  o.file = t.argv[0];
  o.args = t.argv;
  run_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  for (long i = 0; i < n; ++i) {
    const kin::spawn_sync_result r = kin::spawn_sync(o);
    if (r.error) die("kin::spawn_sync: " + r.error.message());
    check_child("kin", r.exit_status == 0, r.out().size(), r.err().size(), t);
  }
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  res.n = n;
  return res;
}

// ---- raw posix_spawn + poll + waitpid ---------------------------------------------------------

void close_fd(int fd) { (void)::close(fd); }

/// Reads what is there on `fd` into `out`; false at EOF.
bool drain_once(int fd, std::string& out) {
  char buf[65536];
  while (true) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r > 0) {
      out.append(buf, static_cast<std::size_t>(r));
      return true;
    }
    if (r == 0) return false;
    if (errno != EINTR) die(std::string("raw: read: ") + std::strerror(errno));
  }
}

/// One child: spawned with its stdio on three pipes, stdout and stderr read to EOF, reaped.
void raw_once(const target& t, char* const* argv) {
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    die(std::string("raw: pipe2: ") + std::strerror(errno));
  }
  // dup2 onto 0-2 clears close-on-exec on the copies; the originals close at exec.
  posix_spawn_file_actions_t fa;
  if (posix_spawn_file_actions_init(&fa) != 0 ||
      posix_spawn_file_actions_adddup2(&fa, in[0], 0) != 0 ||
      posix_spawn_file_actions_adddup2(&fa, out[1], 1) != 0 ||
      posix_spawn_file_actions_adddup2(&fa, err[1], 2) != 0) {
    die("raw: posix_spawn_file_actions failed");
  }
  pid_t pid = -1;
  const int e = posix_spawn(&pid, argv[0], &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close_fd(in[0]);
  close_fd(out[1]);
  close_fd(err[1]);
  close_fd(in[1]);  // empty input: the child sees EOF at once
  if (e != 0) die(std::string("raw: posix_spawn: ") + std::strerror(e));
  std::string got_out, got_err;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open = 2;
  while (open > 0) {
    const int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      die(std::string("raw: poll: ") + std::strerror(errno));
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      if (!drain_once(fds[i].fd, i == 0 ? got_out : got_err)) {
        close_fd(fds[i].fd);
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open;
      }
    }
  }
  int st = 0;
  pid_t w;
  do {
    w = ::waitpid(pid, &st, 0);
  } while (w < 0 && errno == EINTR);
  if (w != pid) die("raw: waitpid failed");
  check_child("raw", WIFEXITED(st) && WEXITSTATUS(st) == 0, got_out.size(), got_err.size(), t);
}

run_result run_raw(const target& t, long n) {
  std::vector<std::string> strings = t.argv;
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  run_result res;
  const std::uint64_t t0 = wall_ns();
  const std::uint64_t c0 = cpu_ns();
  for (long i = 0; i < n; ++i) raw_once(t, argv.data());
  res.wall_ns = wall_ns() - t0;
  res.cpu_ns = cpu_ns() - c0;
  res.n = n;
  return res;
}

// ---- Node and Python ------------------------------------------------------------------------

/// A script (spawn_sync_node.js or spawn_sync_python.py) run with `--serve`, fed one command
/// per run.
class script_peer {
 public:
  script_peer(const std::string& interpreter, const std::string& script) : name_(script) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) die("pipe2 failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::string serve = "--serve";
    std::vector<char*> argv = {const_cast<char*>(interpreter.c_str()),
                               const_cast<char*>(script.c_str()), serve.data(), nullptr};
    const int e = posix_spawn(&pid_, interpreter.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    if (e != 0) die("posix_spawn " + interpreter + ": " + std::strerror(e));
    kin_bench::spawn::guard(pid_);
    to_ = in[1];
    from_ = out[0];
    const std::string ready = read_line();
    if (ready != "ready") die(name_ + " did not start: '" + ready + "'");
  }
  script_peer(const script_peer&) = delete;
  script_peer& operator=(const script_peer&) = delete;
  ~script_peer() {
    ::close(to_);  // EOF on the script's stdin: it exits
    ::close(from_);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    kin_bench::spawn::unguard(pid_);
  }

  run_result run(const target& t, long n) {
    std::string cmd = "run " + std::to_string(n) + " " + std::to_string(t.out_bytes);
    for (const std::string& a : t.argv) {
      if (a.empty() || a.find_first_of(" \t\n") != std::string::npos) {
        die(name_ + ": an argument that is empty or has blanks");
      }
      cmd += " " + a;
    }
    cmd += "\n";
    if (::write(to_, cmd.data(), cmd.size()) != static_cast<ssize_t>(cmd.size())) {
      die("write to " + name_ + " failed");
    }
    const std::string answer = read_line();
    long done = 0, bad = 0;
    unsigned long long elapsed = 0, user_us = 0, sys_us = 0;
    if (std::sscanf(answer.c_str(), "done %ld %llu %llu %llu %ld", &done, &elapsed, &user_us,
                    &sys_us, &bad) != 5 ||
        done != n) {
      die(name_ + ": unexpected answer '" + answer + "'");
    }
    if (bad != 0) {
      die(name_ + ": " + std::to_string(bad) +
          " children did not exit with status 0 or wrote other than expected");
    }
    return {done, elapsed, (user_us + sys_us) * 1000};
  }

 private:
  std::string read_line() {
    std::string line;
    char c;
    while (true) {
      const ssize_t r = ::read(from_, &c, 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) die(name_ + ": its output ended (did it fail?)");
      if (c == '\n') return line;
      line += c;
    }
  }

  std::string name_;
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
};

// ---- the driver -----------------------------------------------------------------------------

struct impl {
  std::string name;
  std::function<run_result(const target&, long)> run;
};

void print_run(const std::string& bench, const char* what, const std::string& name,
               const run_result& r) {
  const double n = static_cast<double>(r.n);
  note("# %s %s %s: n=%ld wall_ms=%.1f spawns/s=%.1f us/spawn=%.1f parent_cpu_us/spawn=%.1f\n",
       bench.c_str(), what, name.c_str(), r.n, static_cast<double>(r.wall_ns) / 1e6,
       n * 1e9 / static_cast<double>(r.wall_ns), static_cast<double>(r.wall_ns) / 1e3 / n,
       static_cast<double>(r.cpu_ns) / 1e3 / n);
}

double rate_of(const run_result& r) {
  return static_cast<double>(r.n) * 1e9 / static_cast<double>(r.wall_ns);
}

struct settings {
  long runs = 5;
  long spawns = 1000;
  std::string only;
};

void run_target(const std::string& bench, const std::vector<impl>& impls, const target& t,
                const settings& o) {
  if (!o.only.empty()) {
    for (const impl& im : impls) {
      if (im.name != o.only) continue;
      for (long r = 1; r <= o.runs; ++r) {
        print_run(bench, ("run " + std::to_string(r)).c_str(), im.name, im.run(t, o.spawns));
      }
    }
    return;
  }
  const long warm = std::max(1L, o.spawns / 10);
  for (const impl& im : impls) print_run(bench, "warm-up", im.name, im.run(t, warm));
  std::map<std::string, std::vector<double>> rates, cpu;
  for (long r = 1; r <= o.runs; ++r) {
    for (const impl& im : impls) {
      const run_result res = im.run(t, o.spawns);
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

/// `tiny`, `true`, `echo` (/bin/echo with a 1000-byte argument), or the path of a program
/// that writes nothing.
target target_of(const std::string& t) {
  if (t == "echo") {
    const std::string path = kin_bench::spawn::resolve_target("/bin/echo");
    return {"echo", {path, std::string(1000, 'x')}, 1001};
  }
  return {kin_bench::spawn::label_of(t), {kin_bench::spawn::resolve_target(t)}, 0};
}

/// `auto`: the command from PATH (none if absent); `none`: none; else that path.
std::string find_interpreter(std::string which, const char* name) {
  if (which == "auto") which = kin_bench::spawn::find_in_path(name);
  if (which == "none") which.clear();
  return which;
}

}  // namespace

int main(int argc, char** argv) {
  settings o;
  std::string targets = "tiny,true,echo";
  std::string pin = "none";
  std::string node = "auto";
  std::string python = "auto";
  const std::string dir = KIN_BENCH_SOURCE_DIR;
  std::string node_script = dir + "/spawn_sync_node.js";
  std::string python_script = dir + "/spawn_sync_python.py";
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--spawns", &o.spawns},
       {"--target", nullptr, &targets},
       {"--pin", nullptr, &pin},
       {"--node", nullptr, &node},
       {"--node-script", nullptr, &node_script},
       {"--python", nullptr, &python},
       {"--python-script", nullptr, &python_script},
       {"--only", nullptr, &o.only}},
      "[--runs N (5)] [--spawns N per run (1000)] [--target LIST (tiny,true,echo: tiny = "
      "kin-bench-tiny-true, true = /bin/true, echo = /bin/echo of 1000 bytes, or paths of "
      "silent programs)] [--pin none|same (same: everything on the first allowed CPU)] "
      "[--node PATH|auto|none] [--node-script PATH] [--python PATH|auto|none] "
      "[--python-script PATH] [--only kin|raw|node|python (that one alone, no warm-up, no "
      "BENCH line)]");
  kin_bench::spawn::install_cleanup();
  const char* suffix = kin_bench::spawn::apply_pin(pin);
  std::vector<target> target_list;
  for (const std::string& t : kin_bench::spawn::parse_words(targets)) {
    target_list.push_back(target_of(t));
  }
  node = find_interpreter(node, "node");
  python = find_interpreter(python, "python3");

  const int fds_before = kin_bench::spawn::open_fd_count();
  note("# spawn_sync: %ld runs of %ld spawns, pin %s, loadavg at start: %s\n", o.runs, o.spawns,
       pin.c_str(), kin_bench::spawn::loadavg().c_str());
  for (const target& t : target_list) {
    note("# target %s: %s%s\n", t.label.c_str(), t.argv[0].c_str(),
         t.argv.size() > 1 ? " (with a 1000-byte argument)" : "");
  }
  std::unique_ptr<script_peer> nodep, pythonp;
  const auto wanted = [&](const char* name) { return o.only.empty() || o.only == name; };
  if (!node.empty() && wanted("node")) {
    nodep = std::make_unique<script_peer>(node, node_script);
    note("# node: %s, script %s\n", node.c_str(), node_script.c_str());
  } else {
    note("# no node peer\n");
  }
  if (!python.empty() && wanted("python")) {
    pythonp = std::make_unique<script_peer>(python, python_script);
    note("# python: %s, script %s\n", python.c_str(), python_script.c_str());
  } else {
    note("# no python peer\n");
  }

  std::vector<impl> impls = {{"kin", run_kin}, {"raw", run_raw}};
  if (nodep) {
    impls.push_back({"node", [&](const target& t, long n) { return nodep->run(t, n); }});
  }
  if (pythonp) {
    impls.push_back({"python", [&](const target& t, long n) { return pythonp->run(t, n); }});
  }
  for (const target& t : target_list) {
    run_target("spawn_sync_" + t.label + suffix, impls, t, o);
  }
  nodep.reset();
  pythonp.reset();
  kin_bench::spawn::check_no_children("at the end");
  if (kin_bench::spawn::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
