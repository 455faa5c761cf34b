// kin::server, tcp_server, unix_server: binding, the accept loop and its pause when
// descriptors run out, and the socket file a Unix server owns.
#include <kin/server.hpp>

#include "call_guard.hpp"
#include "loop_impl.hpp"
#include "posix/sys.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kin {

namespace detail {

namespace {

constexpr std::chrono::milliseconds first_retry{10};
constexpr std::chrono::milliseconds last_retry{1000};

// Errors accept(2) reports for one connection, or for the network under it, that leave the
// listening socket fine: the next accept may well succeed.
bool skip_accept_error(int err) noexcept {
  switch (err) {
    case ECONNABORTED:
    case EPROTO:
    case EPERM:  // a firewall rule refused this connection
#if defined(__linux__)
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
#endif
      return true;
    default:
      return false;
  }
}

bool out_of_resources(int err) noexcept {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

}  // namespace

struct server_state {
  server_state(server& s, loop_impl& l, int fd)
      : owner(s),
        watcher(l, fd, [this](io_events) { accept_all(); }),
        retry(l, [this] { resume(); }) {
    // The server itself is the handle that keeps the loop alive.
    watcher.unref();
    retry.unref();
  }

  void accept_all() noexcept {
    call_guard guard(destroyed);
    while (accepting && !paused) {
      const int c = sys::retry([&] {
        return ::accept4(owner.fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      });
      if (c >= 0) {
        unique_fd connection(c);
        in_trouble = false;
        delay = first_retry;
        deliver({}, std::move(connection));
        if (guard.gone) return;
        continue;
      }
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        in_trouble = false;
        return;
      }
      if (skip_accept_error(err)) continue;
      if (out_of_resources(err)) {
        pause(err);
        return;
      }
      // The socket itself is broken (EBADF, EINVAL: not listening any more): stop, and say so.
      auto held = std::move(cb);
      owner.stop_accepting();
      held(errno_code(err), {});
      return;
    }
  }

  // Out of descriptors: stop watching (the socket stays readable, so watching would spin),
  // report once per episode, and try again later.
  void pause(int err) noexcept {
    paused = true;
    watcher.stop();
    (void)retry.start(delay);
    delay = std::min(delay * 2, last_retry);
    if (in_trouble) return;
    in_trouble = true;
    deliver(errno_code(err), {});
  }

  void resume() noexcept {
    paused = false;
    if (!accepting) return;
    (void)watcher.start(io_events::readable);
    accept_all();
  }

  // Runs the callback, held here while it runs: it may replace itself with listen() after
  // stop_accepting(), or destroy the server.
  void deliver(std::error_code ec, unique_fd connection) noexcept {
    auto held = std::move(cb);
    cb = nullptr;
    call_guard guard(destroyed);
    held(ec, std::move(connection));
    if (guard.gone) return;
    if (accepting && !cb) cb = std::move(held);
  }

