// The reactor: kin::loop, and the handles that attach to it (fd watchers, timers, keep-alive
// tokens).
#pragma once

#include <kin/export.hpp>
#include <kin/result.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

namespace kin {

namespace detail {
class loop_impl;
class timer_heap;
}  // namespace detail

/// Readiness a watcher asks for and is told about. Combine with `|`.
enum class io_events : unsigned { none = 0, readable = 1, writable = 2 };

constexpr io_events operator|(io_events a, io_events b) noexcept {
  return static_cast<io_events>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
constexpr io_events operator&(io_events a, io_events b) noexcept {
  return static_cast<io_events>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}
/// True when `set` contains any bit of `bits`.
constexpr bool has(io_events set, io_events bits) noexcept {
  return (static_cast<unsigned>(set) & static_cast<unsigned>(bits)) != 0;
}

/// An event loop: one epoll (Linux) or kqueue (BSD, macOS) instance, a timer heap, a queue of
/// functions posted from other threads, and the loop's share of process-wide signal delivery.
///
/// One loop per thread. Only post() and stop() may be called from other threads; everything
/// else, including every handle attached to the loop, belongs to the thread that runs it.
///
/// Like libuv, a loop runs while it has *referenced* work: an active handle that has not been
/// unref()'d, a function posted and not yet run, or a keep_alive token. Destroying a loop while
/// handles are still attached to it is a bug and stops the process with a message.
///
/// Callbacks run on the loop's thread from inside run(). They must not throw: an exception
/// that escapes a callback terminates the process.
class KIN_API loop {
 public:
  /// Creates a loop; throws std::system_error if the kernel refuses (EMFILE, ENOMEM).
  loop();
  /// Creates a loop without throwing. Errors: EMFILE, ENFILE, ENOMEM.
  static result<loop> create() noexcept;

  loop(loop&&) noexcept;
  loop& operator=(loop&&) noexcept;
  loop(const loop&) = delete;
  loop& operator=(const loop&) = delete;
  ~loop();

  /// Runs until no referenced work is left or stop() is called. Returns true if referenced
  /// work remains (that is, it returned because of stop()).
  bool run();
  /// Runs one iteration: waits for at least one event unless no referenced work is left,
  /// then runs everything that is ready. Returns true if referenced work remains.
  bool run_once();
  /// Runs one iteration without waiting. Returns true if referenced work remains.
  bool run_nowait();

  /// Makes run() return after the current iteration. Callable from any thread, including
  /// while the loop sleeps; a stop requested while the loop is not running makes the next
  /// run(), run_once() or run_nowait() return at once. Each request ends one run.
  void stop() noexcept;

  /// Queues `fn` to run on the loop's thread in a later iteration, in posting order.
  /// Callable from any thread. A queued function keeps the loop alive until it has run;
  /// functions still queued when the loop is destroyed are destroyed without running.
  void post(std::function<void()> fn);

  /// The loop's clock: CLOCK_MONOTONIC read once per iteration (timers count from it).
  [[nodiscard]] std::chrono::steady_clock::time_point now() const noexcept;
  /// Reads the clock again now (useful after a long callback, before starting a timer).
  void update_time() noexcept;

  /// True when the loop has referenced work left.
  [[nodiscard]] bool is_alive() const noexcept;

  /// The implementation; used by handles, not by applications.
  [[nodiscard]] detail::loop_impl& impl() const noexcept { return *impl_; }

 private:
  explicit loop(std::unique_ptr<detail::loop_impl> impl) noexcept;
  std::unique_ptr<detail::loop_impl> impl_;
};

/// Everything that attaches to a loop derives from handle: it is counted by the loop, and an
/// active handle keeps the loop running unless unref()'d. Handles are neither copyable nor
/// movable (the loop knows their address); destroy them before their loop.
class KIN_API handle {
 public:
  handle(const handle&) = delete;
  handle& operator=(const handle&) = delete;

  /// Counts this handle, while active, as work that keeps run() going (the default).
  void ref() noexcept;
  /// Stops counting this handle as work: run() may return while it is still active.
  void unref() noexcept;
  [[nodiscard]] bool has_ref() const noexcept { return ref_; }
  /// True while the handle is started (watching, armed).
  [[nodiscard]] bool is_active() const noexcept { return active_; }

 protected:
  explicit handle(loop& l) noexcept;
  explicit handle(detail::loop_impl& l) noexcept;
  ~handle();
  void set_active(bool active) noexcept {
    if (active_ != active) change_active(active);
  }
  [[nodiscard]] detail::loop_impl& loop_impl() const noexcept { return *loop_; }

 private:
  void change_active(bool active) noexcept;
  detail::loop_impl* loop_;
  bool active_ = false;
  bool ref_ = true;
};

/// Watches one file descriptor for readiness (level-triggered).
///
/// The descriptor is borrowed, not owned. At most one watcher per descriptor per loop. The
/// callback receives the ready subset of the interest; an error or hang-up on the descriptor
/// is reported as every event of the interest, so the next read or write sees it. Watchers may
/// be started, changed, stopped or destroyed from any callback, including ones for other
/// watchers whose events are ready in the same iteration: a stopped or destroyed watcher is
/// never called afterwards. Stop the watcher before closing its descriptor. A descriptor closed
/// while watched leaves the kernel's interest set only if no other descriptor (a dup, or a copy
/// in a child) refers to the same open file; when the number is reopened, start() registers
/// the new file. If a copy does keep the old file open, epoll keeps reporting it under a dead
/// token, which kin ignores but which makes every poll return at once until the copy closes.
class KIN_API io_watcher : public handle {
 public:
  using callback = std::function<void(io_events ready)>;

  io_watcher(loop& l, int fd, callback cb);
  /// For kin's own handles, which know their loop by its implementation.
  io_watcher(detail::loop_impl& l, int fd, callback cb);
  ~io_watcher();

  /// Watches for `interest` (replacing any previous interest); io_events::none stops.
  /// Errors: EBADF (not an open descriptor), EPERM (a descriptor the backend cannot poll,
  /// such as a regular file with epoll), EEXIST (another watcher in this loop has it),
  /// EINVAL (negative fd), ENOMEM, ENOSPC.
  result<void> start(io_events interest) noexcept;
  /// Stops watching; the watcher can be started again.
  void stop() noexcept;

  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] io_events interest() const noexcept { return interest_; }
  /// Replaces the callback; not from inside the callback itself, which it would destroy.
  void set_callback(callback cb) { cb_ = std::move(cb); }

 private:
  friend class detail::loop_impl;
  callback cb_;
  int fd_;
  io_events interest_ = io_events::none;
  std::uint32_t slot_ = 0;
};

/// A one-shot or repeating timer on the loop's monotonic clock.
///
/// Deadlines count from loop::now(). Timers due in the same iteration fire in deadline order,
/// ties in the order they were started. A timer may be stopped, restarted or destroyed from any
/// callback, its own included; a timer started from a callback with a zero timeout fires in the
/// next iteration, never in the one that is running.
class KIN_API timer : public handle {
 public:
  using callback = std::function<void()>;

