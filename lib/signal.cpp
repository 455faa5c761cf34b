// Signal watchers: the process-wide registry (which signals kin handles, and what it replaced),
// and each loop's signal sink (its slot for the handler, its self-pipe, its watchers).
#include <kin/signal.hpp>

#include "async_safe/signal_slots.hpp"
#include "loop_impl.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <csignal>
#include <mutex>
#include <thread>

namespace kin {

namespace detail {

namespace {

namespace as = async_safe;

// What kin changed in the process: how many watchers (in all loops) watch each signal, and the
// disposition each signal had before the first of them started. Never destroyed, so watchers
// stopped during static destruction still find it.
struct signal_registry {
  std::mutex mutex;
  int watchers[NSIG] = {};
  struct sigaction previous[NSIG] = {};
};

signal_registry& registry() {
  static signal_registry* r = new signal_registry;
  return *r;
}

as::signal_slot* claim_slot(int write_fd) {
  std::lock_guard lock(registry().mutex);
  as::signal_slot_chunk* last = nullptr;
  for (auto* c = as::signal_slot_head.load(std::memory_order_acquire); c != nullptr;
       c = c->next.load(std::memory_order_acquire)) {
    for (as::signal_slot& s : c->slots) {
      if (!s.claimed.load(std::memory_order_relaxed)) {
        s.claimed.store(true, std::memory_order_relaxed);
        s.write_fd.store(write_fd, std::memory_order_seq_cst);
        return &s;
      }
    }
    last = c;
  }
  auto* chunk = new as::signal_slot_chunk;  // never freed: the handler may walk it at any time
  chunk->slots[0].claimed.store(true, std::memory_order_relaxed);
  chunk->slots[0].write_fd.store(write_fd, std::memory_order_relaxed);
  if (last == nullptr) {
    as::signal_slot_head.store(chunk, std::memory_order_release);
  } else {
    last->next.store(chunk, std::memory_order_release);
  }
  return &chunk->slots[0];
}

void release_slot(as::signal_slot& s) noexcept {
  s.mask.store(0, std::memory_order_seq_cst);
  s.write_fd.store(-1, std::memory_order_seq_cst);
  // A handler that saw the old descriptor is still writing to it; wait until it is out before
  // the caller closes the pipe. Handlers are short and never block (the pipe is non-blocking).
  while (s.users.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  for (auto& p : s.pending) p.store(0, std::memory_order_relaxed);
  std::lock_guard lock(registry().mutex);
  s.claimed.store(false, std::memory_order_relaxed);
}

bool is_watchable(int signo) noexcept {
  return signo > 0 && signo < NSIG && signo != SIGKILL && signo != SIGSTOP;
}

}  // namespace

class signal_sink {
 public:
  signal_sink(loop_impl& owner, pipe_ends pipe, as::signal_slot& slot) noexcept
      : owner_(owner), pipe_(std::move(pipe)), slot_(slot) {}
  signal_sink(const signal_sink&) = delete;
  signal_sink& operator=(const signal_sink&) = delete;
  ~signal_sink() {
    release_slot(slot_);
    owner_.poller().remove(pipe_.read.get(), io_events::readable);
  }

  static result<std::unique_ptr<signal_sink, signal_sink_deleter>> open(loop_impl& owner) {
    auto pipe = make_pipe(fd_mode::nonblocking);
    if (!pipe) return fail(pipe.error());
    if (auto r = owner.poller().add(pipe->read.get(), io_events::readable, signal_token); !r) {
      return fail(r.error());
    }
    as::signal_slot* slot = claim_slot(pipe->write.get());
    return std::unique_ptr<signal_sink, signal_sink_deleter>(
        new signal_sink(owner, std::move(*pipe), *slot));
  }

  void link(signal_watcher& w, int signo) noexcept {
    w.prev_ = nullptr;
    w.next_ = heads_[signo];
    if (w.next_ != nullptr) w.next_->prev_ = &w;
    heads_[signo] = &w;
    if (counts_[signo]++ == 0)
      slot_.mask.fetch_or(as::signal_bit(signo), std::memory_order_seq_cst);
  }

