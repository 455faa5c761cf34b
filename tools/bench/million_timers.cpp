// Benchmark: N one-shot timers (libuv's benchmark-million-timers pattern, and uniform random
// deadlines) on kin, on libuv and on a minimal raw binary heap, in CPU ns per timer.
//
// Rule for all three: the memory of the timer objects is allocated (and touched) before the
// clock starts and freed after it stops, as is the loop itself; the clock covers initialising
// and starting every timer (kin::timer constructor + start, uv_timer_init + uv_timer_start,
// filling a raw timer + heap push), dispatching them all, and cleaning up (kin::timer
// destructors, uv_close + uv_run).
#include <kin/loop.hpp>

#include <sys/epoll.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench.hpp"

namespace {

using kin_bench::cpu_ns;
using kin_bench::die;
using kin_bench::wall_ns;

/// What one run of one implementation cost, in ns; the phases are split for the `#` lines.
struct run_cost {
  std::uint64_t init_cpu = 0;
  std::uint64_t dispatch_cpu = 0;
  std::uint64_t cleanup_cpu = 0;
  std::uint64_t dispatch_wall = 0;
  [[nodiscard]] std::uint64_t total_cpu() const { return init_cpu + dispatch_cpu + cleanup_cpu; }
};

/// Marks the phase boundaries of a run on both clocks.
class phase_clock {
 public:
  void start() {
    cpu_ = cpu_ns();
    wall_ = wall_ns();
  }
  void end_init(run_cost& c) { c.init_cpu = lap(); }
  void end_dispatch(run_cost& c) {
    c.dispatch_wall = wall_ns() - wall_;
    c.dispatch_cpu = lap();
  }
  void end_cleanup(run_cost& c) { c.cleanup_cpu = lap(); }

 private:
  std::uint64_t lap() {
    const std::uint64_t now = cpu_ns();
    const std::uint64_t d = now - cpu_;
    cpu_ = now;
    wall_ = wall_ns();
    return d;
  }
  std::uint64_t cpu_ = 0;
  std::uint64_t wall_ = 0;
};

/// The timeout of every timer, in ms: `1 + i / 1000` (libuv's pattern), or uniform over the
/// same span from a fixed seed, so every implementation sees the same deadlines.
std::vector<std::uint32_t> make_timeouts(long n, bool random) {
  std::vector<std::uint32_t> t(static_cast<std::size_t>(n));
  const auto span = static_cast<std::uint32_t>(1 + (n - 1) / 1000);
  std::mt19937 rng(12345);
  std::uniform_int_distribution<std::uint32_t> dist(1, span);
  for (long i = 0; i < n; ++i) {
    t[static_cast<std::size_t>(i)] = random ? dist(rng) : static_cast<std::uint32_t>(1 + i / 1000);
  }
  return t;
}

// ---- kin ----------------------------------------------------------------------------------

enum class kin_storage { optional, unique_ptr };

run_cost run_kin(const std::vector<std::uint32_t>& timeouts, kin_storage storage) {
  const std::size_t n = timeouts.size();
  long fired = 0;
  run_cost cost;
  phase_clock clock;
  kin::loop loop;
  if (storage == kin_storage::optional) {
    // One slot per timer, allocated and touched up front; the timer is built in place.
    std::vector<std::optional<kin::timer>> timers(n);
    loop.update_time();
    clock.start();
    for (std::size_t i = 0; i < n; ++i) {
      kin::timer& t = timers[i].emplace(loop, [&fired] { ++fired; });
      if (!t.start(std::chrono::milliseconds(timeouts[i]))) die("kin::timer::start failed");
    }
    clock.end_init(cost);
    if (loop.run()) die("kin::loop::run returned with work left");
    clock.end_dispatch(cost);
    for (auto& t : timers) t.reset();
    clock.end_cleanup(cost);
  } else {
    // The everyday way: one heap allocation per timer, inside the timed phases.
    std::vector<std::unique_ptr<kin::timer>> timers;
    timers.reserve(n);
    loop.update_time();
    clock.start();
    for (std::size_t i = 0; i < n; ++i) {
      timers.push_back(std::make_unique<kin::timer>(loop, [&fired] { ++fired; }));
      if (!timers.back()->start(std::chrono::milliseconds(timeouts[i]))) {
        die("kin::timer::start failed");
      }
    }
    clock.end_init(cost);
    if (loop.run()) die("kin::loop::run returned with work left");
    clock.end_dispatch(cost);
    timers.clear();
    clock.end_cleanup(cost);
  }
  if (fired != static_cast<long>(n)) die("kin fired the wrong number of timers");
  return cost;
}

// ---- libuv --------------------------------------------------------------------------------

long uv_fired = 0;
long uv_closed = 0;
void on_uv_timer(uv_timer_t*) { ++uv_fired; }
void on_uv_close(uv_handle_t*) { ++uv_closed; }

run_cost run_libuv(const std::vector<std::uint32_t>& timeouts) {
  const std::size_t n = timeouts.size();
  uv_fired = 0;
  uv_closed = 0;
  run_cost cost;
  phase_clock clock;
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) die("uv_loop_init failed");
  std::unique_ptr<uv_timer_t[]> timers(new uv_timer_t[n]());
  uv_update_time(&loop);
  clock.start();
  for (std::size_t i = 0; i < n; ++i) {
    if (uv_timer_init(&loop, &timers[i]) != 0 ||
        uv_timer_start(&timers[i], on_uv_timer, timeouts[i], 0) != 0) {
      die("uv_timer_init/uv_timer_start failed");
    }
  }
  clock.end_init(cost);
  uv_run(&loop, UV_RUN_DEFAULT);
  clock.end_dispatch(cost);
  for (std::size_t i = 0; i < n; ++i) {
    uv_close(reinterpret_cast<uv_handle_t*>(&timers[i]), on_uv_close);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  clock.end_cleanup(cost);
  if (uv_loop_close(&loop) != 0) die("uv_loop_close: handles left");
  if (uv_fired != static_cast<long>(n) || uv_closed != static_cast<long>(n)) {
    die("libuv fired or closed the wrong number of timers");
  }
  return cost;
}

// ---- raw binary heap ----------------------------------------------------------------------

/// The floor: an array min-heap of {deadline, id, timer*} ordered by (deadline, start order),
/// each timer keeping its heap index so it could be cancelled in O(log n), a millisecond clock
/// read once per iteration, and epoll_wait to sleep until the next deadline.
class raw_timer_loop {
 public:
  struct timer {
    std::uint64_t deadline_ms = 0;
    std::uint64_t id = 0;
    void (*cb)(timer*) = nullptr;
    std::uint32_t heap_index = 0;
    bool armed = false;
  };

