// Thin syscall wrappers shared by every POSIX system: EINTR is retried where retrying is right,
// errors come back as result<T>, and every descriptor is created close-on-exec from birth.
#pragma once

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/result.hpp>

#include <cerrno>
#include <cstddef>
#include <utility>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

namespace kin::sys {

/// errno as an error_code.
inline std::error_code last_error() noexcept { return errno_code(errno); }

/// Calls `f` again while it fails with EINTR.
template <class F>
inline auto retry(F f) noexcept {
  decltype(f()) r;
  do {
    r = f();
  } while (r == -1 && errno == EINTR);
  return r;
}

inline result<std::size_t> read(int fd, void* buf, std::size_t n) noexcept {
  ssize_t r = retry([&] { return ::read(fd, buf, n); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

inline result<std::size_t> write(int fd, const void* buf, std::size_t n) noexcept {
  ssize_t r = retry([&] { return ::write(fd, buf, n); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

inline result<std::size_t> readv(int fd, const iovec* iov, int count) noexcept {
  ssize_t r = retry([&] { return ::readv(fd, iov, count); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

inline result<std::size_t> writev(int fd, const iovec* iov, int count) noexcept {
  ssize_t r = retry([&] { return ::writev(fd, iov, count); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

inline result<std::size_t> sendmsg(int fd, const msghdr* msg, int flags) noexcept {
  ssize_t r = retry([&] { return ::sendmsg(fd, msg, flags); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

inline result<std::size_t> recvmsg(int fd, msghdr* msg, int flags) noexcept {
  ssize_t r = retry([&] { return ::recvmsg(fd, msg, flags); });
  if (r < 0) return fail(last_error());
  return static_cast<std::size_t>(r);
}

/// open(2) with O_CLOEXEC always added.
inline result<unique_fd> open(const char* path, int flags, mode_t mode = 0) noexcept {
  int fd = retry([&] { return ::open(path, flags | O_CLOEXEC, mode); });
  if (fd < 0) return fail(last_error());
  return unique_fd(fd);
}

/// A close-on-exec duplicate of `fd` at the lowest free number >= `min_fd` (F_DUPFD_CLOEXEC).
inline result<unique_fd> dup_cloexec(int fd, int min_fd = 0) noexcept {
  int r = ::fcntl(fd, F_DUPFD_CLOEXEC, min_fd);
  if (r < 0) return fail(last_error());
  return unique_fd(r);
}

/// Sets or clears O_NONBLOCK on an existing descriptor.
inline result<void> set_nonblocking(int fd, bool on) noexcept {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return fail(last_error());
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0) return fail(last_error());
  return {};
}

/// setsockopt(2) of one int option. Errors: EBADF for a negative fd, and setsockopt's.
inline result<void> set_int_option(int fd, int level, int name, int value) noexcept {
  if (fd < 0) return fail(errno_code(EBADF));
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) return fail(last_error());
  return {};
}

/// The address family (AF_INET, AF_INET6, AF_UNIX) a socket for `a` needs: the sa_family of its
/// bytes.
inline int domain_of(const socket_address& a) noexcept {
  return static_cast<const sockaddr*>(a.data())->sa_family;
}

/// Succeeds when `fd` is a descriptor of `kind` (detect_fd_kind). Errors: EBADF, EINVAL for
/// another kind.
inline result<void> require_kind(int fd, fd_kind kind) noexcept {
  auto found = detect_fd_kind(fd);
  if (!found) return fail(found.error());
  if (*found != kind) return fail(errno_code(EINVAL));
  return {};
}

/// True for a SOCK_STREAM socket (fd_kind::unix_server also covers SOCK_SEQPACKET listeners).
inline bool is_stream_socket(int fd) noexcept {
  int type = 0;
  socklen_t len = sizeof type;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

/// socket(2) with SOCK_CLOEXEC always added.
inline result<unique_fd> socket(int domain, int type, int protocol) noexcept {
  int fd = ::socket(domain, type | SOCK_CLOEXEC, protocol);
  if (fd < 0) return fail(last_error());
  return unique_fd(fd);
}

/// True when `fd` refers to an open file description.
inline bool is_valid_fd(int fd) noexcept { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

}  // namespace kin::sys
