// The Node.js channel codec (node v20, `serialization: 'json'`): one JSON text per line. The
// decoder turns the bytes and descriptors a stream hands up (in arrival order, cut anywhere)
// into messages, classified as Node classifies them; the encoder builds the lines Node reads.
//
// Descriptors and lines: a NODE_HANDLE line's one descriptor rides on the sendmsg of the line's
// first byte, and the kernel ends a read right after a segment that carries descriptors. So
// when a NODE_HANDLE line is complete its descriptor has arrived, and it takes the oldest one
// waiting. A descriptor still waiting once every byte read so far forms complete lines was
// attached to lines that do not claim it: the peer broke the protocol.
#pragma once

#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kin::detail {

struct node_message {
  enum class kind {
    user,         ///< for on_message (with its descriptor when it came in a NODE_HANDLE)
    internal,     ///< a NODE_ command other than the handle protocol's (with its descriptor...)
    handle_ack,   ///< NODE_HANDLE_ACK
    handle_nack,  ///< NODE_HANDLE_NACK
  };
  kind type = kind::user;
  /// The message's JSON text: the line (without its line break and surrounding whitespace),
  /// or for a NODE_HANDLE the text of its "msg" (unwrapped from a retransmission envelope);
  /// empty for an acknowledgement. Invalid UTF-8 was replaced by U+FFFD, as Node decodes it.
  std::string text;
  /// Whether it came in a NODE_HANDLE envelope (and so must be acknowledged), and its
  /// descriptor.
  bool handle = false;
  unique_fd fd;
};

class node_decoder {
 public:
  /// Lines longer than `max_line` bytes are an error (kin::errc::frame_too_large).
  explicit node_decoder(std::size_t max_line) noexcept : max_line_(max_line) {}

  /// Takes a chunk as the stream handed it up: bytes, and the descriptors that arrived with
  /// them (moved out of `fds`). Complete lines are decoded at once; messages before a bad line
  /// stay available from next(). Errors, after which the decoder is spent (every descriptor it
  /// held is closed, later calls fail the same way):
  /// - kin::errc::frame_too_large: a line longer than max_line;
  /// - kin::errc::malformed_message: a line that is not one JSON text (an empty one included),
  ///   a NODE_HANDLE whose "type" is not a string or whose retransmission envelope is broken;
  /// - kin::errc::unknown_handle_type: a NODE_HANDLE of a type Node does not send;
  /// - kin::errc::message_truncated: a NODE_HANDLE line whose descriptor has not arrived;
  ///   nack_owed() is then true (Node answers it with NODE_HANDLE_NACK);
  /// - kin::errc::stray_descriptor: a descriptor no line claims (see the file's comment).
  result<void> feed(std::span<const std::byte> bytes, std::span<unique_fd> fds);

  /// The next decoded message, if any.
  std::optional<node_message> next() noexcept;

  /// At the end of the stream: kin::errc::message_truncated if a line was cut off (bytes after
  /// the last line break that are not all whitespace) or kin::errc::stray_descriptor if
  /// descriptors arrived that no line claims (they are closed); else success.
  result<void> finish() noexcept;

  /// The last error was a NODE_HANDLE without its descriptor.
  [[nodiscard]] bool nack_owed() const noexcept { return nack_owed_; }
  /// Bytes held of the line not yet complete.
  [[nodiscard]] std::size_t buffered() const noexcept { return pending_.size(); }

 private:
  result<void> decode_line(std::string_view line);
  result<void> spoil(std::error_code ec) noexcept;

  std::size_t max_line_;
  std::string pending_;        // bytes of the line not yet complete
  std::deque<unique_fd> fds_;  // arrived, not yet claimed by a NODE_HANDLE line
  std::deque<node_message> ready_;
  std::string scratch_;  // a padded copy of a line for the JSON parser
  std::error_code spoiled_;
  bool nack_owed_ = false;
};

/// The line (with its line break) that sends the JSON text `json`: kin::errc::malformed_message
/// if it is not exactly one JSON text of well-formed UTF-8, or is one of the handle protocol's
/// own messages (NODE_HANDLE, NODE_HANDLE_ACK, NODE_HANDLE_NACK). Whitespace outside strings is
/// removed when the text holds a line break.
result<std::string> node_line(std::string_view json);

/// The NODE_HANDLE line (with its line break) that carries the message of `line` (as
/// node_line() made it) and a descriptor of `kind` (`family` is AF_INET or AF_INET6 for a UDP
/// socket), or EINVAL when Node cannot take a descriptor of that kind. The caller checks that a
/// unix_server is a stream socket (Node refuses a seqpacket one and then every later handle).
/// `raw`: the type is net.Native (dgram.Native for UDP), Node's unwrapped handle.
result<std::string> node_handle_line(std::string_view line, fd_kind kind, int family,
                                     bool raw = false);

/// `{"cmd":"NODE_HANDLE_ACK"}\n` and `{"cmd":"NODE_HANDLE_NACK"}\n`.
inline constexpr std::string_view node_ack_line = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n";
inline constexpr std::string_view node_nack_line = "{\"cmd\":\"NODE_HANDLE_NACK\"}\n";

}  // namespace kin::detail
