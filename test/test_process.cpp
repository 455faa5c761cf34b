// Tests of kin::spawn and kin::process: exit statuses and signals, the stdio plan (pipes, files,
// parent descriptors, collisions, numbers past 2), the descriptors and environment a child gets,
// credentials and process groups, the errors of every step, reaping (by the loop, by someone
// else, after the process is gone), killing, and spawning at scale and from many threads.
// Children are the helper binary (KIN_TEST_CHILD; behaviours in helpers/child_process.cpp).
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;
using kin_test::leak_guard;
using kin_test::run_all;
using kin_test::run_until;

namespace Catch {
template <>
struct StringMaker<kin::spawn_step> {
  static std::string convert(kin::spawn_step step) { return kin::to_string(step); }
};
}  // namespace Catch

using kin_test::child_path;

namespace {

// ---- the helper child and the loop that runs it ----------------------------------------------

// Options that run the helper child with `args` (its behaviour, then that behaviour's own).
kin::spawn_options helper(std::vector<std::string> args) {
  REQUIRE_FALSE(child_path().empty());
  kin::spawn_options o;
  o.file = child_path();
  o.args.push_back("kin-test-child");
  o.args.insert(o.args.end(), args.begin(), args.end());
  return o;
}

// The helper with nothing on stdin and its stdout and stderr as pipes: what it reports, and its
// complaints, reach the test and nothing else does.
kin::spawn_options reporting(std::vector<std::string> args) {
  auto o = helper(std::move(args));
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::pipe()};
  return o;
}

// A child with no stdio at all to speak of, for tests that only care how it ends.
kin::spawn_options quiet(std::vector<std::string> args) {
  auto o = helper(std::move(args));
  o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  return o;
}

// A loop and the children spawned on it. Processes must be declared after the fixture: when a
// test fails half-way, they are destroyed first and the fixture then kills and reaps (bounded)
// every child still there, so the loop is never destroyed while it still watches a child.
class fixture {
 public:
  fixture() = default;
  fixture(const fixture&) = delete;
  fixture& operator=(const fixture&) = delete;
  ~fixture() {
    const auto live = kin_test::child_pids();
    std::vector<pid_t> left;
    for (pid_t pid : pids_) {
      if (live.count(pid) != 0) left.push_back(pid);
    }
    if (left.empty()) return;
    // Our own unreaped children: their pids cannot have been reused, so kill(2) is safe.
    for (pid_t pid : left) ::kill(pid, SIGKILL);
    const auto all_gone = [&] {
      const auto now = kin_test::child_pids();
      return std::none_of(left.begin(), left.end(), [&](pid_t pid) { return now.count(pid) != 0; });
    };
    run_until(l, all_gone, 10s);
    l.run_nowait();
  }

  kin::result<kin::process, kin::spawn_error> spawn(const kin::spawn_options& o) {
    auto r = kin::spawn(l, o);
    if (r) pids_.push_back(r->pid());
    return r;
  }

  // spawn() that must succeed.
  kin::process start(const kin::spawn_options& o) {
    auto r = spawn(o);
    if (!r) FAIL("spawn failed: " << r.error().message());
    return std::move(*r);
  }

  kin::loop l;

 private:
  std::vector<pid_t> pids_;
};

struct exit_record {
  int calls = 0;
  std::error_code ec;
  int exit_status = -2;
  int term_signal = -2;
};

// Records how a child ends and reads the pipes it writes (stdout and stderr by default) to EOF.
// The callbacks share their state with the watch, so they stay safe whatever outlives what.
class child_watch {
 public:
  explicit child_watch(kin::process& p, const std::vector<int>& read_fds = {1, 2})
      : state_(std::make_shared<state>()) {
    for (int fd : read_fds) {
      kin::stream* s = p.stdio_stream(fd);
      if (s == nullptr) continue;
      state_->open.insert(fd);
      auto st = state_;
      auto started = s->read_start(
          [st, fd](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
            if (ec) {
              st->open.erase(fd);
              if (ec != kin::errc::eof) st->read_errors[fd] = ec;
              return;
            }
            st->text[fd] += kin_test::text_of(data);
          });
      if (!started) {
        state_->open.erase(fd);
        state_->read_errors[fd] = started.error();
      }
    }
    auto st = state_;
    p.on_exit([st](std::error_code ec, int exit_status, int term_signal) {
      ++st->exit.calls;
      st->exit.ec = ec;
      st->exit.exit_status = exit_status;
      st->exit.term_signal = term_signal;
    });
  }

  [[nodiscard]] bool exited() const { return state_->exit.calls > 0; }
  [[nodiscard]] bool done() const { return exited() && state_->open.empty(); }
  [[nodiscard]] const exit_record& exit() const { return state_->exit; }
  [[nodiscard]] std::string text(int fd) const {
    auto it = state_->text.find(fd);
    return it == state_->text.end() ? std::string() : it->second;
  }
  [[nodiscard]] std::string out() const { return text(1); }
  [[nodiscard]] std::string err() const { return text(2); }
  [[nodiscard]] const std::map<int, std::error_code>& read_errors() const {
    return state_->read_errors;
  }

  // Runs the loop until the child is reaped and its pipes are at EOF, at most `limit`. If that
  // does not happen, kills the child and waits (bounded) for its reaping, and returns false.
  bool finish(kin::loop& l, kin::process& p, std::chrono::milliseconds limit = 10s) {
    const auto is_done = [&] { return done(); };
    if (run_until(l, is_done, limit)) return true;
    (void)p.kill(SIGKILL);
    const auto is_reaped = [&] { return exited(); };
    run_until(l, is_reaped, 5s);
    return false;
  }

 private:
  struct state {
    exit_record exit;
    std::set<int> open;
    std::map<int, std::string> text;
    std::map<int, std::error_code> read_errors;
  };
  std::shared_ptr<state> state_;
};

// Spawns `o`, watches it (its stdout and stderr, if pipes) and waits for it to finish.
child_watch run_helper(fixture& f, const kin::spawn_options& o,
                       std::chrono::milliseconds limit = 10s) {
  kin::process p = f.start(o);
  child_watch w(p);
  const bool finished = w.finish(f.l, p, limit);
  INFO("child stderr: " << w.err());
  CHECK(finished);
  CHECK(w.read_errors().empty());
  return w;
}

// What a reporting helper printed; it must have exited 0.
std::string report_of(fixture& f, const kin::spawn_options& o) {
  auto w = run_helper(f, o);
  INFO("child stderr: " << w.err());
  CHECK(w.exit().exit_status == 0);
  return w.out();
}

// Spawns `o`, which must fail; checks that the failure left no child (right away: spawn reaps
// a child that failed) and no descriptor (once the loop is gone), and returns the error.
kin::spawn_error spawn_failure(const kin::spawn_options& o) {
  const auto fds_before = kin_test::open_fds();
  const auto children_before = kin_test::child_pids();
  kin::spawn_error error;
  {
    fixture f;
    auto p = f.spawn(o);
    if (p) FAIL("spawn succeeded (pid " << p->pid() << ") where it had to fail");
    error = p.error();
    CHECK(kin_test::child_pids() == children_before);
  }
  CHECK(kin_test::open_fds() == fds_before);
  return error;
}

// ---- small tools -----------------------------------------------------------------------------

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::set<int> numbers_of(const std::string& text) {
  std::set<int> numbers;
  std::istringstream in(text);
  int n;
  while (in >> n) numbers.insert(n);
  return numbers;
}

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

std::string errno_message(int err) {
  return std::error_code(err, std::system_category()).message();
}

void write_file(const std::filesystem::path& path, const std::string& content, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Everything in a pipe whose every writer is gone, without ever blocking: "<EAGAIN>" marks a
// pipe that still has a writer somewhere (which the test did not expect).
std::string drain(int fd) {
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  std::string got;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      got.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      return got;
    } else if (errno != EINTR) {
      return got + (errno == EAGAIN ? "<EAGAIN>" : "<error>");
    }
  }
}

kin::pipe_ends cloexec_pipe() {
  auto p = kin::make_pipe();
  REQUIRE(p);
  return std::move(*p);
}

// Moves `fd` to the free descriptor number `number` (close-on-exec), for plans that name exact
// parent numbers.
kin::unique_fd place_at(kin::unique_fd fd, int number) {
  REQUIRE(::fcntl(number, F_GETFD) == -1);
  REQUIRE(::dup3(fd.get(), number, O_CLOEXEC) == number);
  return kin::unique_fd(number);
}