  explicit timer(loop& l, callback cb = {});
  /// For kin's own handles, which know their loop by its implementation.
  timer(detail::loop_impl& l, callback cb);
  ~timer();

  /// Arms the timer to fire `timeout` after loop::now() and then, if `repeat` is not zero,
  /// every `repeat` after each firing. Restarting an armed timer re-arms it.
  /// Errors: EINVAL if either duration is negative or no callback is set.
  result<void> start(std::chrono::nanoseconds timeout,
                     std::chrono::nanoseconds repeat = std::chrono::nanoseconds::zero()) noexcept;
  /// Disarms the timer. Stopping a stopped timer does nothing.
  void stop() noexcept;

  /// Replaces the callback; not from inside the callback itself, which it would destroy.
  void set_callback(callback cb) { cb_ = std::move(cb); }
  /// The repeat interval; changing it takes effect at the next firing (zero: fire once).
  [[nodiscard]] std::chrono::nanoseconds repeat() const noexcept {
    return std::chrono::nanoseconds(static_cast<std::int64_t>(repeat_));
  }
  /// Errors: EINVAL if `repeat` is negative.
  result<void> set_repeat(std::chrono::nanoseconds repeat) noexcept;
  /// Time left until the timer fires, measured from loop::now(); zero if due or not armed.
  [[nodiscard]] std::chrono::nanoseconds due_in() const noexcept;

 private:
  friend class detail::loop_impl;
  friend class detail::timer_heap;
  callback cb_;
  std::uint64_t deadline_ = 0;  // ns on the loop clock
  std::uint64_t repeat_ = 0;    // ns
  std::uint32_t heap_index_ = 0;
};

/// A token that keeps its loop alive while it exists, for loops that wait only for post()s
/// from other threads. Movable; it may be destroyed (or reset) on any thread.
class KIN_API keep_alive {
 public:
  keep_alive() noexcept = default;
  explicit keep_alive(loop& l) noexcept;
  keep_alive(keep_alive&& other) noexcept : loop_(std::exchange(other.loop_, nullptr)) {}
  keep_alive& operator=(keep_alive&& other) noexcept;
  keep_alive(const keep_alive&) = delete;
  keep_alive& operator=(const keep_alive&) = delete;
  ~keep_alive() { reset(); }

  /// Releases the loop (waking it if this was the last reason to run).
  void reset() noexcept;
  [[nodiscard]] bool holds() const noexcept { return loop_ != nullptr; }

 private:
  detail::loop_impl* loop_ = nullptr;
};

}  // namespace kin