  void unlink(signal_watcher& w, int signo) noexcept {
    if (cursor_ == &w) cursor_ = w.next_;
    if (w.prev_ != nullptr) {
      w.prev_->next_ = w.next_;
    } else {
      heads_[signo] = w.next_;
    }
    if (w.next_ != nullptr) w.next_->prev_ = w.prev_;
    w.prev_ = w.next_ = nullptr;
    if (--counts_[signo] == 0) {
      slot_.mask.fetch_and(~as::signal_bit(signo), std::memory_order_seq_cst);
      slot_.pending[signo].store(0, std::memory_order_relaxed);
    }
  }

  void dispatch() noexcept {
    // Drain first, then collect: a signal that lands in between is collected now or wakes the
    // loop again, never lost.
    char buf[256];
    while (sys::read(pipe_.read.get(), buf, sizeof buf).value_or(0) == sizeof buf) {
    }
    for (int signo = 1; signo < NSIG; ++signo) {
      if (slot_.pending[signo].exchange(0, std::memory_order_acquire) == 0) continue;
      // A callback may stop or destroy any watcher, the next one included: unlink() moves the
      // cursor past a watcher it removes. Watchers started meanwhile are linked at the head and
      // are not called for this delivery.
      for (signal_watcher* w = heads_[signo]; w != nullptr; w = cursor_) {
        cursor_ = w->next_;
        w->cb_(signo);
      }
      cursor_ = nullptr;
    }
  }

 private:
  loop_impl& owner_;
  pipe_ends pipe_;
  as::signal_slot& slot_;
  signal_watcher* heads_[NSIG] = {};
  int counts_[NSIG] = {};
  signal_watcher* cursor_ = nullptr;
};

void signal_sink_deleter::operator()(signal_sink* sink) const noexcept { delete sink; }

void loop_impl::dispatch_signals() noexcept {
  if (signals_) signals_->dispatch();
}

result<void> loop_impl::signal_start(signal_watcher& w, int signo) noexcept {
  if (!is_watchable(signo)) return fail(errno_code(EINVAL));
  signal_stop(w);
  if (!signals_) {
    auto sink = signal_sink::open(*this);
    if (!sink) return fail(sink.error());
    signals_ = std::move(*sink);
  }
  {
    signal_registry& reg = registry();
    std::lock_guard lock(reg.mutex);
    if (reg.watchers[signo] == 0) {
      struct sigaction action = {};
      action.sa_handler = as::kin_signal_handler;
      sigfillset(&action.sa_mask);  // the handler is never interrupted by another of kin's
      action.sa_flags = SA_RESTART;
      if (::sigaction(signo, &action, &reg.previous[signo]) != 0) return fail(sys::last_error());
    }
    ++reg.watchers[signo];
  }
  signals_->link(w, signo);
  w.signo_ = signo;
  w.set_active(true);
  return {};
}

void loop_impl::signal_stop(signal_watcher& w) noexcept {
  if (!w.is_active()) return;
  const int signo = w.signo_;
  signals_->unlink(w, signo);
  {
    signal_registry& reg = registry();
    std::lock_guard lock(reg.mutex);
    if (--reg.watchers[signo] == 0) ::sigaction(signo, &reg.previous[signo], nullptr);
  }
  w.signo_ = 0;
  w.set_active(false);
}

}  // namespace detail

signal_watcher::signal_watcher(loop& l, callback cb) : handle(l), cb_(std::move(cb)) {}
signal_watcher::signal_watcher(detail::loop_impl& l, callback cb) : handle(l), cb_(std::move(cb)) {}

signal_watcher::~signal_watcher() { stop(); }

result<void> signal_watcher::start(int signo) noexcept {
  if (!cb_) return fail(errno_code(EINVAL));
  return loop_impl().signal_start(*this, signo);
}

void signal_watcher::stop() noexcept { loop_impl().signal_stop(*this); }

}  // namespace kin
