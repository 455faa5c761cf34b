// The typed streams: connecting TCP and Unix-domain sockets, their options and addresses.
#include <kin/socket.hpp>

#include "peer_credentials.hpp"
#include "posix/sys.hpp"

#include <cerrno>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace kin {

result<void> tcp_socket::connect(const socket_address& to, connect_callback cb) {
  if (!to.is_ip()) return fail(errno_code(is_open() ? EISCONN : EAFNOSUPPORT));
  return connect_socket(sys::domain_of(to), to, std::move(cb));
}

result<void> tcp_socket::set_nodelay(bool enable) noexcept {
  return sys::set_int_option(fd(), IPPROTO_TCP, TCP_NODELAY, enable ? 1 : 0);
}

result<void> tcp_socket::set_keepalive(bool enable, std::chrono::seconds idle) noexcept {
  if (idle.count() < 0) return fail(errno_code(EINVAL));
  if (auto r = sys::set_int_option(fd(), SOL_SOCKET, SO_KEEPALIVE, enable ? 1 : 0); !r) return r;
  if (!enable || idle.count() == 0) return {};
  const int seconds = idle.count() > 0x7fffffff ? 0x7fffffff : static_cast<int>(idle.count());
#if defined(TCP_KEEPIDLE)
  return sys::set_int_option(fd(), IPPROTO_TCP, TCP_KEEPIDLE, seconds);
#else
  return sys::set_int_option(fd(), IPPROTO_TCP, TCP_KEEPALIVE, seconds);  // macOS
#endif
}

result<socket_address> tcp_socket::local_address() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return socket_address::local_of(fd());
}

result<socket_address> tcp_socket::peer_address() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return socket_address::peer_of(fd());
}

result<void> unix_socket::connect(const socket_address& to, connect_callback cb) {
  if (to.family() != address_family::unix_path && to.family() != address_family::unix_abstract) {
    return fail(errno_code(is_open() ? EISCONN : EAFNOSUPPORT));
  }
  return connect_socket(AF_UNIX, to, std::move(cb));
}

result<peer_credentials> unix_socket::credentials() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return detail::read_peer_credentials(fd());
}

result<socket_address> unix_socket::local_address() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return socket_address::local_of(fd());
}

result<socket_address> unix_socket::peer_address() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return socket_address::peer_of(fd());
}

}  // namespace kin