// What /proc says descriptor `fd` of this process refers to ("pipe:[1234]", a path, ...).
std::string target_of(int fd) { return kin_test::fd_target(fd); }

// The one-letter state of process `pid` in /proc ('Z' for a zombie), or '?'.
char state_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  const auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return '?';
  return stat[close + 2];
}

// The descriptors of this process that a child would inherit without close_other_fds.
std::set<int> inheritable_fds() {
  std::set<int> fds;
  for (int fd : kin_test::open_fds()) {
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags != -1 && (flags & FD_CLOEXEC) == 0) fds.insert(fd);
  }
  return fds;
}

// Sets a signal's disposition for as long as it lives.
class disposition_guard {
 public:
  disposition_guard(int signo, void (*handler)(int), int flags = 0) : signo_(signo) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    REQUIRE(::sigaction(signo, &sa, &saved_) == 0);
  }
  disposition_guard(const disposition_guard&) = delete;
  disposition_guard& operator=(const disposition_guard&) = delete;
  ~disposition_guard() { ::sigaction(signo_, &saved_, nullptr); }

 private:
  int signo_;
  struct sigaction saved_ {};
};

// Blocks a signal in the calling thread for as long as it lives.
class mask_guard {
 public:
  explicit mask_guard(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    REQUIRE(::pthread_sigmask(SIG_BLOCK, &set, &saved_) == 0);
  }
  mask_guard(const mask_guard&) = delete;
  mask_guard& operator=(const mask_guard&) = delete;
  ~mask_guard() { ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }

 private:
  sigset_t saved_{};
};

// Sets (or, with nullopt, unsets) a variable of this process's environment for as long as it
// lives.
class env_guard {
 public:
  env_guard(std::string name, const std::optional<std::string>& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) saved_ = old;
    if (value) {
      REQUIRE(::setenv(name_.c_str(), value->c_str(), 1) == 0);
    } else {
      REQUIRE(::unsetenv(name_.c_str()) == 0);
    }
  }
  env_guard(const env_guard&) = delete;
  env_guard& operator=(const env_guard&) = delete;
  ~env_guard() {
    if (saved_) {
      ::setenv(name_.c_str(), saved_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> saved_;
};

// Raises RLIMIT_NOFILE's soft limit to at least `wanted` (as far as the hard limit allows) for
// as long as it lives.
class nofile_guard {
 public:
  explicit nofile_guard(rlim_t wanted) {
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved_) == 0);
    rlimit raised = saved_;
    if (raised.rlim_cur < wanted) {
      raised.rlim_cur = std::min(wanted, raised.rlim_max);
      REQUIRE(::setrlimit(RLIMIT_NOFILE, &raised) == 0);
    }
  }
  nofile_guard(const nofile_guard&) = delete;
  nofile_guard& operator=(const nofile_guard&) = delete;
  ~nofile_guard() { ::setrlimit(RLIMIT_NOFILE, &saved_); }

 private:
  rlimit saved_{};
};

// Puts `out` and `err` at this process's descriptors 1 and 2 until restore() (or destruction),
// so that a stdio plan can name 1 and 2 as sources: the only way to make the parent's 1 and 2
// swap places in the child. Nothing may be printed meanwhile (it would go into the pipes).
class standard_fds_replaced {
 public:
  standard_fds_replaced(int out, int err) {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(stdout);
    std::fflush(stderr);
    saved_out_ = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
    saved_err_ = ::fcntl(2, F_DUPFD_CLOEXEC, 3);
    REQUIRE(saved_out_ >= 0);
    REQUIRE(saved_err_ >= 0);
    REQUIRE(::dup2(out, 1) == 1);
    REQUIRE(::dup2(err, 2) == 2);
  }
  standard_fds_replaced(const standard_fds_replaced&) = delete;
  standard_fds_replaced& operator=(const standard_fds_replaced&) = delete;
  ~standard_fds_replaced() { restore(); }

  void restore() {
    if (saved_out_ >= 0) {
      ::dup2(saved_out_, 1);
      ::close(saved_out_);
      saved_out_ = -1;
    }
    if (saved_err_ >= 0) {
      ::dup2(saved_err_, 2);
      ::close(saved_err_);
      saved_err_ = -1;
    }
  }

 private:
  int saved_out_ = -1;
  int saved_err_ = -1;
};

// True if a user other than the owner may execute `path` (every directory on the way included).
bool others_may_execute(const std::filesystem::path& path) {
  std::filesystem::path p = std::filesystem::absolute(path);
  for (;;) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) return false;
    if (p == p.root_path()) return true;
    p = p.parent_path();
  }
}

}  // namespace

// ---- how a child ends ------------------------------------------------------------------------

TEST_CASE("the exit callback gets the exit status of a child that exits", "[process]") {
  const int code = GENERATE(0, 3, 255);
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"exit-code", std::to_string(code)}));
  CHECK(p.pid() > 0);
  CHECK_FALSE(p.has_exited());  // only the loop reaps, and it has not run
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().calls == 1);
  CHECK(!w.exit().ec);
  CHECK(w.exit().exit_status == code);
  CHECK(w.exit().term_signal == 0);
  CHECK(p.has_exited());
  CHECK(p.exit_status() == code);
  CHECK(p.term_signal() == 0);
  // Reaped once, reported once.
  for (int i = 0; i < 3; ++i) f.l.run_nowait();
  CHECK(w.exit().calls == 1);
}

TEST_CASE("the exit callback gets the signal that killed a child", "[process]") {
  const int sig = GENERATE(SIGKILL, SIGTERM, SIGUSR1, SIGSEGV);
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"kill-self", std::to_string(sig)}));
  CHECK(p.pid() > 0);
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().calls == 1);
  CHECK(!w.exit().ec);
  CHECK(w.exit().exit_status == -1);
  CHECK(w.exit().term_signal == sig);
  CHECK(p.has_exited());
  CHECK(p.exit_status() == -1);
  CHECK(p.term_signal() == sig);
}

TEST_CASE("a child that exits before the loop runs is still reported", "[process]") {
  leak_guard leaks;
  fixture f;
  kin::spawn_options o;
  o.file = "/bin/true";
  o.args = {"true"};
  kin::process p = f.start(o);
  // It is a zombie before the loop has had any chance to watch it.
  REQUIRE(kin_test::wait_until([&] { return state_of(p.pid()) == 'Z'; }));
  CHECK_FALSE(p.has_exited());
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().calls == 1);
  CHECK(!w.exit().ec);
  CHECK(w.exit().exit_status == 0);
  CHECK(w.exit().term_signal == 0);
}

TEST_CASE("an exit callback set after the reaping runs on a later iteration", "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"exit-code", "4"}));
  REQUIRE(run_until(f.l, [&] { return p.has_exited(); }));
  int calls = 0;
  int status = -2;
  p.on_exit([&](std::error_code ec, int exit_status, int) {
    CHECK(!ec);
    ++calls;
    status = exit_status;
  });
  CHECK(calls == 0);  // never from inside on_exit
  REQUIRE(run_until(f.l, [&] { return calls > 0; }));
  for (int i = 0; i < 3; ++i) f.l.run_nowait();
  CHECK(calls == 1);
  CHECK(status == 4);
}

TEST_CASE("a running child keeps the loop running until it is reaped", "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"sleep", "100"}));
  CHECK(run_all(f.l, 10s));
  CHECK(p.has_exited());
  CHECK(p.exit_status() == 0);
}

TEST_CASE("an unref'd child does not keep the loop running, and is reaped once ref'd again",
          "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"sleep", "30000"}));
  p.unref();
  const auto start = std::chrono::steady_clock::now();
  CHECK(run_all(f.l, 10s));
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK_FALSE(p.has_exited());
  p.ref();
  REQUIRE(p.kill(SIGKILL));
  CHECK(run_all(f.l, 10s));
  CHECK(p.has_exited());
  CHECK(p.term_signal() == SIGKILL);
}

