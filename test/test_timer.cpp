// Tests of kin::timer: ordering, repetition, cancellation and restarts from callbacks, errors.
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/loop.hpp>

#include <algorithm>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

using namespace std::chrono_literals;

TEST_CASE("a one-shot timer fires once, no earlier than its timeout", "[timer]") {
  kin::loop l;
  int fired = 0;
  std::chrono::steady_clock::time_point when;
  kin::timer t(l, [&] {
    ++fired;
    when = std::chrono::steady_clock::now();
  });
  const auto start = std::chrono::steady_clock::now();
  l.update_time();
  REQUIRE(t.start(30ms));
  CHECK(t.is_active());
  CHECK(t.due_in() > 0ns);
  CHECK(t.due_in() <= 30ms);
  CHECK_FALSE(l.run());
  CHECK(fired == 1);
  CHECK(when - start >= 30ms);
  CHECK_FALSE(t.is_active());
  CHECK(t.due_in() == 0ns);
}

TEST_CASE("a repeating timer fires until stopped from its callback", "[timer]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] {
    if (++fired == 5) t.stop();
  });
  REQUIRE(t.start(1ms, 2ms));
  CHECK(t.repeat() == 2ms);
  CHECK_FALSE(l.run());
  CHECK(fired == 5);
}

TEST_CASE("set_repeat(0) from a callback makes the already scheduled firing the last", "[timer]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] {
    // The next firing was scheduled with the old interval before this callback ran.
    if (++fired == 2) REQUIRE(t.set_repeat(0ns));
  });
  REQUIRE(t.start(0ms, 1ms));
  CHECK_FALSE(l.run());
  CHECK(fired == 3);
}

TEST_CASE(
    "100000 timers with random deadlines fire in deadline order, ties in start order, "
    "and cancelled ones never fire",
    "[timer]") {
  kin::loop l;
  constexpr int n = 100'000;
  std::mt19937 rng(20261122);
  std::uniform_int_distribution<int> timeout_ms(0, 40);
  std::vector<int> timeouts(n);
  std::vector<std::pair<int, int>> fired;  // (timeout, start index)
  fired.reserve(n);
  std::vector<std::unique_ptr<kin::timer>> timers;
  timers.reserve(n);
  for (int i = 0; i < n; ++i) {
    timeouts[static_cast<size_t>(i)] = timeout_ms(rng);
    timers.push_back(std::make_unique<kin::timer>(
        l, [&fired, &timeouts, i] { fired.emplace_back(timeouts[static_cast<size_t>(i)], i); }));
  }
  // All started within one iteration, so equal timeouts mean equal deadlines.
  for (int i = 0; i < n; ++i) {
    REQUIRE(timers[static_cast<size_t>(i)]->start(
        std::chrono::milliseconds(timeouts[static_cast<size_t>(i)])));
  }
  // Cancel every seventh timer, and restart every eleventh (which moves it after its peers).
  int expected = 0;
  for (int i = 0; i < n; ++i) {
    if (i % 7 == 0) {
      timers[static_cast<size_t>(i)]->stop();
    } else {
      ++expected;
    }
  }
  CHECK_FALSE(l.run());
  REQUIRE(static_cast<int>(fired.size()) == expected);
  for (const auto& f : fired) CHECK(f.second % 7 != 0);
  CHECK(std::is_sorted(fired.begin(), fired.end()));  // by timeout, then start index
  CHECK(std::adjacent_find(fired.begin(), fired.end()) == fired.end());
}

TEST_CASE("restarting an armed timer moves its deadline and its place among ties", "[timer]") {
  kin::loop l;
  std::vector<int> order;
  kin::timer a(l, [&] { order.push_back(1); });
  kin::timer b(l, [&] { order.push_back(2); });
  REQUIRE(a.start(5ms));
  REQUIRE(b.start(5ms));
  REQUIRE(a.start(5ms));  // now started after b
  CHECK_FALSE(l.run());
  CHECK(order == std::vector<int>{2, 1});
}

TEST_CASE("a timer stopped by an earlier timer's callback in the same iteration never fires",
          "[timer]") {
  kin::loop l;
  int second_fired = 0;
  kin::timer second(l, [&] { ++second_fired; });
  kin::timer first(l, [&] { second.stop(); });
  REQUIRE(first.start(2ms));
  REQUIRE(second.start(2ms));  // same deadline, later start: due in the same iteration
  CHECK_FALSE(l.run());
  CHECK(second_fired == 0);
}

TEST_CASE("a timer can destroy itself and restart others from its callback", "[timer]") {
  kin::loop l;
  int other_fired = 0;
  kin::timer other(l, [&] { ++other_fired; });
  auto self = std::make_unique<kin::timer>(l);
  self->set_callback([&] {
    REQUIRE(other.start(1ms));
    self.reset();
  });
  REQUIRE(self->start(1ms, 1ms));
  CHECK_FALSE(l.run());
  CHECK(self == nullptr);
  CHECK(other_fired == 1);
}

