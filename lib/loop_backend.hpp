// The interface every poll backend implements (epoll in linux/, kqueue in bsd/). Meson compiles
// exactly one of them; there is no virtual dispatch.
#pragma once

#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <cstdint>

namespace kin::detail {

class loop_impl;

/// The token the backend reports for its own wakeup descriptor; never a watcher's token.
inline constexpr std::uint64_t wakeup_token = ~std::uint64_t{0};
/// The token of the loop's signal self-pipe.
inline constexpr std::uint64_t signal_token = ~std::uint64_t{0} - 1;

class backend {
 public:
  /// Creates the kernel poll instance and the cross-thread wakeup, both close-on-exec.
  static result<backend> open() noexcept;

  /// Starts reporting `events` on `fd` as `token`.
  result<void> add(int fd, io_events events, std::uint64_t token) noexcept;
  /// Changes the interest of a registered `fd` from `old_events` to `events`.
  result<void> modify(int fd, io_events old_events, io_events events, std::uint64_t token) noexcept;
  /// Stops reporting `fd`. A descriptor already closed is not an error.
  void remove(int fd, io_events old_events) noexcept;

  /// Waits up to `timeout_ms` (-1: no limit), updates the loop's time (owner.update_time()),
  /// then hands every ready event to `owner.dispatch_io(token, events)`, and a wakeup to
  /// `owner.on_wakeup()`.
  void poll(int timeout_ms, loop_impl& owner) noexcept;

  /// Makes a concurrent or the next poll() return. Callable from any thread.
  void wakeup() noexcept;

 private:
  backend(unique_fd poll_fd, unique_fd wake_fd, unique_fd wake_write_fd) noexcept
      : poll_fd_(std::move(poll_fd)),
        wake_fd_(std::move(wake_fd)),
        wake_write_fd_(std::move(wake_write_fd)) {}

  unique_fd poll_fd_;        // epoll or kqueue instance
  unique_fd wake_fd_;        // the watched wakeup descriptor: an eventfd, or a pipe's read end
  unique_fd wake_write_fd_;  // the pipe's write end where wakeup uses a pipe; empty with eventfd
};

}  // namespace kin::detail
