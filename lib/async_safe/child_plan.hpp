// The plan a child follows between its creation and execve: everything in it is built by the
// parent before the child exists, so the child only reads memory and makes system calls.
#pragma once

#include <sys/types.h>

namespace kin::detail::async_safe {

/// The step a child reports when it fails (the values of kin::spawn_step it maps to are fixed
/// in lib/process.cpp).
enum class child_step : int {
  setsid = 1,
  setpgid,
  setgroups,
  setgid,
  setuid,
  chdir,
  open,
  dup2,
  exec,
  parent_death,
};

/// What a failing child writes to the report descriptor before _exit(127). `index` is the
/// position of the fd action (open, dup2) or of the exec candidate (exec) that failed, else -1.
struct child_report {
  int step;
  int error;
  int index;
};

/// One descriptor of the child: `target` gets a duplicate of the parent's `source` (dup), a
/// file opened from `path` (open), or is closed (close). Sources are descriptors of the
/// parent, which the child inherits; a source may be another action's target, and one source
/// may feed several targets. A dup whose source equals its target clears close-on-exec.
struct fd_action {
  enum class kind : int { dup, open, close };
  kind what;
  int target;
  int source;        // dup
  const char* path;  // open
  int flags;         // open; O_CLOEXEC removed by the parent
  mode_t mode;       // open
};

struct child_plan {
  /// Absolute or relative paths to execve in order (the PATH search done by the parent);
  /// `candidate_count` >= 1.
  const char* const* candidates;
  int candidate_count;
  /// NULL-terminated.
  char* const* argv;
  char* const* envp;
  /// nullptr: stay in the parent's directory.
  const char* cwd;
  /// Where the child writes its pid in decimal, NUL-terminated (room for 20 digits): the value
  /// of an environment entry of `envp`. nullptr: nothing.
  char* pid_slot;
  bool setsid;
  bool setpgid;
  pid_t pgid;  // setpgid(0, pgid)
  /// With either, supplementary groups are dropped first (setgroups(0)); EPERM from that is
  /// ignored, as an unprivileged caller asking for its own ids gets it.
  bool set_gid;
  gid_t gid;
  bool set_uid;
  uid_t uid;
  /// Not 0: the signal the child asks for when its parent dies (after the credentials, which
  /// clear it); `parent_pid` is the parent's pid, to catch a parent that died before that.
  int parent_death_signal;
  pid_t parent_pid;
  const fd_action* actions;
  int action_count;
  /// Writable scratch of `action_count` ints in the parent's memory (the child may run in
  /// the parent's address space, or in a copy of it): where moved sources are kept.
  int* scratch;
  /// Close (or mark close-on-exec) every descriptor >= `keep_below` except the report
  /// descriptor: the plan's targets are all below it.
  bool close_other_fds;
  int keep_below;
  /// RLIMIT_NOFILE's soft limit, read by the parent: the bound of the last-resort close loop
  /// when neither close_range(2) nor /proc/self/fd is available.
  int fd_limit;
  /// The write end of the close-on-exec report pipe.
  int report_fd;
  /// Non-zero when the child was created sharing the parent's descriptor table (CLONE_FILES):
  /// its first step is then to take a copy of the descriptors below this number only
  /// (close_range(unshare_below, ~0U, CLOSE_RANGE_UNSHARE)), which the parent chose above every
  /// descriptor the plan uses. Copying the parent's whole table is what makes a spawn slower the
  /// more descriptors the parent has open (kin's own pidfds among them).
  int unshare_below;
};

/// Runs the plan in a newly created child (all signals blocked by the parent around its
/// creation): resets every signal's disposition to SIG_DFL (SIGPIPE included) and empties the
/// mask, setsid / setpgid, setgroups / setgid / setuid (raw system calls: the C library's
/// wrappers would signal the parent's threads), the parent-death signal, chdir, the fd actions with
/// collisions handled, closes the other descriptors, and execve's each candidate (going on after
/// ENOENT, ENOTDIR, EACCES, ELOOP, ENAMETOOLONG, ESTALE, ENODEV and ETIMEDOUT; reporting EACCES if
/// any candidate gave it, else the last error). On any failure writes one child_report to report_fd
/// and calls _exit(127). Never returns.
[[noreturn]] void run_child(const child_plan& plan) noexcept;

/// The same, as a clone(2) entry point: `arg` is a `const child_plan*`.
int run_child_entry(void* arg) noexcept;

}  // namespace kin::detail::async_safe