  server& owner;
  io_watcher watcher;
  timer retry;
  server::connection_callback cb;
  bool accepting = false;
  bool paused = false;
  bool in_trouble = false;  // an out-of-descriptors error was reported and not yet overcome
  std::chrono::milliseconds delay = first_retry;
  call_guard* destroyed = nullptr;
};

}  // namespace detail

server::server(loop& l) : handle(l) {}

server::~server() {
  drop_state();
  remove_socket_file();
  set_active(false);
}

void server::drop_state() noexcept {
  if (!state_) return;
  detail::call_guard::mark_all(state_->destroyed, true);
  state_.reset();
}

result<void> server::adopt(unique_fd fd, fd_kind kind) noexcept {
  if (fd_.is_open()) return fail(errno_code(EISCONN));
  if (auto r = sys::require_kind(fd.get(), kind); !r) return r;
  // fd_kind::unix_server also covers SOCK_SEQPACKET listeners, whose connections are not
  // streams: a unix_server takes stream listeners only.
  if (!sys::is_stream_socket(fd.get())) return fail(errno_code(EINVAL));
  return attach(std::move(fd));
}

result<void> server::attach(unique_fd fd) noexcept {
  if (auto r = sys::set_nonblocking(fd.get(), true); !r) return r;
  drop_state();
  fd_ = std::move(fd);
  try {
    state_ = std::make_unique<detail::server_state>(*this, loop_impl(), fd_.get());
  } catch (const std::bad_alloc&) {
    fd_.reset();
    return fail(std::make_error_code(std::errc::not_enough_memory));
  }
  return {};
}

result<void> server::listen(int backlog, connection_callback cb) noexcept {
  if (!fd_.is_open()) return fail(errno_code(EBADF));
  if (!cb || state_->accepting) return fail(errno_code(EINVAL));
  if (::listen(fd_.get(), backlog) != 0) return fail(sys::last_error());
  if (auto r = state_->watcher.start(io_events::readable); !r) return r;
  state_->cb = std::move(cb);
  state_->accepting = true;
  state_->delay = detail::first_retry;
  set_active(true);
  return {};
}

void server::stop_accepting() noexcept {
  if (!state_) return;
  state_->accepting = false;
  state_->paused = false;
  state_->in_trouble = false;
  state_->watcher.stop();
  state_->retry.stop();
  state_->cb = nullptr;
  set_active(false);
}

bool server::is_accepting() const noexcept { return state_ && state_->accepting; }
bool server::is_paused() const noexcept { return state_ && state_->paused; }

void server::close(std::function<void()> cb) {
  stop_accepting();
  drop_state();
  remove_socket_file();
  fd_.reset();
  if (cb) loop_impl().post(std::move(cb));
}

result<unique_fd> server::release() noexcept {
  if (!fd_.is_open()) return fail(errno_code(EBADF));
  stop_accepting();
  drop_state();
  socket_file_.clear();  // the file now belongs to whoever has the socket
  return std::move(fd_);
}

result<socket_address> server::local_address() const noexcept {
  if (!fd_.is_open()) return fail(errno_code(EBADF));
  return socket_address::local_of(fd_.get());
}

void server::set_socket_file(std::string path, unsigned long long dev, unsigned long long ino) {
  socket_file_ = std::move(path);
  file_dev_ = dev;
  file_ino_ = ino;
}

void server::remove_socket_file() noexcept {
  if (socket_file_.empty()) return;
  // Only the file this server bound: another server may have replaced it since.
  struct stat st {};
  if (::lstat(socket_file_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
      static_cast<unsigned long long>(st.st_dev) == file_dev_ &&
      static_cast<unsigned long long>(st.st_ino) == file_ino_) {
    ::unlink(socket_file_.c_str());
  }
  socket_file_.clear();
}

namespace {

result<void> bind_to(int fd, const socket_address& address) noexcept {
  if (::bind(fd, static_cast<const sockaddr*>(address.data()), address.size()) != 0) {
    return fail(sys::last_error());
  }
  return {};
}

// A socket file nobody listens on: connecting to it is refused. The error is that of creating
// the probe (EMFILE...), which is the real reason a stale file could not be replaced.
result<bool> is_stale_socket_file(const socket_address& address) noexcept {
  const std::string path(address.path());
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  auto probe = sys::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (!probe) return fail(probe.error());
  const int r = sys::retry([&] {
    return ::connect(probe->get(), static_cast<const sockaddr*>(address.data()), address.size());
  });
  return r != 0 && errno == ECONNREFUSED;
}

}  // namespace

result<void> tcp_server::bind(const socket_address& address, const tcp_server_options& options) {
  if (is_open()) return fail(errno_code(EISCONN));
  if (!address.is_ip()) return fail(errno_code(EAFNOSUPPORT));
  auto fd = sys::socket(sys::domain_of(address), SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (!fd) return fail(fd.error());
  if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEADDR, 1); !r) return r;
  if (options.reuse_port) {
#if defined(SO_REUSEPORT)
    if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEPORT, 1); !r) return r;
#else
    return fail(errno_code(ENOTSUP));
#endif
  }
  if (address.family() == address_family::ipv6) {
    // Set either way: the system default (net.ipv6.bindv6only) varies.
    if (auto r =
            sys::set_int_option(fd->get(), IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0);
        !r)
      return r;
  }
  if (auto r = bind_to(fd->get(), address); !r) return r;
  return attach(std::move(*fd));
}

result<void> unix_server::bind(const socket_address& address, const unix_server_options& options) {
  if (is_open()) return fail(errno_code(EISCONN));
  const bool on_path = address.family() == address_family::unix_path;
  if (!on_path && address.family() != address_family::unix_abstract) {
    return fail(errno_code(EAFNOSUPPORT));
  }
  auto fd = sys::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (!fd) return fail(fd.error());
  auto bound = bind_to(fd->get(), address);
  if (!bound && bound.error() == std::errc::address_in_use && on_path && options.remove_stale) {
    auto stale = is_stale_socket_file(address);
    if (!stale) return fail(stale.error());
    if (*stale) {
      ::unlink(std::string(address.path()).c_str());
      bound = bind_to(fd->get(), address);
    }
  }
  if (!bound) return bound;
  if (on_path) {
    const std::string path(address.path());
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return fail(sys::last_error());
    set_socket_file(path, st.st_dev, st.st_ino);
  }
  if (auto r = attach(std::move(*fd)); !r) {
    // Nothing stays behind on error, the file included.
    remove_socket_file();
    return r;
  }
  return {};
}

}  // namespace kin