TEST_CASE("a child the test reaped itself is reported as status unknown, never as exit 0",
          "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"exit-code", "0"}));
  const pid_t pid = p.pid();
  // Someone else in the process collects the status before the loop gets to it (ECHILD).
  int status = 0;
  REQUIRE(kin_test::wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }));
  CHECK(WIFEXITED(status));
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().calls == 1);
  CHECK(w.exit().ec == kin::errc::status_unknown);
  CHECK(w.exit().exit_status == -1);
  CHECK(p.has_exited());
  CHECK(p.exit_status() == -1);
  CHECK(p.term_signal() == 0);
  auto k = p.kill(0);
  REQUIRE_FALSE(k);
  CHECK(k.error() == std::errc::no_such_process);
}

TEST_CASE("without pidfds children are reaped through SIGCHLD, statuses and ECHILD included",
          "[process]") {
  leak_guard leaks;
  fixture f;
  // KIN_PIDFD=0 makes kin in the helper work as on a kernel before 5.3: it spawns three
  // children of its own and checks their exits (7, SIGTERM, reaped behind its back) and that it
  // holds no pidfd meanwhile.
  auto o = reporting({"reap-without-pidfd"});
  o.env = {{"KIN_PIDFD", "0"}};
  CHECK(report_of(f, o) == "ok\n");
  // The same helper with pidfds finds one: the check above can fail.
  auto w = run_helper(f, reporting({"reap-without-pidfd"}));
  CHECK(w.exit().exit_status == 1);
  CHECK(w.out().find("a pidfd is open") != std::string::npos);
}

TEST_CASE("destroying a process whose child still runs leaves the loop to reap it", "[process]") {
  leak_guard leaks;
  fixture f;
  std::optional<kin::process> p;
  pid_t pid = 0;
  const auto gone = [&] { return kin_test::child_pids().count(pid) == 0; };

  SECTION("a child that exits later keeps a ref'd loop running until it is reaped") {
    p.emplace(f.start(quiet({"sleep", "200"})));
    pid = p->pid();
    p.reset();
    CHECK(kin_test::child_pids().count(pid) == 1);
    CHECK(run_all(f.l, 10s));
    CHECK(kin_test::child_pids().count(pid) == 0);
  }
  SECTION("a child killed just before") {
    p.emplace(f.start(quiet({"sleep", "30000"})));
    pid = p->pid();
    REQUIRE(p->kill(SIGKILL));
    p.reset();
    CHECK(run_until(f.l, gone, 10s));
  }
  SECTION("an unref'd child") {
    p.emplace(f.start(quiet({"sleep", "200"})));
    pid = p->pid();
    p->unref();
    p.reset();
    CHECK(run_until(f.l, gone, 10s));
  }
}

TEST_CASE("a moved process keeps its exit callback and its pipes", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = helper({"echo-stdin"});
  o.stdio = {kin::stdio::pipe(), kin::stdio::pipe(), kin::stdio::pipe()};
  kin::process first = f.start(o);
  const pid_t pid = first.pid();
  child_watch w(first);
  kin::process second(std::move(first));
  std::vector<kin::process> held;
  held.push_back(std::move(second));
  kin::process& p = held.front();
  CHECK(p.pid() == pid);
  REQUIRE(p.stdin_stream() != nullptr);
  p.stdin_stream()->write(std::string_view("moved\n"));
  p.stdin_stream()->shutdown();
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().calls == 1);
  CHECK(w.exit().exit_status == 0);
  CHECK(w.out() == "moved\n");
}

// ---- arguments, environment, directory -------------------------------------------------------

TEST_CASE("the child gets args as its whole argument vector, argv[0] included", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = reporting({"print-args", "two words", "", "last"});
  o.args[0] = "a-chosen-name";
  CHECK(report_of(f, o) == "a-chosen-name\nprint-args\ntwo words\n\nlast\n");
}

TEST_CASE("the child inherits the parent's environment by default", "[process]") {
  leak_guard leaks;
  env_guard var("KIN_TEST_PROCESS_INHERITED", "from the parent");
  fixture f;
  CHECK(report_of(f, reporting({"print-env", "KIN_TEST_PROCESS_INHERITED"})) ==
        "from the parent\n");
}

TEST_CASE("clear_env gives the child exactly the env entries", "[process]") {
  leak_guard leaks;
  env_guard var("KIN_TEST_PROCESS_INHERITED", "from the parent");
  fixture f;
  auto o = reporting({"print-environ"});
  o.clear_env = true;
  o.env = {{"KIN_A", "1"}, {"KIN_B", "two words"}, {"KIN_EMPTY", ""}};
  auto got = lines_of(report_of(f, o));
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::string>{"KIN_A=1", "KIN_B=two words", "KIN_EMPTY="});
}

TEST_CASE("env entries override inherited variables, later entries winning, each set once",
          "[process]") {
  leak_guard leaks;
  env_guard var("KIN_TEST_PROCESS_OVERRIDDEN", "from the parent");
  fixture f;
  auto o = reporting({"print-environ"});
  o.env = {{"KIN_TEST_PROCESS_OVERRIDDEN", "first"}, {"KIN_TEST_PROCESS_OVERRIDDEN", "second"}};
  const auto got = lines_of(report_of(f, o));
  CHECK(std::count(got.begin(), got.end(), "KIN_TEST_PROCESS_OVERRIDDEN=second") == 1);
  CHECK(std::count_if(got.begin(), got.end(), [](const std::string& line) {
          return line.rfind("KIN_TEST_PROCESS_OVERRIDDEN=", 0) == 0;
        }) == 1);
}

TEST_CASE("a variable set by env keeps its place; new ones follow in the order given",
          "[process]") {
  leak_guard leaks;
  env_guard first("KIN_TEST_ORDER_FIRST", "1");
  env_guard middle("KIN_TEST_ORDER_MIDDLE", "2");
  env_guard last("KIN_TEST_ORDER_LAST", "3");
  fixture f;
  auto o = reporting({"print-environ"});
  o.env = {{"KIN_TEST_ORDER_NEW", "4"},
           {"KIN_TEST_ORDER_MIDDLE", "changed"},
           {"KIN_TEST_ORDER_NEW", "5"}};
  std::vector<std::string> ours;
  for (const std::string& line : lines_of(report_of(f, o))) {
    if (line.rfind("KIN_TEST_ORDER_", 0) == 0) ours.push_back(line);
  }
  CHECK(ours == std::vector<std::string>{"KIN_TEST_ORDER_FIRST=1", "KIN_TEST_ORDER_MIDDLE=changed",
                                         "KIN_TEST_ORDER_LAST=3", "KIN_TEST_ORDER_NEW=5"});
}

TEST_CASE("env_unset removes inherited variables, and env sets them again", "[process]") {
  leak_guard leaks;
  env_guard gone("KIN_TEST_PROCESS_GONE", "from the parent");
  env_guard back("KIN_TEST_PROCESS_BACK", "from the parent");
  fixture f;
  auto o = reporting({"print-env", "KIN_TEST_PROCESS_GONE"});
  o.env_unset = {"KIN_TEST_PROCESS_GONE", "KIN_TEST_PROCESS_BACK"};
  CHECK(report_of(f, o) == "<unset>\n");
  o.args.back() = "KIN_TEST_PROCESS_BACK";
  o.env = {{"KIN_TEST_PROCESS_BACK", "from env"}};
  CHECK(report_of(f, o) == "from env\n");
}

TEST_CASE("cwd is the child's working directory", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  fixture f;
  auto o = reporting({"print-cwd"});
  o.cwd = dir.path().string();
  CHECK(report_of(f, o) == std::filesystem::canonical(dir.path()).string() + "\n");
  o.cwd.clear();  // empty: the parent's
  CHECK(report_of(f, o) == std::filesystem::current_path().string() + "\n");
}

