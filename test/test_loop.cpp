// Tests of kin::loop: fd watchers, run modes, ref/unref, post(), stop(), keep_alive, and the
// assertion on destroying a loop that still has handles.
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/signal.hpp>

#include "helpers/process_state.hpp"

#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

kin::pipe_ends nonblocking_pipe() {
  auto p = kin::make_pipe(kin::fd_mode::nonblocking);
  REQUIRE(p);
  return std::move(*p);
}

}  // namespace

TEST_CASE("a loop with no work returns from run() at once", "[loop]") {
  kin::loop l;
  CHECK_FALSE(l.is_alive());
  CHECK_FALSE(l.run());
  CHECK_FALSE(l.run_once());
  CHECK_FALSE(l.run_nowait());
}

TEST_CASE("loop::create reports success as a movable loop", "[loop]") {
  auto created = kin::loop::create();
  REQUIRE(created);
  kin::loop l = std::move(*created);
  int fired = 0;
  kin::timer t(l, [&] { ++fired; });
  REQUIRE(t.start(0ms));
  CHECK_FALSE(l.run());
  CHECK(fired == 1);
}

TEST_CASE("every descriptor a loop creates is close-on-exec", "[loop]") {
  const auto before = kin_test::open_fds();
  kin::loop l;
  kin::signal_watcher s(l, [](int) {});
  REQUIRE(s.start(SIGUSR1));
  std::set<int> created;
  for (int fd : kin_test::open_fds()) {
    if (!before.count(fd)) created.insert(fd);
  }
  CHECK(created.size() >= 3);  // poll instance, wakeup, signal self-pipe
  for (int fd : created) {
    INFO("fd " << fd << " -> " << kin_test::fd_target(fd));
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  }
  // And so an exec'd child sees none of them.
  auto child = kin_test::run_child({"list-fds"});
  REQUIRE(child.exited);
  REQUIRE(child.status == 0);
  std::istringstream lines(child.out);
  int fd;
  while (lines >> fd) CHECK_FALSE(created.count(fd));
}

TEST_CASE("an io watcher reports readable and writable readiness", "[loop]") {
  kin::loop l;
  auto p = nonblocking_pipe();
  std::vector<kin::io_events> seen;
  kin::io_watcher reader(l, p.read.get(), [&](kin::io_events ev) {
    seen.push_back(ev);
    char buf[16];
    (void)::read(p.read.get(), buf, sizeof buf);
    // Asking for nothing stops the watcher.
    REQUIRE(reader.start(kin::io_events::none));
  });
  REQUIRE(reader.start(kin::io_events::readable));
  CHECK(reader.is_active());
  CHECK(reader.interest() == kin::io_events::readable);
  REQUIRE(::write(p.write.get(), "a", 1) == 1);
  CHECK_FALSE(l.run());
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == kin::io_events::readable);
  CHECK_FALSE(reader.is_active());

  int writable = 0;
  kin::io_watcher writer(l, p.write.get(), [&](kin::io_events ev) {
    CHECK(ev == kin::io_events::writable);
    ++writable;
    writer.stop();
  });
  REQUIRE(writer.start(kin::io_events::writable));
  CHECK_FALSE(l.run());
  CHECK(writable == 1);
}

TEST_CASE("a watcher's interest can change from inside its callback", "[loop]") {
  kin::loop l;
  auto sp = kin::make_socketpair(kin::socket_type::stream, kin::fd_mode::nonblocking);
  REQUIRE(sp);
  const int fd = sp->first.get();
  std::vector<kin::io_events> seen;
  kin::io_watcher w(l, fd, [&](kin::io_events ev) {
    seen.push_back(ev);
    if (seen.size() == 1) {
      // The socket was writable; from now on wait for data instead.
      REQUIRE(w.start(kin::io_events::readable));
      REQUIRE(::write(sp->second.get(), "z", 1) == 1);
    } else {
      w.stop();
    }
  });
  REQUIRE(w.start(kin::io_events::writable));
  CHECK_FALSE(l.run());
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == kin::io_events::writable);
  CHECK(seen[1] == kin::io_events::readable);
}

