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
struct process_access;
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
  /// child's PATH (in the environment the child gets; if that has none, confstr(_CS_PATH),
  /// never the parent's PATH). A file that is not an executable format fails with ENOEXEC: kin
  /// never runs it through /bin/sh as execvp() does.
  std::string file;
  /// The whole argument vector, args[0] included (what the program sees as its name). Empty:
  /// spawn fails with EINVAL.
  std::vector<std::string> args;
  /// The child's environment is the parent's (or nothing, with clear_env), minus `env_unset`,
  /// then with every `env` entry set, later entries winning. A variable set here keeps the
  /// place it had; new ones follow in order.
  bool clear_env = false;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> env_unset;
  /// The name of a variable the child's environment gets set to the child's own pid (written
  /// by the child before exec), as a socket-activation manager sets LISTEN_PID. Empty: none.
  /// A name that is not a valid variable name fails with EINVAL.
  std::string pid_variable;
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
  /// When not 0, the child gets this signal once its parent is gone — a supervisor killed with
  /// SIGKILL takes its children with it. Linux (prctl PR_SET_PDEATHSIG, set after the child's
  /// credentials, which would clear it) and FreeBSD (procctl PROC_PDEATHSIG_CTL); elsewhere
  /// spawn fails with ENOTSUP. A parent that is already gone by the time the child sets it gets
  /// the child the signal at once. Caveats, the kernel's: on Linux "the parent" is the *thread*
  /// that called spawn (spawn from a thread that lives as long as the process, e.g. the one
  /// running the loop for its whole life); exec of a set-user-ID or set-group-ID program clears
  /// the setting; and the signal goes to the child only, not to its own children.
  int parent_death_signal = 0;
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
  chdir,         ///< cwd
  open,          ///< a stdio::file entry
  dup2,          ///< placing a descriptor
  exec,          ///< execve of every candidate
  parent_death,  ///< parent_death_signal (set after setuid, before chdir)
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
  friend struct detail::process_access;
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
/// Errors (spawn_step::prepare): EINVAL for an empty args, an empty file, a kill_signal or a
/// parent_death_signal that is not a signal, a stdio::fd with a negative descriptor; EBADF for
/// a stdio::fd that is not open; ENOTSUP for a parent_death_signal where the system has none;
/// kin::errc::sigchld_ignored when SIGCHLD is ignored (SIG_IGN or SA_NOCLDWAIT), because the
/// kernel would then reap the child and its status be lost. EMFILE, ENOMEM and the like while
/// preparing.
KIN_API result<process, spawn_error> spawn(loop& l, const spawn_options& options);

// ---------------------------------------------------------------------------------------------
// Running a child to completion: spawn_sync, exec and exec_file.

/// How spawn_sync_options::max_buffer counts the captured bytes.
enum class buffer_limit {
  /// Each captured descriptor may hold max_buffer bytes; bytes past the limit are dropped, so
  /// the output kept is exactly max_buffer bytes long (Node's exec and execFile).
  per_stream,
  /// The bytes of every captured descriptor together; the read that passes the limit is kept
  /// whole (Node's spawnSync).
  all_streams,
};

/// How spawn_sync() runs a child. Everything of spawn_options applies; the default stdio is
/// three pipes (input, captured output, captured error) instead of three inherited descriptors.
/// Every stdio::pipe() entry the child writes to is captured; the one at descriptor 0 (if any)
/// gets `input` and is then closed.
struct KIN_API spawn_sync_options : spawn_options {
  spawn_sync_options();

  /// Bytes written to the child's descriptor 0 (when it is a pipe), which is then closed: an
  /// empty input gives the child an immediate end of file. A child that exits or closes its
  /// end before taking all of it: error EPIPE, unless anything else went wrong (a timeout or
  /// an overflow is reported instead, as Node's spawnSync does).
  std::string input;
  /// Zero: no limit. Otherwise once the child has run this long it is sent kill_signal
  /// (SIGKILL if kill_signal is not a valid signal), its pipes are closed at once (so children
  /// it left behind holding them cannot hold spawn_sync up), and the result's error is
  /// ETIMEDOUT; spawn_sync returns when the child is reaped.
  std::chrono::milliseconds timeout{0};
  /// If set: SIGKILL this long after kill_signal, for a child that ignores kill_signal (without
  /// it spawn_sync waits for such a child as long as it runs, as Node's spawnSync does).
  std::optional<std::chrono::milliseconds> kill_grace;
  /// Zero: no limit. Otherwise, once the captured output passes it (see `limit`), the child is
  /// sent kill_signal, its pipes are closed, and the error is ENOBUFS.
  std::size_t max_buffer = 1024 * 1024;
  buffer_limit limit = buffer_limit::per_stream;
};