TEST_CASE("paths through the parent's descriptors reach them, however high they are", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  // High numbers, above every descriptor the plan uses: a child that copied only the low part
  // of the parent's table would not find them.
  kin::unique_fd dir_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(dir_fd.is_open());
  const kin::unique_fd high_dir(::fcntl(dir_fd.get(), F_DUPFD_CLOEXEC, 900));
  dir_fd.reset();
  REQUIRE(high_dir.get() >= 900);
  auto p = kin::make_pipe();
  REQUIRE(p);
  kin::unique_fd high_write(::fcntl(p->write.get(), F_DUPFD_CLOEXEC, 901));
  REQUIRE(high_write.get() >= 901);
  {
    fixture f;
    auto o = reporting({"print-cwd"});
    o.cwd = "/proc/self/fd/" + std::to_string(high_dir.get());
    CHECK(report_of(f, o) == std::filesystem::canonical(dir.path()).string() + "\n");
    // A stdio file opened through /dev/fd: the child's stdout is the pipe's write end.
    auto w = quiet({"write-fd", "1", "through /dev/fd"});
    w.stdio[1] = kin::stdio::file("/dev/fd/" + std::to_string(high_write.get()), O_WRONLY);
    auto watch = run_helper(f, w);
    CHECK(watch.exit().exit_status == 0);
  }
  high_write.reset();
  p->write.reset();
  char buf[64] = {};
  const ssize_t n = ::read(p->read.get(), buf, sizeof buf - 1);
  CHECK(std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0) == "through /dev/fd\n");
}

// ---- the stdio plan --------------------------------------------------------------------------

TEST_CASE("a child reads its stdin pipe and writes its stdout and stderr pipes", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = helper({"echo-stdin"});
  o.stdio = {kin::stdio::pipe(), kin::stdio::pipe(), kin::stdio::pipe()};
  std::error_code written, shut;
  int write_calls = 0;
  kin::process p = f.start(o);
  REQUIRE(p.stdin_stream() != nullptr);
  REQUIRE(p.stdout_stream() != nullptr);
  REQUIRE(p.stderr_stream() != nullptr);
  CHECK(p.stdio_stream(0) == p.stdin_stream());
  CHECK(p.stdio_stream(3) == nullptr);
  CHECK(p.stdio_stream(-1) == nullptr);
  child_watch w(p);
  // More than a pipe holds, so the child must be reading while the parent writes.
  const std::string sent = pattern(1 << 20);
  p.stdin_stream()->write(std::string_view(sent), [&](std::error_code ec) {
    ++write_calls;
    written = ec;
  });
  p.stdin_stream()->shutdown([&](std::error_code ec) { shut = ec; });
  REQUIRE(w.finish(f.l, p));
  CHECK(write_calls == 1);
  CHECK(!written);
  CHECK(!shut);
  CHECK(w.exit().exit_status == 0);
  CHECK(w.out().size() == sent.size());
  CHECK(w.out() == sent);
  CHECK(w.err() == "read 1048576 bytes\n");
}

TEST_CASE("entries that are not pipes have no stream", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = quiet({"exit-code", "0"});
  o.stdio.push_back(kin::stdio::closed());
  kin::process p = f.start(o);
  for (int fd = 0; fd < 5; ++fd) CHECK(p.stdio_stream(fd) == nullptr);
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
}

TEST_CASE("pipes at numbers past 2 go the way asked, and duplex pipes both ways", "[process]") {
  leak_guard leaks;
  fixture f;

  SECTION("child_reads at 3, automatic (child writes) at 4") {
    auto o = helper({"copy-fd", "3", "4"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::pipe(),
               kin::stdio::pipe(kin::stdio::direction::child_reads), kin::stdio::pipe()};
    kin::process p = f.start(o);
    REQUIRE(p.stdio_stream(3) != nullptr);
    REQUIRE(p.stdio_stream(4) != nullptr);
    child_watch w(p, {2, 4});
    p.stdio_stream(3)->write(std::string_view("through 3 and 4\n"));
    p.stdio_stream(3)->shutdown();
    REQUIRE(w.finish(f.l, p));
    INFO("child stderr: " << w.err());
    CHECK(w.exit().exit_status == 0);
    CHECK(w.text(4) == "through 3 and 4\n");
  }
  SECTION("duplex at 3") {
    auto o = helper({"echo-fd", "3"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::pipe(),
               kin::stdio::pipe(kin::stdio::direction::duplex)};
    kin::process p = f.start(o);
    kin::stream* s = p.stdio_stream(3);
    REQUIRE(s != nullptr);
    CHECK(s->can_pass_fds());  // a Unix-domain socketpair
    child_watch w(p, {2, 3});
    s->write(std::string_view("there and back\n"));
    s->shutdown();
    REQUIRE(w.finish(f.l, p));
    INFO("child stderr: " << w.err());
    CHECK(w.exit().exit_status == 0);
    CHECK(w.text(3) == "there and back\n");
  }
}

TEST_CASE("a child gets descriptors past 2 only where the plan puts them", "[process]") {
  leak_guard leaks;
  fixture f;
  const std::vector<kin::stdio> plan = {kin::stdio::ignore(), kin::stdio::pipe(),
                                        kin::stdio::ignore(), kin::stdio::closed(),
                                        kin::stdio::closed(), kin::stdio::pipe()};
  auto listing = helper({"list-fds"});
  listing.stdio = plan;
  CHECK(numbers_of(report_of(f, listing)) == std::set<int>{0, 1, 2, 5});

  auto writing = helper({"write-fd", "5", "to five"});
  writing.stdio = plan;
  kin::process p = f.start(writing);
  REQUIRE(p.stdio_stream(5) != nullptr);
  child_watch w(p, {1, 5});
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().exit_status == 0);
  CHECK(w.text(5) == "to five\n");
}

TEST_CASE("stdio::fd entries reach the right files, whatever the numbers collide with",
          "[process]") {
  leak_guard leaks;
  fixture f;

  SECTION("two pipes at 1 and 2") {
    auto a = cloexec_pipe();
    auto b = cloexec_pipe();
    auto o = helper({"write-fd", "1", "one", "2", "two"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::fd(a.write.get()), kin::stdio::fd(b.write.get())};
    kin::process p = f.start(o);
    a.write.reset();  // the child has its own copies
    b.write.reset();
    child_watch w(p);
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().exit_status == 0);
    CHECK(drain(a.read.get()) == "one\n");
    CHECK(drain(b.read.get()) == "two\n");
  }
  SECTION("one source feeding two targets") {
    auto a = cloexec_pipe();
    auto o = helper({"write-fd", "1", "one", "2", "two"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::fd(a.write.get()), kin::stdio::fd(a.write.get())};
    kin::process p = f.start(o);
    a.write.reset();
    child_watch w(p);
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().exit_status == 0);
    CHECK(drain(a.read.get()) == "one\ntwo\n");
  }
  SECTION("the parent's 1 and 2 swapped") {
    auto a = cloexec_pipe();
    auto b = cloexec_pipe();
    auto o = helper({"write-fd", "1", "one", "2", "two"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::fd(2), kin::stdio::fd(1)};
    std::optional<kin::result<kin::process, kin::spawn_error>> r;
    {
      standard_fds_replaced std_fds(a.write.get(), b.write.get());
      r.emplace(f.spawn(o));
    }
    REQUIRE(r->has_value());
    kin::process p = std::move(**r);
    a.write.reset();
    b.write.reset();
    child_watch w(p);
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().exit_status == 0);
    CHECK(drain(a.read.get()) == "two\n");  // the parent's 1 became the child's 2
    CHECK(drain(b.read.get()) == "one\n");
  }
  SECTION("a cycle of sources that are also targets") {
    constexpr int base = 200;
    auto p0 = cloexec_pipe();
    auto p1 = cloexec_pipe();
    auto p2 = cloexec_pipe();
    kin::unique_fd at0 = place_at(std::move(p0.write), base);
    kin::unique_fd at1 = place_at(std::move(p1.write), base + 1);
    kin::unique_fd at2 = place_at(std::move(p2.write), base + 2);
    auto o = helper({"write-fd", std::to_string(base), "a", std::to_string(base + 1), "b",
                     std::to_string(base + 2), "c"});
    o.stdio.assign(base + 3, kin::stdio::closed());
    o.stdio[0] = o.stdio[1] = o.stdio[2] = kin::stdio::ignore();
    o.stdio[base] = kin::stdio::fd(base + 1);
    o.stdio[base + 1] = kin::stdio::fd(base + 2);
    o.stdio[base + 2] = kin::stdio::fd(base);
    kin::process p = f.start(o);
    at0.reset();
    at1.reset();
    at2.reset();
    child_watch w(p);
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().exit_status == 0);
    CHECK(drain(p1.read.get()) == "a\n");
    CHECK(drain(p2.read.get()) == "b\n");
    CHECK(drain(p0.read.get()) == "c\n");
  }
  SECTION("a close-on-exec descriptor mapped to its own number arrives open") {
    constexpr int number = 210;
    auto a = cloexec_pipe();
    kin::unique_fd at = place_at(std::move(a.write), number);
    REQUIRE((::fcntl(number, F_GETFD) & FD_CLOEXEC) != 0);
    auto o = helper({"write-fd", std::to_string(number), "same number"});
    o.stdio.assign(number + 1, kin::stdio::closed());
    o.stdio[0] = o.stdio[1] = o.stdio[2] = kin::stdio::ignore();
    o.stdio[number] = kin::stdio::fd(number);
    kin::process p = f.start(o);
    at.reset();
    child_watch w(p);
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().exit_status == 0);
    CHECK(drain(a.read.get()) == "same number\n");
  }
}

