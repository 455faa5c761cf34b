// What an open descriptor is (kin::fd_kind), found from the kernel (fstat, getsockopt) rather
// than trusted from a label, so a received descriptor can be rebuilt as the right handle.
#pragma once

#include <kin/export.hpp>
#include <kin/result.hpp>

#include <string_view>

namespace kin {

/// The kinds of descriptor detect_fd_kind() tells apart.
enum class fd_kind {
  tcp_server,             ///< AF_INET/AF_INET6 SOCK_STREAM socket that is listening
  tcp_socket,             ///< AF_INET/AF_INET6 SOCK_STREAM socket that is not listening
  unix_server,            ///< AF_UNIX SOCK_STREAM or SOCK_SEQPACKET socket that is listening
  unix_stream_socket,     ///< AF_UNIX SOCK_STREAM socket that is not listening
  unix_seqpacket_socket,  ///< AF_UNIX SOCK_SEQPACKET socket that is not listening
  unix_datagram_socket,   ///< AF_UNIX SOCK_DGRAM socket
  udp_socket,             ///< AF_INET/AF_INET6 SOCK_DGRAM socket
  pipe,                   ///< either end of a pipe, or a FIFO
  file,                   ///< a regular file
  character_device,       ///< a character device (/dev/null, a terminal)
  directory,              ///< a directory
  socket_other,           ///< any other socket (netlink, raw, AF_INET SOCK_SEQPACKET, ...)
  other,                  ///< anything else (block device, eventfd, epoll, ...)
};

/// Finds what `fd` refers to with fstat(2) and, for a socket, getsockopt(2) SO_TYPE, SO_DOMAIN
/// (getsockname(2)'s family where SO_DOMAIN does not exist) and SO_ACCEPTCONN. The descriptor
/// is borrowed and left unchanged. A socket kin has no kind for is socket_other, never an
/// error. Errors: EBADF when `fd` is not an open descriptor (negative included); the error of
/// getsockopt(SO_TYPE) in the unlikely case it fails on a socket.
KIN_API result<fd_kind> detect_fd_kind(int fd) noexcept;

/// The enumerator's name, e.g. "tcp_server"; "unknown" for a value outside the enum.
KIN_API std::string_view to_string(fd_kind kind) noexcept;

}  // namespace kin
