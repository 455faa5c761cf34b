// The state behind kin::loop: the backend, io watcher slots, the timer heap, posted functions,
// handle accounting and the loop's signal sink. Shared by every platform.
#pragma once

#include <kin/loop.hpp>
#include <kin/signal.hpp>

#include "loop_backend.hpp"
#include "timer_heap.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include <time.h>

namespace kin::detail {

class signal_sink;
struct signal_sink_deleter {
  void operator()(signal_sink* sink) const noexcept;
};

enum class run_mode { until_done, once, nowait };

/// Work a handle asks the loop to do once, just before it next polls (a stream flushing the
/// writes its callbacks queued, so that many small writes leave in one system call). A task is
/// queued at most once; cancel() takes it out (a handle does so when it is destroyed).
class deferred_task {
 public:
  using function = void (*)(void* context) noexcept;
  deferred_task(function fn, void* context) noexcept : fn_(fn), context_(context) {}
  deferred_task(const deferred_task&) = delete;
  deferred_task& operator=(const deferred_task&) = delete;
  [[nodiscard]] bool is_queued() const noexcept { return queued_; }

 private:
  friend class loop_impl;
  function fn_;
  void* context_;
  deferred_task* prev_ = nullptr;
  deferred_task* next_ = nullptr;
  std::uint64_t round_ = 0;
  bool queued_ = false;
};

class loop_impl {
 public:
  explicit loop_impl(backend b) noexcept : backend_(std::move(b)) { update_time(); }
  loop_impl(const loop_impl&) = delete;
  loop_impl& operator=(const loop_impl&) = delete;
  ~loop_impl();

  bool run(run_mode mode);
  void stop() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    backend_.wakeup();
  }
  void post(std::function<void()> fn);
  [[nodiscard]] bool is_alive() const noexcept {
    return active_refs_ != 0 || holds_.load(std::memory_order_acquire) != 0 ||
           posts_pending_.load(std::memory_order_acquire);
  }
  void update_time() noexcept {
#if defined(__linux__)
    // What steady_clock::now() reads, without the call through libstdc++: once per iteration.
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    now_ns_ = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
              static_cast<std::uint64_t>(ts.tv_nsec);
#else
    now_ns_ = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now().time_since_epoch())
                                             .count());
#endif
  }
  [[nodiscard]] std::uint64_t now_ns() const noexcept { return now_ns_; }

  // Handle accounting (handle's constructor, destructor, set_active, ref, unref).
  void attach() noexcept { ++attached_; }
  void detach() noexcept { --attached_; }
  void add_active_ref(std::ptrdiff_t delta) noexcept {
    active_refs_ = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(active_refs_) + delta);
  }
  void hold() noexcept { holds_.fetch_add(1, std::memory_order_relaxed); }
  void release_hold() noexcept {
    if (holds_.fetch_sub(1, std::memory_order_acq_rel) == 1) backend_.wakeup();
  }

  // Watchers.
  result<void> io_start(io_watcher& w, io_events interest) noexcept;
  void io_stop(io_watcher& w) noexcept;
  void timer_start(timer& t, std::uint64_t timeout_ns, std::uint64_t repeat_ns) noexcept;
  void timer_stop(timer& t) noexcept;
  result<void> signal_start(signal_watcher& w, int signo) noexcept;
  void signal_stop(signal_watcher& w) noexcept;

  // Deferred tasks: run once, just before the next poll.
  void defer(deferred_task& task) noexcept;
  void cancel(deferred_task& task) noexcept;

  // Called by the backend from poll().
  void dispatch_io(std::uint64_t token, io_events events) noexcept;
  void on_wakeup() noexcept {}
  void dispatch_signals() noexcept;

  backend& poller() noexcept { return backend_; }

  // Per-loop state that a module above the reactor keeps with the loop (the process module's
  // reaper). Destroyed first when the loop goes, before the count of attached handles is
  // checked, so the handles it owns may still be attached then.
  struct extension {
    virtual ~extension() = default;
  };
  std::unique_ptr<extension>& process_extension() noexcept { return processes_; }

  // One read buffer for every stream of the loop: reads happen one at a time on the loop's
  // thread, and what a read callback gets is valid only while it runs. Sized to take in one
  // read what a socket's default receive buffer holds.
  static constexpr std::size_t read_buffer_size = 256 * 1024;
  std::span<std::byte> read_buffer() {
    if (!read_buffer_) read_buffer_.reset(new std::byte[read_buffer_size]);
    return {read_buffer_.get(), read_buffer_size};
  }

 private:
  struct io_slot {
    io_watcher* watcher;
    std::uint32_t generation;
  };

  std::uint32_t claim_slot(io_watcher& w);
  void release_slot(std::uint32_t index) noexcept;
  std::uint64_t token_of(std::uint32_t index) const noexcept {
    return (std::uint64_t{slots_[index].generation} << 32) | index;
  }
  int poll_timeout(run_mode mode) const noexcept;
  void run_timers() noexcept {
    if (!timers_.empty()) run_due_timers();
  }
  void run_due_timers() noexcept;
  void run_posted() noexcept {
    if (posts_pending_.load(std::memory_order_acquire)) run_posted_now();
  }
  void run_posted_now() noexcept;
  void run_deferred() noexcept;

  backend backend_;
  std::unique_ptr<extension> processes_;
  std::uint64_t now_ns_ = 0;
  bool running_ = false;
  std::atomic<bool> stop_requested_{false};

  std::size_t attached_ = 0;     // handles constructed on this loop and not destroyed
  std::size_t active_refs_ = 0;  // active handles that keep the loop alive
  std::atomic<std::size_t> holds_{0};

  std::vector<io_slot> slots_;
  std::vector<std::uint32_t> free_slots_;

  timer_heap timers_;
  std::uint64_t timer_seq_ = 0;

  std::mutex post_mutex_;
  std::vector<std::function<void()>> posted_;  // guarded by post_mutex_
  std::vector<std::function<void()>> running_posts_;
  std::atomic<bool> posts_pending_{false};

  deferred_task* deferred_head_ = nullptr;
  deferred_task* deferred_tail_ = nullptr;
  std::uint64_t deferred_round_ = 0;

  std::unique_ptr<signal_sink, signal_sink_deleter> signals_;
  std::unique_ptr<std::byte[]> read_buffer_;
};

}  // namespace kin::detail