  raw_timer_loop() : epfd_(epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) die("epoll_create1 failed");
    update_time();
  }
  raw_timer_loop(const raw_timer_loop&) = delete;
  raw_timer_loop& operator=(const raw_timer_loop&) = delete;
  ~raw_timer_loop() { close(epfd_); }

  void update_time() { now_ms_ = wall_ns() / 1000000; }

  void start(timer& t, std::uint64_t timeout_ms, void (*cb)(timer*)) {
    if (t.armed) stop(t);
    t.deadline_ms = now_ms_ + timeout_ms;
    t.id = next_id_++;
    t.cb = cb;
    t.armed = true;
    heap_.push_back({t.deadline_ms, t.id, &t});
    sift_up(static_cast<std::uint32_t>(heap_.size() - 1));
  }

  void stop(timer& t) {
    if (!t.armed) return;
    t.armed = false;
    const std::uint32_t i = t.heap_index;
    const entry last = heap_.back();
    heap_.pop_back();
    if (i == heap_.size()) return;
    heap_[i] = last;
    last.t->heap_index = i;
    if (i > 0 && less(heap_[i], heap_[(i - 1) / 2])) {
      sift_up(i);
    } else {
      sift_down(i);
    }
  }

  /// Runs until no timer is armed; returns the number of loop iterations.
  long run() {
    long iterations = 0;
    epoll_event events[64];
    while (!heap_.empty()) {
      update_time();
      while (!heap_.empty() && heap_[0].deadline_ms <= now_ms_) {
        timer* t = pop();
        t->cb(t);
      }
      if (heap_.empty()) break;
      const auto wait_ms = static_cast<int>(heap_[0].deadline_ms - now_ms_);
      if (epoll_wait(epfd_, events, 64, wait_ms) < 0 && errno != EINTR) die("epoll_wait failed");
      ++iterations;
    }
    return iterations;
  }

 private:
  // The key is copied into the entry so comparisons never touch the timers themselves.
  struct entry {
    std::uint64_t deadline_ms;
    std::uint64_t id;
    timer* t;
  };

  static bool less(const entry& a, const entry& b) {
    return a.deadline_ms < b.deadline_ms || (a.deadline_ms == b.deadline_ms && a.id < b.id);
  }

  void sift_up(std::uint32_t i) {
    const entry e = heap_[i];
    while (i > 0) {
      const std::uint32_t parent = (i - 1) / 2;
      if (!less(e, heap_[parent])) break;
      heap_[i] = heap_[parent];
      heap_[i].t->heap_index = i;
      i = parent;
    }
    heap_[i] = e;
    e.t->heap_index = i;
  }

  void sift_down(std::uint32_t i) {
    const entry e = heap_[i];
    const auto n = static_cast<std::uint32_t>(heap_.size());
    for (;;) {
      const std::uint32_t left = 2 * i + 1;
      if (left >= n) break;
      const std::uint32_t child =
          left + 1 < n && less(heap_[left + 1], heap_[left]) ? left + 1 : left;
      if (!less(heap_[child], e)) break;
      heap_[i] = heap_[child];
      heap_[i].t->heap_index = i;
      i = child;
    }
    heap_[i] = e;
    e.t->heap_index = i;
  }

