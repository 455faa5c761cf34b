// Benchmark: cross-thread round trips between two event loops on two threads, kin::loop::post
// against libuv's uv_async_send, in round trips per second.
//
// Each run starts both threads and their loops, lines them up on a latch, and then times (wall
// clock) from the first send to the moment thread A has seen the last reply; thread start-up
// and loop creation are outside the clock.
#include <kin/loop.hpp>

#include <pthread.h>
#include <sched.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"

namespace {

using kin_bench::cpu_ns;
using kin_bench::die;
using kin_bench::wall_ns;

/// The CPU each thread is pinned to (--pin), or -1 to let the scheduler place it.
int cpu_of_a = -1;
int cpu_of_b = -1;

void pin_this_thread(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
    die("pthread_setaffinity_np failed");
  }
}

/// Wall and CPU time of one run's timed part.
struct run_cost {
  std::uint64_t wall = 0;
  std::uint64_t cpu = 0;
};

// ---- kin ----------------------------------------------------------------------------------

/// Shared by both threads. Fields written by one thread and read by the other are published
/// by the latch (loops and tokens) or by the loops' own post() queues (count, end times).
struct kin_state {
  long target = 0;
  long count = 0;
  kin::loop* a = nullptr;
  kin::loop* b = nullptr;
  kin::keep_alive* keep_a = nullptr;
  kin::keep_alive* keep_b = nullptr;
  std::uint64_t end_wall = 0;
  std::uint64_t end_cpu = 0;
};

void kin_on_pong(kin_state* st);

// Runs on B: answer A.
void kin_on_ping(kin_state* st) {
  st->a->post([st] { kin_on_pong(st); });
}

// Runs on A: count the round trip, then ping again or let both loops end.
void kin_on_pong(kin_state* st) {
  if (++st->count < st->target) {
    st->b->post([st] { kin_on_ping(st); });
    return;
  }
  st->end_wall = wall_ns();
  st->end_cpu = cpu_ns();
  st->b->post([st] { st->keep_b->reset(); });
  st->keep_a->reset();
}

run_cost run_kin(long n) {
  kin_state st;
  st.target = n;
  std::latch ready(2);
  std::uint64_t start_wall = 0;
  std::uint64_t start_cpu = 0;
  std::thread b([&] {
    pin_this_thread(cpu_of_b);
    kin::loop loop;
    kin::keep_alive keep(loop);
    st.b = &loop;
    st.keep_b = &keep;
    ready.arrive_and_wait();
    if (loop.run()) die("kin loop B returned with work left");
  });
  std::thread a([&] {
    pin_this_thread(cpu_of_a);
    kin::loop loop;
    kin::keep_alive keep(loop);
    st.a = &loop;
    st.keep_a = &keep;
    ready.arrive_and_wait();
    start_wall = wall_ns();
    start_cpu = cpu_ns();
    st.b->post([p = &st] { kin_on_ping(p); });
    if (loop.run()) die("kin loop A returned with work left");
  });
  a.join();
  b.join();
  if (st.count != n) die("kin made the wrong number of round trips");
  return {st.end_wall - start_wall, st.end_cpu - start_cpu};
}

// ---- libuv --------------------------------------------------------------------------------

/// Shared by both threads; `done` tells B that the next wakeup is the last one.
struct uv_state {
  long target = 0;
  long count = 0;
  uv_async_t async_a{};
  uv_async_t async_b{};
  std::atomic<bool> done{false};
  std::uint64_t end_wall = 0;
  std::uint64_t end_cpu = 0;
};

// Runs on A (B woke it): count the round trip, then wake B again or finish.
void uv_on_a(uv_async_t* h) {
  auto* st = static_cast<uv_state*>(h->data);
  if (++st->count < st->target) {
    uv_async_send(&st->async_b);
    return;
  }
  st->end_wall = wall_ns();
  st->end_cpu = cpu_ns();
  st->done.store(true, std::memory_order_release);
  uv_async_send(&st->async_b);
  uv_close(reinterpret_cast<uv_handle_t*>(&st->async_a), nullptr);
}

