// kin::udp_socket: datagrams over IPv4 or IPv6 — bind, a send queue that never blocks, and
// receiving with the sender's address.
#pragma once

#include <kin/address.hpp>
#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <system_error>

namespace kin {

namespace detail {
struct udp_state;
}  // namespace detail

/// Options for udp_socket::bind().
struct udp_options {
  bool reuse_addr = false;  ///< SO_REUSEADDR
  bool reuse_port = false;  ///< SO_REUSEPORT: share the port with other sockets that set it
  bool ipv6_only = false;   ///< IPV6_V6ONLY on an IPv6 socket
};

/// A UDP socket. Datagrams keep their boundaries: each receive callback is one datagram.
///
/// send_to() queues a copy of the datagram; the queue is sent just before the loop next polls,
/// and each datagram's callback gets its own outcome (EMSGSIZE for one too large, the
/// kernel's error for one it refused) — one failed datagram does not fail the next. A socket
/// that was never bound is created by the first send_to() with the destination's family, and
/// the kernel gives it an ephemeral port.
///
/// The socket is active while receiving or while datagrams are queued.
class KIN_API udp_socket : public handle {
 public:
  /// `data` is one datagram (or its first 64 KiB when `truncated`) from `sender`. On a receive
  /// error, `ec` is set, `data` empty and reception continues.
  using receive_callback = std::function<void(std::error_code ec, std::span<const std::byte> data,
                                              const socket_address& sender, bool truncated)>;
  using send_callback = std::function<void(std::error_code ec)>;

  explicit udp_socket(loop& l);
  ~udp_socket();

  /// Creates the socket and binds it (port 0: an ephemeral port, see local_address()).
  /// Errors: EISCONN if already open, EAFNOSUPPORT for a Unix address, EADDRINUSE, EACCES,
  /// EADDRNOTAVAIL, EMFILE, ENFILE. On error nothing stays open.
  result<void> bind(const socket_address& address, const udp_options& options = {});
  /// Takes ownership of an AF_INET/AF_INET6 datagram socket and makes it non-blocking.
  /// Errors: EBADF; EINVAL for any other descriptor; EISCONN if already open.
  result<void> open(unique_fd fd) noexcept;

  /// Calls `cb` with every datagram until receive_stop(). Errors: EBADF if not open, EINVAL
  /// without a callback.
  result<void> receive_start(receive_callback cb) noexcept;
  void receive_stop() noexcept;

  /// Queues a copy of `data` for `to`. Errors come through `cb`, on a later iteration:
  /// EAFNOSUPPORT for a Unix address, or an IPv6 address on an IPv4 socket; ENETUNREACH for an
  /// IPv4 address on an IPv6 socket that cannot reach IPv4 (IPV6_V6ONLY, or bound to an IPv6
  /// address); EMSGSIZE; the kernel's.
  void send_to(std::span<const std::byte> data, const socket_address& to, send_callback cb = {});
  /// Sends now, bypassing the queue. Errors: EAGAIN when datagrams are queued or the kernel's
  /// buffer is full, EBADF if not open, and those of sendto(2).
  result<void> try_send_to(std::span<const std::byte> data, const socket_address& to) noexcept;

  /// Stops receiving, cancels queued datagrams (their callbacks get ECANCELED, on a later
  /// iteration, before `cb`), closes the socket. Datagrams already sent keep their outcome, even
  /// when a send callback closes the socket before the others of its batch have run.
  void close(std::function<void()> cb = {});
  /// Detaches the socket and hands it back. Errors: EBADF if not open; EBUSY while datagrams
  /// are queued.
  result<unique_fd> release() noexcept;

  /// The bound address. Errors: EBADF if not open.
  [[nodiscard]] result<socket_address> local_address() const noexcept;
  /// Bytes of datagrams queued and not yet sent.
  [[nodiscard]] std::size_t send_queue_size() const noexcept;
  [[nodiscard]] bool is_open() const noexcept { return fd_.is_open(); }
  [[nodiscard]] bool is_receiving() const noexcept { return receiving_; }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

 private:
  friend struct detail::udp_state;
  result<void> attach(unique_fd fd) noexcept;
  void drop_state(bool destroying) noexcept;
  unique_fd fd_;
  bool receiving_ = false;
  receive_callback receive_cb_;
  std::unique_ptr<detail::udp_state> state_;
};

}  // namespace kin
