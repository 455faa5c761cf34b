// kin::stream: the read loop, the batching write queue with descriptor passing, water marks,
// half-close and close.
#include <kin/stream.hpp>

#include "assert.hpp"
#include "call_guard.hpp"
#include "loop_impl.hpp"
#include "posix/sys.hpp"
#include "stream_gather.hpp"
#include "stream_opener.hpp"
#include "stream_queue.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include <limits.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

namespace kin {

namespace detail {

namespace {

constexpr int reads_per_event = 32;           // then let other watchers have their turn
constexpr std::size_t coalesce_below = 4096;  // small writes are copied into the queue's tail
constexpr std::size_t coalesce_limit = 64 * 1024;
constexpr int max_iov = IOV_MAX < 1024 ? IOV_MAX : 1024;
// Buffers one write gathers from the stack; more (a deep queue) use a heap array kept for that.
constexpr std::size_t stack_iov = 8;

// Queued writes with descriptors whose first bytes lie within this many bytes of each other
// share one sendmsg (up to max_fds_per_write descriptors), each write's descriptors still on the
// sendmsg that carries its first byte. That is only sound if the kernel sends all those bytes
// or none: a partial send would deliver the descriptors of a write whose first byte was not
// sent. Linux's unix_stream_sendmsg() puts the descriptors on the first sk_buff and makes it
// min(len, sk_sndbuf / 2 - 64, 32 KiB and more) bytes long; it allocates that one buffer or fails
// with EAGAIN. SO_SNDBUF cannot go below SOCK_MIN_SNDBUF (4608 since Linux 3.x: 2 x (2048 +
// sizeof(sk_buff))), so 2 KiB always fit in the first sk_buff. Elsewhere every write's
// descriptors go on a sendmsg of their own.
#if defined(__linux__)
constexpr std::size_t fd_batch_bytes = 2048;
#else
constexpr std::size_t fd_batch_bytes = 0;
#endif

// Room in the receive control buffer for what socket options make the kernel put ahead of the
// descriptors: SO_PASSCRED's credentials (12 bytes on Linux, more on FreeBSD) and Linux's
// SO_PASSPIDFD pidfd. Options belong to the socket and travel with it to another process, so a
// receiver cannot assume they are off; without this room a message with max_fds_per_write
// descriptors would be cut (MSG_CTRUNC).
constexpr std::size_t ancillary_room = CMSG_SPACE(256);

#if defined(__linux__)
// SCM_PIDFD (Linux 6.5, SO_PASSPIDFD): a pidfd of the sender, installed in the receiver by every
// read. Older headers lack the name.
constexpr int scm_pidfd = 4;
#endif

// Success, built once: a default std::error_code calls into libstdc++ for its category, and the
// read path would pay that per read. A function, so that it is ready even for a stream used
// during another file's static initialisation.
const std::error_code& no_error() noexcept {
  static const std::error_code ok;
  return ok;
}

// True for a control message whose payload is descriptors the kernel installed in this process.
bool carries_descriptors(const cmsghdr& c) noexcept {
  if (c.cmsg_level != SOL_SOCKET) return false;
#if defined(__linux__)
  if (c.cmsg_type == scm_pidfd) return true;
#endif
  return c.cmsg_type == SCM_RIGHTS;
}

// Blocks SIGPIPE in this thread for one write to a pipe (which cannot use MSG_NOSIGNAL), and
// consumes the SIGPIPE that a write to a closed pipe raises, so only EPIPE remains.
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_);
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;
  void consume() noexcept {
    const timespec zero{0, 0};
    while (::sigtimedwait(&pipe_set_, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  ~sigpipe_guard() {
    if (!sigismember(&old_, SIGPIPE)) pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_set_;
  sigset_t old_;
};

}  // namespace

struct stream_state {
  stream_state(stream& s, loop_impl& l, int fd)
      : owner(s),
        watcher(l, fd, [this](io_events ev) { on_ready(ev); }),
        flush_task(&stream_state::deferred_flush, this),
        connect_task(&stream_state::deferred_connect_done, this) {
    watcher.unref();  // the stream itself is the handle that keeps the loop alive
  }

  static void deferred_flush(void* self) noexcept { static_cast<stream_state*>(self)->flush(); }
  static void deferred_connect_done(void* self) noexcept {
    auto* s = static_cast<stream_state*>(self);
    s->connect_done(std::exchange(s->connect_error, {}));
  }

  void on_ready(io_events ev) noexcept {
    if (connecting) {
      // A connect that ended at once waits for its deferred report; a hang-up reported
      // meanwhile (an unconnected Unix socket) says nothing about it.
      if (connect_task.is_queued()) return;
      // Writable (or an error, reported as every event of the interest) ends the connect.
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(owner.fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      connect_done(err == 0 ? std::error_code() : errno_code(err));
      return;
    }
    if (has(ev, io_events::writable)) {
      call_guard guard(destroyed);
      flush();
      if (guard.gone) return;
    }
    if (has(ev, io_events::readable) && owner.reading_) read_some();
  }

  loop_impl& impl() noexcept { return owner.loop_impl(); }

  void update() noexcept {
    io_events interest = io_events::none;
    if (owner.reading_) interest = interest | io_events::readable;
    if ((want_writable && !queue.empty()) || (connecting && !connect_task.is_queued())) {
      interest = interest | io_events::writable;
    }
    if (interest != watcher.interest() && owner.fd_.is_open()) {
      if (auto r = watcher.start(interest); !r) {
        // Only a closed or unpollable descriptor fails here; report it to whoever waits.
        pending_error = r.error();
      }
    }
    owner.set_active(owner.reading_ || !queue.empty() || shutdown_requested || connecting);
  }

  void schedule_flush() noexcept {
    if (!want_writable && !connecting) impl().defer(flush_task);
    owner.set_active(true);
  }

  // The end of a connect: queued writes go out, or fail with the connect's error (the
  // descriptor is closed, so the stream can be opened again). The write callbacks run before
  // the connect callback, which may reopen or destroy the stream.
  void connect_done(std::error_code ec) noexcept {
    connecting = false;
    auto cb = std::move(connect_cb);
    connect_cb = nullptr;
    call_guard guard(destroyed);
    if (!ec) {
      update();
      if (!queue.empty() || !completed.empty() || shutdown_requested) impl().defer(flush_task);
      if (cb) cb({});
      return;
    }
    owner.reading_ = false;
    owner.read_cb_ = nullptr;
    watcher.stop();
    owner.fd_.reset();
    fail_all(ec, std::move(cb));
  }

  // Sends from the front of the queue up to the next descriptors that cannot ride on this
  // sendmsg, carrying those whose write's first byte it sends: the front's next byte's, and (see
  // fd_batch_bytes) those of the writes that follow within a small span. `carried` is set to
  // the number of groups whose descriptors this sendmsg carries, `offered` to the number of
  // bytes it offers the kernel.
  result<std::size_t> send_front(std::size_t& carried, std::size_t& offered) noexcept {
    write_req& first = queue.front();
    carried = 0;
    if (first.carried() != nullptr) {
      carried = 1;
      std::size_t fds = first.groups[first.next_group].fds.size();
      const std::size_t start = first.sent;
      for (std::size_t g = first.next_group + 1; g < first.groups.size(); ++g) {
        const fd_group& next = first.groups[g];
        if (next.at - start >= fd_batch_bytes || fds + next.fds.size() > max_fds_per_write) break;
        fds += next.fds.size();
        ++carried;
      }
      if (carried > 1) {
        // Several writes' descriptors: the bytes stay within fd_batch_bytes, so that the
        // kernel takes all of them or none.
        const std::size_t after = first.next_group + carried;
        const std::size_t end =
            std::min(after < first.groups.size() ? first.groups[after].at : first.data.size(),
                     start + fd_batch_bytes);
        iovec iov{first.data.data() + start, end - start};
        offered = end - start;
        return send_fds(&iov, 1, std::span(first.groups).subspan(first.next_group, carried));
      }
    }
    iovec stack[stack_iov];
    iovec* iov = stack;
    std::size_t room = stack_iov;
    if (queue.size() > stack_iov) {
      if (!iov_heap) iov_heap.reset(new (std::nothrow) iovec[max_iov]);
      if (iov_heap) {
        iov = iov_heap.get();
        room = max_iov;
      }
    }
    const std::size_t reqs = std::min(queue.size(), room);
    int count = 0;
    for (std::size_t i = 0; i < reqs; ++i) {
      write_req& req = queue[i];
      const std::size_t start = req.sent;  // a queued copy may begin with unsent padding
      const std::size_t group = req.next_group + (i == 0 ? carried : 0);
      const std::size_t end = group < req.groups.size() ? req.groups[group].at : req.data.size();
      if (end > start) {
        iov[count].iov_base = req.data.data() + start;
        iov[count].iov_len = end - start;
        offered += end - start;
        ++count;
      }
      if (end < req.data.size()) break;
    }
    if (carried != 0) {
      return send_fds(iov, count, std::span(first.groups).subspan(first.next_group, carried));
    }
    return write_vectored(iov, count);
  }

  // One write of `count` buffers: send or sendmsg(MSG_NOSIGNAL) on a socket, writev with
  // SIGPIPE held off on a pipe.
  result<std::size_t> write_vectored(iovec* iov, int count) noexcept {
    if (!owner.socket_) return write_pipe(iov, count);
    if (count == 1) {
      // One buffer: send(2) spares the kernel copying in a msghdr.
      const ssize_t n = sys::retry(
          [&] { return ::send(owner.fd_.get(), iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL); });
      if (n < 0) return fail(sys::last_error());
      return static_cast<std::size_t>(n);
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
    return sys::sendmsg(owner.fd_.get(), &msg, MSG_NOSIGNAL);
  }

  [[gnu::noinline]] result<std::size_t> write_pipe(iovec* iov, int count) noexcept {
    sigpipe_guard guard;
    ssize_t n = sys::retry([&] { return ::writev(owner.fd_.get(), iov, count); });
    if (n < 0) {
      const int err = errno;
      if (err == EPIPE) guard.consume();
      return fail(errno_code(err));
    }
    return static_cast<std::size_t>(n);
  }

  // write_vectored() with the descriptors of `passing` on the first byte (a Unix-domain socket).
  [[gnu::noinline]] result<std::size_t> send_fds(iovec* iov, int count,
                                                 std::span<const fd_group> passing) noexcept {
    if (passing.empty()) return write_vectored(iov, count);
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_write)];
    std::size_t total = 0;
    for (const fd_group& g : passing) total += g.fds.size();
    KIN_ASSERT(total <= max_fds_per_write, "kin::stream: too many descriptors on one sendmsg");
    const std::size_t bytes = sizeof(int) * total;
    std::memset(control, 0, CMSG_SPACE(bytes));
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(bytes);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c == nullptr) return fail(errno_code(EINVAL));  // cannot happen: the buffer fits
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(bytes);
    unsigned char* out = CMSG_DATA(c);
    for (const fd_group& g : passing) {
      for (const unique_fd& fd : g.fds) {
        const int raw = fd.get();
        std::memcpy(out, &raw, sizeof raw);
        out += sizeof raw;
      }
    }
    return sys::sendmsg(owner.fd_.get(), &msg, MSG_NOSIGNAL);
  }

  void flush() noexcept {
    if (connecting) return;  // connect_done() flushes
    if (completed.empty() && queue.size() == 1 && is_plain(queue.front())) {
      flush_plain();
      return;
    }
    // Writes that went straight out (see enqueue) complete first: they were made first.
    std::vector<completion> done;
    if (!completed.empty()) done.swap(completed);
    int failed = 0;        // an errno: sys:: reports nothing else
    bool blocked = false;  // the kernel's buffer is full: wait until it is writable
    while (!queue.empty()) {
      std::size_t carried = 0;
      std::size_t offered = 0;
      auto n = send_front(carried, offered);
      if (!n) {
        const int err = n.error().value();
        if (err == EAGAIN || err == EWOULDBLOCK) {
          blocked = true;
        } else {
          failed = err;
        }
        break;
      }
      if (carried > 0) {
        // They went with this sendmsg, which carried their writes' first bytes.
        write_req& front = queue.front();
        for (std::size_t g = 0; g < carried; ++g) front.groups[front.next_group + g].fds.clear();
        front.next_group += carried;
      }
      std::size_t left = *n;
      queued_bytes -= left;
      // Ends the requests the bytes sent complete (and any that had none left to send).
      while (!queue.empty()) {
        write_req& req = queue.front();
        const std::size_t take = std::min(left, req.data.size() - req.sent);
        req.sent += take;
        left -= take;
        if (!req.callbacks.empty()) {
          auto it = req.callbacks.begin();
          while (it != req.callbacks.end() && it->end <= req.sent) {
            if (it->cb) done.emplace_back(std::move(it->cb), it->refused);
            ++it;
          }
          req.callbacks.erase(req.callbacks.begin(), it);
        }
        if (req.sent < req.data.size()) break;
        queue.pop_front();
      }
      // The kernel took part of what it was offered: its buffer is full, wait until it is not.
      if (*n < offered) blocked = true;
      if (!done.empty() || blocked) break;  // callbacks first: they may close
    }
    if (blocked) want_writable = true;
    if (failed != 0) {
      if (!complete_in_order(destroyed, impl(), done)) return;
      fail_all(errno_code(failed));
      return;
    }
    const bool drained = settle();
    if (!done.empty() && !complete_in_order(destroyed, impl(), done)) return;
    after_flush(drained);
  }

  // A request of bytes alone: no descriptors ride on it, no callback waits for it.
  static bool is_plain(const write_req& r) noexcept {
    return r.groups.empty() && r.callbacks.empty();
  }

  // flush() of one plain request, the flush of a stream that writes one batch of small writes
  // per iteration (a request-response protocol): one write, and none of the bookkeeping of
  // callbacks and descriptors.
  void flush_plain() noexcept {
    write_req& r = queue.front();
    const std::size_t len = r.data.size() - r.sent;
    iovec iov{r.data.data() + r.sent, len};
    const result<std::size_t> n = write_vectored(&iov, 1);
    if (!n) {
      const int err = n.error().value();  // an errno: sys:: reports nothing else
      if (err != EAGAIN && err != EWOULDBLOCK) {
        fail_all(n.error());
        return;
      }
      want_writable = true;
    } else {
      const std::size_t took = *n;
      queued_bytes -= took;
      if (took == len) {
        queue.pop_front();
      } else {
        r.sent += took;
        want_writable = true;  // the kernel's buffer is full
      }
    }
    after_flush(settle());
  }

  // After sending: the interest and activity that follow from what is left queued. Returns
  // whether the queue just fell to the low water mark.
  bool settle() noexcept {
    if (queue.empty()) want_writable = false;
    const bool drained = above_high && queued_bytes <= owner.low_mark_;
    if (drained) above_high = false;
    update();
    return drained;
  }

  // The end of a flush whose callbacks have run: on_drain, then more flushing or the shutdown.
  void after_flush(bool drained) noexcept {
    if (drained && owner.drain_cb_) {
      call_guard guard(destroyed);
      // Held here while it runs: it may replace itself with on_drain().
      auto cb = std::move(owner.drain_cb_);
      owner.drain_cb_ = nullptr;
      cb();
      if (guard.gone) return;
      if (!owner.drain_cb_) owner.drain_cb_ = std::move(cb);
    }
    if (!queue.empty()) {
      if (!want_writable) impl().defer(flush_task);
    } else if (shutdown_requested && owner.fd_.is_open()) {
      do_shutdown();
    }
  }

  void do_shutdown() noexcept {
    shutdown_requested = false;
    shut = true;
    std::error_code ec;
    if (owner.socket_) {
      if (::shutdown(owner.fd_.get(), SHUT_WR) != 0) ec = sys::last_error();
    } else {
      // A pipe has one direction: half-closing its write end is closing it.
      watcher.stop();
      owner.fd_.reset();
    }
    update();
    auto cb = std::move(shutdown_cb);
    if (cb) cb(ec);
  }

  // Fails every queued write (and a pending shutdown) with `ec`, then calls `last` with it.
  void fail_all(std::error_code ec, stream::write_callback last = {}) noexcept {
    write_queue failed;
    failed.swap(queue);
    queued_bytes = 0;
    want_writable = false;
    write_error = ec;
    auto shutdown_done = std::move(shutdown_cb);
    const bool had_shutdown = shutdown_requested;
    shutdown_requested = false;
    update();
    std::vector<completion> done = std::move(completed);  // they came first
    completed.clear();
    for (std::size_t i = 0; i < failed.size(); ++i) {
      for (auto& e : failed[i].callbacks) {
        done.emplace_back(std::move(e.cb), e.refused ? e.refused : ec);
      }
    }
    if (had_shutdown) done.emplace_back(std::move(shutdown_done), ec);
    done.emplace_back(std::move(last), ec);
    complete_in_order(destroyed, impl(), done);
  }

  // Reads into a vector of this frame, so that a callback that releases or reopens the stream
  // leaves the descriptors it was lent alive until it returns; the vector's room is kept for
  // the next call.
  void read_some() noexcept {
    std::vector<unique_fd> fds;
    fds.swap(received);
    if (read_into(fds)) {
      fds.clear();
      received.swap(fds);
    }
  }

  // False once a callback destroyed the stream or replaced this state.
  bool read_into(std::vector<unique_fd>& fds) noexcept {
    call_guard guard(destroyed);
    const std::span<std::byte> read_buf = impl().read_buffer();
    for (int i = 0; i < reads_per_event && owner.reading_; ++i) {
      std::size_t got = 0;
      int err = 0;  // errno, compared as an int: this is the hot path
      bool truncated = false;
      bool carried_fds = false;
      if (owner.unix_socket_) {
        iovec iov{read_buf.data(), read_buf.size()};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_write) + ancillary_room];
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t n =
            sys::retry([&] { return ::recvmsg(owner.fd_.get(), &msg, MSG_CMSG_CLOEXEC); });
        if (n < 0) {
          err = errno;
        } else {
          got = static_cast<std::size_t>(n);
          // Wrap every descriptor at once, so each path below closes what it does not hand on.
          for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
            if (!carries_descriptors(*c)) continue;
            const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            const unsigned char* in = CMSG_DATA(c);
            for (std::size_t k = 0; k < count; ++k) {
              int raw;
              std::memcpy(&raw, in + k * sizeof raw, sizeof raw);
              unique_fd fd(raw);
              // Only SCM_RIGHTS descriptors are the user's; a pidfd is closed here.
              if (c->cmsg_type == SCM_RIGHTS) fds.push_back(std::move(fd));
            }
          }
          carried_fds = !fds.empty();
          if (msg.msg_flags & MSG_CTRUNC) {
            fds.clear();
            truncated = true;
          }
        }
      } else {
        const ssize_t n =
            sys::retry([&] { return ::read(owner.fd_.get(), read_buf.data(), read_buf.size()); });
        if (n < 0) {
          err = errno;
        } else {
          got = static_cast<std::size_t>(n);
        }
      }
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err != 0 || got == 0) {
        const std::error_code ec = err != 0 ? errno_code(err) : make_error_code(errc::eof);
        // The stream cannot be read any further: stop before telling the callback.
        auto cb = std::move(owner.read_cb_);
        owner.read_cb_ = nullptr;
        owner.reading_ = false;
        update();
        cb(ec, {}, {});
        return !guard.gone;
      }
      // Held here while it runs: it may call read_stop() or read_start() with a new callback,
      // which must not destroy the function that is running.
      auto cb = std::move(owner.read_cb_);
      owner.read_cb_ = nullptr;
      cb(truncated ? make_error_code(errc::message_truncated) : no_error(),
         std::span<const std::byte>(read_buf.data(), got), std::span(fds));
      if (guard.gone) return false;
      if (owner.reading_ && !owner.read_cb_) owner.read_cb_ = std::move(cb);
      fds.clear();
      // A short read drained the socket, except after descriptors: the kernel ends a read at
      // a message that carried some, and more may follow.
      if (got < read_buf.size() && !carried_fds) break;
    }
    return true;
  }

  stream& owner;
  io_watcher watcher;
  deferred_task flush_task;
  deferred_task connect_task;  // reports a connect that ended at once
  write_queue queue;
  std::size_t queued_bytes = 0;
  bool above_high = false;
  bool want_writable = false;  // a write hit EAGAIN: wait for the kernel, not the next round
  bool shutdown_requested = false;
  bool shut = false;
  bool closed = false;
  bool connecting = false;
  stream::write_callback shutdown_cb;
  stream::write_callback connect_cb;
  std::error_code connect_error;
  std::error_code write_error;  // once set, later writes fail with it
  std::error_code pending_error;
  call_guard* destroyed = nullptr;    // the innermost frame that is calling user code
  std::unique_ptr<iovec[]> iov_heap;  // send_front's buffers when the queue is deep
  // Outcomes of writes that went straight out, or were refused while nothing was queued.
  std::vector<completion> completed;
  std::vector<unique_fd> received;  // room for the descriptors of a read, between reads
};

}  // namespace detail

