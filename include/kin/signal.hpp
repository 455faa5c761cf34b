// Signal watchers: process-wide signal delivery to loops through a self-pipe.
#pragma once

#include <kin/export.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <functional>

namespace kin {

namespace detail {
class signal_sink;
}  // namespace detail

/// Calls a function on the loop's thread after a signal arrives.
///
/// kin installs one process-wide handler per watched signal; the handler only records the
/// signal and writes a byte to each interested loop's non-blocking self-pipe (saving and
/// restoring errno), and each loop calls its watchers from its own thread. Any number of loops
/// in any threads may watch the same signal; every one is called. Deliveries that arrive
/// before the loop gets to them coalesce into one call. The first watcher of a signal in the
/// process saves the signal's previous disposition and the last one to stop restores it.
///
/// Signals that Catch2, a debugger or the application handle themselves should not be watched
/// at the same time: kin's handler replaces theirs while any watcher is active.
class KIN_API signal_watcher : public handle {
 public:
  using callback = std::function<void(int signo)>;

  signal_watcher(loop& l, callback cb);
  /// For kin's own handles, which know their loop by its implementation.
  signal_watcher(detail::loop_impl& l, callback cb);
  ~signal_watcher();

  /// Starts watching `signo` (stopping any signal watched before).
  /// Errors: EINVAL for SIGKILL, SIGSTOP, numbers outside 1..NSIG-1, and signals the C library
  /// reserves; EMFILE/ENFILE if the loop's self-pipe cannot be created.
  result<void> start(int signo) noexcept;
  /// Stops watching. Stopping a stopped watcher does nothing.
  void stop() noexcept;

  /// The signal being watched, or 0.
  [[nodiscard]] int signal() const noexcept { return signo_; }
  /// Replaces the callback; not from inside the callback itself, which it would destroy.
  void set_callback(callback cb) { cb_ = std::move(cb); }

 private:
  friend class detail::loop_impl;
  friend class detail::signal_sink;
  callback cb_;
  int signo_ = 0;
  signal_watcher* prev_ = nullptr;
  signal_watcher* next_ = nullptr;
};

}  // namespace kin