TEST_CASE("inherit gives the parent's descriptor of the same number, or none", "[process]") {
  leak_guard leaks;
  fixture f;
  constexpr int number = 220;
  auto a = cloexec_pipe();
  kin::unique_fd at = place_at(std::move(a.write), number);
  REQUIRE(::fcntl(number + 1, F_GETFD) == -1);
  auto o = helper({"describe-fds"});
  o.stdio.assign(number + 2, kin::stdio::closed());
  o.stdio[0] = kin::stdio::ignore();
  o.stdio[1] = kin::stdio::pipe();
  o.stdio[2] = kin::stdio::ignore();
  o.stdio[number] = kin::stdio::inherit();
  o.stdio[number + 1] = kin::stdio::inherit();  // not open in the parent: closed
  const auto got = lines_of(report_of(f, o));
  REQUIRE(got.size() == 4);
  CHECK(got[3] == std::to_string(number) + " " + target_of(number) + " w");
}

TEST_CASE("ignore is /dev/null opened read-write", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = helper({"describe-fds"});
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::ignore()};
  const auto got = lines_of(report_of(f, o));
  REQUIRE(got.size() == 3);
  CHECK(got[0] == "0 /dev/null rw");
  CHECK(got[2] == "2 /dev/null rw");
}

TEST_CASE("file entries are opened by the child with their flags and mode, close-on-exec removed",
          "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  write_file(dir.path() / "in", "file contents\n", 0644);
  fixture f;
  auto o = helper({"echo-stdin"});
  o.stdio = {kin::stdio::file((dir.path() / "in").string()),
             kin::stdio::file((dir.path() / "out").string(), O_WRONLY | O_CREAT | O_TRUNC, 0600),
             kin::stdio::file((dir.path() / "err").string(),
                              O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640)};
  kin::process p = f.start(o);
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().exit_status == 0);
  CHECK(read_file(dir.path() / "out") == "file contents\n");
  CHECK(read_file(dir.path() / "err") == "read 14 bytes\n");
  struct stat st {};
  REQUIRE(::stat((dir.path() / "out").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

// ---- the descriptors a child gets (DESIGN.md invariants 1 and 2) -----------------------------

TEST_CASE("a child gets only the descriptors in its plan, even those opened without cloexec",
          "[process]") {
  leak_guard leaks;
  fixture f;
  kin::unique_fd leaky(::open("/dev/null", O_RDONLY));  // as other code in the process might
  REQUIRE(leaky);
  int raw[2];
  REQUIRE(::pipe(raw) == 0);
  kin::unique_fd leaky_read(raw[0]), leaky_write(raw[1]);
  auto o = reporting({"list-fds"});
  CHECK(numbers_of(report_of(f, o)) == std::set<int>{0, 1, 2});
}

TEST_CASE("with close_other_fds off a child gets the descriptors without cloexec, and no others",
          "[process]") {
  leak_guard leaks;
  fixture f;
  kin::unique_fd leaky(::open("/dev/null", O_RDONLY));
  REQUIRE(leaky);
  auto sealed = cloexec_pipe();
  auto o = reporting({"list-fds"});
  o.close_other_fds = false;
  // Whatever this process holds without close-on-exec (the leaky descriptor, and anything its
  // own parent left it); every descriptor kin made is close-on-exec and must not be there.
  std::set<int> expected = inheritable_fds();
  expected.insert({0, 1, 2});
  const auto got = numbers_of(report_of(f, o));
  CHECK(got.count(leaky.get()) == 1);
  CHECK(got.count(sealed.read.get()) == 0);
  CHECK(got.count(sealed.write.get()) == 0);
  CHECK(got == expected);
}

// ---- signals in the child (DESIGN.md invariant 3) --------------------------------------------

TEST_CASE("a child starts with default dispositions and an empty mask, SIGPIPE included",
          "[process]") {
  leak_guard leaks;
  // An application that ignores SIGPIPE (as servers do) must not pass that on: SIG_IGN
  // survives execve, and a child that ignores SIGPIPE loops writing to a closed pipe.
  disposition_guard sigpipe(SIGPIPE, SIG_IGN);
  disposition_guard sigusr2(SIGUSR2, SIG_IGN);
  mask_guard blocked(SIGUSR1);
  fixture f;
  CHECK(report_of(f, reporting({"print-sigpipe"})) == "default\n");
  CHECK(report_of(f, reporting({"print-disposition", std::to_string(SIGUSR2)})) == "default\n");
  CHECK(report_of(f, reporting({"print-sigmask"})) == "empty\n");
}

// ---- sessions, groups, credentials -----------------------------------------------------------

namespace {

struct ids {
  int pid = -1, pgid = -1, sid = -1;
};

ids ids_of(const std::string& report) {
  ids i;
  std::istringstream in(report);
  in >> i.pid >> i.pgid >> i.sid;
  return i;
}

}  // namespace

TEST_CASE("a detached child leads a new session and group", "[process]") {
  leak_guard leaks;
  fixture f;
  auto o = reporting({"print-pgid-sid"});
  o.detached = true;
  kin::process p = f.start(o);
  child_watch w(p);
  REQUIRE(w.finish(f.l, p));
  const ids got = ids_of(w.out());
  CHECK(got.pid == p.pid());
  CHECK(got.sid == p.pid());
  CHECK(got.pgid == p.pid());
}

TEST_CASE("process_group 0 makes the child a group leader; another pid joins that group",
          "[process]") {
  leak_guard leaks;
  fixture f;
  auto lead = quiet({"sleep", "30000"});
  lead.process_group = 0;
  kin::process leader = f.start(lead);
  child_watch leader_watch(leader);

  auto o = reporting({"print-pgid-sid"});
  o.process_group = 0;
  const ids own = ids_of(report_of(f, o));
  CHECK(own.pgid == own.pid);
  CHECK(own.sid == ::getsid(0));  // still in the parent's session

  o.process_group = leader.pid();
  const ids joined = ids_of(report_of(f, o));
  CHECK(joined.pgid == leader.pid());

  REQUIRE(leader.kill(SIGKILL));
  REQUIRE(leader_watch.finish(f.l, leader));
}

TEST_CASE("kill_group signals every process of the child's group", "[process]") {
  leak_guard leaks;
  fixture f;
  auto lead = quiet({"sleep", "30000"});
  lead.process_group = 0;
  kin::process leader = f.start(lead);
  auto join = quiet({"sleep", "30000"});
  join.process_group = leader.pid();
  kin::process member = f.start(join);
  child_watch leader_watch(leader), member_watch(member);
  REQUIRE(leader.kill_group(SIGTERM));
  const auto both_reaped = [&] { return leader_watch.exited() && member_watch.exited(); };
  REQUIRE(run_until(f.l, both_reaped, 10s));
  CHECK(leader_watch.exit().term_signal == SIGTERM);
  CHECK(member_watch.exit().term_signal == SIGTERM);
  auto k = leader.kill_group(SIGTERM);
  REQUIRE_FALSE(k);
  CHECK(k.error() == std::errc::no_such_process);
}

TEST_CASE("uid and gid set the child's credentials and drop its supplementary groups",
          "[process]") {
  leak_guard leaks;
  if (::geteuid() != 0) {
    WARN("not root: cannot start a child as another user");
    return;
  }
  if (!others_may_execute(child_path())) {
    WARN("the helper child is not executable by other users: " << child_path());
    return;
  }
  fixture f;
  auto o = reporting({"print-ids"});
  o.uid = 65534;
  o.gid = 65534;
  CHECK(report_of(f, o) == "65534 65534 65534 65534 0\n");
}

#if defined(__linux__)
namespace {

// Makes this process the reaper of its descendants' orphans while it lives (and restores the
// setting): a grandchild whose parent a test kills is then the test's to wait for.
class subreaper_scope {
 public:
  subreaper_scope() {
    REQUIRE(::prctl(PR_GET_CHILD_SUBREAPER, &was_) == 0);
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1UL) == 0);
  }
  subreaper_scope(const subreaper_scope&) = delete;
  subreaper_scope& operator=(const subreaper_scope&) = delete;
  ~subreaper_scope() { ::prctl(PR_SET_CHILD_SUBREAPER, static_cast<unsigned long>(was_)); }

 private:
  int was_ = 0;
};

}  // namespace

