// Tests of kin::spawn_sync, exec and exec_file: statuses, signals and captured output; input fed
// while output is drained (no deadlock on 10 MB each way); timeouts (with grandchildren holding
// the pipes), the kill signal and its fallback, the grace before SIGKILL; the output limit per
// stream and over all streams; EPIPE on input; spawn failures; Node's exec semantics.
#include "catch.hpp"

#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>

#include "helpers/leak_guard.hpp"
#include "helpers/pattern.hpp"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

using namespace std::chrono_literals;
using kin_test::leak_guard;

using kin_test::child_path;

namespace {

// spawn_sync options that run the helper child with `args` (its behaviour and its own args).
kin::spawn_sync_options helper(std::vector<std::string> args) {
  REQUIRE_FALSE(child_path().empty());
  kin::spawn_sync_options o;
  o.file = child_path();
  o.args.push_back("kin-test-child");
  o.args.insert(o.args.end(), args.begin(), args.end());
  return o;
}

kin::spawn_sync_options shell(const std::string& script) {
  kin::spawn_sync_options o;
  o.file = "/bin/sh";
  o.args = {"sh", "-c", script};
  return o;
}

std::string pattern(int which, std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = kin_test::pattern_byte(which, i);
  return s;
}

std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               t0);
}

}  // namespace

TEST_CASE("spawn_sync returns the exit status and what the child wrote on each stream",
          "[spawn_sync]") {
  leak_guard leaks;
  auto r = kin::spawn_sync(shell("printf out; printf err >&2; exit 3"));
  CHECK_FALSE(r.error);
  CHECK(r.pid > 0);
  REQUIRE(r.exit_status.has_value());
  CHECK(*r.exit_status == 3);
  CHECK(r.term_signal == 0);
  CHECK(r.out() == "out");
  CHECK(r.err() == "err");
  REQUIRE(r.output.size() == 3);
  CHECK_FALSE(r.output[0].has_value());  // the input pipe is not captured
}

TEST_CASE("spawn_sync reports the signal that ended the child", "[spawn_sync]") {
  leak_guard leaks;
  auto r = kin::spawn_sync(helper({"kill-self", std::to_string(SIGUSR1)}));
  CHECK_FALSE(r.error);
  CHECK_FALSE(r.exit_status.has_value());
  CHECK(r.term_signal == SIGUSR1);
}

TEST_CASE("spawn_sync drains 10 MB on stdout and 10 MB on stderr written interleaved",
          "[spawn_sync]") {
  leak_guard leaks;
  constexpr std::size_t size = 10 * 1000 * 1000;
  auto o = helper({"interleave", std::to_string(size)});
  o.max_buffer = 0;
  auto r = kin::spawn_sync(o);
  CHECK_FALSE(r.error);
  CHECK(r.exit_status == 0);
  REQUIRE(r.out().size() == size);
  REQUIRE(r.err().size() == size);
  CHECK(r.out() == pattern(1, size));
  CHECK(r.err() == pattern(2, size));
}

TEST_CASE("spawn_sync feeds 10 MB of input to a child that echoes it slowly, without deadlock",
          "[spawn_sync]") {
  leak_guard leaks;
  constexpr std::size_t size = 10 * 1000 * 1000;
  auto o = helper({"slow-echo"});
  o.input = pattern(1, size);
  o.max_buffer = 0;
  auto r = kin::spawn_sync(o);
  CHECK_FALSE(r.error);
  CHECK(r.exit_status == 0);
  REQUIRE(r.out().size() == size);
  CHECK(r.out() == o.input);
}

TEST_CASE("spawn_sync gives the child an immediate end of file without input", "[spawn_sync]") {
  leak_guard leaks;
  auto r = kin::spawn_sync(helper({"echo-stdin"}));
  CHECK_FALSE(r.error);
  CHECK(r.exit_status == 0);
  CHECK(r.out().empty());
  CHECK(r.err() == "read 0 bytes\n");
}

TEST_CASE("spawn_sync reports EPIPE when the child exits without taking its input",
          "[spawn_sync]") {
  leak_guard leaks;
  auto o = helper({"exit-code", "0"});
  o.input.assign(4 * 1024 * 1024, 'x');  // more than any pipe buffer holds
  auto r = kin::spawn_sync(o);
  CHECK(r.error == std::errc::broken_pipe);
  CHECK(r.exit_status == 0);
}

