// call_guard: how a handle survives being destroyed, closed or reopened by the user code it
// calls.
#pragma once

namespace kin::detail {

// Marks a stack frame that calls user code. A callback may destroy the handle (or replace the
// state the frame works on): the handle then sets `gone` in every frame still on the stack
// (mark_all), and each frame returns without touching the handle again.
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
  static void mark_all(call_guard* top) noexcept {
    for (call_guard* g = top; g != nullptr; g = g->outer_) g->gone = true;
  }
  bool gone = false;

 private:
  call_guard*& top_;
  call_guard* outer_;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace kin::detail