/// What happened to a child run by spawn_sync().
struct KIN_API spawn_sync_result {
  /// 0 if no child ran (then failure says why).
  pid_t pid = 0;
  /// The exit status if the child exited; empty if a signal ended it or it never ran.
  std::optional<int> exit_status;
  /// The signal that ended the child, 0 if none.
  int term_signal = 0;
  /// One entry per stdio entry: the bytes captured from a pipe the child wrote to, empty
  /// (std::nullopt) for every other entry, and all empty if no child ran.
  std::vector<std::optional<std::string>> output;
  /// The first thing that went wrong: the spawn error, ETIMEDOUT, ENOBUFS,
  /// kin::errc::status_unknown (someone else collected the child); else a pipe's error (EPIPE
  /// when the input was not all taken); empty if none.
  /// A non-zero exit status or a signal is not an error here (exit_status and term_signal
  /// tell).
  std::error_code error;
  /// When no child ran: the step and path that failed.
  std::optional<spawn_error> failure;
  /// With ENOBUFS: the child descriptor whose output passed max_buffer.
  int overflow_fd = -1;

  /// The captured bytes of descriptor 1 / 2 ("" when not captured).
  [[nodiscard]] const std::string& out() const noexcept;
  [[nodiscard]] const std::string& err() const noexcept;
};

/// Runs a child to completion on a private loop and returns what it did: blocks the calling
/// thread until the child is reaped and its output collected. Input and every output pipe are
/// served together, so a child that writes a lot to both stdout and stderr, or reads slowly,
/// cannot deadlock it. Without a timeout, it also waits for the end of each captured output,
/// which a grandchild holding the pipe can delay (with a timeout, that wait ends at the
/// timeout).
///
/// Never throws, but for std::bad_alloc; every failure is in the result's error.
KIN_API spawn_sync_result spawn_sync(const spawn_sync_options& options);

/// Options of exec() and exec_file(): the child's environment, directory, time and output
/// limits. stdin is a pipe fed with `input`, stdout and stderr are captured, any other
/// descriptor is closed.
struct KIN_API exec_options {
  std::string cwd;
  bool clear_env = false;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> env_unset;
  std::string input;
  std::chrono::milliseconds timeout{0};
  int kill_signal = SIGTERM;
  std::optional<std::chrono::milliseconds> kill_grace;
  /// Per stream: bytes past it are dropped, the child is killed and the error is ENOBUFS.
  std::size_t max_buffer = 1024 * 1024;
  /// exec() only: the shell, run as `shell -c command`.
  std::string shell = "/bin/sh";
};

/// What exec() and exec_file() report, as Node's exec and execFile do: the error is empty only
/// when the child exited with status 0 and nothing else went wrong.
struct KIN_API exec_result {
  /// The spawn error, ENOBUFS (max_buffer), kin::errc::child_failed (a non-zero exit status),
  /// kin::errc::child_signalled (a signal ended it), EPIPE (the child did not take all of the
  /// input, and nothing else went wrong); empty on success. As in Node, a timeout is not an
  /// error by itself: the signal it sends usually is (timed_out tells), and a child that
  /// survives it and exits with status 0 succeeded.
  std::error_code error;
  std::optional<spawn_error> failure;  ///< when the child could not start
  pid_t pid = 0;
  std::optional<int> exit_status;
  int term_signal = 0;
  /// True if the child was sent a signal: by exec (timeout, max_buffer) or through the
  /// process's kill() or terminate() (Node's `killed`).
  bool killed = false;
  /// True if the timeout went off.
  bool timed_out = false;
  int overflow_fd = -1;  ///< with ENOBUFS: 1 or 2
  std::string out;
  std::string err;
};

using exec_callback = std::function<void(exec_result)>;

/// Runs `command` through `shell -c` on `l` and calls `cb` once the child is reaped and its
/// output collected. Returns the process (for its pid, or to kill it); the callback runs
/// whether or not the process object is kept. Its pipes belong to exec (stdio_stream() returns
/// nullptr). The loop must run until the callback has run. A child that cannot start: the
/// error comes back here, and `cb` is not called.
KIN_API result<process, spawn_error> exec(loop& l, const std::string& command,
                                          const exec_options& options, exec_callback cb);
/// Runs `file` (looked up in PATH as spawn does) with `args` (args[0] included) without a
/// shell; otherwise as exec().
KIN_API result<process, spawn_error> exec_file(loop& l, const std::string& file,
                                               const std::vector<std::string>& args,
                                               const exec_options& options, exec_callback cb);
/// The same, blocking: runs on a private loop and returns the result (a child that cannot
/// start is reported in it).
KIN_API exec_result exec_sync(const std::string& command, const exec_options& options = {});
KIN_API exec_result exec_file_sync(const std::string& file, const std::vector<std::string>& args,
                                   const exec_options& options = {});

}  // namespace kin
