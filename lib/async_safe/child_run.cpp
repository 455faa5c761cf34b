// The child's side of spawning: follows a child_plan from the child's creation to execve with
// system calls only (it may share the parent's memory and TLS after clone(CLONE_VM|CLONE_VFORK),
// on a small stack), and reports the first failure through the report pipe. Linux only.
#include "child_plan.hpp"

#include <cerrno>
#include <csignal>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#if defined(__linux__)
#include <sys/prctl.h>
#elif defined(__FreeBSD__)
#include <sys/procctl.h>
#endif
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436  // the same number on every architecture
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

namespace kin::detail::async_safe {

namespace {

[[noreturn]] void fail(int report_fd, child_step step, int error, int index) noexcept {
  const child_report report{static_cast<int>(step), error, index};
  const char* p = reinterpret_cast<const char*>(&report);
  size_t left = sizeof report;
  while (left > 0) {
    const ssize_t n = ::write(report_fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  ::_exit(127);
}

// `value` in decimal at `out`, NUL-terminated.
void write_decimal(char* out, long value) noexcept {
  char digits[24];
  int n = 0;
  unsigned long v = value < 0 ? 0UL : static_cast<unsigned long>(value);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < 20);
  for (int i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  out[n] = '\0';
}

void reset_signals() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  for (int signo = 1; signo < NSIG; ++signo) {
    if (signo == SIGKILL || signo == SIGSTOP) continue;
    // EINVAL for the signals the C library reserves for itself; nothing else can fail.
    ::sigaction(signo, &dfl, nullptr);
  }
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// glibc's setgroups/setgid/setuid make every thread of the process change its ids (POSIX wants
// per-process credentials, the kernel keeps them per thread): they signal the other threads
// with SIGSETXID and wait for them. In a CLONE_VM child the "other threads" glibc knows about
// are the parent's, which would change the parent's ids or deadlock. The raw system calls
// change only the calling task. 32-bit x86 and ARM have 16-bit ids in the old numbers.
long raw_setgroups_none() noexcept {
#ifdef SYS_setgroups32
  return ::syscall(SYS_setgroups32, 0, nullptr);
#else
  return ::syscall(SYS_setgroups, 0, nullptr);
#endif
}

long raw_setgid(gid_t gid) noexcept {
#ifdef SYS_setgid32
  return ::syscall(SYS_setgid32, gid);
#else
  return ::syscall(SYS_setgid, gid);
#endif
}

long raw_setuid(uid_t uid) noexcept {
#ifdef SYS_setuid32
  return ::syscall(SYS_setuid32, uid);
#else
  return ::syscall(SYS_setuid, uid);
#endif
}

// Asks for `sig` when the parent dies, then checks that the parent is still the one that
// spawned this child: if it died first (the child was already handed to a reaper), the signal
// is raised now, as the kernel would have sent it (a signal whose default is to be ignored or
// to stop then does that, as it would have). kill(getpid()) and not raise(): in a child
// sharing the parent's memory, the C library's idea of the current thread is the parent's.
void set_parent_death_signal(int sig, pid_t parent, int report_fd) noexcept {
#if defined(__linux__)
  if (::syscall(SYS_prctl, PR_SET_PDEATHSIG, static_cast<unsigned long>(sig), 0UL, 0UL, 0UL) < 0) {
    fail(report_fd, child_step::parent_death, errno, -1);
  }
#elif defined(__FreeBSD__)
  if (::procctl(P_PID, 0, PROC_PDEATHSIG_CTL, &sig) < 0) {
    fail(report_fd, child_step::parent_death, errno, -1);
  }
#else
  fail(report_fd, child_step::parent_death, ENOTSUP, -1);
#endif
  // 0: the parent lives in a pid namespace this child cannot see (it setns()'d into another
  // one) — not gone.
  const pid_t now = ::getppid();
  if (now != parent && now != 0) ::kill(::getpid(), sig);
}

// Applies the fd actions and returns the report descriptor's (possibly new) number.
//
// A source may be another action's target (swapping 1 and 2), and the report descriptor may sit
// where a target goes. So before any dup2, the report descriptor and every source below `floor`
// (the lowest number above all targets) are copied above it with F_DUPFD_CLOEXEC; the actions
// then dup2 from the copies, which no target can overwrite. An identity mapping (source ==
// target) becomes dup2 from a copy too, which clears close-on-exec as asked. The copies and the
// old report number are close-on-exec and vanish at exec.
int apply_fd_actions(const child_plan& plan, int report_fd) noexcept {
  int floor = plan.keep_below;
  for (int i = 0; i < plan.action_count; ++i) {
    if (plan.actions[i].target >= floor) floor = plan.actions[i].target + 1;
  }

  // Every source must be open before anything is moved: a copy must not land on the number of
  // a source that is not, which would then be duplicated instead of failing with EBADF.
  for (int i = 0; i < plan.action_count; ++i) {
    const fd_action& a = plan.actions[i];
    if (a.what == fd_action::kind::dup && ::fcntl(a.source, F_GETFD) < 0) {
      fail(report_fd, child_step::dup2, errno, i);
    }
  }

  bool report_is_source = false;
  for (int i = 0; i < plan.action_count; ++i) {
    const fd_action& a = plan.actions[i];
    if (a.what == fd_action::kind::dup && a.source == report_fd) report_is_source = true;
  }
  if (report_fd < floor || report_is_source) {
    const int moved = ::fcntl(report_fd, F_DUPFD_CLOEXEC, floor);
    if (moved < 0) fail(report_fd, child_step::dup2, errno, -1);
    report_fd = moved;
  }

  for (int i = 0; i < plan.action_count; ++i) {
    const fd_action& a = plan.actions[i];
    if (a.what != fd_action::kind::dup) continue;
    if (a.source >= floor) {
      plan.scratch[i] = a.source;
      continue;
    }
    int copy = -1;
    for (int j = 0; j < i && copy < 0; ++j) {
      const fd_action& b = plan.actions[j];
      if (b.what == fd_action::kind::dup && b.source == a.source) copy = plan.scratch[j];
    }
    if (copy < 0) {
      copy = ::fcntl(a.source, F_DUPFD_CLOEXEC, floor);
      if (copy < 0) fail(report_fd, child_step::dup2, errno, i);
    }
    plan.scratch[i] = copy;
  }

  for (int i = 0; i < plan.action_count; ++i) {
    const fd_action& a = plan.actions[i];
    if (a.what == fd_action::kind::dup) {
      if (::dup2(plan.scratch[i], a.target) < 0) fail(report_fd, child_step::dup2, errno, i);
    } else if (a.what == fd_action::kind::open) {
      const int fd = ::open(a.path, a.flags, a.mode);
      if (fd < 0) fail(report_fd, child_step::open, errno, i);
      if (fd != a.target) {
        if (::dup2(fd, a.target) < 0) fail(report_fd, child_step::open, errno, i);
        ::close(fd);
      }
    }
  }
  for (int i = 0; i < plan.action_count; ++i) {
    const fd_action& a = plan.actions[i];
    if (a.what == fd_action::kind::close) ::close(a.target);
  }
  return report_fd;
}

// Parses a /proc/self/fd entry name; -1 for "." and "..".
int parse_fd(const char* name) noexcept {
  if (*name == '\0') return -1;
  int fd = 0;
  for (; *name != '\0'; ++name) {
    if (*name < '0' || *name > '9') return -1;
    fd = fd * 10 + (*name - '0');
  }
  return fd;
}

// Closes every descriptor >= keep_below but the report descriptor by listing /proc/self/fd with
// getdents64 (opendir/readdir allocate; glibc's dirent64 has the kernel's record layout). Passes
// repeat from the start until one closes nothing, so closing during a pass cannot make the listing
// skip an entry. False without /proc.
bool close_listed_fds(int keep_below, int report_fd) noexcept {
  const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return false;
  alignas(dirent64) char buf[2048];
  bool closed_any = true;
  while (closed_any) {
    closed_any = false;
    if (::lseek(dir, 0, SEEK_SET) < 0) break;
    for (;;) {
      const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
      if (n <= 0) break;
      for (long pos = 0; pos < n;) {
        const auto* entry = reinterpret_cast<const dirent64*>(buf + pos);
        pos += entry->d_reclen;
        const int fd = parse_fd(entry->d_name);
        if (fd < keep_below || fd == report_fd || fd == dir) continue;
        ::close(fd);
        closed_any = true;
      }
    }
  }
  ::close(dir);
  return true;
}

void close_other_fds(const child_plan& plan, int report_fd) noexcept {
  const int first = plan.keep_below;
  // close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11) only marks the descriptors, so one call
  // covers the report descriptor too: it is close-on-exec already and keeps working when an
  // exec candidate fails and the next one is tried.
  if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, CLOSE_RANGE_CLOEXEC) == 0) {
    return;
  }
  // Linux 5.9 and 5.10 have close_range without the flag: close around the report descriptor.
  if (report_fd >= first) {
    const bool below_ok =
        report_fd == first || ::syscall(SYS_close_range, static_cast<unsigned>(first),
                                        static_cast<unsigned>(report_fd - 1), 0U) == 0;
    if (below_ok &&
        ::syscall(SYS_close_range, static_cast<unsigned>(report_fd + 1), ~0U, 0U) == 0) {
      return;
    }
  }
  if (close_listed_fds(first, report_fd)) return;
  for (int fd = first; fd < plan.fd_limit; ++fd) {
    if (fd != report_fd) ::close(fd);
  }
}

// Errors after which the next candidate is tried, as execvp does.
bool try_next_candidate(int error) noexcept {
  switch (error) {
    case ENOENT:
    case ENOTDIR:
    case EACCES:
    case ELOOP:
    case ENAMETOOLONG:
    case ESTALE:
    case ENODEV:
    case ETIMEDOUT:
      return true;
    default:
      return false;
  }
}

}  // namespace

[[noreturn]] void run_child(const child_plan& plan) noexcept {
  int report_fd = plan.report_fd;
  if (plan.unshare_below > 0) {
    // Until this call the child changes no descriptor: the table is still the parent's. Linux
    // 5.9 copies only the descriptors below unshare_below; before that, unshare(CLONE_FILES)
    // copies them all, which is slower but the same.
    if (::syscall(SYS_close_range, static_cast<unsigned>(plan.unshare_below), ~0U,
                  CLOSE_RANGE_UNSHARE) != 0 &&
        ::syscall(SYS_unshare, CLONE_FILES) != 0) {
      fail(report_fd, child_step::dup2, errno, -1);
    }
  }
  reset_signals();

  if (plan.setsid && ::setsid() < 0) fail(report_fd, child_step::setsid, errno, -1);
  if (plan.setpgid && ::setpgid(0, plan.pgid) < 0) {
    fail(report_fd, child_step::setpgid, errno, -1);
  }
  if ((plan.set_gid || plan.set_uid) && raw_setgroups_none() < 0 && errno != EPERM) {
    fail(report_fd, child_step::setgroups, errno, -1);
  }
  if (plan.set_gid && raw_setgid(plan.gid) < 0) fail(report_fd, child_step::setgid, errno, -1);
  if (plan.set_uid && raw_setuid(plan.uid) < 0) fail(report_fd, child_step::setuid, errno, -1);
  if (plan.parent_death_signal != 0) {
    set_parent_death_signal(plan.parent_death_signal, plan.parent_pid, report_fd);
  }
  if (plan.cwd != nullptr && ::chdir(plan.cwd) < 0) {
    fail(report_fd, child_step::chdir, errno, -1);
  }

  if (plan.pid_slot != nullptr) write_decimal(plan.pid_slot, ::getpid());

  report_fd = apply_fd_actions(plan, report_fd);
  if (plan.close_other_fds) close_other_fds(plan, report_fd);

  int eacces_index = -1;
  int last_error = 0;
  for (int i = 0; i < plan.candidate_count; ++i) {
    ::execve(plan.candidates[i], plan.argv, plan.envp);
    last_error = errno;
    if (!try_next_candidate(last_error)) fail(report_fd, child_step::exec, last_error, i);
    if (last_error == EACCES && eacces_index < 0) eacces_index = i;
  }
  if (eacces_index >= 0) fail(report_fd, child_step::exec, EACCES, eacces_index);
  fail(report_fd, child_step::exec, last_error, plan.candidate_count - 1);
}

int run_child_entry(void* arg) noexcept { run_child(*static_cast<const child_plan*>(arg)); }

}  // namespace kin::detail::async_safe
