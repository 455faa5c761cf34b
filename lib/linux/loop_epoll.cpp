// The Linux poll backend: epoll (level-triggered) plus an eventfd for cross-thread wakeups.
#include "../loop_backend.hpp"
#include "../loop_impl.hpp"
#include "../posix/sys.hpp"
#include "sys_linux.hpp"

#include <cerrno>
#include <cstdint>

#include <sys/epoll.h>
#include <unistd.h>

namespace kin::detail {

namespace {

std::uint32_t to_epoll(io_events events) noexcept {
  std::uint32_t e = 0;
  if (has(events, io_events::readable)) e |= EPOLLIN | EPOLLRDHUP;
  if (has(events, io_events::writable)) e |= EPOLLOUT;
  return e;
}

io_events from_epoll(std::uint32_t e) noexcept {
  // An error or hang-up is reported as every event so that whichever operation the watcher
  // attempts next sees it; the watcher masks this with its interest.
  if (e & (EPOLLERR | EPOLLHUP)) return io_events::readable | io_events::writable;
  io_events r = io_events::none;
  if (e & (EPOLLIN | EPOLLPRI | EPOLLRDHUP)) r = r | io_events::readable;
  if (e & EPOLLOUT) r = r | io_events::writable;
  return r;
}

result<void> control(int epfd, int op, int fd, std::uint32_t events, std::uint64_t token) noexcept {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epfd, op, fd, &ev) != 0) return fail(errno_code(errno));
  return {};
}

}  // namespace

result<backend> backend::open() noexcept {
  auto ep = sys::make_epoll();
  if (!ep) return fail(ep.error());
  auto ev = sys::make_eventfd(0, fd_mode::nonblocking);
  if (!ev) return fail(ev.error());
  // Edge-triggered, and the counter is never read: every eventfd write is a new edge (the
  // kernel wakes pollers on each write), so a wakeup costs one write and no read. The counter
  // cannot reach its 2^64-2 limit at one increment per wakeup.
  if (auto r = control(ep->get(), EPOLL_CTL_ADD, ev->get(), EPOLLIN | EPOLLET, wakeup_token); !r) {
    return fail(r.error());
  }
  return backend(std::move(*ep), std::move(*ev), unique_fd());
}

result<void> backend::add(int fd, io_events events, std::uint64_t token) noexcept {
  return control(poll_fd_.get(), EPOLL_CTL_ADD, fd, to_epoll(events), token);
}

result<void> backend::modify(int fd, io_events, io_events events, std::uint64_t token) noexcept {
  return control(poll_fd_.get(), EPOLL_CTL_MOD, fd, to_epoll(events), token);
}

void backend::remove(int fd, io_events) noexcept {
  // ENOENT or EBADF mean the descriptor was closed first, which already unregistered it.
  epoll_event unused{};
  ::epoll_ctl(poll_fd_.get(), EPOLL_CTL_DEL, fd, &unused);
}

void backend::poll(int timeout_ms, loop_impl& owner) noexcept {
  constexpr int max_events = 256;
  epoll_event events[max_events];
  // EINTR (a signal arrived) just ends this wait: the loop recomputes its timeout.
  const int n = ::epoll_wait(poll_fd_.get(), events, max_events, timeout_ms);
  // The wait may have been long: callbacks (and timers) count from now, not from before.
  owner.update_time();
  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == wakeup_token) {
      owner.on_wakeup();
    } else {
      owner.dispatch_io(events[i].data.u64, from_epoll(events[i].events));
    }
  }
}

void backend::wakeup() noexcept {
  const std::uint64_t one = 1;
  // EAGAIN would mean the counter is saturated, which already guarantees a pending event.
  (void)sys::write(wake_fd_.get(), &one, sizeof one);
}

}  // namespace kin::detail
