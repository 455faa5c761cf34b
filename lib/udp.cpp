// kin::udp_socket: binding, the datagram send queue flushed before each poll, receiving with
// the sender's address.
#include <kin/fd_kind.hpp>
#include <kin/udp.hpp>

#include "call_guard.hpp"
#include "loop_impl.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <deque>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>

namespace kin {

namespace detail {

namespace {

constexpr std::size_t receive_buffer_size = 64 * 1024;  // holds any UDP payload
constexpr int receives_per_event = 32;

bool would_block(int err) noexcept { return err == EAGAIN || err == EWOULDBLOCK; }

}  // namespace

struct datagram {
  std::vector<std::byte> data;
  socket_address to;
  udp_socket::send_callback cb;
};

struct udp_state {
  udp_state(udp_socket& s, loop_impl& l, int fd)
      : owner(s),
        watcher(l, fd, [this](io_events ev) { on_ready(ev); }),
        flush_task(&udp_state::deferred_flush, this) {
    watcher.unref();  // the socket itself is the handle that keeps the loop alive
  }

  static void deferred_flush(void* self) noexcept { static_cast<udp_state*>(self)->flush(); }
  loop_impl& impl() noexcept { return owner.loop_impl(); }

  void on_ready(io_events ev) noexcept {
    call_guard guard(destroyed);
    if (has(ev, io_events::writable)) {
      want_writable = false;
      flush();
      if (guard.gone) return;
    }
    if (has(ev, io_events::readable) && owner.receiving_) receive_some();
  }

  void update() noexcept {
    io_events interest = io_events::none;
    if (owner.receiving_) interest = interest | io_events::readable;
    if (want_writable) interest = interest | io_events::writable;
    if (interest != watcher.interest()) (void)watcher.start(interest);
    owner.set_active(owner.receiving_ || !queue.empty());
  }

  void flush() noexcept {
    std::vector<completion> done;
    while (!queue.empty()) {
      datagram& d = queue.front();
      const ssize_t n = sys::retry([&] {
        return ::sendto(owner.fd_.get(), d.data.data(), d.data.size(), 0,
                        static_cast<const sockaddr*>(d.to.data()), d.to.size());
      });
      const int err = n < 0 ? errno : 0;
      if (n < 0 && would_block(err)) {
        want_writable = true;
        break;
      }
      if (d.cb) done.emplace_back(std::move(d.cb), err == 0 ? std::error_code() : errno_code(err));
      queued_bytes -= d.data.size();
      queue.pop_front();
    }
    update();
    complete_in_order(destroyed, impl(), done);
  }

  void receive_some() noexcept {
    call_guard guard(destroyed);
    for (int i = 0; i < receives_per_event && owner.receiving_; ++i) {
      sockaddr_storage from{};
      iovec iov{buffer.data(), buffer.size()};
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      auto n = sys::recvmsg(owner.fd_.get(), &msg, 0);
      if (!n && would_block(n.error().value())) return;
      // Held here while it runs: it may call receive_stop() or receive_start().
      auto cb = std::move(owner.receive_cb_);
      owner.receive_cb_ = nullptr;
      if (!n) {
        cb(n.error(), {}, socket_address(), false);
      } else {
        auto sender = socket_address::from_native(&from, msg.msg_namelen);
        cb({}, std::span<const std::byte>(buffer.data(), *n), sender ? *sender : socket_address(),
           (msg.msg_flags & MSG_TRUNC) != 0);
      }
      if (guard.gone) return;
      if (owner.receiving_ && !owner.receive_cb_) owner.receive_cb_ = std::move(cb);
      if (!n) return;  // one report per readiness, not a spin on a lasting error
    }
  }

  udp_socket& owner;
  io_watcher watcher;
  deferred_task flush_task;
  std::deque<datagram> queue;
  std::size_t queued_bytes = 0;
  bool want_writable = false;
  call_guard* destroyed = nullptr;
  std::vector<std::byte> buffer = std::vector<std::byte>(receive_buffer_size);
};

}  // namespace detail

namespace {

void fail_later(detail::loop_impl& l, udp_socket::send_callback cb, std::error_code ec) {
  if (cb) l.post([cb = std::move(cb), ec] { cb(ec); });
}

}  // namespace

udp_socket::udp_socket(loop& l) : handle(l) {}

udp_socket::~udp_socket() {
  drop_state(true);
  set_active(false);
}

void udp_socket::drop_state(bool destroying) noexcept {
  if (!state_) return;
  detail::call_guard::mark_all(state_->destroyed, destroying);
  loop_impl().cancel(state_->flush_task);
  state_.reset();
}

result<void> udp_socket::attach(unique_fd fd) noexcept {
  if (auto r = sys::set_nonblocking(fd.get(), true); !r) return r;
  drop_state(false);
  fd_ = std::move(fd);
  try {
    state_ = std::make_unique<detail::udp_state>(*this, loop_impl(), fd_.get());
  } catch (const std::bad_alloc&) {
    fd_.reset();
    return fail(std::make_error_code(std::errc::not_enough_memory));
  }
  return {};
}

result<void> udp_socket::bind(const socket_address& address, const udp_options& options) {
  if (is_open()) return fail(errno_code(EISCONN));
  if (!address.is_ip()) return fail(errno_code(EAFNOSUPPORT));
  auto fd = sys::socket(sys::domain_of(address), SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (!fd) return fail(fd.error());
  if (options.reuse_addr) {
    if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEADDR, 1); !r) return r;
  }
  if (options.reuse_port) {
#if defined(SO_REUSEPORT)
    if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEPORT, 1); !r) return r;
