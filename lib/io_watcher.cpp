// kin::io_watcher and its slots: each active watcher owns a slot whose generation changes when the
// slot is released, so an event still queued for a stopped or destroyed watcher is dropped.
#include <kin/loop.hpp>

#include "loop_impl.hpp"

#include <cerrno>

namespace kin {

namespace detail {

std::uint32_t loop_impl::claim_slot(io_watcher& w) {
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
    slots_[index].watcher = &w;
  } else {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.push_back({&w, 0});
  }
  return index;
}

void loop_impl::release_slot(std::uint32_t index) noexcept {
  slots_[index].watcher = nullptr;
  ++slots_[index].generation;
  free_slots_.push_back(index);
}

result<void> loop_impl::io_start(io_watcher& w, io_events interest) noexcept {
  if (interest == io_events::none) {
    io_stop(w);
    return {};
  }
  if (w.fd_ < 0) return fail(errno_code(EINVAL));
  if (w.is_active()) {
    result<void> r = backend_.modify(w.fd_, w.interest_, interest, token_of(w.slot_));
    if (r) {
      w.interest_ = interest;
      return r;
    }
    // ENOENT: the descriptor was closed (which unregistered it) and the number reopened. Events
    // from any lingering registration of the old file must not reach this watcher: new token.
    const bool reopened = r.error() == std::errc::no_such_file_or_directory;
    release_slot(w.slot_);
    w.set_active(false);
    w.interest_ = io_events::none;
    if (!reopened) return r;
  }
  const std::uint32_t index = claim_slot(w);
  result<void> r = backend_.add(w.fd_, interest, token_of(index));
  if (!r) {
    release_slot(index);
    return r;
  }
  w.slot_ = index;
  w.interest_ = interest;
  w.set_active(true);
  return {};
}

void loop_impl::io_stop(io_watcher& w) noexcept {
  if (!w.is_active()) return;
  backend_.remove(w.fd_, w.interest_);
  release_slot(w.slot_);
  w.interest_ = io_events::none;
  w.set_active(false);
}

void loop_impl::dispatch_io(std::uint64_t token, io_events events) noexcept {
  if (token == signal_token) {
    dispatch_signals();
    return;
  }
  const auto index = static_cast<std::uint32_t>(token);
  if (index >= slots_.size()) return;
  const io_slot& slot = slots_[index];
  if (slot.generation != static_cast<std::uint32_t>(token >> 32) || slot.watcher == nullptr) {
    return;  // stopped or destroyed by an earlier callback of this batch
  }
  io_watcher* w = slot.watcher;
  const io_events ready = events & w->interest_;
  if (ready != io_events::none) w->cb_(ready);  // w may be gone after this
}

}  // namespace detail

io_watcher::io_watcher(loop& l, int fd, callback cb) : handle(l), cb_(std::move(cb)), fd_(fd) {}

io_watcher::io_watcher(detail::loop_impl& l, int fd, callback cb)
    : handle(l), cb_(std::move(cb)), fd_(fd) {}

io_watcher::~io_watcher() { stop(); }

result<void> io_watcher::start(io_events interest) noexcept {
  return loop_impl().io_start(*this, interest);
}

void io_watcher::stop() noexcept { loop_impl().io_stop(*this); }

}  // namespace kin
