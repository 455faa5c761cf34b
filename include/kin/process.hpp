// Child processes: kin::spawn, the plan of descriptors a child gets, and kin::process, which
// reaps its child on the loop and signals it safely.
#pragma once

#include <kin/export.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include <sys/types.h>

#include <fcntl.h>
#include <chrono>
#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace kin {

namespace detail {
struct process_state;
}  // namespace detail

/// What one descriptor number of the child is. spawn_options::stdio holds one per child
/// descriptor number, from 0 up; numbers past its end are not opened in the child.
class KIN_API stdio {
 public:
  enum class kind {
    closed,   ///< the child has no descriptor with this number
    inherit,  ///< the parent's descriptor with the same number, if it has one (else closed)
    ignore,   ///< /dev/null, opened read-write
    pipe,     ///< a new pipe or socketpair; the parent's end becomes a kin::stream
    fd,       ///< a duplicate of a descriptor of the parent
    file,     ///< a file opened by the child
  };
  /// Which way a pipe's bytes go.
  enum class direction {
    automatic,     ///< child_reads for descriptor 0, child_writes for every other
    child_reads,   ///< a pipe whose read end the child gets
    child_writes,  ///< a pipe whose write end the child gets
    duplex,        ///< an AF_UNIX stream socketpair (it can carry descriptors too)
  };

  static stdio closed() noexcept { return stdio(kind::closed); }
  static stdio inherit() noexcept { return stdio(kind::inherit); }
  static stdio ignore() noexcept { return stdio(kind::ignore); }
  static stdio pipe(direction d = direction::automatic) noexcept {
    stdio s(kind::pipe);
    s.direction_ = d;
    return s;
  }
  /// The parent's `parent_fd`, borrowed: it must stay open until spawn() returns; the child
  /// gets its own duplicate (without close-on-exec).
  static stdio fd(int parent_fd) noexcept {
    stdio s(kind::fd);
    s.fd_ = parent_fd;
    return s;
  }
  /// `path` opened by the child with open(2)'s `flags` and `mode` (O_CLOEXEC is removed).
  static stdio file(std::string path, int flags = O_RDONLY, mode_t mode = 0666) {
    stdio s(kind::file);
    s.path_ = std::move(path);
    s.flags_ = flags;
    s.mode_ = mode;
    return s;
  }

  [[nodiscard]] kind what() const noexcept { return kind_; }
  [[nodiscard]] direction pipe_direction() const noexcept { return direction_; }
  [[nodiscard]] int parent_fd() const noexcept { return fd_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] int flags() const noexcept { return flags_; }
  [[nodiscard]] mode_t mode() const noexcept { return mode_; }

 private:
  explicit stdio(kind k) noexcept : kind_(k) {}
  kind kind_;
  direction direction_ = direction::automatic;
  int fd_ = -1;
  std::string path_;
  int flags_ = 0;
  mode_t mode_ = 0;
};

/// How to start a child. Only `file` and `args` are required.
struct spawn_options {
  /// The program: a path (it contains a '/'), or a name looked up in the directories of the
  /// child's PATH (the environment the child gets; the parent's if that has none, else
  /// confstr(_CS_PATH)). A file that is not an executable format fails with ENOEXEC: kin never
  /// runs it through /bin/sh as execvp() does.
  std::string file;
  /// The whole argument vector, args[0] included (what the program sees as its name). Empty:
  /// spawn fails with EINVAL.
  std::vector<std::string> args;
  /// The child's environment is the parent's (or nothing, with clear_env), minus `env_unset`,
  /// then with every `env` entry set, later entries winning.
  bool clear_env = false;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> env_unset;
  /// The child's working directory; empty: the parent's.
  std::string cwd;
  /// One entry per child descriptor number. Default: 0, 1 and 2 inherited.
  std::vector<kin::stdio> stdio = {kin::stdio::inherit(), kin::stdio::inherit(),
                                   kin::stdio::inherit()};
  /// A new session (setsid): the child leaves the parent's process group and terminal.
  bool detached = false;
  /// setpgid(0, group) in the child: 0 makes it the leader of a new group (its pid).
  std::optional<pid_t> process_group;
  /// Credentials for the child (supplementary groups are dropped when either is set).
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  /// Close every descriptor the plan does not give the child, even those opened without
  /// close-on-exec (by other code in the process). Off: only close-on-exec applies.
  bool close_other_fds = true;
  /// The first signal process::terminate() sends.
  int kill_signal = SIGTERM;
};

/// The step of starting a child that failed.
enum class spawn_step {
  prepare,    ///< in the parent, before the child existed (bad options, EMFILE, ENOMEM)
  fork,       ///< creating the child (EAGAIN, ENOMEM)
  setsid,     ///< detached
  setpgid,    ///< process_group
  setgroups,  ///< dropping supplementary groups
  setgid,
  setuid,
  chdir,  ///< cwd
  open,   ///< a stdio::file entry
  dup2,   ///< placing a descriptor
  exec,   ///< execve of every candidate
};

