// Creating children on Linux: clone(CLONE_VM|CLONE_VFORK) on a stack of their own, with a
// pidfd from CLONE_PIDFD, and signalling them through that pidfd.
#include "spawn_backend.hpp"

#include "posix/sys.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdlib>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000  // Linux 5.2
#endif

namespace kin::detail::spawn_backend {

namespace {

// The child's stack: run_child needs little (its largest frame is a 4 KiB getdents64 buffer),
// execve a little more.
constexpr std::size_t child_stack_size = 64 * 1024;
constexpr std::size_t guard_size = 4096;  // the lowest page of the mapping (at least one page)

// Set once CLONE_PIDFD was refused (a kernel before 5.2): later spawns do not ask again.
std::atomic<bool> no_clone_pidfd{false};

// The child's stack, one per spawning thread and kept for its next spawn: mapping a fresh one
// each time costs page faults and zeroing, and unmapping it a TLB flush on every CPU the
// process ran on. A thread spawns one child at a time (it is suspended until the child execs).
class stack_mapping {
 public:
  stack_mapping() noexcept = default;
  stack_mapping(const stack_mapping&) = delete;
  stack_mapping& operator=(const stack_mapping&) = delete;
  ~stack_mapping() {
    if (base_ != MAP_FAILED) ::munmap(base_, child_stack_size);
  }
  // Maps it on first use, with an inaccessible page below it: the child shares the parent's
  // memory, so an overflow must fault rather than write into whatever lies below.
  [[nodiscard]] bool ok() noexcept {
    if (base_ == MAP_FAILED) {
      base_ = ::mmap(nullptr, child_stack_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (base_ != MAP_FAILED && ::mprotect(base_, guard_size, PROT_NONE) != 0) {
        ::munmap(base_, child_stack_size);
        base_ = MAP_FAILED;
      }
    }
    return base_ != MAP_FAILED;
  }
  // Stacks grow down on every architecture Linux runs kin on.
  [[nodiscard]] void* top() const noexcept { return static_cast<char*>(base_) + child_stack_size; }

 private:
  void* base_ = MAP_FAILED;
};

thread_local stack_mapping child_stack;

// KIN_PIDFD=0 in the environment at the first spawn: no pidfds, so children are reaped through
// SIGCHLD as on kernels before 5.3 (documented in the README; the tests use it to exercise that
// path on a kernel that has pidfds).
bool pidfds_disabled() noexcept {
  static const bool disabled = [] {
    const char* v = ::getenv("KIN_PIDFD");
    return v != nullptr && v[0] == '0' && v[1] == '\0';
  }();
  return disabled;
}

// Where pidfds go: half the descriptor limit (at most 65536), when the limit leaves room for
// thousands of children above what an application usually opens; 0 otherwise. Read once: it
// only places descriptors, and a later change of the limit does not make the placement wrong.
int pidfd_base() noexcept {
  static const int base = [] {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
    const rlim_t soft = lim.rlim_cur;
    if (soft != RLIM_INFINITY && soft < 4096) return 0;
    const rlim_t half = soft == RLIM_INFINITY ? rlim_t{65536} : soft / 2;
    return static_cast<int>(std::min<rlim_t>(half, 65536));
  }();
  return base;
}

// Blocks every signal in this thread for its lifetime: no handler may run in the child, which
// shares this thread's memory and stack pointer's neighbourhood until it execs, and the child
// starts with this mask (it resets dispositions, then empties the mask).
//
// Thread cancellation is disabled too: the child runs on this thread's TLS, and the C library's
// open/close/write are cancellation points that would act on a pthread_cancel aimed at this
// thread from inside the child (glibc's posix_spawn disables it for the same reason).
class quiet_thread {
 public:
  quiet_thread() noexcept {
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state_);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old_);
  }
  quiet_thread(const quiet_thread&) = delete;
  quiet_thread& operator=(const quiet_thread&) = delete;
  ~quiet_thread() {
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    pthread_setcancelstate(cancel_state_, nullptr);
  }

 private:
  sigset_t old_;
  int cancel_state_ = PTHREAD_CANCEL_ENABLE;
};

}  // namespace

result<started> start_child(const async_safe::child_plan& plan) noexcept {
  stack_mapping& stack = child_stack;
  if (!stack.ok()) return fail(sys::last_error());
  void* arg = const_cast<async_safe::child_plan*>(&plan);
  quiet_thread quiet;
  // CLONE_VFORK suspends this thread until the child calls execve or _exit; CLONE_VM spares
  // copying the page tables, which is what makes fork() cost grow with the parent's size.
  // CLONE_FILES spares copying the descriptor table: the child copies only its low part (see
  // child_plan::unshare_below). Without CLONE_SIGHAND the child has its own copy of the signal
  // dispositions to reset.
  const int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (plan.unshare_below > 0 ? CLONE_FILES : 0);
  const bool want_pidfd = !pidfds_disabled();
  const bool ask_clone = want_pidfd && !no_clone_pidfd.load(std::memory_order_relaxed);
  int pidfd = -1;
  pid_t pid = -1;
  if (ask_clone) {
    pid = ::clone(async_safe::run_child_entry, stack.top(), flags | CLONE_PIDFD, arg, &pidfd);
    // A kernel that refuses the flag (EINVAL): stop asking, and use pidfd_open below. Kernels
    // before 5.2 ignore the bit instead (it was CLONE_PID's), leaving pidfd at -1: the same.
    if (pid < 0 && errno == EINVAL) no_clone_pidfd.store(true, std::memory_order_relaxed);
  }
  if (!ask_clone || (pid < 0 && no_clone_pidfd.load(std::memory_order_relaxed))) {
    pidfd = -1;
    pid = ::clone(async_safe::run_child_entry, stack.top(), flags, arg);
  }
  if (pid < 0) return fail(sys::last_error());
  started s{pid, unique_fd(pidfd)};
  if (want_pidfd && !s.pidfd.is_open()) {
    // Linux 5.3 has pidfd_open where 5.2's CLONE_PIDFD was refused: only for the odd kernel
    // in between does this fail, and the reaper then falls back to SIGCHLD.
    const long fd = ::syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) s.pidfd.reset(static_cast<int>(fd));
  }
  return s;
}

bool can_share_fd_table() noexcept { return true; }

unique_fd move_out_of_the_way(unique_fd pidfd) noexcept {
  const int base = pidfd_base();
  if (base == 0 || !pidfd.is_open() || pidfd.get() >= base) return pidfd;
  const int moved = ::fcntl(pidfd.get(), F_DUPFD_CLOEXEC, base);
  if (moved < 0) return pidfd;  // EMFILE: no room up there; it works where it is
  return unique_fd(moved);
}

result<void> signal_child(pid_t pid, int pidfd, int sig) noexcept {
  if (pidfd >= 0) {
    if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0) return {};
    if (errno != ENOSYS) return fail(sys::last_error());
  }
  if (::kill(pid, sig) != 0) return fail(sys::last_error());
  return {};
}

}  // namespace kin::detail::spawn_backend
