// Non-blocking byte streams over sockets and pipes: reading, a batching write queue with water
// marks, half-close, and (on Unix-domain sockets) descriptors carried with the bytes.
#pragma once

#include <kin/address.hpp>
#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

namespace kin {

namespace detail {
struct stream_state;
struct stream_opener;
struct stream_gather;
}  // namespace detail

/// The most descriptors one write may carry (the kernel's SCM_MAX_FD).
inline constexpr std::size_t max_fds_per_write = 253;

/// A connected, non-blocking byte stream: a TCP or Unix-domain stream socket, or a pipe end.
///
/// **Reading.** read_start() calls the callback with each chunk of bytes as it arrives, on the
/// loop's thread. On a Unix-domain socket the chunk also carries the descriptors that arrived
/// with it, already wrapped in unique_fd (received close-on-exec): the callback may move them
/// out, and those it leaves are closed when it returns. A chunk boundary means nothing: frame
/// the bytes yourself. The end of the stream comes as kin::errc::eof, after which reading stops.
/// A control message the kernel had to cut (MSG_CTRUNC) comes as kin::errc::message_truncated
/// with the bytes that did arrive and no descriptors (any that arrived are closed); the stream
/// stays usable.
///
/// **Writing.** write() queues the bytes and returns at once; the queue is sent just before
/// the loop next polls, so many small writes made by one callback leave in one system call.
/// Callbacks complete in order. write() returns false once the queue holds more than the high
/// water mark (the data is still queued); on_drain fires when it falls to the low mark. A
/// write's descriptors travel on the sendmsg() that carries its first byte and are closed once
/// that byte is sent. On Linux, small queued writes with descriptors share a sendmsg() when
/// their first bytes lie within 2 KiB of each other (at most max_fds_per_write descriptors in
/// all): the kernel takes such a sendmsg whole or not at all, and a reader gets every set with
/// the read that holds its write's first byte, or with an earlier one if it reads in pieces
/// smaller than 2 KiB. So tie descriptors to messages by counting them (as a frame header
/// can), never by read boundaries. A write of 4 KiB or more made while nothing is queued is
/// tried at once (only what the kernel does not take is copied and queued); its callback still
/// runs later, never inside write(). Writing never raises SIGPIPE: a closed peer is EPIPE (or
/// ECONNRESET) in the write callbacks, pipes included.
///
/// **Lifetime.** The stream is active (keeps the loop running) while it reads, has queued
/// writes, or has a shutdown pending. close() cancels queued writes (their callbacks get
/// ECANCELED, on a later iteration, before close's own callback; writes already sent get
/// success). Destroying a stream closes it
/// at once and drops its callbacks. A stream may be destroyed from any of its callbacks.
class KIN_API stream : public handle {
 public:
  using read_callback = std::function<void(std::error_code ec, std::span<const std::byte> data,
                                           std::span<unique_fd> fds)>;
  using write_callback = std::function<void(std::error_code ec)>;

  explicit stream(loop& l);
  ~stream();

  /// Takes ownership of a connected stream socket or pipe end and makes it non-blocking.
  /// Errors: EBADF, ENOTSOCK/EINVAL for a descriptor that is neither a stream socket nor a
  /// pipe (regular files, datagram sockets, listening sockets), EISCONN if already open.
  result<void> open(unique_fd fd) noexcept;

  /// Calls `cb` with every chunk that arrives until read_stop(), EOF or an error.
  /// Errors: EBADF if not open, EINVAL without a callback.
  result<void> read_start(read_callback cb) noexcept;
  void read_stop() noexcept;

  /// Queues a copy of `data`. Returns false when the queue is above the high water mark.
  bool write(std::span<const std::byte> data, write_callback cb = {});
  bool write(std::string_view data, write_callback cb = {}) {
    return write(std::as_bytes(std::span(data.data(), data.size())), std::move(cb));
  }
  /// Queues `data` without copying it.
  bool write(std::vector<std::byte>&& data, write_callback cb = {});
  /// Queues `data` with descriptors riding on its first byte (Unix-domain sockets only). The
  /// stream owns `fds` from now on and closes them once sent, or when the write fails. A write
  /// that cannot carry them — not a Unix-domain socket, empty `data`, no descriptors, more than
  /// max_fds_per_write — fails with EINVAL through its callback.
  bool write(std::span<const std::byte> data, std::vector<unique_fd> fds, write_callback cb = {});