// Runs on B (A woke it): answer, or close on the final wakeup.
void uv_on_b(uv_async_t* h) {
  auto* st = static_cast<uv_state*>(h->data);
  if (st->done.load(std::memory_order_acquire)) {
    uv_close(reinterpret_cast<uv_handle_t*>(&st->async_b), nullptr);
  } else {
    uv_async_send(&st->async_a);
  }
}

run_cost run_libuv(long n) {
  uv_state st;
  st.target = n;
  std::latch ready(2);
  std::uint64_t start_wall = 0;
  std::uint64_t start_cpu = 0;
  std::thread b([&] {
    pin_this_thread(cpu_of_b);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0 || uv_async_init(&loop, &st.async_b, uv_on_b) != 0) {
      die("uv_loop_init/uv_async_init failed");
    }
    st.async_b.data = &st;
    ready.arrive_and_wait();
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) die("libuv loop B: handles left");
  });
  std::thread a([&] {
    pin_this_thread(cpu_of_a);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0 || uv_async_init(&loop, &st.async_a, uv_on_a) != 0) {
      die("uv_loop_init/uv_async_init failed");
    }
    st.async_a.data = &st;
    ready.arrive_and_wait();
    start_wall = wall_ns();
    start_cpu = cpu_ns();
    uv_async_send(&st.async_b);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) die("libuv loop A: handles left");
  });
  a.join();
  b.join();
  if (st.count != n) die("libuv made the wrong number of round trips");
  return {st.end_wall - start_wall, st.end_cpu - start_cpu};
}

// ---- driver -------------------------------------------------------------------------------

double rate(const run_cost& c, long n) {
  return static_cast<double>(n) * 1e9 / static_cast<double>(c.wall);
}

void print_run(const char* name, int run, const char* impl, const run_cost& c, long n) {
  std::printf(
      "# %s run=%d impl=%s %.0f round_trips/s (%.2f us/round_trip wall, "
      "%.2f us/round_trip cpu over both threads)\n",
      name, run, impl, rate(c, n), static_cast<double>(c.wall) / 1e3 / static_cast<double>(n),
      static_cast<double>(c.cpu) / 1e3 / static_cast<double>(n));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  long runs = 5;
  long n = 200000;
  std::string pin = "none";
  kin_bench::parse_options(
      argc, argv, {{"--runs", &runs}, {"--round-trips", &n}, {"--pin", nullptr, &pin}},
      "[--runs N (5)] [--round-trips N (200000)] [--pin none|same|split (none: the scheduler "
      "places the two threads; same: both on the first allowed CPU; split: one on each of the "
      "first two)]");
  const char* name = "post_pingpong";
  if (pin != "none") {
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) die("sched_getaffinity failed");
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    }
    if (pin == "same") {
      cpu_of_a = cpu_of_b = cpus.at(0);
      name = "post_pingpong_same_cpu";
    } else if (pin == "split") {
      if (cpus.size() < 2) die("--pin split needs two CPUs");
      cpu_of_a = cpus[0];
      cpu_of_b = cpus[1];
      name = "post_pingpong_split_cpu";
    } else {
      die("--pin is none, same or split");
    }
  }
  std::printf("# %s: %ld round trips, %ld runs, libuv %s, %u hardware threads, pin %s\n", name, n,
              runs, uv_version_string(), std::thread::hardware_concurrency(), pin.c_str());

  // Warm-up, not reported: thread stacks, allocator arenas, code.
  (void)run_kin(std::max(1L, n / 10));
  (void)run_libuv(std::max(1L, n / 10));

  std::vector<double> kin_runs, uv_runs;
  for (int r = 1; r <= runs; ++r) {
    const run_cost k = run_kin(n);
    print_run(name, r, "kin", k, n);
    const run_cost uv = run_libuv(n);
    print_run(name, r, "libuv", uv, n);
    kin_runs.push_back(rate(k, n));
    uv_runs.push_back(rate(uv, n));
  }
  kin_bench::report(name, "round_trips/s", kin_runs, "libuv", uv_runs);
  return 0;
}
