// kin::timer and the timer heap: start, stop, and firing due timers in (deadline, start) order.
#include <kin/loop.hpp>

#include "loop_impl.hpp"
#include "timer_heap.hpp"

#include <cerrno>
#include <limits>

namespace kin {

namespace detail {

void timer_heap::place(std::uint32_t i, const timer_entry& e) noexcept {
  entries_[i] = e;
  e.owner->heap_index_ = i;
}

void timer_heap::sift_up(std::uint32_t i, timer_entry e) noexcept {
  while (i > 0) {
    std::uint32_t parent = (i - 1) / arity;
    if (!before(e, entries_[parent])) break;
    place(i, entries_[parent]);
    i = parent;
  }
  place(i, e);
}

void timer_heap::sift_down(std::uint32_t i, timer_entry e) noexcept {
  const auto n = static_cast<std::uint32_t>(entries_.size());
  for (;;) {
    const std::uint32_t first = arity * i + 1;
    if (first >= n) break;
    const std::uint32_t last = first + arity < n ? first + arity : n;
    std::uint32_t child = first;
    for (std::uint32_t c = first + 1; c < last; ++c) {
      if (before(entries_[c], entries_[child])) child = c;
    }
    if (!before(entries_[child], e)) break;
    place(i, entries_[child]);
    i = child;
  }
  place(i, e);
}

void timer_heap::push(const timer_entry& e, std::uint32_t& index_slot) {
  entries_.push_back(e);
  index_slot = static_cast<std::uint32_t>(entries_.size() - 1);
  sift_up(index_slot, e);
}

void timer_heap::pop() noexcept { remove(0); }

void timer_heap::remove(std::uint32_t index) noexcept {
  timer_entry last = entries_.back();
  entries_.pop_back();
  if (index == entries_.size()) return;  // removed the last element
  // The moved element may belong above or below the hole.
  if (index > 0 && before(last, entries_[(index - 1) / arity])) {
    sift_up(index, last);
  } else {
    sift_down(index, last);
  }
}

namespace {
std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) noexcept {
  return b > std::numeric_limits<std::uint64_t>::max() - a
             ? std::numeric_limits<std::uint64_t>::max()
             : a + b;
}
}  // namespace

void loop_impl::timer_start(timer& t, std::uint64_t timeout_ns, std::uint64_t repeat_ns) noexcept {
  if (t.is_active()) timers_.remove(t.heap_index_);
  t.deadline_ = saturating_add(now_ns_, timeout_ns);
  t.repeat_ = repeat_ns;
  timers_.push({t.deadline_, timer_seq_++, &t}, t.heap_index_);
  t.set_active(true);
}

void loop_impl::timer_stop(timer& t) noexcept {
  if (!t.is_active()) return;
  timers_.remove(t.heap_index_);
  t.set_active(false);
}

void loop_impl::run_due_timers() noexcept {
  // Timers started by the callbacks below carry a sequence number >= limit: they wait for the
  // next iteration even when already due, so a zero-timeout timer cannot starve the loop.
  const std::uint64_t limit = timer_seq_;
  while (!timers_.empty()) {
    const timer_entry& top = timers_.top();
    if (top.deadline > now_ns_ || top.seq >= limit) break;
    timer* t = top.owner;
    timers_.pop();
    if (t->repeat_ != 0) {
      t->deadline_ = saturating_add(now_ns_, t->repeat_);
      timers_.push({t->deadline_, timer_seq_++, t}, t->heap_index_);
    } else {
      t->set_active(false);
    }
    t->cb_();  // may stop, restart or destroy t: it is not touched afterwards
  }
}

int loop_impl::poll_timeout(run_mode mode) const noexcept {
  if (mode == run_mode::nowait || deferred_head_ != nullptr ||
      posts_pending_.load(std::memory_order_acquire) ||
      stop_requested_.load(std::memory_order_acquire)) {
    return 0;
  }
  if (timers_.empty()) return -1;
  const std::uint64_t deadline = timers_.top().deadline;
  if (deadline <= now_ns_) return 0;
  // Round up: waking before the deadline would only cost another iteration.
  const std::uint64_t ms = (deadline - now_ns_ + 999'999) / 1'000'000;
  return ms > static_cast<std::uint64_t>(std::numeric_limits<int>::max())
             ? std::numeric_limits<int>::max()
             : static_cast<int>(ms);
}

}  // namespace detail

timer::timer(loop& l, callback cb) : handle(l), cb_(std::move(cb)) {}
timer::timer(detail::loop_impl& l, callback cb) : handle(l), cb_(std::move(cb)) {}

timer::~timer() { stop(); }

result<void> timer::start(std::chrono::nanoseconds timeout,
                          std::chrono::nanoseconds repeat) noexcept {
  if (timeout.count() < 0 || repeat.count() < 0 || !cb_) return fail(errno_code(EINVAL));
  loop_impl().timer_start(*this, static_cast<std::uint64_t>(timeout.count()),
                          static_cast<std::uint64_t>(repeat.count()));
  return {};
}

void timer::stop() noexcept { loop_impl().timer_stop(*this); }

result<void> timer::set_repeat(std::chrono::nanoseconds repeat) noexcept {
  if (repeat.count() < 0) return fail(errno_code(EINVAL));
  repeat_ = static_cast<std::uint64_t>(repeat.count());
  return {};
}

std::chrono::nanoseconds timer::due_in() const noexcept {
  const std::uint64_t now = loop_impl().now_ns();
  if (!is_active() || deadline_ <= now) return std::chrono::nanoseconds::zero();
  return std::chrono::nanoseconds(static_cast<std::int64_t>(deadline_ - now));
}

}  // namespace kin
