// Listening sockets: kin::tcp_server (IPv4, IPv6) and kin::unix_server (paths, abstract names),
// which accept connections without blocking and survive running out of descriptors.
#pragma once

#include <kin/address.hpp>
#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <system_error>

namespace kin {

namespace detail {
struct server_state;
}  // namespace detail

/// What tcp_server and unix_server share: listening, the accept loop, closing.
///
/// **Accepting.** listen() starts the accept loop: when the socket is readable, kin calls
/// accept4(SOCK_CLOEXEC | SOCK_NONBLOCK) until the kernel says EAGAIN, and hands each new
/// connection to the callback as a non-blocking unique_fd (open it in a tcp_socket or
/// unix_socket, on this loop or another, or pass it to another process). Errors that concern
/// only one connection (ECONNABORTED, EPROTO, the network errors accept(2) lists) are skipped.
///
/// **Out of descriptors.** EMFILE, ENFILE, ENOBUFS and ENOMEM do not make the loop spin on a
/// socket it cannot drain: the server stops watching, reports the error once through the
/// callback (with no descriptor), and retries on a timer — after 10 ms, then doubling up to 1 s
/// — until an accept succeeds. Connections wait in the kernel's backlog meanwhile; none is
/// accepted and dropped.
///
/// A server is active (keeps the loop running) while it listens. It may be closed or destroyed
/// from its own callback.
class KIN_API server : public handle {
 public:
  /// `ec` is empty and `connection` open for each accepted connection; on an error that stops
  /// or pauses accepting, `ec` says which and `connection` is empty.
  using connection_callback = std::function<void(std::error_code ec, unique_fd connection)>;

  /// Starts accepting with listen(2)'s `backlog` (clamped by the kernel to somaxconn). A socket
  /// that is already listening (one received from another process) keeps listening; its
  /// backlog is set again. Errors: EBADF if not open, EINVAL without a callback or when
  /// already accepting, and listen(2)'s (EADDRINUSE for a TCP port another socket took
  /// between bind and listen).
  result<void> listen(int backlog, connection_callback cb) noexcept;
  /// Stops accepting: connections queue in the kernel's backlog until listen() again.
  void stop_accepting() noexcept;

  /// Stops accepting and closes the socket; `cb` runs on a later iteration. A unix_server also
  /// removes the socket file it created, if that file is still the one it bound.
  void close(std::function<void()> cb = {});
  /// Detaches the listening socket and hands it back (to pass to another process). A
  /// unix_server then leaves its socket file in place. Errors: EBADF if not open.
  result<unique_fd> release() noexcept;

  /// The address the socket is bound to; for a TCP server bound to port 0, the port the kernel
  /// chose. Errors: EBADF if not open.
  [[nodiscard]] result<socket_address> local_address() const noexcept;
  [[nodiscard]] bool is_open() const noexcept { return fd_.is_open(); }
  /// True between listen() and stop_accepting() or close(), paused or not.
  [[nodiscard]] bool is_accepting() const noexcept;
  /// True while accepting is paused because descriptors ran out.
  [[nodiscard]] bool is_paused() const noexcept;
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

 protected:
  explicit server(loop& l);
  ~server();
  /// Takes a listening socket (`kind` is tcp_server or unix_server) or, from bind(), a bound
  /// one (`kind` is what detect_fd_kind says of it before listen) and makes it non-blocking.
  result<void> adopt(unique_fd fd, fd_kind kind) noexcept;
  /// Takes `fd` (bound, by bind()) without checking its kind.
  result<void> attach(unique_fd fd) noexcept;
  /// The socket file bind() created, to remove when the server closes (if it is still there
  /// with the same device and inode).
  void set_socket_file(std::string path, unsigned long long dev, unsigned long long ino);
  void remove_socket_file() noexcept;

 private:
  friend struct detail::server_state;
  void drop_state() noexcept;
  unique_fd fd_;
  std::unique_ptr<detail::server_state> state_;
  std::string socket_file_;
  unsigned long long file_dev_ = 0;
  unsigned long long file_ino_ = 0;
};

/// Options for tcp_server::bind().
struct tcp_server_options {
  /// SO_REUSEPORT: several sockets (in one process or several) bind the same port and the
  /// kernel spreads connections among them. Requires every one of them to set it.
  bool reuse_port = false;
  /// IPV6_V6ONLY on an IPv6 socket: accept only IPv6 (otherwise `::` also takes IPv4).
  bool ipv6_only = false;
};

/// A listening TCP socket on IPv4 or IPv6. SO_REUSEADDR is always set, so a restarted server
/// can bind its port while old connections are in TIME_WAIT.
class KIN_API tcp_server : public server {
 public:
  explicit tcp_server(loop& l) : server(l) {}

  /// Creates the socket and binds it to `address` (port 0: the kernel picks a free port, which
  /// local_address() reports). Errors: EISCONN if already open, EAFNOSUPPORT for a Unix
  /// address, EADDRINUSE, EACCES (a privileged port), EADDRNOTAVAIL (an address this host does
  /// not have), EMFILE, ENFILE. On error nothing stays open.
  result<void> bind(const socket_address& address, const tcp_server_options& options = {});
  /// Takes ownership of a listening TCP socket (one received from another process).
  /// Errors: EBADF; EINVAL for any other descriptor; EISCONN if already open.
  result<void> open(unique_fd fd) noexcept { return adopt(std::move(fd), fd_kind::tcp_server); }
};

/// Options for unix_server::bind().
struct unix_server_options {
  /// When the path exists and is a socket nobody listens on (a server that died without
  /// removing it: connecting is refused), remove it and bind again. A path that is not a
  /// socket, or one a server still listens on, is never removed: EADDRINUSE. The check
  /// connects to the path with one more descriptor (EMFILE without one), so a server that
  /// does listen there sees a connection that closes at once.
  bool remove_stale = true;
};

/// A listening Unix-domain stream socket, on a filesystem path or (Linux) an abstract name.
class KIN_API unix_server : public server {
 public:
  explicit unix_server(loop& l) : server(l) {}

  /// Creates the socket and binds it to `address` (unix_path or unix_abstract). Errors:
  /// EISCONN if already open, EAFNOSUPPORT for an IP or unnamed address, EADDRINUSE (see
  /// unix_server_options), EACCES, ENOENT (a missing directory), EMFILE, ENFILE. On error
  /// nothing stays open and no file is left behind.
  result<void> bind(const socket_address& address, const unix_server_options& options = {});
  /// Takes ownership of a listening Unix-domain stream socket (one received from another
  /// process); its socket file, if any, is left alone when it closes. Errors: EBADF; EINVAL
  /// for any other descriptor; EISCONN if already open.
  result<void> open(unique_fd fd) noexcept { return adopt(std::move(fd), fd_kind::unix_server); }
};

}  // namespace kin