  /// Writes as much of `data` as the kernel takes now, bypassing the queue; fails with EAGAIN
  /// when writes are already queued (order would break) or the kernel takes nothing.
  result<std::size_t> try_write(std::span<const std::byte> data) noexcept;

  /// Half-closes the write side once every queued byte is sent (a pipe's write end is
  /// closed). `cb` gets the outcome. Later writes fail with EPIPE.
  void shutdown(write_callback cb = {});
  /// Stops reading, cancels queued writes, closes the descriptor; `cb` runs on a later
  /// iteration. Closing a closed stream only schedules `cb`.
  void close(std::function<void()> cb = {});
  /// Detaches the descriptor from the stream and hands it back (still non-blocking), to pass it
  /// to another process or loop. Reading stops. Bytes the stream has already read stay read: a
  /// new owner sees only what comes after them. Errors: EBADF if not open; EBUSY while writes
  /// (sent or not) have callbacks to run, or a shutdown or a connect is pending: release from
  /// the last write's callback instead.
  result<unique_fd> release() noexcept;

  /// When write() starts returning false (bytes queued > high) and when on_drain fires
  /// (queued <= low). Defaults: 64 KiB and 16 KiB. Requires low <= high. They belong to the
  /// stream and hold across open(), connect() and close().
  void set_water_marks(std::size_t high, std::size_t low) noexcept;
  void on_drain(std::function<void()> cb) { drain_cb_ = std::move(cb); }

  /// Bytes queued and not yet sent.
  [[nodiscard]] std::size_t write_queue_size() const noexcept;
  [[nodiscard]] bool is_open() const noexcept { return fd_.is_open(); }
  [[nodiscard]] bool is_reading() const noexcept { return reading_; }
  /// True from connect() until its callback runs.
  [[nodiscard]] bool is_connecting() const noexcept;
  /// True for a Unix-domain socket, the only kind that can carry descriptors.
  [[nodiscard]] bool can_pass_fds() const noexcept { return unix_socket_; }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

 protected:
  /// open(), for the typed streams: EINVAL unless detect_fd_kind(fd) is `kind`.
  result<void> open_as(unique_fd fd, fd_kind kind) noexcept;
  /// Creates a non-blocking `domain` stream socket, opens the stream on it and connects it to
  /// `to` without blocking; `cb` gets the outcome on a later iteration. Writes queued meanwhile
  /// are sent once connected. On failure the descriptor is closed (the stream can be opened or
  /// connected again) and queued writes fail with the error. Immediate errors: EISCONN if
  /// open, and socket(2)'s.
  result<void> connect_socket(int domain, const socket_address& to, write_callback cb);

 private:
  friend struct detail::stream_state;
  friend struct detail::stream_opener;
  friend struct detail::stream_gather;
  // open() of a descriptor whose kind is known (tcp_socket, unix_stream_socket or pipe);
  // `nonblocking`: it is already.
  result<void> open_detected(unique_fd fd, fd_kind kind, bool nonblocking = false) noexcept;
  // Forgets the state of the open descriptor; `destroying` when the stream itself goes.
  void drop_state(bool destroying) noexcept;
  // Completes a write (or shutdown) refused at once with `ec`, in order with the others, on a
  // later iteration.
  void refuse(write_callback cb, std::error_code ec);
  // Queues `head` then `data` as one write; `owned` (with an empty head) is `data`'s vector,
  // taken instead of copied.
  bool enqueue(std::span<const std::byte> head, std::span<const std::byte> data,
               std::vector<std::byte>* owned, std::vector<unique_fd>&& fds, write_callback&& cb);
  unique_fd fd_;
  bool socket_ = false;
  bool unix_socket_ = false;
  bool reading_ = false;
  read_callback read_cb_;
  std::function<void()> drain_cb_;
  std::size_t high_mark_ = 64 * 1024;
  std::size_t low_mark_ = 16 * 1024;
  std::unique_ptr<detail::stream_state> state_;
};

}  // namespace kin
