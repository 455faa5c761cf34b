// kin::loop, handle accounting, keep_alive tokens, posted functions, and the iteration itself.
#include <kin/loop.hpp>

#include "assert.hpp"
#include "loop_impl.hpp"

#include <system_error>

namespace kin {

namespace detail {

loop_impl::~loop_impl() {
  KIN_ASSERT(!running_, "kin::loop destroyed from inside one of its own callbacks");
  processes_.reset();  // its handles use the signal plumbing
  signals_.reset();
  KIN_ASSERT(attached_ == 0,
             "kin::loop destroyed while watchers, timers or other handles are still attached "
             "to it; destroy them first");
  KIN_ASSERT(holds_.load() == 0, "kin::loop destroyed while a kin::keep_alive still holds it");
}

void loop_impl::post(std::function<void()> fn) {
  bool was_empty;
  {
    std::lock_guard lock(post_mutex_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(fn));
    posts_pending_.store(true, std::memory_order_release);
  }
  // Only the first function of a batch needs to wake the loop: until the loop takes the batch,
  // the queue is not empty, and the loop takes it only after the wakeup.
  if (was_empty) backend_.wakeup();
}

void loop_impl::run_posted_now() noexcept {
  {
    std::lock_guard lock(post_mutex_);
    running_posts_.swap(posted_);
    posts_pending_.store(false, std::memory_order_release);
  }
  // Functions posted by these run in the next iteration, after I/O has had its turn.
  for (auto& fn : running_posts_) fn();
  running_posts_.clear();
}

void loop_impl::defer(deferred_task& task) noexcept {
  if (task.queued_) return;
  task.queued_ = true;
  task.round_ = deferred_round_;
  task.next_ = nullptr;
  task.prev_ = deferred_tail_;
  if (deferred_tail_ != nullptr) {
    deferred_tail_->next_ = &task;
  } else {
    deferred_head_ = &task;
  }
  deferred_tail_ = &task;
}

void loop_impl::cancel(deferred_task& task) noexcept {
  if (!task.queued_) return;
  task.queued_ = false;
  if (task.prev_ != nullptr) {
    task.prev_->next_ = task.next_;
  } else {
    deferred_head_ = task.next_;
  }
  if (task.next_ != nullptr) {
    task.next_->prev_ = task.prev_;
  } else {
    deferred_tail_ = task.prev_;
  }
  task.prev_ = task.next_ = nullptr;
}

void loop_impl::run_deferred() noexcept {
  // Tasks queued while these run belong to the next round (the poll then does not sleep).
  const std::uint64_t round = ++deferred_round_;
  while (deferred_head_ != nullptr && deferred_head_->round_ < round) {
    deferred_task* task = deferred_head_;
    cancel(*task);
    task->fn_(task->context_);  // may destroy the handle that owns task
  }
}

bool loop_impl::run(run_mode mode) {
  KIN_ASSERT(!running_, "kin::loop::run called from inside a callback of the same loop");
  running_ = true;
  update_time();
  for (;;) {
    if (stop_requested_.exchange(false, std::memory_order_acq_rel)) break;
    run_deferred();
    if (!is_alive()) break;
    backend_.poll(poll_timeout(mode), *this);  // updates the time, then runs I/O callbacks
    // Those may have taken a while: timers, and functions that start timers, see the time after
    // them. (A loop with neither reads the clock once per iteration.)
    if (!timers_.empty() || posts_pending_.load(std::memory_order_relaxed)) update_time();
    run_posted();
    run_timers();
    if (mode != run_mode::until_done) break;
  }
  // A stop() made during this run is answered by this return, including one made in the last
  // iteration of run_once() or run_nowait().
  stop_requested_.store(false, std::memory_order_release);
  running_ = false;
  return is_alive();
}

}  // namespace detail

loop::loop() {
  auto b = detail::backend::open();
  if (!b) throw std::system_error(b.error(), "kin::loop: cannot create the poll instance");
  impl_ = std::make_unique<detail::loop_impl>(std::move(*b));
}

loop::loop(std::unique_ptr<detail::loop_impl> impl) noexcept : impl_(std::move(impl)) {}

result<loop> loop::create() noexcept {
  auto b = detail::backend::open();
  if (!b) return fail(b.error());
  return loop(std::make_unique<detail::loop_impl>(std::move(*b)));
}

loop::loop(loop&&) noexcept = default;
loop& loop::operator=(loop&&) noexcept = default;
loop::~loop() = default;

bool loop::run() { return impl_->run(detail::run_mode::until_done); }
bool loop::run_once() { return impl_->run(detail::run_mode::once); }
bool loop::run_nowait() { return impl_->run(detail::run_mode::nowait); }
void loop::stop() noexcept { impl_->stop(); }
void loop::post(std::function<void()> fn) { impl_->post(std::move(fn)); }
bool loop::is_alive() const noexcept { return impl_->is_alive(); }
void loop::update_time() noexcept { impl_->update_time(); }

std::chrono::steady_clock::time_point loop::now() const noexcept {
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::nanoseconds(static_cast<std::int64_t>(impl_->now_ns()))));
}

handle::handle(loop& l) noexcept : handle(l.impl()) {}

handle::handle(detail::loop_impl& l) noexcept : loop_(&l) { loop_->attach(); }

handle::~handle() {
  KIN_ASSERT(!active_, "kin::handle destroyed while active (a derived class must stop it)");
  loop_->detach();
}

void handle::change_active(bool active) noexcept {
  active_ = active;
  if (ref_) loop_->add_active_ref(active ? 1 : -1);
}

void handle::ref() noexcept {
  if (ref_) return;
  ref_ = true;
  if (active_) loop_->add_active_ref(1);
}

void handle::unref() noexcept {
  if (!ref_) return;
  ref_ = false;
  if (active_) loop_->add_active_ref(-1);
}

keep_alive::keep_alive(loop& l) noexcept : loop_(&l.impl()) { loop_->hold(); }

keep_alive& keep_alive::operator=(keep_alive&& other) noexcept {
  if (this != &other) {
    reset();
    loop_ = std::exchange(other.loop_, nullptr);
  }
  return *this;
}

void keep_alive::reset() noexcept {
  if (loop_ != nullptr) std::exchange(loop_, nullptr)->release_hold();
}

}  // namespace kin
