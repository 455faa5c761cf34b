// The BSD and macOS poll backend: kqueue with EVFILT_READ/EVFILT_WRITE, and a pipe for
// cross-thread wakeups. Written against the kqueue(2) man page; it is not compiled or tested on
// Linux build machines, so it is kept to the backend interface and nothing more.
#include "../loop_backend.hpp"
#include "../loop_impl.hpp"

#include <cerrno>
#include <cstdint>

#include <fcntl.h>
#include <sys/event.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

namespace kin::detail {

namespace {

void* to_udata(std::uint64_t token) noexcept {
  static_assert(sizeof(void*) >= sizeof(std::uint64_t), "kqueue udata must hold a token");
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(token));
}

// Applies up to two changes and reports the first error. EV_RECEIPT makes kevent() return one
// entry per change instead of collecting pending events.
result<void> apply(int kq, struct kevent* changes, int count) noexcept {
  if (count == 0) return {};
  struct kevent receipts[2];
  for (int i = 0; i < count; ++i) changes[i].flags |= EV_RECEIPT;
  int n;
  do {
    n = ::kevent(kq, changes, count, receipts, count, nullptr);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return fail(errno_code(errno));
  for (int i = 0; i < n; ++i) {
    if ((receipts[i].flags & EV_ERROR) && receipts[i].data != 0) {
      // Deleting a filter that was never added is not an error for this interface.
      if ((changes[i].flags & EV_DELETE) && receipts[i].data == ENOENT) continue;
      return fail(errno_code(static_cast<int>(receipts[i].data)));
    }
  }
  return {};
}

result<void> set_interest(int kq, int fd, io_events old_events, io_events events,
                          std::uint64_t token) noexcept {
  struct kevent changes[2];
  int n = 0;
  const auto fd_id = static_cast<uintptr_t>(fd);
  if (has(events, io_events::readable)) {
    EV_SET(&changes[n++], fd_id, EVFILT_READ, EV_ADD | EV_ENABLE, 0, 0, to_udata(token));
  } else if (has(old_events, io_events::readable)) {
    EV_SET(&changes[n++], fd_id, EVFILT_READ, EV_DELETE, 0, 0, nullptr);
  }
  if (has(events, io_events::writable)) {
    EV_SET(&changes[n++], fd_id, EVFILT_WRITE, EV_ADD | EV_ENABLE, 0, 0, to_udata(token));
  } else if (has(old_events, io_events::writable)) {
    EV_SET(&changes[n++], fd_id, EVFILT_WRITE, EV_DELETE, 0, 0, nullptr);
  }
  return apply(kq, changes, n);
}

}  // namespace

result<backend> backend::open() noexcept {
  unique_fd kq(::kqueue());
  if (!kq) return fail(errno_code(errno));
  // kqueue descriptors are not inherited across fork(); close-on-exec covers exec without fork.
  if (::fcntl(kq.get(), F_SETFD, FD_CLOEXEC) != 0) return fail(errno_code(errno));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return fail(errno_code(errno));
  unique_fd rd(fds[0]), wr(fds[1]);
  struct kevent change;
  EV_SET(&change, static_cast<uintptr_t>(rd.get()), EVFILT_READ, EV_ADD, 0, 0,
         to_udata(wakeup_token));
  if (auto r = apply(kq.get(), &change, 1); !r) return fail(r.error());
  return backend(std::move(kq), std::move(rd), std::move(wr));
}

result<void> backend::add(int fd, io_events events, std::uint64_t token) noexcept {
  return set_interest(poll_fd_.get(), fd, io_events::none, events, token);
}

result<void> backend::modify(int fd, io_events old_events, io_events events,
                             std::uint64_t token) noexcept {
  return set_interest(poll_fd_.get(), fd, old_events, events, token);
}

void backend::remove(int fd, io_events old_events) noexcept {
  (void)set_interest(poll_fd_.get(), fd, old_events, io_events::none, 0);
}

void backend::poll(int timeout_ms, loop_impl& owner) noexcept {
  constexpr int max_events = 256;
  struct kevent events[max_events];
  timespec ts{timeout_ms / 1000, static_cast<long>(timeout_ms % 1000) * 1'000'000};
  const int n =
      ::kevent(poll_fd_.get(), nullptr, 0, events, max_events, timeout_ms < 0 ? nullptr : &ts);
  // The wait may have been long: callbacks (and timers) count from now, not from before.
  owner.update_time();
  for (int i = 0; i < n; ++i) {
    const auto token =
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(events[i].udata));
    if (token == wakeup_token) {
      char buf[256];
      while (::read(wake_fd_.get(), buf, sizeof buf) > 0) {
      }
      owner.on_wakeup();
      continue;
    }
    io_events ready = events[i].filter == EVFILT_WRITE ? io_events::writable : io_events::readable;
    // EV_EOF or EV_ERROR: report both directions, as the epoll backend does for HUP/ERR.
    if (events[i].flags & (EV_EOF | EV_ERROR)) ready = io_events::readable | io_events::writable;
    owner.dispatch_io(token, ready);
  }
}

void backend::wakeup() noexcept {
  const char byte = 0;
  // EAGAIN: the pipe is full, so a wakeup is already pending.
  ssize_t r;
  do {
    r = ::write(wake_write_fd_.get(), &byte, 1);
  } while (r < 0 && errno == EINTR);
}

}  // namespace kin::detail
