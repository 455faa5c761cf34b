// The data the process-wide signal handler reads: a never-freed list of chunks of slots, one slot
// per loop that watches signals. Only lock-free atomics are touched from the handler.
#pragma once

#include <atomic>
#include <csignal>
#include <cstdint>

namespace kin::detail::async_safe {

/// One loop's view of signal delivery. The loop that claims a slot sets write_fd to its
/// self-pipe and mask to the signals it watches; the handler bumps pending[signo] and writes
/// one byte. `users` counts handlers inside the slot, so a loop releasing it can wait for them
/// to leave before closing the pipe (the fd number could otherwise be reused under them).
struct signal_slot {
  std::atomic<int> write_fd{-1};
  std::atomic<std::uint32_t> users{0};
  std::atomic<std::uint64_t> mask{0};  // bit (signo - 1)
  std::atomic<std::uint32_t> pending[NSIG] = {};
  std::atomic<bool> claimed{false};
};

inline constexpr int slots_per_chunk = 16;

struct signal_slot_chunk {
  signal_slot slots[slots_per_chunk];
  std::atomic<signal_slot_chunk*> next{nullptr};
};

/// The head of the chunk list. Chunks are appended (under the registry's mutex) and never
/// freed, so the handler can walk the list at any moment.
extern std::atomic<signal_slot_chunk*> signal_slot_head;

inline std::uint64_t signal_bit(int signo) noexcept { return std::uint64_t{1} << (signo - 1); }

/// The handler kin installs with sigaction for every watched signal.
extern "C" void kin_signal_handler(int signo) noexcept;

}  // namespace kin::detail::async_safe
