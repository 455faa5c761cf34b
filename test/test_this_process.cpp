// Tests of kin::this_process: ids and arguments, the environment store (its round trips, the
// names and values it refuses, and its consistency for children spawned while eight threads
// change it), the monotonic clock, CPU time, resident memory and uptime. Children here are
// /usr/bin/env, printing the environment they got.
#include "catch.hpp"

#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>
#include <kin/this_process.hpp>

#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"
#include "helpers/process_state.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

using kin_test::leak_guard;
using namespace std::chrono_literals;
using namespace std::string_view_literals;
using env_entries = std::vector<std::pair<std::string, std::string>>;

namespace {

// When the test binary was loaded, by this_process's own clock: uptime() must count from
// earlier.
const std::uint64_t loaded_at_ns = kin::this_process::hrtime();

// Removes the variables a test sets, however it ends.
class env_cleanup {
 public:
  explicit env_cleanup(std::vector<std::string> names) : names_(std::move(names)) { clear(); }
  env_cleanup(const env_cleanup&) = delete;
  env_cleanup& operator=(const env_cleanup&) = delete;
  ~env_cleanup() { clear(); }

 private:
  void clear() {
    for (const auto& name : names_) (void)kin::this_process::unset_env(name);
  }
  std::vector<std::string> names_;
};

bool has_entry(const env_entries& env, std::string_view name, std::string_view value) {
  return std::any_of(env.begin(), env.end(),
                     [&](const auto& e) { return e.first == name && e.second == value; });
}

bool has_name(const env_entries& env, std::string_view name) {
  return std::any_of(env.begin(), env.end(), [&](const auto& e) { return e.first == name; });
}

bool is_einval(const kin::result<void>& r) {
  return !r.has_value() && r.error() == std::errc::invalid_argument;
}

std::uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// ---- the hammer ------------------------------------------------------------------------------

constexpr int hammer_threads = 8;
// Values cycle through this many counters: glibc keeps every distinct string setenv was given
// (so that pointers getenv returned stay valid), and unbounded counters would grow it by
// millions of strings.
constexpr unsigned hammer_values = 1000;
const std::string hammer_prefix = "KIN_HAMMER_";

std::string hammer_name(int i) { return hammer_prefix + std::to_string(i); }

std::string hammer_value(int i, unsigned counter) {
  return std::to_string(i) + "-" + std::to_string(counter % hammer_values);
}

// "<i>-<counter>", with i the thread's number and a counter below hammer_values.
bool is_hammer_value(std::string_view value, int i) {
  const std::string prefix = std::to_string(i) + "-";
  if (value.substr(0, prefix.size()) != prefix) return false;
  const std::string_view digits = value.substr(prefix.size());
  unsigned counter = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), counter);
  return !digits.empty() && ec == std::errc() && end == digits.data() + digits.size() &&
         counter < hammer_values && std::to_string(counter) == digits;
}

// What is wrong with an environment seen while the hammer runs (a child's, or a snapshot), or
// "" if nothing: each KIN_HAMMER_<i> at most once with a well-formed value of thread i, and
// every other entry exactly as in `others` (the environment before the hammer started, as
// "NAME=VALUE" strings: PATH among them).
std::string wrong_in(const env_entries& env, const std::multiset<std::string>& others) {
  std::set<std::string> hammered;
  std::multiset<std::string> rest;
  for (const auto& [name, value] : env) {
    if (name.rfind(hammer_prefix, 0) != 0) {
      rest.insert(name + "=" + value);
      continue;
    }
    const std::string_view index = std::string_view(name).substr(hammer_prefix.size());
    int i = -1;
    const auto [end, ec] = std::from_chars(index.data(), index.data() + index.size(), i);
    if (ec != std::errc() || end != index.data() + index.size() || i < 0 || i >= hammer_threads) {
      return "unknown variable " + name;
    }
    if (!hammered.insert(name).second) return name + " appears twice";
    if (!is_hammer_value(value, i)) return name + " has the malformed value '" + value + "'";
  }
  if (rest != others) {
    for (const auto& e : rest) {
      if (others.count(e) != rest.count(e)) return "unexpected entry '" + e + "'";
    }
    for (const auto& e : others) {
      if (others.count(e) != rest.count(e)) return "missing entry '" + e + "'";
    }
  }
  return {};
}