stream::stream(loop& l) : handle(l) {}

stream::~stream() {
  drop_state(true);
  set_active(false);
}

void stream::drop_state(bool destroying) noexcept {
  if (!state_) return;
  detail::call_guard::mark_all(state_->destroyed, destroying);
  loop_impl().cancel(state_->flush_task);
  loop_impl().cancel(state_->connect_task);
  state_->watcher.stop();
  state_.reset();
}

result<void> stream::open(unique_fd fd) noexcept {
  auto kind = detect_fd_kind(fd.get());
  if (!kind) return fail(kind.error());
  if (*kind != fd_kind::tcp_socket && *kind != fd_kind::unix_stream_socket &&
      *kind != fd_kind::pipe) {
    return fail(errno_code(EINVAL));
  }
  return open_detected(std::move(fd), *kind);
}

result<void> stream::open_detected(unique_fd fd, fd_kind kind, bool nonblocking) noexcept {
  if (fd_.is_open()) return fail(errno_code(EISCONN));
  if (!nonblocking) {
    if (auto r = sys::set_nonblocking(fd.get(), true); !r) return fail(r.error());
  }
  // Reopening after close() or a failed connect: the old state's callbacks were already
  // cancelled or called.
  drop_state(false);
  socket_ = kind != fd_kind::pipe;
  unix_socket_ = kind == fd_kind::unix_stream_socket;
  fd_ = std::move(fd);
  state_ = std::make_unique<detail::stream_state>(*this, loop_impl(), fd_.get());
  return {};
}