TEST_CASE("an error or hang-up is reported to the watcher's interest", "[loop]") {
  kin::loop l;
  auto p = nonblocking_pipe();
  std::optional<kin::io_events> seen;
  kin::io_watcher w(l, p.read.get(), [&](kin::io_events ev) {
    seen = ev;
    w.stop();
  });
  REQUIRE(w.start(kin::io_events::readable));
  p.write.reset();  // the reader sees a hang-up
  CHECK_FALSE(l.run());
  REQUIRE(seen);
  CHECK(*seen == kin::io_events::readable);
}

TEST_CASE("a watcher destroyed by another watcher's callback in the same batch is not called",
          "[loop]") {
  kin::loop l;
  auto a = nonblocking_pipe();
  auto b = nonblocking_pipe();
  std::unique_ptr<kin::io_watcher> wa, wb;
  int calls_a = 0, calls_b = 0;
  wa = std::make_unique<kin::io_watcher>(l, a.read.get(), [&](kin::io_events) {
    ++calls_a;
    wb.reset();
    wa->stop();
  });
  wb = std::make_unique<kin::io_watcher>(l, b.read.get(), [&](kin::io_events) {
    ++calls_b;
    wa.reset();
    wb->stop();
  });
  REQUIRE(wa->start(kin::io_events::readable));
  REQUIRE(wb->start(kin::io_events::readable));
  // Both are ready before the loop polls, so both events come back in one epoll_wait batch.
  REQUIRE(::write(a.write.get(), "a", 1) == 1);
  REQUIRE(::write(b.write.get(), "b", 1) == 1);
  CHECK_FALSE(l.run());
  CHECK(calls_a + calls_b == 1);
  wa.reset();
  wb.reset();
}

TEST_CASE("a watcher stopped by another watcher's callback in the same batch is not called",
          "[loop]") {
  kin::loop l;
  auto a = nonblocking_pipe();
  auto b = nonblocking_pipe();
  int calls_a = 0, calls_b = 0;
  kin::io_watcher wb(l, b.read.get(), nullptr);
  kin::io_watcher wa(l, a.read.get(), [&](kin::io_events) {
    ++calls_a;
    wb.stop();
    wa.stop();
  });
  wb.set_callback([&](kin::io_events) {
    ++calls_b;
    wa.stop();
    wb.stop();
  });
  REQUIRE(wa.start(kin::io_events::readable));
  REQUIRE(wb.start(kin::io_events::readable));
  REQUIRE(::write(a.write.get(), "a", 1) == 1);
  REQUIRE(::write(b.write.get(), "b", 1) == 1);
  CHECK_FALSE(l.run());
  CHECK(calls_a + calls_b == 1);
}

TEST_CASE("a watcher can destroy itself from its callback", "[loop]") {
  kin::loop l;
  auto p = nonblocking_pipe();
  int calls = 0;
  auto w = std::make_unique<kin::io_watcher>(l, p.read.get(), nullptr);
  w->set_callback([&](kin::io_events) {
    ++calls;
    w.reset();
  });
  REQUIRE(w->start(kin::io_events::readable));
  REQUIRE(::write(p.write.get(), "a", 1) == 1);
  CHECK_FALSE(l.run());
  CHECK(calls == 1);
  CHECK(w == nullptr);
}

TEST_CASE("a watcher keeps working when its fd is closed and the number reopened", "[loop]") {
  kin::loop l;
  auto first = nonblocking_pipe();
  const int number = first.read.get();
  int calls = 0;
  kin::io_watcher w(l, number, [&](kin::io_events) {
    ++calls;
    char buf[8];
    (void)::read(number, buf, sizeof buf);
    w.stop();
  });
  REQUIRE(w.start(kin::io_events::readable));
  first.read.reset();  // closing unregisters it from the kernel's interest set

  auto second = nonblocking_pipe();
  // Put the new pipe's read end at the old number.
  if (second.read.get() != number) {
    REQUIRE(::dup3(second.read.get(), number, O_CLOEXEC) == number);
    second.read.reset(number);
  }
  // The watcher still believes it is active; start() finds the number re-registered as new.
  REQUIRE(w.start(kin::io_events::readable));
  REQUIRE(::write(second.write.get(), "n", 1) == 1);
  CHECK_FALSE(l.run());
  CHECK(calls == 1);

  SECTION("and a new watcher can take the reopened number") {
    w.stop();
    kin::io_watcher again(l, number, [&](kin::io_events) {
      ++calls;
      char buf[8];
      (void)::read(number, buf, sizeof buf);
      again.stop();
    });
    REQUIRE(again.start(kin::io_events::readable));
    REQUIRE(::write(second.write.get(), "m", 1) == 1);
    CHECK_FALSE(l.run());
    CHECK(calls == 2);
  }
}