  timer* pop() {
    timer* top = heap_[0].t;
    top->armed = false;
    const entry last = heap_.back();
    heap_.pop_back();
    if (!heap_.empty()) {
      heap_[0] = last;
      sift_down(0);
    }
    return top;
  }

  int epfd_;
  std::uint64_t now_ms_ = 0;
  std::uint64_t next_id_ = 0;
  std::vector<entry> heap_;
};

long raw_fired = 0;
void on_raw_timer(raw_timer_loop::timer*) { ++raw_fired; }

run_cost run_raw_heap(const std::vector<std::uint32_t>& timeouts) {
  const std::size_t n = timeouts.size();
  raw_fired = 0;
  run_cost cost;
  phase_clock clock;
  raw_timer_loop loop;
  std::vector<raw_timer_loop::timer> timers(n);
  loop.update_time();
  clock.start();
  for (std::size_t i = 0; i < n; ++i) loop.start(timers[i], timeouts[i], on_raw_timer);
  clock.end_init(cost);
  loop.run();
  clock.end_dispatch(cost);
  clock.end_cleanup(cost);  // nothing is left to release: every timer has fired
  if (raw_fired != static_cast<long>(n)) die("raw heap fired the wrong number of timers");
  return cost;
}

// ---- driver -------------------------------------------------------------------------------

double per_timer(std::uint64_t ns, std::size_t n) {
  return static_cast<double>(ns) / static_cast<double>(n);
}

void print_run(const char* name, int run, const char* impl, const run_cost& c, std::size_t n) {
  std::printf(
      "# %s run=%d impl=%s total=%.1f ns/timer (init=%.1f dispatch=%.1f cleanup=%.1f) "
      "dispatch_wall=%.1f ms\n",
      name, run, impl, per_timer(c.total_cpu(), n), per_timer(c.init_cpu, n),
      per_timer(c.dispatch_cpu, n), per_timer(c.cleanup_cpu, n),
      static_cast<double>(c.dispatch_wall) / 1e6);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  long runs = 5;
  long n = 1000000;
  std::string storage_name = "optional";
  std::string only;
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &runs},
       {"--timers", &n},
       {"--kin-storage", nullptr, &storage_name},
       {"--only", nullptr, &only}},
      "[--runs N (5)] [--timers N (1000000)] [--kin-storage optional|unique_ptr "
      "(vector<optional<kin::timer>> or vector<unique_ptr<kin::timer>>)] "
      "[--only kin|raw_heap|libuv (for profiling: one implementation, no BENCH lines)]");
  if (storage_name != "optional" && storage_name != "unique_ptr") {
    die("--kin-storage is optional or unique_ptr");
  }
  if (!only.empty() && only != "kin" && only != "raw_heap" && only != "libuv") {
    die("--only is kin, raw_heap or libuv");
  }
  const kin_storage storage =
      storage_name == "optional" ? kin_storage::optional : kin_storage::unique_ptr;
  std::printf("# million_timers: %ld timers, %ld runs, kin storage %s, libuv %s\n", n, runs,
              storage == kin_storage::optional ? "vector<optional<kin::timer>>"
                                               : "vector<unique_ptr<kin::timer>>",
              uv_version_string());

  const bool all = only.empty();
  {
    // Warm-up, not reported: first-touch of the allocator's arenas and of the code.
    const auto warm = make_timeouts(std::min(n, 100000L), false);
    if (all || only == "kin") (void)run_kin(warm, storage);
    if (all || only == "raw_heap") (void)run_raw_heap(warm);
    if (all || only == "libuv") (void)run_libuv(warm);
  }

  for (const bool random : {false, true}) {
    const char* name = random ? "million_timers_random" : "million_timers";
    const auto timeouts = make_timeouts(n, random);
    const std::size_t count = timeouts.size();
    std::vector<double> kin_runs, raw_runs, uv_runs;
    for (int r = 1; r <= runs; ++r) {
      if (all || only == "kin") {
        const run_cost k = run_kin(timeouts, storage);
        print_run(name, r, "kin", k, count);
        kin_runs.push_back(per_timer(k.total_cpu(), count));
      }
      if (all || only == "raw_heap") {
        const run_cost raw = run_raw_heap(timeouts);
        print_run(name, r, "raw_heap", raw, count);
        raw_runs.push_back(per_timer(raw.total_cpu(), count));
      }
      if (all || only == "libuv") {
        const run_cost uv = run_libuv(timeouts);
        print_run(name, r, "libuv", uv, count);
        uv_runs.push_back(per_timer(uv.total_cpu(), count));
      }
    }
    if (all) {
      kin_bench::report(name, "ns/timer", kin_runs, "raw_heap", raw_runs);
      kin_bench::report(name, "ns/timer", kin_runs, "libuv", uv_runs);
    }
  }
  return 0;
}