TEST_CASE("spawn_sync reports a timeout or an overflow rather than the EPIPE before it",
          "[spawn_sync]") {
  leak_guard leaks;
  SECTION("timeout") {
    auto o = shell("exec 0<&-; exec sleep 10");
    o.input.assign(4 * 1024 * 1024, 'x');
    o.timeout = 300ms;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::timed_out);
  }
  SECTION("overflow") {
    auto o = shell("exec 0<&-; sleep 0.2; printf 0123456789; exec sleep 10");
    o.input.assign(4 * 1024 * 1024, 'x');
    o.max_buffer = 4;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::no_buffer_space);
  }
}

TEST_CASE("spawn_sync reports a child that cannot start, with no pid and no output",
          "[spawn_sync]") {
  leak_guard leaks;
  kin::spawn_sync_options o;
  o.file = "/nonexistent/kin-program";
  o.args = {"kin-program"};
  auto r = kin::spawn_sync(o);
  CHECK(r.error == std::errc::no_such_file_or_directory);
  CHECK(r.pid == 0);
  REQUIRE(r.failure.has_value());
  CHECK(r.failure->step == kin::spawn_step::exec);
  CHECK(r.failure->path == "/nonexistent/kin-program");
  CHECK_FALSE(r.exit_status.has_value());
  REQUIRE(r.output.size() == 3);
  for (const auto& out : r.output) CHECK_FALSE(out.has_value());

  SECTION("a bad working directory names the chdir step") {
    auto c = shell("true");
    c.cwd = "/nonexistent/dir";
    auto rc = kin::spawn_sync(c);
    CHECK(rc.error == std::errc::no_such_file_or_directory);
    REQUIRE(rc.failure.has_value());
    CHECK(rc.failure->step == kin::spawn_step::chdir);
  }
}

TEST_CASE("spawn_sync kills a child at its timeout and keeps what it wrote before",
          "[spawn_sync]") {
  leak_guard leaks;
  auto o = shell("echo before; exec sleep 10");
  o.timeout = 200ms;
  SECTION("with the default kill signal") {
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.term_signal == SIGTERM);
    CHECK(r.out() == "before\n");
  }
  SECTION("with SIGKILL") {
    o.kill_signal = SIGKILL;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.term_signal == SIGKILL);
  }
  SECTION("an invalid kill signal falls back to SIGKILL") {
    o.kill_signal = NSIG + 5;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.term_signal == SIGKILL);
    CHECK(r.pid > 0);
  }
}

TEST_CASE(
    "spawn_sync waits for a child that ignores the kill signal, or SIGKILLs it after "
    "the grace",
    "[spawn_sync]") {
  leak_guard leaks;
  // The child says "ready" once it ignores SIGTERM; a second is ample for that even under
  // sanitizers on a loaded machine (and a lost race shows as a missing "ready").
  auto o = helper({"ignore-term-and-sleep", "2500"});
  o.timeout = 1000ms;
  SECTION("without a grace, as Node: the child ends by itself") {
    auto r = kin::spawn_sync(o);
    CHECK(r.out() == "ready\n");
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.exit_status == 0);
    CHECK(r.term_signal == 0);
  }
  SECTION("with a grace") {
    o.kill_grace = 100ms;
    auto r = kin::spawn_sync(o);
    CHECK(r.out() == "ready\n");
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.term_signal == SIGKILL);
  }
}

TEST_CASE("spawn_sync returns within a second of the timeout while a grandchild holds the pipes",
          "[spawn_sync]") {
  leak_guard leaks;
  // The child (and so the grandchild) leads a process group of its own, so the test can kill
  // the grandchild afterwards.
  SECTION("the child is killed at the timeout") {
    auto o = shell("sleep 20 & echo started; exec sleep 20");
    o.process_group = 0;
    o.timeout = 300ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = kin::spawn_sync(o);
    const auto took = since(t0);
    REQUIRE(r.pid > 0);
    ::kill(-r.pid, SIGKILL);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.term_signal == SIGTERM);
    CHECK(r.out() == "started\n");
    CHECK(took < 1300ms);
  }
  SECTION("the child exited before the timeout") {
    auto o = shell("sleep 20 & echo started");
    o.process_group = 0;
    o.timeout = 300ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = kin::spawn_sync(o);
    const auto took = since(t0);
    REQUIRE(r.pid > 0);
    ::kill(-r.pid, SIGKILL);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.exit_status == 0);
    CHECK(r.out() == "started\n");
    CHECK(took >= 300ms);
    CHECK(took < 1300ms);
  }
}