TEST_CASE("a zero-timeout timer restarted from its callback fires once per iteration", "[timer]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] {
    REQUIRE(t.start(0ms));
    ++fired;
  });
  REQUIRE(t.start(0ms));
  for (int i = 1; i <= 5; ++i) {
    CHECK(l.run_once());
    CHECK(fired == i);
  }
  t.stop();
}

TEST_CASE("negative durations and a missing callback are errors that leave the timer idle",
          "[timer]") {
  kin::loop l;
  kin::timer t(l, [] {});
  auto r = t.start(-1ms);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  r = t.start(1ms, -5ms);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  CHECK_FALSE(t.is_active());
  r = t.set_repeat(-1ns);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  kin::timer silent(l);
  r = silent.start(1ms);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("a huge timeout saturates instead of wrapping around", "[timer]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] { ++fired; });
  REQUIRE(t.start(std::chrono::nanoseconds::max()));
  CHECK(t.due_in() > 24h * 365 * 100);
  CHECK(l.run_nowait());
  CHECK(fired == 0);
  t.stop();
}

TEST_CASE("an unref'd timer does not keep the loop alive but fires while it runs", "[timer]") {
  kin::loop l;
  int background = 0, foreground = 0;
  kin::timer bg(l, [&] { ++background; });
  kin::timer fg(l, [&] { ++foreground; });
  REQUIRE(bg.start(1ms, 1ms));
  bg.unref();
  CHECK_FALSE(l.run());
  CHECK(background == 0);
  REQUIRE(fg.start(20ms));
  CHECK_FALSE(l.run());
  CHECK(foreground == 1);
  CHECK(background >= 1);
  bg.stop();
}

TEST_CASE("now() is cached for the iteration and advances between iterations", "[timer]") {
  kin::loop l;
  std::vector<std::chrono::steady_clock::time_point> seen;
  kin::timer t(l, [&] {
    const auto a = l.now();
    const auto spin_until = std::chrono::steady_clock::now() + 2ms;
    while (std::chrono::steady_clock::now() < spin_until) {
    }
    CHECK(l.now() == a);  // unchanged within the callback
    l.update_time();
    CHECK(l.now() > a);
    seen.push_back(a);
    if (seen.size() == 2) t.stop();
  });
  REQUIRE(t.start(0ms, 1ms));
  CHECK_FALSE(l.run());
  REQUIRE(seen.size() == 2);
  CHECK(seen[1] > seen[0]);
}

TEST_CASE("a timer started by an I/O callback after a long wait counts from the wait's end",
          "[timer]") {
  kin::loop l;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
  kin::unique_fd read_end(p[0]);
  kin::unique_fd write_end(p[1]);
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point fired;
  kin::timer t(l, [&] { fired = std::chrono::steady_clock::now(); });
  kin::io_watcher w(l, read_end.get(), [&](kin::io_events) {
    char c = 0;
    (void)::read(read_end.get(), &c, 1);
    started = std::chrono::steady_clock::now();
    REQUIRE(t.start(100ms));
    w.stop();
  });
  REQUIRE(w.start(kin::io_events::readable));
  // Nothing else to do: the loop sleeps in its wait until the byte comes, 300 ms later.
  std::thread writer([&] {
    std::this_thread::sleep_for(300ms);
    (void)::write(write_end.get(), "x", 1);
  });
  CHECK_FALSE(l.run());
  writer.join();
  CHECK(fired - started >= 100ms);
}

TEST_CASE("a timer that falls due while I/O callbacks run fires in that iteration", "[timer]") {
  // The loop reads its clock after the wait, before the I/O callbacks; when timers are armed it
  // reads it again after them, so a timer they made due is not put off by another wait.
  kin::loop l;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
  kin::unique_fd read_end(p[0]);
  kin::unique_fd write_end(p[1]);
  int fired = 0;
  kin::timer t(l, [&] { ++fired; });
  kin::io_watcher w(l, read_end.get(), [&](kin::io_events) {
    char c = 0;
    (void)::read(read_end.get(), &c, 1);
    w.stop();
    const auto spin_until = std::chrono::steady_clock::now() + 60ms;  // a slow callback
    while (std::chrono::steady_clock::now() < spin_until) {
    }
  });
  REQUIRE(w.start(kin::io_events::readable));
  REQUIRE(::write(write_end.get(), "x", 1) == 1);
  l.update_time();
  REQUIRE(t.start(20ms));
  l.run_once();  // the byte is there: the wait returns at once, the callback takes 60 ms
  CHECK(fired == 1);
}