// The output of `env -0`: NAME=VALUE entries, each ending in a NUL (values may hold newlines).
std::optional<env_entries> parse_env0(const std::string& out, std::string& why) {
  env_entries env;
  std::size_t start = 0;
  while (start < out.size()) {
    const std::size_t end = out.find('\0', start);
    if (end == std::string::npos) {
      why = "the output does not end with a NUL";
      return std::nullopt;
    }
    const std::string_view entry(out.data() + start, end - start);
    const std::size_t eq = entry.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      why = "the entry '" + std::string(entry) + "' is not NAME=VALUE";
      return std::nullopt;
    }
    env.emplace_back(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
    start = end + 1;
  }
  return env;
}

// The first failure the hammer threads saw, and how many there were (Catch2's assertions are
// for the test's own thread).
class failures {
 public:
  void add(const std::string& what) {
    std::lock_guard lock(mutex_);
    if (count_++ == 0) first_ = what;
  }
  [[nodiscard]] int count() const {
    std::lock_guard lock(mutex_);
    return count_;
  }
  [[nodiscard]] std::string first() const {
    std::lock_guard lock(mutex_);
    return first_;
  }

 private:
  mutable std::mutex mutex_;
  int count_ = 0;
  std::string first_;
};

// Thread i: sets, reads back, removes and snapshots KIN_HAMMER_<i> (which no other thread
// writes) until `stop`.
void hammer(int i, const std::atomic<bool>& stop, const std::multiset<std::string>& others,
            failures& failed, std::atomic<std::uint64_t>& rounds) {
  namespace tp = kin::this_process;
  const std::string name = hammer_name(i);
  std::optional<std::string> mine;
  for (unsigned counter = 0; !stop.load(std::memory_order_relaxed); ++counter) {
    const std::string value = hammer_value(i, counter);
    if (auto r = tp::set_env(name, value); !r) failed.add("set_env: " + r.error().message());
    mine = value;
    if (tp::get_env(name) != mine) failed.add(name + " does not read back as set");
    if (counter % 3 == 0) {
      if (auto r = tp::unset_env(name); !r) failed.add("unset_env: " + r.error().message());
      mine.reset();
      if (tp::get_env(name)) failed.add(name + " still set after unset_env");
    }
    if (counter % 8 == 0) {
      const env_entries env = tp::environment();
      if (auto why = wrong_in(env, others); !why.empty()) failed.add("snapshot: " + why);
      if (mine ? !has_entry(env, name, *mine) : has_name(env, name)) {
        failed.add("snapshot: " + name + " is not what this thread last made it");
      }
    }
    rounds.fetch_add(1, std::memory_order_relaxed);
  }
}

// Stops and joins the hammer threads, however the test ends.
class hammer_crew {
 public:
  hammer_crew(const std::multiset<std::string>& others, failures& failed) {
    for (int i = 0; i < hammer_threads; ++i) {
      threads_.emplace_back(hammer, i, std::cref(stop_), std::cref(others), std::ref(failed),
                            std::ref(rounds_));
    }
  }
  hammer_crew(const hammer_crew&) = delete;
  hammer_crew& operator=(const hammer_crew&) = delete;
  ~hammer_crew() { stop(); }

  void stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  [[nodiscard]] std::uint64_t rounds() const { return rounds_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> rounds_{0};
  std::vector<std::thread> threads_;
};

// How one `env -0` child ended and what it printed.
struct env_child {
  std::string out;
  bool eof = false;
  std::error_code read_error;
  int exits = 0;
  int exit_status = -2;
  int term_signal = -2;

