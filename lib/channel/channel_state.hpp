// What an open kin::channel holds besides its stream: the decoder of its codec and, for the
// Node codec, the handle protocol's sender side (one handle in flight until acknowledged, the
// messages sent meanwhile held back in order).
#pragma once

#include <kin/channel.hpp>

#include "channel/native_frame.hpp"
#include "channel/node_frame.hpp"

#include <cerrno>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace kin::detail {

// The error for a descriptor of `kind` that is not a channel (an AF_UNIX stream socket):
// EINVAL for another socket, ENOTSOCK for anything else.
inline int not_a_channel(fd_kind kind) noexcept {
  switch (kind) {
    case fd_kind::pipe:
    case fd_kind::file:
    case fd_kind::character_device:
    case fd_kind::directory:
    case fd_kind::other:
      return ENOTSOCK;
    default:
      return EINVAL;
  }
}

// A message sent while a handle waits for its acknowledgement: its line, built and checked.
struct held_message {
  std::string line;
  unique_fd fd;  // for a NODE_HANDLE line
  channel::send_callback cb;
};

struct channel_state {
  channel_state(channel& c, const channel_options& o);

  channel& owner;
  std::optional<native_decoder> native;
  std::optional<node_decoder> node;
  bool disconnecting = false;  // disconnect() was called: no more sends
  bool shutting_down = false;  // its shutdown started (after the node codec's queue drained)

  // Node codec, sending: the handle in flight.
  bool awaiting_ack = false;
  std::string handle_line;
  unique_fd retained;  // a duplicate, to send again if the peer refuses it
  channel::send_callback handle_cb;
  int retransmissions = 0;
  std::uint64_t handle_serial = 0;
  std::deque<held_message> held;
  std::size_t held_bytes = 0;

  // Node codec (channel_node.cpp).
  void receive_node(std::span<const std::byte> data, std::span<unique_fd> fds);
  // 0 when queued, or the errno to refuse the message with.
  int send_node(std::string_view message, std::vector<unique_fd>& fds, channel::send_callback& cb);
  [[nodiscard]] bool node_queue_busy() const noexcept { return awaiting_ack || !held.empty(); }
  // Drops the messages the node codec still holds; with `notify`, their callbacks get
  // ECANCELED on a later iteration (the channel closed).
  void cancel_held(bool notify) noexcept;

 private:
  int write_handle(std::string& line, unique_fd& fd, channel::send_callback& cb);
  void send_now(std::string_view line);
  void transmit_handle(unique_fd fd);
  void acknowledged(bool ack);
  void complete_handle(std::error_code ec);
  void flush_held();
};

}  // namespace kin::detail
