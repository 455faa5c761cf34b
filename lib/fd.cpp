// unique_fd and the public helpers that create close-on-exec pipes and socketpairs.
#include <kin/fd.hpp>

#include "posix/sys.hpp"

#include <sys/socket.h>
#include <unistd.h>

namespace kin {

void unique_fd::reset(int fd) noexcept {
  // No retry on EINTR: the descriptor is gone either way (see close(2), "Dealing with error
  // returns from close()"), and a retry could close a number another thread has reused.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

result<pipe_ends> make_pipe(fd_mode mode) noexcept {
  int fds[2];
  int flags = O_CLOEXEC | (mode == fd_mode::nonblocking ? O_NONBLOCK : 0);
  if (::pipe2(fds, flags) != 0) return fail(sys::last_error());
  return pipe_ends{unique_fd(fds[0]), unique_fd(fds[1])};
}

result<std::pair<unique_fd, unique_fd>> make_socketpair(socket_type type, fd_mode mode) noexcept {
  int kind = SOCK_STREAM;
  if (type == socket_type::seqpacket) kind = SOCK_SEQPACKET;
  if (type == socket_type::datagram) kind = SOCK_DGRAM;
  kind |= SOCK_CLOEXEC;
  if (mode == fd_mode::nonblocking) kind |= SOCK_NONBLOCK;
  int fds[2];
  if (::socketpair(AF_UNIX, kind, 0, fds) != 0) return fail(sys::last_error());
  return std::pair<unique_fd, unique_fd>(unique_fd(fds[0]), unique_fd(fds[1]));
}

}  // namespace kin
