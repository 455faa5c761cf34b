// Tests of signal watchers: delivery on the loop's thread, several loops at once, the saved and
// restored disposition, errors, and a signal storm that must not lose a wakeup or clobber errno.
#include "catch.hpp"

#include <kin/loop.hpp>
#include <kin/signal.hpp>

#include "helpers/process_state.hpp"

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

using namespace std::chrono_literals;

namespace {

std::atomic<int> own_handler_calls{0};
void own_handler(int) { ++own_handler_calls; }

void (*current_handler(int signo))(int) {
  struct sigaction now = {};
  ::sigaction(signo, nullptr, &now);
  return now.sa_handler;
}

// A loop running on its own thread with a watcher for `signo`, kept alive until stop().
struct loop_thread {
  explicit loop_thread(int signo) {
    thread = std::thread([this, signo] {
      kin::loop l;
      kin::keep_alive hold(l);
      kin::signal_watcher w(l, [&](int s) {
        if (s == signo && std::this_thread::get_id() == thread_id)
          ++calls;
        else
          ++wrong;
      });
      REQUIRE(w.start(signo));
      {
        std::lock_guard lock(mutex);
        lp = &l;
        thread_id = std::this_thread::get_id();
      }
      ready = true;
      l.run();
      hold.reset();
      w.stop();
      lp = nullptr;
    });
    REQUIRE(kin_test::wait_until([&] { return ready.load(); }));
  }
  void stop() {
    lp.load()->stop();
    thread.join();
  }
  std::thread thread;
  std::mutex mutex;
  std::thread::id thread_id;
  std::atomic<kin::loop*> lp{nullptr};
  std::atomic<bool> ready{false};
  std::atomic<int> calls{0};
  std::atomic<int> wrong{0};
};

}  // namespace

TEST_CASE("a raised signal calls the watcher on the loop's thread", "[signal]") {
  kin::loop l;
  int calls = 0;
  const auto me = std::this_thread::get_id();
  kin::signal_watcher w(l, [&](int signo) {
    CHECK(signo == SIGUSR1);
    CHECK(std::this_thread::get_id() == me);
    ++calls;
    w.stop();
  });
  REQUIRE(w.start(SIGUSR1));
  CHECK(w.signal() == SIGUSR1);
  REQUIRE(::raise(SIGUSR1) == 0);  // the handler only records it; the watcher runs in run()
  CHECK(calls == 0);
  CHECK_FALSE(l.run());
  CHECK(calls == 1);
  CHECK(w.signal() == 0);
}