TEST_CASE("watching a bad descriptor fails with a clear error and leaves the loop idle", "[loop]") {
  kin::loop l;
  auto none = [](kin::io_events) {};
  SECTION("a number that is not open") {
    kin::io_watcher w(l, 987654, none);
    auto r = w.start(kin::io_events::readable);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::bad_file_descriptor);
    CHECK_FALSE(w.is_active());
  }
  SECTION("a negative number") {
    kin::io_watcher w(l, -1, none);
    auto r = w.start(kin::io_events::readable);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
  SECTION("a regular file, which epoll cannot poll") {
    kin::unique_fd f(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    REQUIRE(f);
    kin::io_watcher w(l, f.get(), none);
    auto r = w.start(kin::io_events::readable);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_not_permitted);
  }
  SECTION("a descriptor another watcher of this loop already has") {
    auto p = nonblocking_pipe();
    kin::io_watcher first(l, p.read.get(), none);
    kin::io_watcher second(l, p.read.get(), none);
    REQUIRE(first.start(kin::io_events::readable));
    auto r = second.start(kin::io_events::readable);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::file_exists);
    first.stop();
  }
  CHECK_FALSE(l.is_alive());
  CHECK_FALSE(l.run());
}

TEST_CASE("an unref'd watcher does not keep the loop running, a ref'd one does", "[loop]") {
  kin::loop l;
  auto p = nonblocking_pipe();
  kin::io_watcher w(l, p.read.get(), [](kin::io_events) {});
  REQUIRE(w.start(kin::io_events::readable));
  CHECK(l.is_alive());
  w.unref();
  CHECK_FALSE(w.has_ref());
  CHECK_FALSE(l.is_alive());
  CHECK_FALSE(l.run());
  w.ref();
  CHECK(l.is_alive());
  CHECK(l.run_nowait());  // nothing ready: returns at once, work remains
  w.stop();
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("run_once waits for one event; run_nowait does not wait", "[loop]") {
  kin::loop l;
  auto p = nonblocking_pipe();
  int calls = 0;
  kin::io_watcher w(l, p.read.get(), [&](kin::io_events) {
    ++calls;
    char c;
    (void)::read(p.read.get(), &c, 1);
  });
  REQUIRE(w.start(kin::io_events::readable));
  CHECK(l.run_nowait());
  CHECK(calls == 0);
  std::thread writer([&] {
    std::this_thread::sleep_for(20ms);
    REQUIRE(::write(p.write.get(), "x", 1) == 1);
  });
  CHECK(l.run_once());  // blocks until the writer's byte
  writer.join();
  CHECK(calls == 1);
  w.stop();
}

TEST_CASE("post() from 8 threads runs every function exactly once on the loop thread", "[loop]") {
  kin::loop l;
  constexpr int threads = 8, per_thread = 10'000;
  const auto loop_thread = std::this_thread::get_id();
  int calls = 0, wrong_thread = 0;
  std::vector<int> last_seen(threads, -1);
  int out_of_order = 0;
  std::optional<kin::keep_alive> hold(std::in_place, l);
  std::vector<std::thread> posters;
  for (int t = 0; t < threads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        l.post([&, t, i] {
          ++calls;
          if (std::this_thread::get_id() != loop_thread) ++wrong_thread;
          if (i != last_seen[static_cast<size_t>(t)] + 1) ++out_of_order;
          last_seen[static_cast<size_t>(t)] = i;
        });
      }
    });
  }
  std::thread releaser([&] {
    for (auto& p : posters) p.join();
    l.post([&] { hold.reset(); });  // runs after every earlier post
  });
  CHECK_FALSE(l.run());
  releaser.join();
  CHECK(calls == threads * per_thread);
  CHECK(wrong_thread == 0);
  CHECK(out_of_order == 0);  // each thread's functions run in its posting order
}

