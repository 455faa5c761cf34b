// call_guard: how a handle survives being destroyed, closed or reopened by the user code it
// calls.
#pragma once

#include "loop_impl.hpp"

#include <cstddef>
#include <functional>
#include <iterator>
#include <system_error>
#include <utility>
#include <vector>

namespace kin::detail {

// Marks a stack frame that calls user code. A callback may destroy the handle, or replace the
// state the frame works on (reopen, release): the handle then sets `gone` in every frame still
// on the stack (mark_all), with `owner_gone` when the handle itself is destroyed, and each frame
// returns without touching the state again.
#if defined(__GNUC__) && !defined(__clang__)
// GCC sees the frame's address stored in the stream and not always taken back: it is taken back
// on every path but the one where the stream, and the stored address with it, is gone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
struct call_guard {
  explicit call_guard(call_guard*& top) noexcept : top_(top), outer_(top) { top = this; }
  call_guard(const call_guard&) = delete;
  call_guard& operator=(const call_guard&) = delete;
  ~call_guard() {
    if (!gone) top_ = outer_;
  }
  static void mark_all(call_guard* top, bool owner_gone) noexcept {
    for (call_guard* g = top; g != nullptr; g = g->outer_) {
      g->gone = true;
      g->owner_gone = owner_gone;
    }
  }
  bool gone = false;
  bool owner_gone = false;

 private:
  call_guard*& top_;
  call_guard* outer_;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// A write's (or a datagram's) callback and its outcome.
using completion = std::pair<std::function<void(std::error_code)>, std::error_code>;

// Calls the completions in order. When one of them destroys the handle, the rest are dropped
// with it (as the handle's documentation says); when one only detaches the state this frame
// works on (the handle was reopened or released), the rest still run, in order, on a later
// iteration. Returns false once the state is gone.
inline bool complete_in_order(call_guard*& top, loop_impl& l, std::vector<completion>& list) {
  call_guard guard(top);
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (list[i].first) list[i].first(list[i].second);
    if (!guard.gone) continue;
    if (!guard.owner_gone && i + 1 < list.size()) {
      std::vector<completion> rest(
          std::make_move_iterator(list.begin() + static_cast<std::ptrdiff_t>(i) + 1),
          std::make_move_iterator(list.end()));
      l.post([rest = std::move(rest)] {
        for (const auto& [cb, ec] : rest) {
          if (cb) cb(ec);
        }
      });
    }
    return false;
  }
  return true;
}

}  // namespace kin::detail