#else
    return fail(errno_code(ENOTSUP));
#endif
  }
  if (address.family() == address_family::ipv6) {
    if (auto r =
            sys::set_int_option(fd->get(), IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0);
        !r)
      return r;
  }
  if (::bind(fd->get(), static_cast<const sockaddr*>(address.data()), address.size()) != 0) {
    return fail(sys::last_error());
  }
  return attach(std::move(*fd));
}

result<void> udp_socket::open(unique_fd fd) noexcept {
  if (is_open()) return fail(errno_code(EISCONN));
  if (auto r = sys::require_kind(fd.get(), fd_kind::udp_socket); !r) return r;
  return attach(std::move(fd));
}

result<void> udp_socket::receive_start(receive_callback cb) noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  if (!cb) return fail(errno_code(EINVAL));
  receive_cb_ = std::move(cb);
  receiving_ = true;
  state_->update();
  return {};
}

void udp_socket::receive_stop() noexcept {
  if (!receiving_) return;
  receiving_ = false;
  receive_cb_ = nullptr;
  if (state_) state_->update();
}

void udp_socket::send_to(std::span<const std::byte> data, const socket_address& to,
                         send_callback cb) {
  if (!to.is_ip()) return fail_later(loop_impl(), std::move(cb), errno_code(EAFNOSUPPORT));
  if (!is_open()) {
    // Never bound: the first datagram decides the family, the kernel picks the port.
    auto fd = sys::socket(sys::domain_of(to), SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (!fd) return fail_later(loop_impl(), std::move(cb), fd.error());
    if (auto r = attach(std::move(*fd)); !r)
      return fail_later(loop_impl(), std::move(cb), r.error());
  }
  detail::udp_state& s = *state_;
  s.queue.push_back({std::vector<std::byte>(data.begin(), data.end()), to, std::move(cb)});
  s.queued_bytes += data.size();
  if (!s.want_writable) loop_impl().defer(s.flush_task);
  set_active(true);
}

result<void> udp_socket::try_send_to(std::span<const std::byte> data,
                                     const socket_address& to) noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  if (!state_->queue.empty()) return fail(errno_code(EAGAIN));
  const ssize_t n = sys::retry([&] {
    return ::sendto(fd_.get(), data.data(), data.size(), 0, static_cast<const sockaddr*>(to.data()),
                    to.size());
  });
  if (n < 0) return fail(sys::last_error());
  return {};
}

void udp_socket::close(std::function<void()> cb) {
  std::vector<send_callback> cancelled;
  if (state_) {
    // The state stays (until the socket is opened again or destroyed): a flush further up the
    // stack, whose callback may be the one closing, still reports the datagrams it sent.
    detail::udp_state& s = *state_;
    loop_impl().cancel(s.flush_task);
    s.watcher.stop();
    for (auto& d : s.queue) {
      if (d.cb) cancelled.push_back(std::move(d.cb));
    }
    s.queue.clear();
    s.queued_bytes = 0;
    s.want_writable = false;
  }
  receiving_ = false;
  receive_cb_ = nullptr;
  fd_.reset();
  set_active(false);
  if (!cancelled.empty() || cb) {
    loop_impl().post([cancelled = std::move(cancelled), cb = std::move(cb)] {
      for (const auto& c : cancelled) c(std::make_error_code(std::errc::operation_canceled));
      if (cb) cb();
    });
  }
}

result<unique_fd> udp_socket::release() noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  if (!state_->queue.empty()) return fail(errno_code(EBUSY));
  receiving_ = false;
  receive_cb_ = nullptr;
  drop_state(false);
  set_active(false);
  return std::move(fd_);
}

result<socket_address> udp_socket::local_address() const noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return socket_address::local_of(fd_.get());
}

std::size_t udp_socket::send_queue_size() const noexcept {
  return state_ ? state_->queued_bytes : 0;
}

}  // namespace kin
