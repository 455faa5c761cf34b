// kin::channel: messages written through a stream (which batches queued writes, and their
// descriptors, into one sendmsg) and rebuilt by the codec's decoder. The native codec is here;
// the Node codec's handle protocol is in channel_node.cpp, fork() and from_environment() in
// fork.cpp.
#include <kin/channel.hpp>

#include "call_guard.hpp"
#include "channel/channel_state.hpp"
#include "posix/sys.hpp"
#include "stream_gather.hpp"

#include <kin/fd_kind.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

namespace kin {

namespace {

// Frames up to this size are joined on the stack (below the stream's coalescing threshold).
constexpr std::size_t small_frame = 2048;

}  // namespace

namespace detail {

channel_state::channel_state(channel& c, const channel_options& o) : owner(c) {
  if (o.codec == channel_codec::node) {
    node.emplace(o.max_frame);
  } else {
    native.emplace(o.max_frame);
  }
}

}  // namespace detail

channel::channel(loop& l, channel_options options)
    : loop_(l), options_(options), stream_(std::make_unique<stream>(l)) {
  // The stream reports when its own queue falls to the low mark; the channel adds what the
  // node codec holds back and decides when on_drain is due (maybe_drain).
  const std::size_t low = options_.high_water / 4;
  stream_->set_water_marks(low, low);
  stream_->on_drain([this] { maybe_drain(); });
}

channel::~channel() {
  detail::call_guard::mark_all(calling_, true);
  // Messages the node codec held back get ECANCELED (those in the stream's queue are dropped
  // with it, as a destroyed stream drops them).
  if (state_) state_->cancel_held(true);
}

result<void> channel::open(unique_fd fd) noexcept {
  if (stream_->is_open()) return fail(errno_code(EISCONN));
  auto kind = detect_fd_kind(fd.get());
  if (!kind) return fail(kind.error());
  if (*kind != fd_kind::unix_stream_socket) {
    // Closed here: the descriptor was handed over.
    return fail(errno_code(detail::not_a_channel(*kind)));
  }
  if (auto r = stream_->open(std::move(fd)); !r) return r;
  try {
    state_ = std::make_shared<detail::channel_state>(*this, options_);
  } catch (...) {
    stream_->close();
    return fail(errno_code(ENOMEM));
  }
  auto started = stream_->read_start(
      [this](std::error_code ec, std::span<const std::byte> data, std::span<unique_fd> fds) {
        try {
          receive(ec, data, fds);
        } catch (const std::bad_alloc&) {
          deliver_error(errno_code(ENOMEM));
        }
      });
  if (!started) {
    (void)stream_->release();
    state_.reset();
    return started;
  }
  return {};
}

void channel::receive(std::error_code ec, std::span<const std::byte> data,
                      std::span<unique_fd> fds) {
  detail::channel_state& s = *state_;
  if (!ec) {  // first: comparing an error_code with a condition costs calls into its category
    if (s.node) {
      s.receive_node(data, fds);
    } else {
      receive_native(data, fds);
    }
    return;
  }
  // A peer that closed with bytes of ours unread resets the connection: for a channel that is
  // the peer going away, as EOF is.
  if (ec == errc::eof || ec == std::errc::connection_reset) {
    auto r = s.native ? s.native->finish() : s.node->finish();
    if (!r) {
      deliver_error(r.error());
      return;
    }
    closed_by_peer_or_error();
    return;
  }
  // MSG_CTRUNC arrives as message_truncated with what did arrive: the decoder never sees it,
  // every descriptor is closed with the span.
  deliver_error(ec);
}

void channel::receive_native(std::span<const std::byte> data, std::span<unique_fd> fds) {
  detail::channel_state& s = *state_;
  if (fds.empty()) {
    // Whole frames without descriptors go from the read buffer to their message; the rest
    // (a partial frame, descriptors, anything invalid) goes through the decoder.
    while (const std::size_t size = s.native->whole_plain_frame(data)) {
      constexpr std::size_t header = detail::native_frame::header_size;
      std::string message(reinterpret_cast<const char*>(data.data()) + header, size - header);
      data = data.subspan(size);
      if (!deliver(std::move(message), {}, false)) return;
    }
    if (data.empty()) return;
  }
  auto fed = s.native->feed(data, fds);
  detail::call_guard guard(calling_);
  while (auto frame = s.native->next()) {
    std::vector<any_handle> handles;
    handles.reserve(frame->fds.size());
    for (unique_fd& received : frame->fds) {
      auto h = adopt(loop_, std::move(received));
      // adopt() fails only for a descriptor that is not open, which cannot arrive here.
      if (h) handles.push_back(std::move(*h));
    }
    if (!deliver(std::move(frame->payload), std::move(handles), false)) return;
  }
  if (!fed) deliver_error(fed.error());
}

bool channel::deliver(std::string message, std::vector<any_handle> handles, bool internal) {
  detail::call_guard guard(calling_);
  if (internal) {
    if (message_callback cb = internal_cb_) cb(std::move(message), std::move(handles));
    return !guard.gone;
  }
  // Held here while it runs: it may set another callback (or none), which must not destroy the
  // one that is running.
  message_callback cb = std::move(message_cb_);
  message_cb_ = nullptr;
  message_cb_replaced_ = false;
  if (cb) cb(std::move(message), std::move(handles));
  if (guard.owner_gone) return false;
  // Kept even when the callback closed the channel: it may be opened again.
  if (!message_cb_replaced_) message_cb_ = std::move(cb);
  return !guard.gone;
}

bool channel::refuse(int err, send_callback& cb) {
  // Through the loop, never from inside send().
  if (cb) loop_.post([cb = std::move(cb), err] { cb(errno_code(err)); });
  return below_high_water();
}

bool channel::below_high_water() noexcept {
  if (queued_bytes() <= options_.high_water) return true;
  over_high_ = true;
  return false;
}

bool channel::send(std::string_view message, std::vector<unique_fd> fds, send_callback cb) {
  if (!stream_->is_open() || !state_ || state_->disconnecting) return refuse(ENOTCONN, cb);
  const bool node = options_.codec == channel_codec::node;
  const std::size_t max_fds = node ? 1 : detail::native_frame::max_fds;
  if (message.size() > options_.max_frame || fds.size() > max_fds || message.size() > UINT32_MAX) {
    return refuse(EMSGSIZE, cb);
  }
  if (node) {
    if (const int err = state_->send_node(message, fds, cb); err != 0) return refuse(err, cb);
    return below_high_water();
  }
  // A descriptor that is not open would fail the sendmsg that batches it, and every write
  // queued with it: refused here, alone.
  for (const unique_fd& fd : fds) {
    if (!sys::is_valid_fd(fd.get())) return refuse(EBADF, cb);
  }
  std::byte header[detail::native_frame::header_size];
  detail::encode_native_header(static_cast<std::uint32_t>(message.size()),
                               static_cast<std::uint16_t>(fds.size()), header);
  const auto payload = std::as_bytes(std::span(message));
  if (sizeof header + payload.size() <= small_frame) {
    // Joined on the stack, to be copied once into the stream's queue (one insert is cheaper, for a
    // small frame, than the two a gathered write makes).
    std::byte frame[small_frame];
    std::memcpy(frame, header, sizeof header);
    if (!payload.empty()) std::memcpy(frame + sizeof header, payload.data(), payload.size());
    const std::span<const std::byte> bytes(frame, sizeof header + payload.size());
    if (fds.empty()) {
      stream_->write(bytes, std::move(cb));
    } else {
      stream_->write(bytes, std::move(fds), std::move(cb));
    }
    return below_high_water();
  }
  // A larger one goes to the stream as the header and the caller's bytes: sent from here when
  // nothing is queued, with only what the kernel does not take copied, aligned to the caller's
  // bytes (no intermediate frame, no copy that 4K aliasing slows down).
  detail::stream_gather::write(*stream_, header, payload, std::move(fds), std::move(cb));
  return below_high_water();
}

bool channel::send_keeping(std::string_view message, std::span<const int> fds, send_callback cb) {
  std::vector<unique_fd> copies;
  copies.reserve(fds.size());
  for (const int fd : fds) {
    auto copy = sys::dup_cloexec(fd);  // EBADF for a negative number too
    if (!copy) return refuse(copy.error().value(), cb);
    copies.push_back(std::move(*copy));
  }
  return send(message, std::move(copies), std::move(cb));
}

void channel::maybe_drain() {
  if (!over_high_ || queued_bytes() > options_.high_water / 4) return;
  over_high_ = false;
  detail::call_guard guard(calling_);
  // Held while it runs, as the message callback is.
  auto cb = std::move(drain_cb_);
  drain_cb_ = nullptr;
  if (cb) cb();
  if (guard.owner_gone) return;
  if (!drain_cb_) drain_cb_ = std::move(cb);
}

void channel::on_message(message_callback cb) {
  message_cb_ = std::move(cb);
  message_cb_replaced_ = true;
  if (message_cb_ && ref_on_message_) {
    ref_on_message_ = false;
    stream_->ref();
  }
}

void channel::disconnect() {
  if (!stream_->is_open() || !state_ || state_->disconnecting) return;
  state_->disconnecting = true;
  // The node codec keeps reading until the handle in flight is acknowledged and what it held
  // back is sent (as Node does); then the shutdown starts (channel_node.cpp).
  if (state_->node && state_->node_queue_busy()) return;
  start_shutdown();
}

void channel::start_shutdown() {
  state_->shutting_down = true;
  stream_->read_stop();
  // A close() (or the channel's end) before the shutdown completes has the stream report it
  // later: only a channel still in this disconnect hears of it.
  std::weak_ptr<detail::channel_state> weak = state_;
  stream_->shutdown([weak](std::error_code) {
    if (auto s = weak.lock()) s->owner.closed_by_peer_or_error();
  });
}

void channel::close() noexcept {
  // Every frame on the stack is told, and none will unlink itself: the chain starts afresh.
  detail::call_guard::mark_all(calling_, false);
  calling_ = nullptr;
  stream_->close();
  if (state_) state_->cancel_held(true);
  state_.reset();
  over_high_ = false;
}

bool channel::is_open() const noexcept { return stream_->is_open() && state_ != nullptr; }
std::size_t channel::queued_bytes() const noexcept {
  return stream_->write_queue_size() + (state_ ? state_->held_bytes : 0);
}
void channel::ref() noexcept { stream_->ref(); }
void channel::unref() noexcept { stream_->unref(); }

void channel::deliver_error(std::error_code ec) {
  auto err = error_cb_;
  auto disc = std::move(disconnect_cb_);
  disconnect_cb_ = nullptr;
  close();
  // Each may destroy the channel: the callbacks were copied out first, and on_disconnect is
  // not called for a channel on_error destroyed.
  detail::call_guard guard(calling_);
  if (err) err(ec);
  if (guard.owner_gone) return;
  if (disc) disc();
}

void channel::closed_by_peer_or_error() {
  auto disc = std::move(disconnect_cb_);
  disconnect_cb_ = nullptr;
  close();
  if (disc) disc();
}

}  // namespace kin