TEST_CASE("a child with a parent_death_signal gets it when its parent is killed", "[process]") {
  leak_guard leaks;
  for (const bool other_user : {false, true}) {
    INFO((other_user ? "child switched to uid 65534 (credentials set before the signal)"
                     : "same user"));
    if (other_user && (::geteuid() != 0 || !others_may_execute(child_path()))) {
      WARN("not root, or the helper is not executable by others: the uid case is skipped");
      continue;
    }
    subreaper_scope reaper;
    fixture f;
    std::vector<std::string> args = {"spawn-with-parent-death", std::to_string(SIGUSR2)};
    if (other_user) args.push_back("65534");
    kin::process parent = f.start(reporting(args));
    child_watch w(parent);
    REQUIRE(run_until(
        f.l, [&] { return w.out().find('\n') != std::string::npos || w.exited(); }, 10s));
    INFO("helper said: " << w.out() << w.err());
    const pid_t grandchild = static_cast<pid_t>(std::atol(w.out().c_str()));
    REQUIRE(grandchild > 0);
    REQUIRE(parent.kill(SIGKILL));
    CHECK(w.finish(f.l, parent));
    CHECK(w.exit().term_signal == SIGKILL);
    // The grandchild, now ours: it must die of SIGUSR2, soon.
    int status = 0;
    pid_t got = 0;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while ((got = ::waitpid(grandchild, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    if (got == 0) {
      ::kill(grandchild, SIGKILL);
      ::waitpid(grandchild, &status, 0);
      FAIL("the grandchild outlived its parent by 10 s");
    }
    REQUIRE(got == grandchild);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGUSR2);
  }
}
#endif

TEST_CASE("a parent_death_signal that is not a signal is refused before any child exists",
          "[process]") {
  leak_guard leaks;
  for (const int bad : {-1, NSIG, 1000}) {
    INFO("parent_death_signal " << bad);
    auto o = quiet({"exit-code", "0"});
    o.parent_death_signal = bad;
    const auto e = spawn_failure(o);
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == std::errc::invalid_argument);
  }
}

// ---- bad input: a clear error, no child, no descriptor ---------------------------------------

TEST_CASE("to_string names each spawn step", "[process]") {
  using kin::spawn_step;
  const std::vector<std::pair<spawn_step, std::string>> names = {
      {spawn_step::prepare, "prepare"},     {spawn_step::fork, "fork"},
      {spawn_step::setsid, "setsid"},       {spawn_step::setpgid, "setpgid"},
      {spawn_step::setgroups, "setgroups"}, {spawn_step::setgid, "setgid"},
      {spawn_step::setuid, "setuid"},       {spawn_step::parent_death, "parent_death"},
      {spawn_step::chdir, "chdir"},         {spawn_step::open, "open"},
      {spawn_step::dup2, "dup2"},           {spawn_step::exec, "exec"}};
  for (const auto& [step, name] : names) CHECK(std::string(kin::to_string(step)) == name);
}

TEST_CASE("a program that does not exist fails with ENOENT at exec", "[process]") {
  leak_guard leaks;
  kin::spawn_options o;
  o.file = "/nonexistent-kin-dir/kin-frob";
  o.args = {"kin-frob"};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::no_such_file_or_directory);
  CHECK(e.path == o.file);
  CHECK(std::error_code(e) == e.code);
  CHECK(e.message() ==
        "spawn \"/nonexistent-kin-dir/kin-frob\": exec failed: " + errno_message(ENOENT));
}

TEST_CASE("a program whose path runs through a file fails with ENOTDIR", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  write_file(dir.path() / "plain", "", 0644);
  kin::spawn_options o;
  o.file = (dir.path() / "plain" / "prog").string();
  o.args = {"prog"};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::not_a_directory);
  CHECK(e.path == o.file);
}

TEST_CASE("a directory as the program fails with EACCES", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  kin::spawn_options o;
  o.file = dir.path().string();
  o.args = {"dir"};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::permission_denied);
  CHECK(e.path == o.file);
}

TEST_CASE("a program without execute permission fails with EACCES", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  // No execute bit for anyone: even root may not run it.
  write_file(dir.path() / "prog", "#!/bin/sh\nexit 0\n", 0644);
  kin::spawn_options o;
  o.file = (dir.path() / "prog").string();
  o.args = {"prog"};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::permission_denied);
  CHECK(e.path == o.file);
}

TEST_CASE("an executable that is no executable format fails with ENOEXEC, never run by sh",
          "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  // Were it run through /bin/sh (as execvp does), the text would create a marker file.
  const std::string content =
      GENERATE(std::string("touch \"$0.ran\"\n"), std::string());  // text, and empty
  write_file(dir.path() / "prog", content, 0755);
  kin::spawn_options o;
  o.file = (dir.path() / "prog").string();
  o.args = {o.file};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::executable_format_error);
  CHECK(e.path == o.file);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "prog.ran"));
}

TEST_CASE("a script whose interpreter does not exist fails with ENOENT", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  write_file(dir.path() / "script", "#!/nonexistent/interp\n", 0755);
  kin::spawn_options o;
  o.file = (dir.path() / "script").string();
  o.args = {"script"};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::no_such_file_or_directory);
  CHECK(e.path == o.file);
}

TEST_CASE("a working directory that does not exist fails at chdir", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  write_file(dir.path() / "plain", "", 0644);
  auto o = quiet({"exit-code", "0"});
  SECTION("missing") {
    o.cwd = (dir.path() / "missing").string();
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::chdir);
    CHECK(e.code == std::errc::no_such_file_or_directory);
    CHECK(e.path == o.cwd);
  }
  SECTION("a file") {
    o.cwd = (dir.path() / "plain").string();
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::chdir);
    CHECK(e.code == std::errc::not_a_directory);
    CHECK(e.path == o.cwd);
  }
}

TEST_CASE("an empty args or an empty file is refused with EINVAL before any child exists",
          "[process]") {
  leak_guard leaks;
  SECTION("empty args") {
    auto o = quiet({});
    o.args.clear();
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == std::errc::invalid_argument);
  }
  SECTION("empty file, args given") {
    kin::spawn_options o;
    o.args = {"true"};
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == std::errc::invalid_argument);
  }
}

TEST_CASE("arguments or an environment larger than the kernel takes fail with E2BIG at exec",
          "[process]") {
  leak_guard leaks;
  auto o = quiet({"exit-code", "0"});
  SECTION("one environment variable of 4 MiB") {
    o.env.emplace_back("KIN_TEST_HUGE", std::string(4u << 20, 'x'));
  }
  SECTION("one argument of 4 MiB") { o.args.push_back(std::string(4u << 20, 'x')); }
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::argument_list_too_long);
}

TEST_CASE("a stdio plan naming a closed or negative parent descriptor is refused", "[process]") {
  leak_guard leaks;
  auto o = quiet({"exit-code", "0"});
  SECTION("closed: EBADF") {
    // Far above anything the loop opens meanwhile (a low number just closed would be reused).
    constexpr int closed_fd = 900;
    REQUIRE(::fcntl(closed_fd, F_GETFD) == -1);
    o.stdio[1] = kin::stdio::fd(closed_fd);
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == std::errc::bad_file_descriptor);
  }
  SECTION("negative: EINVAL") {
    o.stdio[1] = kin::stdio::fd(-1);
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == std::errc::invalid_argument);
  }
}

TEST_CASE("a file entry the child cannot open fails at open, naming the file", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir dir("kin-process");
  auto o = quiet({"exit-code", "0"});
  o.stdio[0] = kin::stdio::file((dir.path() / "missing").string());
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::open);
  CHECK(e.code == std::errc::no_such_file_or_directory);
  CHECK(e.path == (dir.path() / "missing").string());
}