TEST_CASE("spawn_sync's max_buffer per stream keeps exactly the limit and names the stream",
          "[spawn_sync]") {
  leak_guard leaks;
  SECTION("stdout") {
    auto o = shell("printf 0123456789; exec sleep 10");
    o.max_buffer = 4;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::no_buffer_space);
    CHECK(r.overflow_fd == 1);
    CHECK(r.out() == "0123");
    CHECK(r.term_signal == SIGTERM);
  }
  SECTION("stderr") {
    auto o = shell("printf 0123456789 >&2; exec sleep 10");
    o.max_buffer = 4;
    auto r = kin::spawn_sync(o);
    CHECK(r.error == std::errc::no_buffer_space);
    CHECK(r.overflow_fd == 2);
    CHECK(r.err() == "0123");
  }
  SECTION("each stream below the limit is no error") {
    auto o = shell("printf abc; printf def >&2");
    o.max_buffer = 4;
    auto r = kin::spawn_sync(o);
    CHECK_FALSE(r.error);
    CHECK(r.out() == "abc");
    CHECK(r.err() == "def");
  }
  SECTION("exactly the limit is no error") {
    auto o = shell("printf abcd");
    o.max_buffer = 4;
    auto r = kin::spawn_sync(o);
    CHECK_FALSE(r.error);
    CHECK(r.out() == "abcd");
  }
}

TEST_CASE("spawn_sync's max_buffer over all streams counts them together, as Node's spawnSync",
          "[spawn_sync]") {
  leak_guard leaks;
  auto o = shell("printf abc; sleep 0.1; printf def >&2; exec sleep 10");
  o.max_buffer = 4;
  o.limit = kin::buffer_limit::all_streams;
  auto r = kin::spawn_sync(o);
  CHECK(r.error == std::errc::no_buffer_space);
  CHECK(r.overflow_fd == 2);
  CHECK(r.out() == "abc");
  CHECK(r.err() == "def");  // the read that passed the limit is kept whole
  CHECK(r.term_signal == SIGTERM);
}

TEST_CASE("spawn_sync captures every pipe the child writes, and only those", "[spawn_sync]") {
  leak_guard leaks;
  auto o = helper({"write-fd", "3", "three", "1", "one"});
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::ignore(), kin::stdio::pipe()};
  auto r = kin::spawn_sync(o);
  CHECK_FALSE(r.error);
  REQUIRE(r.output.size() == 4);
  CHECK_FALSE(r.output[0].has_value());
  CHECK(r.output[1] == std::optional<std::string>("one\n"));
  CHECK_FALSE(r.output[2].has_value());
  CHECK(r.output[3] == std::optional<std::string>("three\n"));
}

TEST_CASE("exec_sync runs a command through the shell, with Node's exec errors", "[spawn_sync]") {
  leak_guard leaks;
  SECTION("success") {
    auto r = kin::exec_sync("echo \"$0\" | tr a-z A-Z; echo err >&2");
    CHECK_FALSE(r.error);
    CHECK(r.exit_status == 0);
    CHECK(r.out == "/BIN/SH\n");
    CHECK(r.err == "err\n");
  }
  SECTION("a non-zero exit status is an error") {
    auto r = kin::exec_sync("exit 4");
    CHECK(r.error == kin::errc::child_failed);
    CHECK(r.exit_status == 4);
    CHECK_FALSE(r.killed);
  }
  SECTION("a signal is an error") {
    auto r = kin::exec_sync("kill -USR2 $$");
    CHECK(r.error == kin::errc::child_signalled);
    CHECK(r.term_signal == SIGUSR2);
    CHECK_FALSE(r.killed);
  }
  SECTION("input and environment") {
    kin::exec_options o;
    o.input = "from input";
    o.env = {{"KIN_EXEC_VAR", "from env"}};
    auto r = kin::exec_sync("cat; printf ' %s' \"$KIN_EXEC_VAR\"", o);
    CHECK_FALSE(r.error);
    CHECK(r.out == "from input from env");
  }
  SECTION("the default max_buffer is 1 MiB per stream, and the output is cut there") {
    auto r = kin::exec_sync("head -c 3000000 /dev/zero; exec sleep 10");
    CHECK(r.error == std::errc::no_buffer_space);
    CHECK(r.overflow_fd == 1);
    CHECK(r.out.size() == 1024 * 1024);
    CHECK(r.killed);
    CHECK(r.term_signal == SIGTERM);
  }
  SECTION("a timeout kills the child: the signal is the error, as in Node") {
    kin::exec_options o;
    o.timeout = 200ms;
    o.kill_signal = SIGINT;
    auto r = kin::exec_sync("exec sleep 10", o);
    CHECK(r.error == kin::errc::child_signalled);
    CHECK(r.timed_out);
    CHECK(r.killed);
    CHECK(r.term_signal == SIGINT);
  }
  SECTION("a child that survives the timeout's signal and exits 0 succeeded, as in Node") {
    kin::exec_options o;
    o.timeout = 300ms;
    auto r = kin::exec_sync("trap '' TERM; echo ready; sleep 1", o);
    CHECK_FALSE(r.error);
    CHECK(r.timed_out);
    CHECK(r.killed);
    CHECK(r.exit_status == 0);
  }
}