/// Why spawn() failed: the step, the error, and the path involved (the program, the directory
/// or the file), if any.
struct KIN_API spawn_error {
  spawn_step step = spawn_step::prepare;
  std::error_code code;
  std::string path;

  /// For example `spawn "/usr/bin/frob": exec failed: No such file or directory`.
  [[nodiscard]] std::string message() const;
  operator std::error_code() const noexcept { return code; }  // NOLINT: implicit by design
};

/// The name of a step, as message() writes it ("exec", "chdir", ...).
KIN_API const char* to_string(spawn_step step) noexcept;

/// A child process started by spawn().
///
/// The loop reaps the child (waitpid of its own pid only, never waitpid(-1)) and then calls
/// the exit callback with its exit status or the signal that ended it. While the child runs
/// the process keeps the loop running unless unref()'d. Signals are never sent to a pid that
/// was reaped (and so might have been reused): once the child is reaped, kill() fails with
/// ESRCH. On Linux the child is watched and signalled through a pidfd.
///
/// Destroying a process whose child still runs is safe: the loop goes on reaping it (and, if
/// the process was ref'd, keeps running until it has), without calling anything. Moving a
/// process keeps its callbacks and pipes. Like a handle, a process must be destroyed before
/// its loop; a loop destroyed while children it should reap still run forgets them (they
/// become zombies when they end, until this process exits).
class KIN_API process {
 public:
  /// `ec` is empty for a child that was reaped; then exactly one of exit_status (>= 0) and
  /// term_signal (> 0) is meaningful (the other is 0, or -1 for exit_status). ec is
  /// kin::errc::status_unknown when someone else collected the status (ECHILD).
  using exit_callback = std::function<void(std::error_code ec, int exit_status, int term_signal)>;

  process(process&&) noexcept;
  process& operator=(process&&) noexcept;
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  ~process();

  [[nodiscard]] pid_t pid() const noexcept;
  /// True once the child was reaped (or found reaped by someone else).
  [[nodiscard]] bool has_exited() const noexcept;
  /// The exit status, once reaped; -1 if it was killed by a signal or the status is unknown.
  [[nodiscard]] int exit_status() const noexcept;
  /// The signal that ended the child, once reaped; 0 if it exited.
  [[nodiscard]] int term_signal() const noexcept;

  /// Sets the exit callback. If the child was already reaped, it runs on a later iteration.
  void on_exit(exit_callback cb);

  /// Sends `sig` (0 checks that the child is there). Errors: ESRCH once the child was reaped,
  /// EINVAL for an invalid signal, EPERM.
  result<void> kill(int sig = SIGTERM) noexcept;
  /// Sends `sig` to the child's process group (the child's pid as the group: use with
  /// process_group = 0 or detached). Errors: ESRCH once the child was reaped, EINVAL, EPERM.
  result<void> kill_group(int sig) noexcept;
  /// Sends spawn_options::kill_signal now, and SIGKILL if the child is still there after
  /// `grace`. Errors: as kill().
  result<void> terminate(std::chrono::milliseconds grace) noexcept;

  /// The parent's end of the pipe at child descriptor `child_fd`, or nullptr if that entry was
  /// not stdio::pipe(). The stream belongs to the process (it is closed with it).
  [[nodiscard]] stream* stdio_stream(int child_fd) const noexcept;
  [[nodiscard]] stream* stdin_stream() const noexcept { return stdio_stream(0); }
  [[nodiscard]] stream* stdout_stream() const noexcept { return stdio_stream(1); }
  [[nodiscard]] stream* stderr_stream() const noexcept { return stdio_stream(2); }

  /// Whether the running child keeps the loop alive (the default) or not.
  void ref() noexcept;
  void unref() noexcept;

 private:
  friend KIN_API result<process, spawn_error> spawn(loop& l, const spawn_options& options);
  explicit process(std::unique_ptr<detail::process_state> state) noexcept;
  // Hands a running child to the loop's reaper (or frees the state of an exited one).
  void let_go() noexcept;
  std::unique_ptr<detail::process_state> state_;
};

/// Starts a child. Returns once the child has called execve (or failed before it): the
/// error of any step in the child (chdir, setuid, open, exec, ...) comes back here, and a child
/// that failed leaves no zombie. Blocks the calling thread only for that (the child does not
/// copy the parent's memory, so the time does not grow with the parent's size).
///
/// Errors (spawn_step::prepare): EINVAL for an empty args, an empty file, a kill_signal that
/// is not a signal, a stdio::fd with a negative descriptor; EBADF for a stdio::fd that is not
/// open; kin::errc::sigchld_ignored when SIGCHLD is ignored (SIG_IGN or
/// SA_NOCLDWAIT), because the kernel would then reap the child and its status be lost.
/// EMFILE, ENOMEM and the like while preparing.
KIN_API result<process, spawn_error> spawn(loop& l, const spawn_options& options);

}  // namespace kin