TEST_CASE("a posted function keeps the loop alive until it runs", "[loop]") {
  kin::loop l;
  std::vector<int> order;
  l.post([&] {
    order.push_back(1);
    l.post([&] { order.push_back(3); });  // runs in a later iteration
  });
  l.post([&] { order.push_back(2); });
  CHECK(l.is_alive());
  CHECK_FALSE(l.run());
  CHECK(order == std::vector<int>{1, 2, 3});
}

TEST_CASE("stop() from another thread wakes a sleeping loop", "[loop]") {
  kin::loop l;
  kin::keep_alive hold(l);
  std::thread stopper([&] {
    std::this_thread::sleep_for(30ms);
    l.stop();
  });
  CHECK(l.run());  // returns because of stop(), with work (the hold) left
  stopper.join();
  hold.reset();
  CHECK_FALSE(l.run());
}

TEST_CASE("stop() from a callback ends run() after the current iteration", "[loop]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] {
    if (++fired == 3) l.stop();
  });
  REQUIRE(t.start(0ms, 1ms));
  CHECK(l.run());
  CHECK(fired == 3);
  CHECK(t.is_active());
  t.stop();
}

TEST_CASE("a stop requested while the loop is idle makes the next run() return at once", "[loop]") {
  kin::loop l;
  kin::keep_alive hold(l);
  l.stop();
  CHECK(l.run());
  // The request was used up: the loop runs again until its work is done.
  l.post([&] { hold.reset(); });
  CHECK_FALSE(l.run());
}

TEST_CASE("a stop made in run_once's iteration is used up by that return", "[loop]") {
  kin::loop l;
  int fired = 0;
  kin::timer t(l, [&] {
    if (++fired == 1) l.stop();
    if (fired == 3) t.stop();
  });
  REQUIRE(t.start(0ms, 1ms));
  CHECK(l.run_once());
  CHECK(fired == 1);
  CHECK_FALSE(l.run());  // not ended at once by the earlier stop()
  CHECK(fired == 3);
}

TEST_CASE("releasing the last keep_alive from another thread ends run()", "[loop]") {
  kin::loop l;
  kin::keep_alive hold(l);
  CHECK(hold.holds());
  kin::keep_alive moved = std::move(hold);
  CHECK_FALSE(hold.holds());
  std::thread releaser([&] {
    std::this_thread::sleep_for(20ms);
    moved.reset();
  });
  CHECK_FALSE(l.run());
  releaser.join();
}

TEST_CASE("destroying a loop that still has handles stops the process with a message", "[loop]") {
  const std::string behaviour =
      GENERATE(std::string("loop-destroyed-with-timer"), std::string("loop-destroyed-with-watcher"),
               std::string("loop-destroyed-with-keep-alive"));
  auto child = kin_test::run_child({behaviour});
  INFO(child.err);
  CHECK_FALSE(child.exited);
  CHECK(child.status == SIGABRT);
  CHECK(child.err.find("kin::loop destroyed while") != std::string::npos);
}

TEST_CASE("running a loop from inside its own callback stops the process with a message",
          "[loop]") {
  auto child = kin_test::run_child({"run-inside-callback"});
  INFO(child.err);
  CHECK_FALSE(child.exited);
  CHECK(child.status == SIGABRT);
  CHECK(child.err.find("kin::loop::run called from inside a callback") != std::string::npos);
}

TEST_CASE("a loop that cannot get its descriptors reports EMFILE and leaks nothing", "[loop]") {
  const auto before = kin_test::open_fds();
  // Room for none, then for exactly one descriptor: the second creation step fails after the
  // first succeeded, and the first must be closed again.
  const int room = GENERATE(0, 1);
  std::optional<kin_test::fd_limit> limit(std::in_place, room);
  auto created = kin::loop::create();
  bool threw = false;
  try {
    kin::loop l;
  } catch (const std::system_error& e) {
    threw = e.code() == std::errc::too_many_files_open;
  }
  limit.reset();
  REQUIRE_FALSE(created);
  CHECK(created.error() == std::errc::too_many_files_open);
  CHECK(threw);
  CHECK(kin_test::open_fds() == before);
}