TEST_CASE("exec_file_sync runs a program without a shell", "[spawn_sync]") {
  leak_guard leaks;
  auto r = kin::exec_file_sync("echo", {"echo", "$HOME", "a  b"});
  CHECK_FALSE(r.error);
  CHECK(r.out == "$HOME a  b\n");

  auto missing = kin::exec_file_sync("kin-no-such-program", {"kin-no-such-program"});
  CHECK(missing.error == std::errc::no_such_file_or_directory);
  REQUIRE(missing.failure.has_value());
  CHECK(missing.failure->step == kin::spawn_step::exec);
  CHECK(missing.pid == 0);
}

TEST_CASE("exec calls back once with the output, even when the process object is dropped",
          "[spawn_sync]") {
  leak_guard leaks;
  kin::loop l;
  std::vector<kin::exec_result> results;
  {
    auto p = kin::exec(l, "printf kept; printf away >&2", {},
                       [&](kin::exec_result r) { results.push_back(std::move(r)); });
    REQUIRE(p);
    CHECK(p->pid() > 0);
    CHECK(p->stdout_stream() == nullptr);  // exec owns the pipes
  }
  l.run();
  REQUIRE(results.size() == 1);
  CHECK_FALSE(results[0].error);
  CHECK(results[0].out == "kept");
  CHECK(results[0].err == "away");
}

TEST_CASE("exec's process can be killed, and a timeout kills it", "[spawn_sync]") {
  leak_guard leaks;
  kin::loop l;
  std::vector<kin::exec_result> results;
  auto on_done = [&](kin::exec_result r) { results.push_back(std::move(r)); };
  auto killed = kin::exec_file(l, "sleep", {"sleep", "10"}, {}, on_done);
  REQUIRE(killed);
  REQUIRE(killed->kill(SIGKILL));
  kin::exec_options o;
  o.timeout = 100ms;
  auto timed = kin::exec_file(l, "sleep", {"sleep", "10"}, o, on_done);
  REQUIRE(timed);
  l.run();
  REQUIRE(results.size() == 2);
  CHECK(results[0].error == kin::errc::child_signalled);
  CHECK(results[0].term_signal == SIGKILL);
  CHECK(results[0].killed);  // by the caller: Node's child.killed counts that too
  CHECK_FALSE(results[0].timed_out);
  CHECK(results[1].error == kin::errc::child_signalled);
  CHECK(results[1].timed_out);
  CHECK(results[1].killed);
  CHECK(results[1].term_signal == SIGTERM);
}

TEST_CASE("exec calls back through a loop that was moved while the child ran", "[spawn_sync]") {
  leak_guard leaks;
  std::vector<kin::exec_result> results;
  kin::loop first;
  kin::loop second;
  {
    auto p = kin::exec(first, "printf moved", {},
                       [&](kin::exec_result r) { results.push_back(std::move(r)); });
    REQUIRE(p);
    second = std::move(first);
    second.run();
  }
  REQUIRE(results.size() == 1);
  CHECK_FALSE(results[0].error);
  CHECK(results[0].out == "moved");
}

TEST_CASE("exec's result has no error for a child that exits 0, and killed stays false",
          "[spawn_sync]") {
  leak_guard leaks;
  auto r = kin::exec_file_sync("true", {"true"});
  CHECK_FALSE(r.error);
  CHECK_FALSE(r.killed);
  CHECK_FALSE(r.timed_out);
}

TEST_CASE("exec reports a program that cannot start at once, and never calls back",
          "[spawn_sync]") {
  leak_guard leaks;
  kin::loop l;
  int calls = 0;
  auto p = kin::exec_file(l, "/nonexistent/x", {"x"}, {}, [&](kin::exec_result) { ++calls; });
  REQUIRE_FALSE(p);
  CHECK(p.error().code == std::errc::no_such_file_or_directory);
  l.run();
  CHECK(calls == 0);
}