  [[nodiscard]] bool done() const { return eof && exits > 0; }
};

// Runs `env -0` on `l` to the end (bounded); false if it did not finish in time.
bool run_env_child(kin::loop& l, const kin::spawn_options& o, env_child& c, std::string& why) {
  auto p = kin::spawn(l, o);
  if (!p) {
    why = "spawn failed: " + p.error().message();
    return false;
  }
  auto started = p->stdout_stream()->read_start(
      [&c](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (ec) {
          c.eof = true;
          if (ec != kin::errc::eof) c.read_error = ec;
          return;
        }
        c.out += kin_test::text_of(data);
      });
  if (!started) {
    c.eof = true;
    c.read_error = started.error();
  }
  p->on_exit([&c](std::error_code, int exit_status, int term_signal) {
    ++c.exits;
    c.exit_status = exit_status;
    c.term_signal = term_signal;
  });
  if (kin_test::run_all(l, 10s) && c.done()) return true;
  why = "the child did not finish within 10 s";
  (void)p->kill(SIGKILL);
  kin_test::run_until(
      l, [&] { return c.exits > 0; }, 5s);
  return false;
}

}  // namespace

// ---- ids and arguments -----------------------------------------------------------------------

TEST_CASE("pid and ppid are this process's ids", "[this_process]") {
  CHECK(kin::this_process::pid() == ::getpid());
  CHECK(kin::this_process::ppid() == ::getppid());
}

TEST_CASE("argv holds the test binary's arguments, its path first", "[this_process]") {
  const auto& args = kin::this_process::argv();
  REQUIRE_FALSE(args.empty());
  const std::string_view first = args[0];
  INFO("argv[0]: " << first);
  CHECK(first.size() >= 8);
  CHECK(first.substr(first.size() - std::min<std::size_t>(8, first.size())) == "kin-unit");
  // Read once: the same vector every time.
  CHECK(&kin::this_process::argv() == &args);
}

TEST_CASE("set_argv replaces the arguments, and what argv returned before stays valid",
          "[this_process]") {
  const auto& original = kin::this_process::argv();
  const std::vector<std::string> saved = original;
  const char* const chosen[] = {"first", "", "third words", nullptr};

  kin::this_process::set_argv(3, chosen);
  CHECK(kin::this_process::argv() == std::vector<std::string>{"first", "", "third words"});
  CHECK(original == saved);
  // A null pointer ends the vector before argc; a negative argc sets none.
  kin::this_process::set_argv(7, chosen);
  CHECK(kin::this_process::argv().size() == 3);
  kin::this_process::set_argv(-1, chosen);
  CHECK(kin::this_process::argv().empty());

  std::vector<const char*> back;
  for (const auto& a : saved) back.push_back(a.c_str());
  back.push_back(nullptr);
  kin::this_process::set_argv(static_cast<int>(saved.size()), back.data());
  CHECK(kin::this_process::argv() == saved);
}

// ---- the environment -------------------------------------------------------------------------

TEST_CASE("set_env, get_env and unset_env change the real environment, and environment() shows it",
          "[this_process]") {
  namespace tp = kin::this_process;
  leak_guard leaks;
  env_cleanup cleanup({"KIN_TP_ONE", "KIN_TP_TWO", "KIN_TP_EMPTY"});

  REQUIRE(tp::set_env("KIN_TP_ONE", "first value"));
  REQUIRE(tp::set_env("KIN_TP_TWO", "a=b=c\nnext line"));
  REQUIRE(tp::set_env("KIN_TP_EMPTY", ""));
  CHECK(tp::get_env("KIN_TP_ONE") == "first value");
  CHECK(tp::get_env("KIN_TP_TWO") == "a=b=c\nnext line");
  CHECK(tp::get_env("KIN_TP_EMPTY") == "");
  CHECK(tp::get_env("KIN_TP_NEVER_SET") == std::nullopt);
  // The process environment itself, as other code (and spawn) reads it.
  CHECK(std::string(::getenv("KIN_TP_ONE")) == "first value");

  REQUIRE(tp::set_env("KIN_TP_ONE", "second value"));
  CHECK(tp::get_env("KIN_TP_ONE") == "second value");

  REQUIRE(tp::unset_env("KIN_TP_TWO"));
  CHECK(tp::get_env("KIN_TP_TWO") == std::nullopt);
  CHECK(::getenv("KIN_TP_TWO") == nullptr);
  CHECK(tp::unset_env("KIN_TP_NEVER_SET"));

  const auto env = tp::environment();
  CHECK(has_entry(env, "KIN_TP_ONE", "second value"));
  CHECK(has_entry(env, "KIN_TP_EMPTY", ""));
  CHECK_FALSE(has_name(env, "KIN_TP_TWO"));
  CHECK(std::count_if(env.begin(), env.end(),
                      [](const auto& e) { return e.first == "KIN_TP_ONE"; }) == 1);
  // Entries split at the first '=': values may hold more.
  REQUIRE(tp::set_env("KIN_TP_TWO", "x=y"));
  CHECK(has_entry(tp::environment(), "KIN_TP_TWO", "x=y"));
  // Every entry of environ, in its order.
  std::vector<std::string> raw;
  for (const auto& [name, value] : tp::environment()) raw.push_back(name + "=" + value);
  std::vector<std::string> expected;
  for (char** e = environ; *e != nullptr; ++e) expected.emplace_back(*e);
  CHECK(raw == expected);
}

