// Creating children on BSD and macOS: vfork(). Not compiled on the machines kin is developed
// on (Linux); written against the vfork(2) and kill(2) manual pages and kept thin.
#include "spawn_backend.hpp"

#include "posix/sys.hpp"

#include <csignal>

#include <pthread.h>
#include <unistd.h>

namespace kin::detail::spawn_backend {

result<started> start_child(const async_safe::child_plan& plan) noexcept {
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  // The parent is suspended until the child calls execve or _exit, and the child only runs
  // the async-signal-safe plan, so sharing the address space is safe.
  const pid_t pid = ::vfork();
  if (pid == 0) async_safe::run_child(plan);
  const int err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return fail(errno_code(err));
  return started{pid, unique_fd()};
}

bool can_share_fd_table() noexcept { return false; }

unique_fd move_out_of_the_way(unique_fd pidfd) noexcept { return pidfd; }

result<void> signal_child(pid_t pid, int, int sig) noexcept {
  if (::kill(pid, sig) != 0) return fail(sys::last_error());
  return {};
}

}  // namespace kin::detail::spawn_backend