TEST_CASE("setuid without privilege fails with EPERM at the setuid step", "[process]") {
  leak_guard leaks;
  // The test runs as root, where setuid(0) succeeds: the helper drops to an unprivileged user
  // first and then spawns with uid 0 itself.
  fixture f;
  const std::string got = report_of(f, reporting({"spawn-as-uid"}));
  if (got.rfind("skip", 0) == 0) {
    WARN(got);
    return;
  }
  CHECK(got == "fail setuid " + std::to_string(EPERM) + "\n");
}

TEST_CASE("spawn refuses to start a child while SIGCHLD is ignored", "[process]") {
  leak_guard leaks;
  auto o = quiet({"exit-code", "0"});
  {
    // Either way the kernel would reap the child itself and its status be lost.
    std::optional<disposition_guard> ignored;
    SECTION("SIG_IGN") { ignored.emplace(SIGCHLD, SIG_IGN); }
    SECTION("SA_NOCLDWAIT") { ignored.emplace(SIGCHLD, SIG_DFL, SA_NOCLDWAIT); }
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::prepare);
    CHECK(e.code == kin::errc::sigchld_ignored);
  }
  // With the disposition back, spawning works again.
  fixture f;
  auto w = run_helper(f, o);
  CHECK(w.exit().exit_status == 0);
}

// ---- the PATH search -------------------------------------------------------------------------

TEST_CASE(
    "a name is looked up in the child's PATH, else in the system default, never the "
    "parent's",
    "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir child_dir("kin-process");
  const kin_test::temp_dir parent_dir("kin-process");
  write_file(child_dir.path() / "kin-path-probe", "#!/bin/sh\necho child PATH\n", 0755);
  write_file(parent_dir.path() / "kin-path-probe", "#!/bin/sh\necho parent PATH\n", 0755);
  env_guard path("PATH", parent_dir.path().string() + ":/usr/bin:/bin");
  fixture f;
  kin::spawn_options o;
  o.file = "kin-path-probe";
  o.args = {"kin-path-probe"};
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::pipe()};
  SECTION("the child's PATH") {
    o.env = {{"PATH", child_dir.path().string()}};
    CHECK(report_of(f, o) == "child PATH\n");
  }
  SECTION("the parent's when the child gets the parent's environment") {
    CHECK(report_of(f, o) == "parent PATH\n");
  }
  SECTION("not the parent's when the child's environment has none") {
    o.clear_env = true;
    auto p = kin::spawn(f.l, o);
    REQUIRE_FALSE(p);
    CHECK(p.error().code == std::errc::no_such_file_or_directory);
    o.env_unset = {"PATH"};
    o.clear_env = false;
    auto q = kin::spawn(f.l, o);
    REQUIRE_FALSE(q);
    CHECK(q.error().code == std::errc::no_such_file_or_directory);
  }
  SECTION("the system default when the child's environment has none") {
    o.clear_env = true;
    o.file = "sh";  // in /bin or /usr/bin, where confstr(_CS_PATH) points
    o.args = {"sh", "-c", "echo default PATH"};
    CHECK(report_of(f, o) == "default PATH\n");
  }
}

TEST_CASE("the PATH search goes on past a candidate it may not execute", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir first("kin-process");
  const kin_test::temp_dir second("kin-process");
  write_file(first.path() / "kin-path-probe", "#!/bin/sh\necho first\n", 0644);
  kin::spawn_options o;
  o.file = "kin-path-probe";
  o.args = {"kin-path-probe"};
  o.env = {{"PATH", first.path().string() + ":" + second.path().string()}};
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::pipe()};
  SECTION("to a program further on") {
    write_file(second.path() / "kin-path-probe", "#!/bin/sh\necho second\n", 0755);
    fixture f;
    CHECK(report_of(f, o) == "second\n");
  }
  SECTION("and reports EACCES when no candidate runs") {
    const auto e = spawn_failure(o);
    INFO(e.message());
    CHECK(e.step == kin::spawn_step::exec);
    CHECK(e.code == std::errc::permission_denied);
    CHECK(e.path.find("kin-path-probe") != std::string::npos);
  }
}

TEST_CASE("a name found nowhere in PATH fails with ENOENT", "[process]") {
  leak_guard leaks;
  const kin_test::temp_dir first("kin-process");
  const kin_test::temp_dir second("kin-process");
  kin::spawn_options o;
  o.file = "kin-path-probe";
  o.args = {"kin-path-probe"};
  o.env = {{"PATH", first.path().string() + ":" + second.path().string()}};
  const auto e = spawn_failure(o);
  INFO(e.message());
  CHECK(e.step == kin::spawn_step::exec);
  CHECK(e.code == std::errc::no_such_file_or_directory);
  CHECK(e.path.find("kin-path-probe") != std::string::npos);
}

// ---- kill and terminate ----------------------------------------------------------------------

TEST_CASE("kill signals a running child and fails with ESRCH once it was reaped", "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"sleep", "30000"}));
  child_watch w(p);
  CHECK(p.kill(0));  // it is there
  for (int bad : {-1, 999}) {
    auto k = p.kill(bad);
    REQUIRE_FALSE(k);
    CHECK(k.error() == std::errc::invalid_argument);
  }
  CHECK_FALSE(w.exited());
  REQUIRE(p.kill(SIGKILL));
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().term_signal == SIGKILL);
  CHECK(w.exit().exit_status == -1);
  // Reaped: its pid may belong to someone else by now, so nothing is sent.
  for (int sig : {0, SIGTERM, SIGKILL}) {
    auto k = p.kill(sig);
    REQUIRE_FALSE(k);
    CHECK(k.error() == std::errc::no_such_process);
  }
  auto t = p.terminate(1s);
  REQUIRE_FALSE(t);
  CHECK(t.error() == std::errc::no_such_process);
}

TEST_CASE("kill sends SIGTERM when no signal is named", "[process]") {
  leak_guard leaks;
  fixture f;
  kin::process p = f.start(quiet({"sleep", "30000"}));
  child_watch w(p);
  REQUIRE(p.kill());
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().term_signal == SIGTERM);
}

TEST_CASE("terminate sends kill_signal, and SIGKILL only to a child still there after the grace",
          "[process]") {
  leak_guard leaks;
  fixture f;
  SECTION("a child that obeys kill_signal") {
    auto o = quiet({"sleep", "30000"});
    o.kill_signal = SIGUSR2;
    kin::process p = f.start(o);
    child_watch w(p);
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(p.terminate(10s));
    REQUIRE(w.finish(f.l, p));
    CHECK(w.exit().term_signal == SIGUSR2);
    // The pending SIGKILL has nothing left to do: it holds neither the child nor the loop.
    CHECK(run_all(f.l, 5s));
    CHECK(std::chrono::steady_clock::now() - start < 5s);
  }
  SECTION("a child that ignores SIGTERM") {
    constexpr auto grace = 200ms;
    auto o = helper({"ignore-term-and-sleep", "30000"});
    o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::pipe()};
    kin::process p = f.start(o);
    child_watch w(p);
    // Wait until it ignores SIGTERM, or the SIGTERM could still kill it.
    const auto ready = [&] { return w.out() == "ready\n"; };
    REQUIRE(run_until(f.l, ready, 10s));
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(p.terminate(grace));
    REQUIRE(w.finish(f.l, p));
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(w.exit().term_signal == SIGKILL);
    // The loop's clock is read once per iteration, so allow it to be a little behind.
    CHECK(took >= grace - 50ms);
    CHECK(took < 10s);
  }
}

TEST_CASE("a kill_signal of 0 or 999 is refused, and nothing is sent", "[process]") {
  leak_guard leaks;
  const int bad = GENERATE(0, 999);
  fixture f;
  auto o = quiet({"sleep", "30000"});
  o.kill_signal = bad;
  auto r = f.spawn(o);
  if (!r) {
    // Refused up front, before any child exists.
    INFO(r.error().message());
    CHECK(r.error().step == kin::spawn_step::prepare);
    CHECK(r.error().code == std::errc::invalid_argument);
    return;
  }
  kin::process p = std::move(*r);
  child_watch w(p);
  auto t = p.terminate(10ms);
  REQUIRE_FALSE(t);
  CHECK(t.error() == std::errc::invalid_argument);
  // No SIGKILL follows the grace either: the child is still there well after it.
  const auto reaped = [&] { return w.exited(); };
  CHECK_FALSE(run_until(f.l, reaped, 200ms));
  CHECK(p.kill(0));
  REQUIRE(p.kill(SIGKILL));
  REQUIRE(w.finish(f.l, p));
  CHECK(w.exit().term_signal == SIGKILL);
}

