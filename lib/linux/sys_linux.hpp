// Linux-only descriptor creation: epoll instances and eventfds, close-on-exec from birth.
#pragma once

#include <kin/fd.hpp>
#include <kin/result.hpp>

#include <cerrno>

#include <sys/epoll.h>
#include <sys/eventfd.h>

namespace kin::sys {

/// epoll_create1(EPOLL_CLOEXEC). Errors: EMFILE, ENFILE, ENOMEM.
inline result<unique_fd> make_epoll() noexcept {
  unique_fd fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!fd) return fail(errno_code(errno));
  return fd;
}

/// eventfd(initial, EFD_CLOEXEC [| EFD_NONBLOCK]). Errors: EMFILE, ENFILE, ENODEV, ENOMEM.
inline result<unique_fd> make_eventfd(unsigned initial, fd_mode mode) noexcept {
  const int flags = EFD_CLOEXEC | (mode == fd_mode::nonblocking ? EFD_NONBLOCK : 0);
  unique_fd fd(::eventfd(initial, flags));
  if (!fd) return fail(errno_code(errno));
  return fd;
}

}  // namespace kin::sys
