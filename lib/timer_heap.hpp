// The timer priority queue: an array 4-ary min-heap keyed by (deadline, start sequence), with
// each timer's index kept in the timer so it can be removed in O(log n).
#pragma once

#include <kin/loop.hpp>

#include <cstdint>
#include <vector>

namespace kin::detail {

struct timer_entry {
  std::uint64_t deadline;  // ns on the loop clock
  std::uint64_t seq;       // start order, breaks ties
  timer* owner;
};

class timer_heap {
 public:
  [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
  [[nodiscard]] const timer_entry& top() const noexcept { return entries_.front(); }

  void push(const timer_entry& e, std::uint32_t& index_slot);
  void pop() noexcept;
  void remove(std::uint32_t index) noexcept;

 private:
  // Four children per node halve the depth of a binary heap. Popping, the dominant operation,
  // then moves half as many entries, and each move writes the moved timer's heap index, a
  // likely cache miss; the four children it compares share one or two cache lines.
  static constexpr std::uint32_t arity = 4;

  static bool before(const timer_entry& a, const timer_entry& b) noexcept {
    return a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq);
  }
  void sift_up(std::uint32_t i, timer_entry e) noexcept;
  void sift_down(std::uint32_t i, timer_entry e) noexcept;
  void place(std::uint32_t i, const timer_entry& e) noexcept;

  std::vector<timer_entry> entries_;
};

}  // namespace kin::detail
