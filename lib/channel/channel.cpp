// kin::channel with the native codec: frames written through a stream (which batches queued
// frames, and their descriptors, into one sendmsg) and rebuilt by native_decoder.
#include <kin/channel.hpp>

#include "call_guard.hpp"
#include "channel/native_frame.hpp"

#include <kin/fd_kind.hpp>
#include <kin/this_process.hpp>

#include <cerrno>
#include <charconv>
#include <optional>

#include <fcntl.h>
#include <sys/resource.h>
#include <cstdint>
#include <cstring>
#include <new>

namespace kin {

namespace detail {

struct channel_state {
  channel_state(channel& c, std::size_t max_frame) : owner(c), decoder(max_frame) {}
  channel& owner;
  native_decoder decoder;
  bool disconnecting = false;
};

}  // namespace detail

channel::channel(loop& l, channel_options options)
    : loop_(l), options_(options), stream_(std::make_unique<stream>(l)) {
  stream_->set_water_marks(options_.high_water, options_.high_water / 4);
}

channel::~channel() { detail::call_guard::mark_all(calling_, true); }

result<void> channel::open(unique_fd fd) noexcept {
  if (stream_->is_open()) return fail(errno_code(EISCONN));
  auto kind = detect_fd_kind(fd.get());
  if (!kind) return fail(kind.error());
  if (*kind != fd_kind::unix_stream_socket) {
    // Closed here: the descriptor was handed over.
    const bool socket = *kind == fd_kind::tcp_server || *kind == fd_kind::tcp_socket ||
                        *kind == fd_kind::unix_server || *kind == fd_kind::unix_seqpacket_socket ||
                        *kind == fd_kind::unix_datagram_socket || *kind == fd_kind::udp_socket ||
                        *kind == fd_kind::socket_other;
    return fail(errno_code(socket ? EINVAL : ENOTSOCK));
  }
  if (auto r = stream_->open(std::move(fd)); !r) return r;
  try {
    state_ = std::make_shared<detail::channel_state>(*this, options_.max_frame);
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
  // A peer that closed with bytes of ours unread resets the connection: for a channel that is
  // the peer going away, as EOF is.
  if (ec == errc::eof || ec == std::errc::connection_reset) {
    if (auto r = s.decoder.finish(); !r) {
      deliver_error(r.error());
      return;
    }
    closed_by_peer_or_error();
    return;
  }
  if (ec) {
    // MSG_CTRUNC arrives as message_truncated with what did arrive: the decoder never sees it,
    // every descriptor is closed with the span.
    deliver_error(ec);
    return;
  }
  auto fed = s.decoder.feed(data, fds);
  detail::call_guard guard(calling_);
  while (auto frame = s.decoder.next()) {
    std::vector<any_handle> handles;
    handles.reserve(frame->fds.size());
    for (unique_fd& received : frame->fds) {
      auto h = adopt(loop_, std::move(received));
      // adopt() fails only for a descriptor that is not open, which cannot arrive here.
      if (h) handles.push_back(std::move(*h));
    }
    // Held here while it runs: it may set another callback (or none), which must not destroy
    // the one that is running.
    message_callback cb = std::move(message_cb_);
    message_cb_ = nullptr;
    message_cb_replaced_ = false;
    if (cb) cb(std::move(frame->payload), std::move(handles));
    if (guard.gone) return;
    if (!message_cb_replaced_) message_cb_ = std::move(cb);
  }
  if (!fed) deliver_error(fed.error());
}

bool channel::send(std::string_view message, std::vector<unique_fd> fds, send_callback cb) {
  auto refuse = [&](int err) {
    // Through the loop, never from inside send().
    if (cb) loop_.post([cb = std::move(cb), err] { cb(errno_code(err)); });
    return !(stream_->write_queue_size() > options_.high_water);
  };
  if (!stream_->is_open() || !state_ || state_->disconnecting) return refuse(ENOTCONN);
  if (message.size() > options_.max_frame || fds.size() > detail::native_frame::max_fds ||
      message.size() > UINT32_MAX) {
    return refuse(EMSGSIZE);
  }
  std::byte header[detail::native_frame::header_size];
  detail::encode_native_header(static_cast<std::uint32_t>(message.size()),
                               static_cast<std::uint16_t>(fds.size()), header);
  std::vector<std::byte> frame(sizeof header + message.size());
  std::memcpy(frame.data(), header, sizeof header);
  if (!message.empty()) std::memcpy(frame.data() + sizeof header, message.data(), message.size());
  if (fds.empty()) return stream_->write(std::move(frame), std::move(cb));
  return stream_->write(std::span<const std::byte>(frame), std::move(fds), std::move(cb));
}

void channel::on_drain(std::function<void()> cb) { stream_->on_drain(std::move(cb)); }

void channel::on_message(message_callback cb) {
  message_cb_ = std::move(cb);
  message_cb_replaced_ = true;
  if (message_cb_ && ref_on_message_) {
    ref_on_message_ = false;
    stream_->ref();
  }
}

result<std::unique_ptr<channel>> channel::from_environment(loop& l, channel_options options) {
  constexpr const char* variable = "KIN_CHANNEL_FD";
  const std::optional<std::string> value = this_process::get_env(variable);
  if (!value) return fail(make_error_code(errc::no_channel));
  (void)this_process::unset_env(variable);
  int fd = -1;
  const char* first = value->data();
  const char* last = first + value->size();
  auto [end, ec] = std::from_chars(first, last, fd);
  if (ec != std::errc() || end != last || value->empty() || fd < 0) {
    return fail(errno_code(EINVAL));
  }
  // Looked at before it is taken: a descriptor that is not a channel is not ours to close.
  auto kind = detect_fd_kind(fd);
  if (!kind) return fail(kind.error());
  if (*kind != fd_kind::unix_stream_socket) {
    const bool socket = *kind != fd_kind::pipe && *kind != fd_kind::file &&
                        *kind != fd_kind::character_device && *kind != fd_kind::directory &&
                        *kind != fd_kind::other;
    return fail(errno_code(socket ? EINVAL : ENOTSOCK));
  }
  // Inherited without close-on-exec: this process's own children must not get it.
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return fail(errno_code(errno));
  auto ch = std::make_unique<channel>(l, options);
  if (auto r = ch->open(unique_fd(fd)); !r) return fail(r.error());
  ch->stream_->unref();
  ch->ref_on_message_ = true;
  return ch;
}

result<forked, spawn_error> fork(loop& l, const std::string& program,
                                 const std::vector<std::string>& args, const fork_options& o) {
  rlimit lim{};
  const bool in_limit = ::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY ||
                        static_cast<rlim_t>(o.channel_fd) < lim.rlim_cur;
  if (o.channel_fd < 0 || !in_limit) {
    return fail(spawn_error{spawn_step::prepare, errno_code(EINVAL), program});
  }
  auto pair = make_socketpair();
  if (!pair) return fail(spawn_error{spawn_step::prepare, pair.error(), program});
  spawn_options so = o.spawn;
  so.file = program;
  so.args.clear();
  so.args.reserve(args.size() + 1);
  so.args.push_back(program);
  so.args.insert(so.args.end(), args.begin(), args.end());
  const auto at = static_cast<std::size_t>(o.channel_fd);
  if (so.stdio.size() <= at) so.stdio.resize(at + 1, stdio::closed());
  so.stdio[at] = stdio::fd(pair->second.get());
  so.env.emplace_back("KIN_CHANNEL_FD", std::to_string(o.channel_fd));
  auto child = spawn(l, so);
  if (!child) return fail(child.error());
  pair->second.reset();  // the child has its copy
  // A child without its channel is of no use: if the parent's end cannot be opened (or an
  // allocation fails), it is killed (and reaped by the loop) and the error returned.
  try {
    auto ch = std::make_unique<channel>(l, o.channel);
    if (auto r = ch->open(std::move(pair->first)); !r) {
      (void)child->kill(SIGKILL);
      return fail(spawn_error{spawn_step::prepare, r.error(), program});
    }
    return forked{std::move(*child), std::move(ch)};
  } catch (...) {
    (void)child->kill(SIGKILL);
    throw;
  }
}

void channel::disconnect() {
  if (!stream_->is_open() || !state_ || state_->disconnecting) return;
  state_->disconnecting = true;
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
  state_.reset();
}

bool channel::is_open() const noexcept { return stream_->is_open() && state_ != nullptr; }
std::size_t channel::queued_bytes() const noexcept { return stream_->write_queue_size(); }
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
