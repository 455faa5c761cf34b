// Message channels between processes: messages with descriptors over one end of an AF_UNIX
// stream socketpair, framed by kin's native codec (between kin processes) or spoken as Node.js's
// own IPC protocol (newline-delimited JSON), and fork(), which starts a child with one.
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

/// The wire format of a channel.
enum class channel_codec {
  /// Between kin processes: binary frames (a header with the payload length and the number of
  /// descriptors, then the payload), any bytes, up to 253 descriptors per message.
  native,
  /// Node.js's IPC protocol (`serialization: 'json'`): one JSON text per line, at most one
  /// descriptor per message, wrapped and acknowledged as Node does.
  node,
};

/// How a channel frames its messages.
struct channel_options {
  channel_codec codec = channel_codec::native;
  /// The longest payload (native) or line (node) sent or accepted. A peer that declares or
  /// sends a longer one is an error (kin::errc::frame_too_large) and the channel closes.
  std::size_t max_frame = 64 * 1024 * 1024;
  /// send() returns false once this many bytes are queued (as Node's 128 KiB); on_drain fires
  /// when the queue falls to a quarter of it.
  std::size_t high_water = 128 * 1024;
  /// Node codec: send descriptors as Node's raw handles ("net.Native", "dgram.Native" for UDP),
  /// which Node hands to 'internalMessage' listeners unwrapped, as its cluster module expects
  /// them, instead of as net.Socket, net.Server or dgram.Socket objects.
  bool node_raw_handles = false;
};

