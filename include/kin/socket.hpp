// The typed streams: TCP and Unix-domain stream sockets (connect, addresses, socket options, peer
// credentials) and pipe ends. Everything about reading and writing is kin::stream's.
#pragma once

#include <kin/address.hpp>
#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include <chrono>
#include <functional>
#include <system_error>

#include <sys/types.h>

namespace kin {

/// A TCP connection over IPv4 or IPv6: one made with connect(), one a tcp_server accepted, or
/// one received from another process.
class KIN_API tcp_socket : public stream {
 public:
  using connect_callback = std::function<void(std::error_code ec)>;

  explicit tcp_socket(loop& l) : stream(l) {}

  /// Takes ownership of a connected (or unconnected) TCP socket, such as one accepted by a
  /// tcp_server. Errors: EBADF; EINVAL for anything but an AF_INET/AF_INET6 stream socket that
  /// is not listening; EISCONN if already open.
  result<void> open(unique_fd fd) noexcept { return open_as(std::move(fd), fd_kind::tcp_socket); }

  /// Creates a socket of `to`'s family and connects it without blocking. `cb` gets the outcome
  /// on a later iteration (ECONNREFUSED, ETIMEDOUT, ENETUNREACH, ...); on failure the socket is
  /// closed again and writes queued meanwhile fail with the same error. Writes may be queued
  /// at once: they leave when the connection is made. The immediate errors are those of
  /// creating the socket: EISCONN if already open, EAFNOSUPPORT for a Unix address, EMFILE,
  /// ENFILE, ENOBUFS.
  result<void> connect(const socket_address& to, connect_callback cb);

  /// TCP_NODELAY: send small segments at once instead of waiting to coalesce them (Nagle).
  result<void> set_nodelay(bool enable) noexcept;
  /// SO_KEEPALIVE, and with a non-zero `idle` also TCP_KEEPIDLE (TCP_KEEPALIVE on macOS): the
  /// seconds of silence before the first probe. Errors: EBADF if not open, EINVAL for a
  /// negative `idle`, the kernel's for others.
  result<void> set_keepalive(bool enable,
                             std::chrono::seconds idle = std::chrono::seconds::zero()) noexcept;
  /// The local address (getsockname). Errors: EBADF if not open.
  [[nodiscard]] result<socket_address> local_address() const noexcept;
  /// The peer's address (getpeername). Errors: EBADF if not open, ENOTCONN.
  [[nodiscard]] result<socket_address> peer_address() const noexcept;
};

/// Who is at the other end of a Unix-domain socket, as the kernel recorded it when the
/// connection was made (or the socketpair created).
struct peer_credentials {
  pid_t pid = -1;  ///< -1 where the system does not report it (the BSDs and macOS)
  uid_t uid = 0;
  gid_t gid = 0;
};

/// A Unix-domain stream socket: connected to a path or (Linux) an abstract name, accepted by a
/// unix_server, one end of a socketpair, or received from another process. The only kind of
/// stream that carries descriptors.
class KIN_API unix_socket : public stream {
 public:
  using connect_callback = std::function<void(std::error_code ec)>;

  explicit unix_socket(loop& l) : stream(l) {}

  /// Takes ownership of an AF_UNIX SOCK_STREAM socket that is not listening (a socketpair end,
  /// an accepted connection). Errors: EBADF; EINVAL for any other descriptor; EISCONN if open.
  result<void> open(unique_fd fd) noexcept {
    return open_as(std::move(fd), fd_kind::unix_stream_socket);
  }

  /// Creates a socket and connects it to `to` (a unix_path or unix_abstract address); `cb` gets
  /// the outcome on a later iteration: ENOENT (no such path), ECONNREFUSED (nobody listening),
  /// EAGAIN (the server's backlog is full; Linux does not wait), EACCES. On failure the socket
  /// is closed again. Immediate errors: EISCONN if open, EAFNOSUPPORT for an IP or unnamed
  /// address, EMFILE, ENFILE.
  result<void> connect(const socket_address& to, connect_callback cb);

  /// The peer's pid, uid and gid (SO_PEERCRED on Linux, getpeereid elsewhere). Errors: EBADF
  /// if not open, ENOTCONN.
  [[nodiscard]] result<peer_credentials> credentials() const noexcept;
  /// The local address (unix_unnamed for a socketpair end or a connecting client).
  [[nodiscard]] result<socket_address> local_address() const noexcept;
  /// The peer's address (unix_unnamed when the peer is not bound, as a client usually is).
  [[nodiscard]] result<socket_address> peer_address() const noexcept;
};

/// One end of a pipe or FIFO, made non-blocking. A pipe has one direction: read from a read
/// end, write to a write end; shutdown() on a write end closes it once the queue is sent, which
/// the reader sees as EOF. Writing to a pipe whose read end is closed fails with EPIPE and
/// never kills the process (see kin::stream).
class KIN_API pipe : public stream {
 public:
  explicit pipe(loop& l) : stream(l) {}

  /// Takes ownership of a pipe end or FIFO. Errors: EBADF; EINVAL for anything else; EISCONN
  /// if already open. Note that O_NONBLOCK belongs to the open file, so other processes that
  /// share this end (a child that inherited it) see it too.
  result<void> open(unique_fd fd) noexcept { return open_as(std::move(fd), fd_kind::pipe); }
};

}  // namespace kin