TEST_CASE("every watcher of a signal in a loop is called, except one stopped meanwhile",
          "[signal]") {
  kin::loop l;
  int a = 0, b = 0, c = 0;
  kin::signal_watcher wb(l, [&](int) { ++b; });
  kin::signal_watcher wc(l, [&](int) { ++c; });
  kin::signal_watcher wa(l, [&](int) {
    ++a;
    // Whichever order the watchers run in, stopping both others here leaves them uncalled
    // unless they already ran.
    wb.stop();
    wc.stop();
    wa.stop();
  });
  REQUIRE(wb.start(SIGUSR2));
  REQUIRE(wc.start(SIGUSR2));
  REQUIRE(wa.start(SIGUSR2));
  REQUIRE(::raise(SIGUSR2) == 0);
  l.run_once();
  CHECK(a == 1);
  CHECK(b + c <= 2);
  // wa was started last: it runs first, so it stops the others before their turn.
  CHECK(b == 0);
  CHECK(c == 0);
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("watchers in two loops on two threads each get the signal on their own thread",
          "[signal]") {
  loop_thread one(SIGUSR1), two(SIGUSR1);
  REQUIRE(::raise(SIGUSR1) == 0);
  CHECK(kin_test::wait_until([&] { return one.calls > 0 && two.calls > 0; }));
  one.stop();
  two.stop();
  CHECK(one.wrong == 0);
  CHECK(two.wrong == 0);
}

TEST_CASE("the first watcher saves the signal's disposition and the last one restores it",
          "[signal]") {
  struct sigaction own = {}, previous = {};
  own.sa_handler = own_handler;
  sigemptyset(&own.sa_mask);
  REQUIRE(::sigaction(SIGUSR2, &own, &previous) == 0);
  own_handler_calls = 0;
  {
    kin::loop l1, l2;
    int calls = 0;
    kin::signal_watcher w1(l1, [&](int) { ++calls; });
    kin::signal_watcher w2(l2, [&](int) { ++calls; });
    REQUIRE(w1.start(SIGUSR2));
    CHECK(current_handler(SIGUSR2) != own_handler);
    REQUIRE(w2.start(SIGUSR2));
    w1.stop();
    CHECK(current_handler(SIGUSR2) != own_handler);  // w2 still watches
    REQUIRE(::raise(SIGUSR2) == 0);
    CHECK(own_handler_calls == 0);
    l2.run_nowait();
    CHECK(calls == 1);
    w2.stop();
    CHECK(current_handler(SIGUSR2) == own_handler);
  }
  REQUIRE(::raise(SIGUSR2) == 0);
  CHECK(own_handler_calls == 1);
  REQUIRE(::sigaction(SIGUSR2, &previous, nullptr) == 0);
}

TEST_CASE("restarting a watcher with another signal moves it", "[signal]") {
  kin::loop l;
  int got = 0;
  kin::signal_watcher w(l, [&](int signo) {
    got = signo;
    w.stop();
  });
  REQUIRE(w.start(SIGUSR1));
  REQUIRE(w.start(SIGUSR2));
  CHECK(current_handler(SIGUSR1) == SIG_DFL);
  REQUIRE(::raise(SIGUSR2) == 0);
  CHECK_FALSE(l.run());
  CHECK(got == SIGUSR2);
}

TEST_CASE("unwatchable signals are errors that change nothing", "[signal]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    kin::signal_watcher w(l, [](int) {});
    // SIGRTMIN - 1 is one of the signals the C library keeps for itself (glibc: 32 and 33).
    const int bad = GENERATE(SIGKILL, SIGSTOP, 0, -1, NSIG, 1000, SIGRTMIN - 1);
    INFO("signal " << bad);
    auto r = w.start(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
    CHECK_FALSE(w.is_active());
    CHECK_FALSE(l.is_alive());
    kin::signal_watcher silent(l, nullptr);
    auto s = silent.start(SIGUSR1);
    REQUIRE_FALSE(s);
    CHECK(s.error() == std::errc::invalid_argument);
    CHECK(current_handler(SIGUSR1) == SIG_DFL);
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("an unref'd signal watcher does not keep the loop alive", "[signal]") {
  kin::loop l;
  kin::signal_watcher w(l, [](int) {});
  REQUIRE(w.start(SIGUSR1));
  CHECK(l.is_alive());
  w.unref();
  CHECK_FALSE(l.run());
  w.stop();
}

TEST_CASE("a storm of signals wakes every loop, keeps errno, and loses no wakeup", "[signal]") {
  loop_thread one(SIGUSR1), two(SIGUSR1);

  // Phase 1: 10 000 signals while both loops run freely.
  int clobbered = 0;
  for (int i = 0; i < 10'000; ++i) {
    errno = EDOM;
    ::raise(SIGUSR1);
    if (errno != EDOM) ++clobbered;
  }
  CHECK(clobbered == 0);
  CHECK(kin_test::wait_until([&] { return one.calls > 0 && two.calls > 0; }));

  // Phase 2: both loops are busy in a callback while 70 000 signals arrive, more bytes than a
  // pipe holds, so the handler's writes fail with EAGAIN: errno must still be preserved, and
  // the full pipe must still mean a pending wakeup.
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> blocked{0};
  auto block = [&] {
    ++blocked;
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return release; });
  };
  one.lp.load()->post(block);
  two.lp.load()->post(block);
  REQUIRE(kin_test::wait_until([&] { return blocked == 2; }));
  const int calls_one = one.calls, calls_two = two.calls;
  for (int i = 0; i < 70'000; ++i) {
    errno = ERANGE;
    ::raise(SIGUSR1);
    if (errno != ERANGE) ++clobbered;
  }
  CHECK(clobbered == 0);
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  CHECK(kin_test::wait_until([&] { return one.calls > calls_one && two.calls > calls_two; }));
  one.stop();
  two.stop();
  CHECK(one.wrong == 0);
  CHECK(two.wrong == 0);
  CHECK(current_handler(SIGUSR1) == SIG_DFL);
}

TEST_CASE("a signal watcher whose self-pipe cannot be created reports EMFILE", "[signal]") {
  kin::loop l;
  const auto before = kin_test::open_fds();
  kin::signal_watcher w(l, [](int) {});
  std::optional<kin_test::fd_limit> full(std::in_place, 0);
  auto r = w.start(SIGUSR1);
  full.reset();
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::too_many_files_open);
  CHECK_FALSE(w.is_active());
  CHECK(kin_test::open_fds() == before);
  // With descriptors available again the same watcher starts.
  REQUIRE(w.start(SIGUSR1));
  w.stop();
}