TEST_CASE("names and values the environment cannot hold are refused with EINVAL, changing nothing",
          "[this_process]") {
  namespace tp = kin::this_process;
  env_cleanup cleanup({"KIN_TP_KEPT", "KIN_TP_A"});
  REQUIRE(tp::set_env("KIN_TP_KEPT", "kept"));
  REQUIRE(tp::set_env("KIN_TP_A", "B=c"));
  const auto before = tp::environment();

  CHECK(is_einval(tp::set_env("", "value")));
  CHECK(is_einval(tp::set_env("KIN_TP_KEPT=x", "value")));
  CHECK(is_einval(tp::set_env("=KIN_TP_KEPT", "value")));
  CHECK(is_einval(tp::set_env("KIN_TP_KEPT\0tail"sv, "changed")));
  CHECK(is_einval(tp::set_env("KIN_TP_KEPT", "changed\0tail"sv)));
  CHECK(is_einval(tp::set_env("KIN_TP_NEW", "\0"sv)));
  CHECK(is_einval(tp::unset_env("")));
  CHECK(is_einval(tp::unset_env("KIN_TP_KEPT=")));
  CHECK(is_einval(tp::unset_env("KIN_TP_KEPT\0tail"sv)));
  CHECK(tp::environment() == before);
  CHECK(tp::get_env("KIN_TP_KEPT") == "kept");

  // Such names find nothing, rather than the variable they start with (getenv("KIN_TP_A=B")
  // would return the "c" of KIN_TP_A=B=c).
  CHECK(tp::get_env("") == std::nullopt);
  CHECK(tp::get_env("KIN_TP_A=B") == std::nullopt);
  CHECK(tp::get_env("KIN_TP_KEPT\0tail"sv) == std::nullopt);
}

TEST_CASE(
    "an env store hammered by 8 threads while another spawns 1 000 children (no crash, each "
    "child sees a consistent environment)",
    "[this_process]") {
  namespace tp = kin::this_process;
  // 3 to 6 s here (2 cores, busy with other builds); the suite's limit is 120 s.
  constexpr int children = 1000;
  REQUIRE(::access("/usr/bin/env", X_OK) == 0);
  leak_guard leaks;
  std::vector<std::string> names;
  for (int i = 0; i < hammer_threads; ++i) names.push_back(hammer_name(i));
  env_cleanup cleanup(names);

  std::multiset<std::string> others;
  for (const auto& [name, value] : tp::environment()) others.insert(name + "=" + value);
  REQUIRE(wrong_in(tp::environment(), others).empty());

  kin::spawn_options o;
  o.file = "/usr/bin/env";
  o.args = {"env", "-0"};
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::ignore()};

  failures failed;
  int wrong = 0;
  std::string first_wrong;
  std::set<std::string> hammered_seen;
  {
    kin::loop l;
    hammer_crew crew(others, failed);
    for (int n = 0; n < children; ++n) {
      env_child c;
      std::string why;
      const bool finished = run_env_child(l, o, c, why);
      if (!finished) {
        FAIL_CHECK("child " << n << ": " << why);
        break;
      }
      if (c.read_error || c.exit_status != 0) {
        why = "exit status " + std::to_string(c.exit_status) + ", signal " +
              std::to_string(c.term_signal) + ", read error " + c.read_error.message();
      } else if (auto env = parse_env0(c.out, why)) {
        why = wrong_in(*env, others);
        for (const auto& e : *env) {
          if (e.first.rfind(hammer_prefix, 0) == 0) hammered_seen.insert(e.first);
        }
      }
      if (!why.empty() && wrong++ == 0) first_wrong = "child " + std::to_string(n) + ": " + why;
    }
    crew.stop();
    INFO("hammer rounds: " << crew.rounds());
    // The hammer really ran alongside: every thread did many rounds.
    CHECK(crew.rounds() >= static_cast<std::uint64_t>(hammer_threads) * 100);
  }
  INFO(first_wrong);
  CHECK(wrong == 0);
  INFO(failed.first());
  CHECK(failed.count() == 0);
  // Children did see the variables being changed (so the test checked something).
  CHECK_FALSE(hammered_seen.empty());
}

