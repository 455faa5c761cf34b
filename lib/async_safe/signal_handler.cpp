// The process-wide signal handler. Async-signal-safe: lock-free atomics and write(2) only,
// errno saved and restored. No user code runs here; loops run their watchers on their threads.
#include "signal_slots.hpp"

#include <cerrno>

#include <unistd.h>

namespace kin::detail::async_safe {

std::atomic<signal_slot_chunk*> signal_slot_head{nullptr};

extern "C" void kin_signal_handler(int signo) noexcept {
  const int saved_errno = errno;
  if (signo > 0 && signo < NSIG) {
    const std::uint64_t bit = signal_bit(signo);
    for (signal_slot_chunk* c = signal_slot_head.load(std::memory_order_acquire); c != nullptr;
         c = c->next.load(std::memory_order_acquire)) {
      for (signal_slot& s : c->slots) {
        if ((s.mask.load(std::memory_order_acquire) & bit) == 0) continue;
        s.users.fetch_add(1, std::memory_order_seq_cst);
        const int fd = s.write_fd.load(std::memory_order_seq_cst);
        if (fd >= 0) {
          s.pending[signo].fetch_add(1, std::memory_order_release);
          const char byte = static_cast<char>(signo);
          // Non-blocking: EAGAIN means the pipe is full and the loop already has a wakeup.
          ssize_t r;
          do {
            r = ::write(fd, &byte, 1);
          } while (r < 0 && errno == EINTR);
        }
        s.users.fetch_sub(1, std::memory_order_seq_cst);
      }
    }
  }
  errno = saved_errno;
}

}  // namespace kin::detail::async_safe
