// The Node codec's side of kin::channel: receiving (each NODE_HANDLE acknowledged once, at
// once, before its handle is rebuilt, as Node does) and the sender's handle protocol (one
// handle in flight until the peer acknowledges it; every message sent meanwhile held back in
// order; a refused handle sent again with a fresh duplicate, up to three times).
#include "call_guard.hpp"
#include "channel/channel_state.hpp"
#include "posix/sys.hpp"

#include <kin/fd_kind.hpp>

#include <cerrno>
#include <utility>

#include <sys/socket.h>

namespace kin::detail {

namespace {

constexpr int max_retransmissions = 3;  // as Node: four sends in all

std::span<const std::byte> bytes_of(std::string_view s) noexcept {
  return std::as_bytes(std::span(s.data(), s.size()));
}

int socket_family(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  return ss.ss_family;
}

}  // namespace

void channel_state::receive_node(std::span<const std::byte> data, std::span<unique_fd> fds) {
  // User code may close or destroy the channel; this keeps the state alive until the loop below
  // has seen that it must stop.
  std::shared_ptr<channel_state> keep = owner.state_;
  auto fed = node->feed(data, fds);
  call_guard guard(owner.calling_);
  while (auto m = node->next()) {
    using kind = node_message::kind;
    if (m->type == kind::handle_ack || m->type == kind::handle_nack) {
      acknowledged(m->type == kind::handle_ack);
      if (guard.gone) return;
      continue;
    }
    if (m->handle) {
      // Node acknowledges before it builds the handle; the acknowledgement is never held back.
      send_now(node_ack_line);
    }
    std::vector<any_handle> handles;
    if (m->fd) {
      auto h = adopt(owner.loop_, std::move(m->fd));
      if (h) handles.push_back(std::move(*h));
    }
    if (!owner.deliver(std::move(m->text), std::move(handles), m->type == kind::internal)) return;
  }
  if (!fed) {
    // Node answers a NODE_HANDLE that came without its descriptor with a refusal. The channel
    // closes right after, dropping what is queued: the refusal goes out if nothing of ours waits
    // before it (acknowledgements go out at once, see send_now) and the kernel takes it.
    if (node->nack_owed() && owner.stream_->write_queue_size() == 0) {
      (void)owner.stream_->try_write(bytes_of(node_nack_line));
    }
    owner.deliver_error(fed.error());
  }
}

// A short line of the protocol's own (an acknowledgement): written at once when nothing is
// queued before it, else queued.
void channel_state::send_now(std::string_view line) {
  std::size_t done = 0;
  if (owner.stream_->write_queue_size() == 0) {
    if (auto n = owner.stream_->try_write(bytes_of(line))) done = *n;
  }
  if (done < line.size()) owner.stream_->write(bytes_of(line.substr(done)));
}

int channel_state::send_node(std::string_view message, std::vector<unique_fd>& fds,
                             channel::send_callback& cb) {
  auto line = node_line(message);
  if (!line) return EINVAL;
  // The peer's limit is on the line without its line break; a minified message may be shorter.
  const std::size_t max_line = owner.options_.max_frame;
  if (line->size() - 1 > max_line) return EMSGSIZE;
  if (fds.empty()) {
    if (node_queue_busy()) {
      held_bytes += line->size();
      held.push_back({std::move(*line), unique_fd(), std::move(cb)});
    } else {
      owner.stream_->write(bytes_of(*line), std::move(cb));
    }
    return 0;
  }
  // Only what Node can rebuild: anything else aborts a Node peer or blocks its channel.
  const int fd = fds.front().get();
  auto kind = detect_fd_kind(fd);
  if (!kind) return kind.error().value();
  if (*kind == fd_kind::unix_server && !sys::is_stream_socket(fd)) return EINVAL;
  const int family = *kind == fd_kind::udp_socket ? socket_family(fd) : 0;
  auto envelope = node_handle_line(*line, *kind, family, owner.options_.node_raw_handles);
  if (!envelope) return envelope.error().value();
  if (envelope->size() - 1 > max_line) return EMSGSIZE;
  if (node_queue_busy()) {
    held_bytes += envelope->size();
    held.push_back({std::move(*envelope), std::move(fds.front()), std::move(cb)});
    return 0;
  }
  return write_handle(*envelope, fds.front(), cb);
}

// Takes the line, descriptor and callback only when it succeeds.
int channel_state::write_handle(std::string& line, unique_fd& fd, channel::send_callback& cb) {
  auto copy = sys::dup_cloexec(fd.get());
  if (!copy) return copy.error().value();
  awaiting_ack = true;
  retained = std::move(*copy);
  handle_line = std::move(line);
  handle_cb = std::move(cb);
  retransmissions = 0;
  ++handle_serial;
  transmit_handle(std::move(fd));
  return 0;
}

// Writes the handle line in flight with `fd` on its first byte. Success waits for the
// acknowledgement; a failed write ends the handle's wait.
void channel_state::transmit_handle(unique_fd fd) {
  std::vector<unique_fd> carried;
  carried.push_back(std::move(fd));
  std::weak_ptr<channel_state> weak = owner.state_;
  owner.stream_->write(bytes_of(handle_line), std::move(carried),
                       [weak, serial = handle_serial](std::error_code ec) {
                         if (!ec) return;
                         auto s = weak.lock();
                         if (s && s->awaiting_ack && s->handle_serial == serial) {
                           s->complete_handle(ec);
                         }
                       });
}

void channel_state::acknowledged(bool ack) {
  if (!awaiting_ack) {
    // Node crashes on this; kin reports the broken protocol.
    owner.deliver_error(make_error_code(errc::unexpected_acknowledgement));
    return;
  }
  if (ack) {
    complete_handle({});
    return;
  }
  if (retransmissions == max_retransmissions) {
    complete_handle(make_error_code(errc::handle_not_acknowledged));
    return;
  }
  ++retransmissions;
  auto copy = sys::dup_cloexec(retained.get());
  if (!copy) {
    complete_handle(copy.error());
    return;
  }
  transmit_handle(std::move(*copy));
}

// The handle in flight is done with (`ec` says how): its callback runs, then what was held
// back goes out, and a disconnect that waited for this starts.
void channel_state::complete_handle(std::error_code ec) {
  std::shared_ptr<channel_state> keep = owner.state_;
  awaiting_ack = false;
  retained.reset();
  handle_line.clear();
  auto cb = std::move(handle_cb);
  handle_cb = nullptr;
  {
    call_guard guard(owner.calling_);
    if (cb) cb(ec);
    if (guard.gone) return;
  }
  flush_held();
  if (disconnecting && !shutting_down && !node_queue_busy()) {
    owner.start_shutdown();
    return;
  }
  owner.maybe_drain();
}

void channel_state::flush_held() {
  while (!awaiting_ack && !held.empty()) {
    held_message m = std::move(held.front());
    held.pop_front();
    held_bytes -= m.line.size();
    if (!m.fd) {
      owner.stream_->write(bytes_of(m.line), std::move(m.cb));
      continue;
    }
    if (const int err = write_handle(m.line, m.fd, m.cb); err != 0) {
      // Reported on a later iteration, as a refused send is.
      if (m.cb) owner.loop_.post([cb = std::move(m.cb), err] { cb(errno_code(err)); });
    }
  }
}

void channel_state::cancel_held(bool notify) noexcept {
  std::vector<channel::send_callback> cbs;
  if (notify) {
    try {
      if (awaiting_ack && handle_cb) cbs.push_back(std::move(handle_cb));
      for (held_message& m : held) {
        if (m.cb) cbs.push_back(std::move(m.cb));
      }
    } catch (const std::bad_alloc&) {
      // Without room to keep them, the callbacks are dropped with the messages.
    }
  }
  awaiting_ack = false;
  handle_cb = nullptr;
  held.clear();
  held_bytes = 0;
  retained.reset();
  if (cbs.empty()) return;
  try {
    owner.loop_.post([cbs = std::move(cbs)] {
      for (const auto& cb : cbs) cb(std::make_error_code(std::errc::operation_canceled));
    });
  } catch (const std::bad_alloc&) {
  }
}

}  // namespace kin::detail