// ---- at scale --------------------------------------------------------------------------------

TEST_CASE("many spawn and reap cycles leave no zombie and no descriptor", "[process]") {
  // About 1 ms a cycle here (10 s in all, the suite's limit is 120 s); lower it on slow hosts.
  constexpr int cycles = 10'000;
  leak_guard leaks;
  const auto children_before = kin_test::child_pids();
  fixture f;
  kin::spawn_options o;
  o.file = "/bin/true";
  o.args = {"true"};
  o.stdio = {kin::stdio::ignore(), kin::stdio::ignore(), kin::stdio::ignore()};
  std::set<int> fds_baseline;
  // The exit callback stops the loop, so each cycle ends as soon as its child is reaped
  // (run_until's 1 ms check would double the time of a cycle); the timer bounds each wait.
  bool expired = false;
  kin::timer deadline(f.l, [&] {
    expired = true;
    f.l.stop();
  });
  for (int i = 0; i < cycles; ++i) {
    auto p = f.spawn(o);
    if (!p) FAIL("spawn " << i << " failed: " << p.error().message());
    int calls = 0;
    int status = -2;
    p->on_exit([&](std::error_code, int exit_status, int) {
      ++calls;
      status = exit_status;
      f.l.stop();
    });
    REQUIRE(deadline.start(10s));
    while (calls == 0 && !expired) f.l.run();
    deadline.stop();
    if (calls == 0) FAIL("child " << i << " not reaped");
    if (status != 0) FAIL("child " << i << " exit status " << status);
    // The loop may keep descriptors of its own (its SIGCHLD watching) once it has had a child.
    if (i == 0) fds_baseline = kin_test::open_fds();
    if (i % 1000 == 999) {
      INFO("after " << i + 1 << " children");
      REQUIRE(kin_test::open_fds() == fds_baseline);
      REQUIRE(kin_test::child_pids() == children_before);
    }
  }
  CHECK(kin_test::open_fds() == fds_baseline);
  CHECK(kin_test::child_pids() == children_before);
}

TEST_CASE("a thousand children alive at once, killed together, are all reaped with their signal",
          "[process]") {
  constexpr int count = 1000;
  leak_guard leaks;
  nofile_guard room(4 * count + 1024);  // a pidfd (or more) per child in the parent
  fixture f;
  std::vector<exit_record> records(count);
  std::vector<kin::process> children;
  children.reserve(count);
  // Long enough to outlast spawning a thousand sanitized children on a loaded machine (the
  // first ones must still be there when the kills go out): ten minutes, in milliseconds.
  const auto o = quiet({"sleep", "600000"});
  for (int i = 0; i < count; ++i) {
    auto p = f.spawn(o);
    if (!p) FAIL("spawn " << i << " failed: " << p.error().message());
    p->on_exit([&records, i](std::error_code ec, int exit_status, int term_signal) {
      auto& r = records[static_cast<std::size_t>(i)];
      ++r.calls;
      r.ec = ec;
      r.exit_status = exit_status;
      r.term_signal = term_signal;
    });
    children.push_back(std::move(*p));
  }
  int refused = 0;
  for (int i = 0; i < count; ++i) {
    if (!children[static_cast<std::size_t>(i)].kill(i % 2 == 0 ? SIGTERM : SIGKILL)) ++refused;
  }
  CHECK(refused == 0);
  auto reaped = [&] {
    return std::all_of(records.begin(), records.end(),
                       [](const exit_record& r) { return r.calls > 0; });
  };
  REQUIRE(run_until(f.l, reaped, 30s));
  int wrong = 0;
  std::string first_wrong;
  for (int i = 0; i < count; ++i) {
    const auto& r = records[static_cast<std::size_t>(i)];
    const int sent = i % 2 == 0 ? SIGTERM : SIGKILL;
    if (r.calls != 1 || r.ec || r.term_signal != sent || r.exit_status != -1) {
      if (wrong++ == 0) {
        first_wrong = "child " + std::to_string(i) + ": calls " + std::to_string(r.calls) +
                      ", signal " + std::to_string(r.term_signal) + " (sent " +
                      std::to_string(sent) + "), status " + std::to_string(r.exit_status) +
                      ", error " + r.ec.message();
      }
    }
  }
  INFO(first_wrong);
  CHECK(wrong == 0);
  children.clear();
  CHECK(run_all(f.l, 5s));
}

TEST_CASE("children spawned from eight threads at once get only the descriptors they were given",
          "[process]") {
  constexpr int thread_count = 8;
  constexpr int spawns_per_thread = 50;
  leak_guard leaks;
  REQUIRE_FALSE(child_path().empty());
  // With close_other_fds off a child gets what this process holds without close-on-exec
  // (whatever its own parent left it): everything kin creates on any thread is close-on-exec
  // from birth, so nothing created meanwhile may show up (invariant 1). With it on, only the
  // plan's 0, 1 and 2 (invariant 2).
  std::set<int> inheritable = inheritable_fds();
  inheritable.insert({0, 1, 2});
  const std::set<int> planned = {0, 1, 2};

  struct worker_result {
    int finished = 0;
    std::vector<std::string> wrong;
    std::string failure;
  };
  std::vector<worker_result> results(thread_count);
  std::atomic<bool> stop{false};

  // More descriptors coming and going on other threads, all close-on-exec.
  auto churn = [&stop] {
    while (!stop.load(std::memory_order_relaxed)) {
      auto p = kin::make_pipe();
      auto s = kin::make_socketpair();
      kin::unique_fd d(::fcntl(0, F_DUPFD_CLOEXEC, 3));
      kin::unique_fd n(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    }
  };
  auto work = [&](int t) {
    auto& r = results[static_cast<std::size_t>(t)];
    try {
      kin::loop l;
      for (int i = 0; i < spawns_per_thread; ++i) {
        kin::spawn_options o;
        o.file = child_path();
        o.args = {"kin-test-child", "list-fds"};
        o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::ignore()};
        o.close_other_fds = (i + t) % 2 == 0;
        std::string out;
        bool eof = false;
        int calls = 0;
        auto p = kin::spawn(l, o);
        if (!p) {
          r.failure = p.error().message();
          return;
        }
        auto reading = p->stdout_stream()->read_start(
            [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
              if (ec) {
                eof = true;
                return;
              }
              out += kin_test::text_of(data);
            });
        if (!reading) eof = true;
        p->on_exit([&](std::error_code, int, int) { ++calls; });
        const auto finished = [&] { return eof && calls > 0; };
        const auto reaped = [&] { return calls > 0; };
        if (!run_until(l, finished, 20s)) {
          (void)p->kill(SIGKILL);
          run_until(l, reaped, 5s);
          r.failure = "a child did not finish";
          return;
        }
        if (numbers_of(out) != (o.close_other_fds ? planned : inheritable)) {
          r.wrong.push_back(std::string(o.close_other_fds ? "closing" : "not closing") +
                            ", listed:\n" + out);
        }
        ++r.finished;
        // A short-lived loop: kin's own descriptors (epoll, eventfd) come and go too.
        kin::loop extra;
      }
    } catch (const std::exception& e) {
      r.failure = e.what();
    }
  };

  std::vector<std::thread> churners;
  for (int i = 0; i < 2; ++i) churners.emplace_back(churn);
  std::vector<std::thread> workers;
  for (int t = 0; t < thread_count; ++t) workers.emplace_back(work, t);
  for (auto& w : workers) w.join();
  stop = true;
  for (auto& c : churners) c.join();

  for (int t = 0; t < thread_count; ++t) {
    const auto& r = results[static_cast<std::size_t>(t)];
    INFO("thread " << t << ": " << r.failure);
    CHECK(r.failure.empty());
    CHECK(r.finished == spawns_per_thread);
    INFO("first wrong child: " << (r.wrong.empty() ? std::string() : r.wrong.front()));
    CHECK(r.wrong.empty());
  }
}