// ---- time and resources ----------------------------------------------------------------------

TEST_CASE("hrtime never goes back and advances with time", "[this_process]") {
  std::uint64_t previous = kin::this_process::hrtime();
  int backwards = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    const std::uint64_t now = kin::this_process::hrtime();
    if (now < previous) ++backwards;
    previous = now;
  }
  CHECK(backwards == 0);

  const std::uint64_t before = kin::this_process::hrtime();
  std::this_thread::sleep_for(10ms);
  const std::uint64_t after = kin::this_process::hrtime();
  CHECK(after - before >= 10'000'000u);
}

TEST_CASE("cpu_usage counts the user time this process burns", "[this_process]") {
  const auto before = kin::this_process::cpu_usage();
  // 50 ms of this thread's CPU time, almost all of it in user mode: the clock is read (a
  // system call) only every 100 000 additions.
  const std::uint64_t start = thread_cpu_ns();
  volatile std::uint64_t sum = 0;
  while (thread_cpu_ns() - start < 50'000'000u) {
    for (int i = 0; i < 100'000; ++i) sum = sum + static_cast<std::uint64_t>(i);
  }
  const auto after = kin::this_process::cpu_usage();
  INFO("user " << before.user_us << " -> " << after.user_us << " us, system " << before.system_us
               << " -> " << after.system_us << " us");
  // The kernel's total is exact; its split between user and system is sampled, hence the
  // margin on user time alone.
  CHECK(after.user_us + after.system_us >= before.user_us + before.system_us + 49'000);
  CHECK(after.user_us >= before.user_us + 25'000);
  CHECK(after.system_us >= before.system_us);
}

TEST_CASE("memory_usage grows when 100 MB are touched, and shrinks when they are freed",
          "[this_process]") {
  constexpr std::size_t size = 100u << 20;
  const std::size_t before = kin::this_process::memory_usage();
  CHECK(before > 0);
  void* block = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(block != MAP_FAILED);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  auto* bytes = static_cast<volatile char*>(block);
  for (std::size_t i = 0; i < size; i += page) bytes[i] = 1;
  const std::size_t touched = kin::this_process::memory_usage();
  REQUIRE(::munmap(block, size) == 0);
  const std::size_t freed = kin::this_process::memory_usage();
  INFO("before " << before << ", touched " << touched << ", freed " << freed);
  CHECK(touched >= before + (90u << 20));
#if defined(__linux__)
  // The current resident set on Linux, not the peak.
  CHECK(freed + (90u << 20) <= touched);
#endif
}

TEST_CASE("uptime counts from before the test binary was loaded, and increases", "[this_process]") {
  const double first = kin::this_process::uptime();
  const double since_load = static_cast<double>(kin::this_process::hrtime() - loaded_at_ns) / 1e9;
  INFO("uptime " << first << " s, " << since_load << " s since the test binary was loaded");
  CHECK(first > 0);
  CHECK(first < 3600);
  // The process started before this binary's static objects were built (the start time is
  // kept to a clock tick, 10 ms)...
  CHECK(first >= since_load - 0.011);
  // ...and not long before: a wrong field of /proc/self/stat would give seconds since boot or
  // nonsense.
  CHECK(first < since_load + 60);
  std::this_thread::sleep_for(20ms);
  const double second = kin::this_process::uptime();
  CHECK(second >= first + 0.019);
}
