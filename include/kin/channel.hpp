// Message channels between processes: framed messages with descriptors over one end of an
// AF_UNIX stream socketpair. This step has the native codec (between kin processes); the Node.js
// codec, fork() and the child's from_environment() build on it.
#pragma once

#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace kin {

namespace detail {
struct channel_state;
struct call_guard;
}  // namespace detail

/// How a channel frames its messages.
struct channel_options {
  /// The longest payload sent or accepted. A peer that declares a longer frame is an error
  /// (kin::errc::frame_too_large) and the channel closes.
  std::size_t max_frame = 64 * 1024 * 1024;
  /// send() returns false once this many bytes are queued (as Node's 128 KiB); on_drain fires
  /// when the queue falls to a quarter of it.
  std::size_t high_water = 128 * 1024;
};

/// One end of a message channel.
///
/// **Native codec.** Each message is a frame: an 8-byte header (payload length, number of
/// descriptors) and the payload. A message's descriptors ride on the sendmsg that carries its
/// frame's first byte; several queued frames go out in one sendmsg. Descriptors are tied to
/// messages by the count in the header, never by read boundaries.
///
/// **Errors.** A frame longer than max_frame, one declaring more descriptors than arrived with
/// it, a header that does not parse, a truncated control message (MSG_CTRUNC) or a frame cut off
/// by the end of the stream: on_error gets the kin::errc (or the socket's error), every
/// descriptor received for frames not yet delivered is closed, and the channel closes
/// (on_disconnect follows, unless on_error destroyed the channel). Complete messages that came
/// before the bad frame in earlier reads are delivered (with MSG_CTRUNC, the read it cut is
/// dropped whole). A peer that closes, or dies, with messages of ours unread (ECONNRESET) is a
/// disconnect, not an error.
///
/// **Trust.** Descriptors are matched to frames by count: a peer that attaches more descriptors
/// than a frame declares shifts them onto its next frames. kin's own sender never does; a
/// channel is meant for a peer the process trusts to follow the protocol.
///
/// **Lifetime.** Like a stream: active (keeping the loop running) while open, unless unref()'d.
/// It may be destroyed from any of its callbacks.
class KIN_API channel {
 public:
  using message_callback =
      std::function<void(std::string message, std::vector<any_handle> handles)>;
  using error_callback = std::function<void(std::error_code ec)>;
  using send_callback = std::function<void(std::error_code ec)>;

  explicit channel(loop& l, channel_options options = {});
  ~channel();
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  /// Takes ownership of one end of a connected AF_UNIX stream socket and starts reading.
  /// Errors: EISCONN if open; ENOTSOCK or EINVAL (and `fd` closed) if it is not an AF_UNIX
  /// stream socket; EBADF.
  result<void> open(unique_fd fd) noexcept;

  /// In a child started by kin::fork(): the channel to the parent, from KIN_CHANNEL_FD. The
  /// variable is removed from the environment (whatever happens next), so the child's own
  /// children do not inherit it. The channel stays unref'd (it does not keep the loop running)
  /// until a message callback is set, as Node does. Errors: kin::errc::no_channel when the
  /// variable is not set; EINVAL when it is not a descriptor number; EBADF when that
  /// descriptor is not open; ENOTSOCK or EINVAL when it is not an AF_UNIX stream socket (a
  /// descriptor that is not is left open: it is not the channel's).
  static result<std::unique_ptr<channel>> from_environment(loop& l, channel_options options = {});

  /// Queues `message` with `fds` riding on it. The channel owns the descriptors from now on and
  /// closes them once sent (the receiver has its own copies), or when the send fails: to keep
  /// one, send a dup of it. Returns false when the queue is above the high-water mark (the
  /// message is still queued); `cb` gets the outcome, in order with other sends except for a
  /// refused one (reported on the next iteration). Errors through `cb`: EMSGSIZE for a message
  /// longer than max_frame or more than 253 descriptors; ENOTCONN when the channel is not open
  /// or is disconnecting; the stream's errors (EPIPE once the peer is gone).
  bool send(std::string_view message, std::vector<unique_fd> fds = {}, send_callback cb = {});

  /// Each message in order, with its descriptors rebuilt as handles on this loop (adopt()).
  /// Messages that arrive while no callback is set are dropped (their descriptors closed).
  void on_message(message_callback cb);
  void on_error(error_callback cb) { error_cb_ = std::move(cb); }
  /// Once, when the channel closes: the peer closed its end or died (mid-frame included), an
  /// error closed it, or disconnect() finished.
  void on_disconnect(std::function<void()> cb) { disconnect_cb_ = std::move(cb); }
  void on_drain(std::function<void()> cb);

  /// Stops reading, sends what is queued, then closes (on_disconnect follows).
  void disconnect();
  /// Closes at once: queued messages are dropped (their callbacks get ECANCELED), and
  /// on_disconnect is not called.
  void close() noexcept;

  [[nodiscard]] bool is_open() const noexcept;
  /// Bytes queued and not yet sent.
  [[nodiscard]] std::size_t queued_bytes() const noexcept;

  void ref() noexcept;
  void unref() noexcept;

 private:
  friend struct detail::channel_state;
  void receive(std::error_code ec, std::span<const std::byte> data, std::span<unique_fd> fds);
  void deliver_error(std::error_code ec);
  void closed_by_peer_or_error();

  loop& loop_;
  channel_options options_;
  std::unique_ptr<stream> stream_;
  // Shared with the callbacks the stream may run after a close (a pending shutdown's), which
  // hold it weakly: a closed or destroyed channel is never called back.
  std::shared_ptr<detail::channel_state> state_;
  detail::call_guard* calling_ = nullptr;  // the innermost frame that is calling user code
  message_callback message_cb_;
  error_callback error_cb_;
  std::function<void()> disconnect_cb_;
  bool message_cb_replaced_ = false;
  bool ref_on_message_ = false;  // from_environment: ref'd once a message callback is set
};

/// How kin::fork starts a child with a channel.
struct fork_options {
  /// Everything but file and args (set from fork's arguments) and the channel's descriptor.
  spawn_options spawn;
  /// The child's descriptor number for its end of the channel (3 by default; 0-2 allowed).
  int channel_fd = 3;
  channel_options channel;
};

/// A child started by kin::fork, and the parent's end of its channel.
struct forked {
  process child;
  std::unique_ptr<kin::channel> channel;
};

/// Starts `program` (looked up as spawn does) with `args` (after argv[0], which is `program`)
/// and a channel: the child gets its end of an AF_UNIX stream socketpair at
/// options.channel_fd and KIN_CHANNEL_FD=<that number> in its environment, for
/// channel::from_environment(). Errors: as spawn(); EINVAL for a negative channel_fd.
KIN_API result<forked, spawn_error> fork(loop& l, const std::string& program,
                                         const std::vector<std::string>& args,
                                         const fork_options& options = {});

}  // namespace kin
