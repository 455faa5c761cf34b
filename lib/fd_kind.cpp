// detect_fd_kind: classifying an open descriptor from fstat and the socket options.
#include <kin/fd_kind.hpp>

#include "posix/sys.hpp"

#include <cerrno>

#include <sys/socket.h>
#include <sys/stat.h>

namespace kin {

namespace detail {

namespace {

bool int_option(int fd, int name, int& value) noexcept {
  socklen_t len = sizeof value;
  return ::getsockopt(fd, SOL_SOCKET, name, &value, &len) == 0;
}

// The socket's address family, or AF_UNSPEC when it cannot be found.
int socket_domain(int fd) noexcept {
#if defined(SO_DOMAIN)
  // Linux and FreeBSD report the domain directly, bound or not.
  int domain = AF_UNSPEC;
  if (int_option(fd, SO_DOMAIN, domain)) return domain;
#endif
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return AF_UNSPEC;
  return ss.ss_family;
}

// A socket of SO_TYPE `type`.
result<fd_kind> socket_kind(int fd, int type) noexcept {
  const int domain = socket_domain(fd);
  // SO_ACCEPTCONN fails (ENOPROTOOPT) on systems or socket types that do not know it; such a
  // socket is taken as not listening.
  int accepting = 0;
  const bool listening = (type == SOCK_STREAM || type == SOCK_SEQPACKET) &&
                         int_option(fd, SO_ACCEPTCONN, accepting) && accepting != 0;
  if (domain == AF_INET || domain == AF_INET6) {
    if (type == SOCK_STREAM) return listening ? fd_kind::tcp_server : fd_kind::tcp_socket;
    if (type == SOCK_DGRAM) return fd_kind::udp_socket;
  } else if (domain == AF_UNIX) {
    if (listening) return fd_kind::unix_server;
    if (type == SOCK_STREAM) return fd_kind::unix_stream_socket;
    if (type == SOCK_SEQPACKET) return fd_kind::unix_seqpacket_socket;
    if (type == SOCK_DGRAM) return fd_kind::unix_datagram_socket;
  }
  return fd_kind::socket_other;
}

}  // namespace

}  // namespace detail

result<fd_kind> detect_fd_kind(int fd) noexcept {
  // Sockets first, the common case (received handles): SO_TYPE answers for a socket and fails
  // with ENOTSOCK for anything else, which fstat then tells apart — one system call fewer per
  // socket than starting with fstat.
  int type = 0;
  if (detail::int_option(fd, SO_TYPE, type)) return detail::socket_kind(fd, type);
  if (errno != ENOTSOCK) return fail(sys::last_error());
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(sys::last_error());
  if (S_ISFIFO(st.st_mode)) return fd_kind::pipe;
  if (S_ISREG(st.st_mode)) return fd_kind::file;
  if (S_ISCHR(st.st_mode)) return fd_kind::character_device;
  if (S_ISDIR(st.st_mode)) return fd_kind::directory;
  return fd_kind::other;
}

std::string_view to_string(fd_kind kind) noexcept {
  switch (kind) {
    case fd_kind::tcp_server:
      return "tcp_server";
    case fd_kind::tcp_socket:
      return "tcp_socket";
    case fd_kind::unix_server:
      return "unix_server";
    case fd_kind::unix_stream_socket:
      return "unix_stream_socket";
    case fd_kind::unix_seqpacket_socket:
      return "unix_seqpacket_socket";
    case fd_kind::unix_datagram_socket:
      return "unix_datagram_socket";
    case fd_kind::udp_socket:
      return "udp_socket";
    case fd_kind::pipe:
      return "pipe";
    case fd_kind::file:
      return "file";
    case fd_kind::character_device:
      return "character_device";
    case fd_kind::directory:
      return "directory";
    case fd_kind::socket_other:
      return "socket_other";
    case fd_kind::other:
      return "other";
  }
  return "unknown";
}

}  // namespace kin