result<void> detail::stream_opener::open_new(stream& s, unique_fd fd, fd_kind kind) noexcept {
  return s.open_detected(std::move(fd), kind, true);
}

result<void> detail::stream_opener::open_known(stream& s, unique_fd fd, fd_kind kind) noexcept {
  return s.open_detected(std::move(fd), kind, false);
}

result<void> stream::open_as(unique_fd fd, fd_kind kind) noexcept {
  if (auto r = sys::require_kind(fd.get(), kind); !r) return r;
  return open_detected(std::move(fd), kind);
}

result<void> stream::connect_socket(int domain, const socket_address& to, write_callback cb) {
  if (fd_.is_open()) return fail(errno_code(EISCONN));
  auto fd = sys::socket(domain, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (!fd) return fail(fd.error());
  const fd_kind kind = domain == AF_UNIX ? fd_kind::unix_stream_socket : fd_kind::tcp_socket;
  if (auto r = open_detected(std::move(*fd), kind); !r) return r;
  detail::stream_state& s = *state_;
  s.connecting = true;
  s.connect_cb = std::move(cb);
  const int r = ::connect(fd_.get(), static_cast<const sockaddr*>(to.data()), to.size());
  const int err = r == 0 ? 0 : errno;
  if (err == EINPROGRESS || err == EINTR) {
    // EINTR: the connect goes on in the background (connect(2)), exactly as EINPROGRESS.
    s.update();
    return {};
  }
  // Ended at once (a Unix-domain connect, a refused or invalid one): reported on a later
  // iteration, never from inside connect().
  s.connect_error = err == 0 ? std::error_code() : errno_code(err);
  loop_impl().defer(s.connect_task);
  s.update();
  return {};
}

bool stream::is_connecting() const noexcept { return state_ && state_->connecting; }

result<unique_fd> stream::release() noexcept {
  if (!fd_.is_open() || !state_) return fail(errno_code(EBADF));
  const detail::stream_state& s = *state_;
  if (!s.queue.empty() || !s.completed.empty() || s.shutdown_requested || s.connecting) {
    return fail(errno_code(EBUSY));
  }
  read_cb_ = nullptr;
  reading_ = false;
  drop_state(false);
  set_active(false);
  return std::move(fd_);
}

result<void> stream::read_start(read_callback cb) noexcept {
  if (!fd_.is_open()) return fail(errno_code(EBADF));
  if (!cb) return fail(errno_code(EINVAL));
  read_cb_ = std::move(cb);
  reading_ = true;
  state_->update();
  if (state_->pending_error) {
    read_cb_ = nullptr;
    reading_ = false;
    state_->update();
    return fail(std::exchange(state_->pending_error, {}));
  }
  return {};
}

void stream::read_stop() noexcept {
  if (!reading_) return;
  reading_ = false;
  read_cb_ = nullptr;
  if (state_) state_->update();
}

void stream::refuse(write_callback cb, std::error_code ec) {
  if (!cb) return;
  if (!state_) {
    loop_impl().post([cb = std::move(cb), ec] { cb(ec); });
    return;
  }
  // In order with the writes before it: after the queued ones, with the flush.
  detail::stream_state& s = *state_;
  if (s.queue.empty()) {
    s.completed.emplace_back(std::move(cb), ec);
  } else {
    detail::write_req& tail = s.queue.back();
    tail.callbacks.push_back({tail.data.size(), std::move(cb), ec});
  }
  s.schedule_flush();
}

bool stream::write(std::span<const std::byte> data, write_callback cb) {
  return enqueue({}, data, nullptr, {}, std::move(cb));
}

bool stream::write(std::vector<std::byte>&& data, write_callback cb) {
  return enqueue({}, data, &data, {}, std::move(cb));
}

bool stream::write(std::span<const std::byte> data, std::vector<unique_fd> fds, write_callback cb) {
  if (fds.empty()) {
    refuse(std::move(cb), errno_code(EINVAL));
    return state_ == nullptr || !state_->above_high;
  }
  return detail::stream_gather::write(*this, data, {}, std::move(fds), std::move(cb));
}

bool detail::stream_gather::write(stream& s, std::span<const std::byte> head,
                                  std::span<const std::byte> body, std::vector<unique_fd> fds,
                                  stream::write_callback cb) {
  // The checks of stream::write with descriptors: they ride on head's first byte.
  if (!fds.empty() && (!s.unix_socket_ || head.empty() || fds.size() > max_fds_per_write)) {
    fds.clear();
    s.refuse(std::move(cb), errno_code(EINVAL));
    return s.state_ == nullptr || !s.state_->above_high;
  }
  return s.enqueue(head, body, nullptr, std::move(fds), std::move(cb));
}

bool stream::enqueue(std::span<const std::byte> head, std::span<const std::byte> data,
                     std::vector<std::byte>* owned, std::vector<unique_fd>&& fds,
                     write_callback&& cb) {
  KIN_ASSERT(state_ != nullptr, "kin::stream::write on a stream that was never opened");
  KIN_ASSERT(owned == nullptr || head.empty(), "kin::stream: an owned write with a head");
  detail::stream_state& s = *state_;
  if (s.closed || s.shut || s.shutdown_requested || s.write_error) {
    fds.clear();
    refuse(std::move(cb), s.write_error ? s.write_error : errno_code(EPIPE));
    return !s.above_high;
  }
  // The write's bytes are head's, then data's; `sent` counts from head's first.
  const std::size_t h = head.size();
  const std::size_t n = h + data.size();
  std::size_t sent = 0;
  const bool small = n < detail::coalesce_below;
  if (!small && s.queue.empty() && !s.want_writable && !s.connecting) {
    // A large write gains nothing from waiting for others: it goes out now, and only what the
    // kernel does not take is queued (no copy in the common case). Its callback still runs
    // later, from the flush, never inside write(). Small writes wait for the flush, which sends
    // many in one system call, those with descriptors included (see fd_batch_bytes).
    iovec iov[2];
    int count = 0;
    if (h != 0) iov[count++] = {const_cast<std::byte*>(head.data()), h};
    if (!data.empty()) iov[count++] = {const_cast<std::byte*>(data.data()), data.size()};
    detail::fd_group passing{0, std::move(fds)};
    auto r = passing.fds.empty() ? s.write_vectored(iov, count)
                                 : s.send_fds(iov, count, std::span(&passing, 1));
    fds = std::move(passing.fds);
    if (r) {
      fds.clear();  // they went with the first byte
      sent = *r;
      if (sent == n) {
        if (cb) {
          s.completed.emplace_back(std::move(cb), detail::no_error());
          s.schedule_flush();
        }
        return !s.above_high;
      }
    }
    // EAGAIN, or an error the flush will meet again and report to every queued write.
  }
  detail::write_req* tail = s.queue.empty() ? nullptr : &s.queue.back();
  if (small) {
    // Small writes are copied once, into the tail of the queue, to leave in one system call.
    if (tail == nullptr || tail->data.size() + n > detail::coalesce_limit) {
      tail = &s.queue.push_back();
      s.queue.give_buffer(*tail, detail::coalesce_below);
    }
    if (!fds.empty()) tail->groups.push_back({tail->data.size(), std::move(fds)});
    if (sent < h) {
      tail->data.insert(tail->data.end(), head.begin() + static_cast<std::ptrdiff_t>(sent),
                        head.end());
    }
    tail->data.insert(tail->data.end(),
                      data.begin() + static_cast<std::ptrdiff_t>(sent > h ? sent - h : 0),
                      data.end());
    if (cb) tail->callbacks.push_back({tail->data.size(), std::move(cb), {}});
  } else {
    // A large write starts a request of its own, and is not copied if it came as a vector. It
    // is built aside and queued whole, so that an allocation that fails leaves the queue as it
    // was.
    detail::write_req req;
    if (owned != nullptr) {
      req.data = std::move(*owned);
      req.sent = sent;
    } else {
      // What is left of head, then of data. data's bytes land at their source's offset
      // modulo 64 (a few unsent bytes of padding go first): glibc's `rep movsb` copies some
      // CPUs' memory 20 times slower when the destination lies 8 to 16 bytes past the source
      // modulo 4 KiB.
      const std::size_t head_left = sent < h ? h - sent : 0;
      const std::byte* from = data.data() + (sent > h ? sent - h : 0);
      const std::byte* end = data.data() + data.size();
      req.data.reserve(n - sent + 64);
      const auto skew = (reinterpret_cast<std::uintptr_t>(req.data.data()) + head_left -
                         reinterpret_cast<std::uintptr_t>(from)) &
                        63u;
      const std::size_t pad = (64 - skew) & 63u;
      req.data.resize(pad);
      req.data.insert(req.data.end(), head.data() + (h - head_left), head.data() + h);
      req.data.insert(req.data.end(), from, end);
      req.sent = pad;
    }
    if (!fds.empty()) req.groups.push_back({req.sent, std::move(fds)});
    if (cb) req.callbacks.push_back({req.data.size(), std::move(cb), {}});
    s.queue.push_back() = std::move(req);
  }
  s.queued_bytes += n - sent;
  if (s.queued_bytes > high_mark_) s.above_high = true;
  s.schedule_flush();
  return !s.above_high;
}

result<std::size_t> stream::try_write(std::span<const std::byte> data) noexcept {
  if (!fd_.is_open() || !state_ || state_->shut) return fail(errno_code(EPIPE));
  if (!state_->queue.empty() || state_->connecting) return fail(errno_code(EAGAIN));
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  return state_->write_vectored(&iov, 1);
}

void stream::shutdown(write_callback cb) {
  KIN_ASSERT(state_ != nullptr, "kin::stream::shutdown on a stream that was never opened");
  detail::stream_state& s = *state_;
  if (s.closed || s.shut || s.shutdown_requested) {
    refuse(std::move(cb), errno_code(s.shut || s.shutdown_requested ? EALREADY : EPIPE));
    return;
  }
  if (s.write_error) {
    refuse(std::move(cb), s.write_error);
    return;
  }
  s.shutdown_requested = true;
  s.shutdown_cb = std::move(cb);
  s.schedule_flush();
}

void stream::close(std::function<void()> cb) {
  // Every outcome, in the order of the calls that asked for them: writes that went straight out
  // (success) or were refused, queued writes and a pending shutdown (ECANCELED unless refused),
  // then a pending connect (ECANCELED), as a failed connect reports them.
  std::vector<detail::completion> done;
  if (state_) {
    detail::stream_state& s = *state_;
    const auto cancelled = std::make_error_code(std::errc::operation_canceled);
    done.swap(s.completed);
    loop_impl().cancel(s.flush_task);
    loop_impl().cancel(s.connect_task);
    s.watcher.stop();
    for (std::size_t i = 0; i < s.queue.size(); ++i) {
      for (auto& e : s.queue[i].callbacks) {
        if (e.cb) done.emplace_back(std::move(e.cb), e.refused ? e.refused : cancelled);
      }
    }
    s.queue.clear();
    s.queued_bytes = 0;
    if (s.shutdown_cb) done.emplace_back(std::move(s.shutdown_cb), cancelled);
    if (s.connect_cb) done.emplace_back(std::move(s.connect_cb), cancelled);
    s.connecting = false;
    s.shutdown_requested = false;
    s.want_writable = false;
    s.closed = true;
  }
  read_cb_ = nullptr;
  reading_ = false;
  fd_.reset();
  set_active(false);
  if (!done.empty() || cb) {
    loop_impl().post([done = std::move(done), cb = std::move(cb)] {
      for (const auto& [c, ec] : done) {
        if (c) c(ec);
      }
      if (cb) cb();
    });
  }
}

void stream::set_water_marks(std::size_t high, std::size_t low) noexcept {
  KIN_ASSERT(low <= high, "kin::stream::set_water_marks: low above high");
  high_mark_ = high;
  low_mark_ = low;
}

std::size_t stream::write_queue_size() const noexcept { return state_ ? state_->queued_bytes : 0; }

}  // namespace kin