/// One end of a message channel.
///
/// **Native codec.** Each message is a frame: an 8-byte header (payload length, number of
/// descriptors) and the payload. A message's descriptors ride on the sendmsg that carries its
/// frame's first byte; several queued frames go out in one sendmsg. Descriptors are tied to
/// messages by the count in the header, never by read boundaries.
///
/// **Node codec.** What node v20 speaks on a `fork()` channel with `serialization: 'json'`.
/// A message is one JSON text (any JSON value) and goes out as one line; send() checks it is
/// JSON (Node dies on a line that is not) and removes whitespace that holds a line break.
/// A message with a descriptor goes out as `{"cmd":"NODE_HANDLE","type":T,"msg":<message>}`
/// with exactly that one descriptor on the sendmsg of the line's first byte, T chosen from the
/// descriptor's kind (net.Socket for a connected TCP or Unix stream socket or a pipe, net.Server
/// for a listening one, dgram.Socket for UDP, which also gets "dgramType"); a peer that is Node
/// then receives it in `process.on('message', (m, handle) => ...)`. Until the peer acknowledges
/// it (NODE_HANDLE_ACK) every later message waits, as Node does; a refusal (NODE_HANDLE_NACK) is
/// answered by sending it again with a fresh duplicate, up to three times. Received handles
/// are acknowledged once each, Node's retransmission envelope is unwrapped, and lines are
/// decoded as Node decodes them (invalid UTF-8 becomes U+FFFD; `\r\n` works). Messages whose
/// `cmd` is a string longer than five characters starting with "NODE_" are Node's internal
/// ones: they never reach on_message (see on_internal_message). The handle protocol's own
/// (NODE_HANDLE, NODE_HANDLE_ACK, NODE_HANDLE_NACK) cannot be sent.
///
/// **Errors.** Native: a frame longer than max_frame, one declaring more descriptors than
/// arrived with it, a header that does not parse. Node: a line longer than max_frame, a line
/// that is not JSON (an empty one included), a NODE_HANDLE that came without its descriptor
/// (answered with NODE_HANDLE_NACK, as Node answers, when no message of ours is queued before
/// it), a descriptor that no NODE_HANDLE line claims, an unknown handle type, an
/// acknowledgement nothing waits for. Both:
/// a truncated control message (MSG_CTRUNC) or a message cut off by the end of the stream.
/// Then on_error gets the kin::errc (or the socket's error), every descriptor received for
/// messages not yet delivered is closed, and the channel closes (on_disconnect follows, unless
/// on_error destroyed the channel). Complete messages that came before the bad one are
/// delivered (with MSG_CTRUNC, the read it cut is dropped whole). A peer that closes, or dies,
/// with messages of ours unread (ECONNRESET) is a disconnect, not an error.
///
/// **Trust.** Native descriptors are matched to frames by count: a peer that attaches more
/// descriptors than a frame declares shifts them onto its next frames. kin's own sender never
/// does; a channel is meant for a peer the process trusts to follow the protocol.
///
/// **Lifetime.** Like a stream: active (keeping the loop running) while open, unless unref()'d.
/// It may be destroyed from any of its callbacks. Destroying it drops the callbacks of the
/// messages in its stream's queue, as destroying a stream does; with the node codec, those held
/// behind a handle that waits for its acknowledgement get ECANCELED on a later iteration.
/// close() calls them all with ECANCELED, in order.
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

  /// In a child started by kin::fork() or by Node's `child_process.fork()`: the channel to the
  /// parent, from KIN_CHANNEL_FD (native codec) or else NODE_CHANNEL_FD (node codec; then
  /// NODE_CHANNEL_SERIALIZATION_MODE must be unset, empty or "json"). options.codec is set from
  /// which variable was found. The variables are removed from the environment (whatever happens
  /// next), so the child's own children do not inherit them. The channel stays unref'd (it does
  /// not keep the loop running) until a message callback is set, as Node does. Errors:
  /// kin::errc::no_channel when neither variable is set; EINVAL when the value is not a
  /// descriptor number; EPROTONOSUPPORT for a serialization mode other than json ("advanced"
  /// is V8's format); EBADF when that descriptor is not open; ENOTSOCK or EINVAL when it is not
  /// an AF_UNIX stream socket (a descriptor that is not is left open: it is not the channel's).
  static result<std::unique_ptr<channel>> from_environment(loop& l, channel_options options = {});

  /// Queues `message` with `fds` riding on it. The channel owns the descriptors from now on and
  /// closes them once sent (the receiver has its own copies), or when the send fails; to keep
  /// yours, use send_keeping(). Returns false when the bytes queued (with the node codec, those
  /// waiting for an acknowledgement included) are above the high-water mark; the message is
  /// still queued. `cb` gets the outcome once, in order with other sends except for a refused
  /// one (reported on the next iteration): when the bytes are written, or with the node codec
  /// and a descriptor, when the peer acknowledged it. Errors through `cb`: EMSGSIZE for a
  /// message longer than max_frame or more descriptors than the codec carries (253 native, 1
  /// node); EBADF for a descriptor that is not open; ENOTCONN when the channel is not open
  /// or is disconnecting; node codec: EINVAL for
  /// a message that is not JSON or is one of the handle protocol's, or a descriptor Node cannot
  /// take (a file, a terminal, a character device, a datagram or seqpacket Unix socket, ...),
  /// kin::errc::handle_not_acknowledged when the peer refused it four times; ECANCELED when
  /// the channel closed first; the stream's errors (EPIPE once the peer is gone).
  bool send(std::string_view message, std::vector<unique_fd> fds = {}, send_callback cb = {});
  /// As send(), with duplicates of `fds` (made close-on-exec): the caller's stay open and
  /// remain the caller's. Errors through `cb` also: those of fcntl(F_DUPFD_CLOEXEC) (EBADF,
  /// EMFILE).
  bool send_keeping(std::string_view message, std::span<const int> fds, send_callback cb = {});

  /// Each message in order, with its descriptors rebuilt as handles on this loop (adopt()).
  /// Messages that arrive while no callback is set are dropped (their descriptors closed).
  void on_message(message_callback cb);
  /// Node codec: the internal messages (`cmd` starting with "NODE_") other than the handle
  /// protocol's, e.g. NODE_CLUSTER, NODE_SOCKET_NOTIFY_CLOSE, with their handle when one came
  /// in a NODE_HANDLE envelope. Dropped when no callback is set.
  void on_internal_message(message_callback cb) { internal_cb_ = std::move(cb); }
  void on_error(error_callback cb) { error_cb_ = std::move(cb); }
  /// Once, when the channel closes: the peer closed its end or died (mid-frame included), an
  /// error closed it, or disconnect() finished.
  void on_disconnect(std::function<void()> cb) { disconnect_cb_ = std::move(cb); }
  /// Once the bytes queued (see send()) fall to a quarter of high_water after send() returned
  /// false.
  void on_drain(std::function<void()> cb) { drain_cb_ = std::move(cb); }

  /// Stops reading, sends what is queued, then closes (on_disconnect follows).
  void disconnect();
  /// Closes at once: queued messages are dropped (their callbacks get ECANCELED), and
  /// on_disconnect is not called.
  void close() noexcept;

  [[nodiscard]] bool is_open() const noexcept;
  [[nodiscard]] channel_codec codec() const noexcept { return options_.codec; }
  /// Bytes queued and not yet sent.
  [[nodiscard]] std::size_t queued_bytes() const noexcept;

  void ref() noexcept;
  void unref() noexcept;

 private:
  friend struct detail::channel_state;
  void receive(std::error_code ec, std::span<const std::byte> data, std::span<unique_fd> fds);
  void receive_native(std::span<const std::byte> data, std::span<unique_fd> fds);
  // Hands a message to on_message (or on_internal_message); false once the channel is gone.
  bool deliver(std::string message, std::vector<any_handle> handles, bool internal);
  bool refuse(int err, send_callback& cb);
  [[nodiscard]] bool below_high_water() noexcept;
  void maybe_drain();
  void start_shutdown();
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
  message_callback internal_cb_;
  error_callback error_cb_;
  std::function<void()> disconnect_cb_;
  std::function<void()> drain_cb_;
  bool over_high_ = false;  // send() returned false: on_drain is owed
  bool message_cb_replaced_ = false;
  bool ref_on_message_ = false;  // from_environment: ref'd once a message callback is set
};

/// How kin::fork starts a child with a channel.
struct fork_options {
  /// Everything but file and args (set from fork's arguments) and the channel's descriptor.
  spawn_options spawn;
  /// The child's descriptor number for its end of the channel (3 by default; 0-2 allowed).
  int channel_fd = 3;
  /// The parent's end; its codec also picks the child's variables.
  channel_options channel;
};

/// A child started by kin::fork, and the parent's end of its channel.
struct forked {
  process child;
  std::unique_ptr<kin::channel> channel;
};

/// Starts `program` (looked up as spawn does) with `args` (after argv[0], which is `program`)
/// and a channel: the child gets its end of an AF_UNIX stream socketpair at
/// options.channel_fd and, in its environment, KIN_CHANNEL_FD=<that number> (native codec) or
/// NODE_CHANNEL_FD=<that number> and NODE_CHANNEL_SERIALIZATION_MODE=json (node codec: what
/// Node's own fork() sets, so `kin::fork(l, "node", {"worker.js"}, node_options)` gives a Node
/// child its `process.send` and `process.on('message')`), for channel::from_environment().
/// The other codec's variable is removed from the child's environment. Errors: as spawn();
/// EINVAL for a negative channel_fd or one past the descriptor limit.
KIN_API result<forked, spawn_error> fork(loop& l, const std::string& program,
                                         const std::vector<std::string>& args,
                                         const fork_options& options = {});

}  // namespace kin
