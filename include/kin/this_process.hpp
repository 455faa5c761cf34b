// kin::this_process: the calling process itself — its ids and arguments, a thread-safe view of
// its environment that spawn() respects, its clocks, and the CPU time and memory it uses.
#pragma once

#include <kin/export.hpp>
#include <kin/result.hpp>

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kin::this_process {

/// This process's id (getpid).
KIN_API pid_t pid() noexcept;

/// The id of this process's parent (getppid): the reaper that adopted it (init, or a subreaper)
/// once the original parent has exited.
KIN_API pid_t ppid() noexcept;

/// The process's arguments, argv[0] included.
///
/// Unless set_argv() was called first, they are read from /proc/self/cmdline on the first call
/// (on Linux: so what a program wrote over its own argv strings before that call, as
/// setproctitle does, is what it gets). Where there is no /proc (BSD, macOS) the vector is
/// empty until the program calls set_argv(). The reference stays valid for the life of the
/// process, even after set_argv(). Throws std::bad_alloc.
KIN_API const std::vector<std::string>& argv();

/// Sets what argv() returns to the first `argc` strings of `argv` (fewer if a null pointer
/// comes first; none for a negative argc), copied. For programs on systems without /proc, or
/// that want argv() to be exactly what main() got: call it at the start of main(). Vectors
/// argv() returned earlier stay valid and unchanged. Throws std::bad_alloc.
KIN_API void set_argv(int argc, const char* const* argv);

// ---- The environment -------------------------------------------------------------------------
//
// These functions read and change the real process environment (getenv, setenv, unsetenv,
// environ), each under one process-wide lock: readers share it, writers hold it alone. spawn()
// holds it shared while it reads the environment, and, when the child gets the environment as
// it is (no env, env_unset, clear_env, and no stdio::file to open), until the child has exec'd
// (its steps before exec: chdir, setuid, ...), so a child started by kin always sees the
// environment whole, between two changes made through these functions, and never one half
// changed or freed by another thread. set_env and unset_env wait meanwhile; with many threads
// spawning back to back they may wait long (the lock lets new readers in before a waiting
// writer).
//
// Code that calls setenv, putenv, unsetenv or clearenv directly (or writes to environ) bypasses
// the lock: while other threads may spawn or use the functions below, change the environment
// only through kin::this_process. std::getenv in other threads is likewise unprotected against
// a concurrent set_env or unset_env (the pointer it returns may be to a value that is replaced).

/// The value of `name`, or nothing if it is not set (or the name is empty, or contains '=' or
/// a NUL, which no variable's name can). A variable set to "" has the value "". Throws
/// std::bad_alloc.
KIN_API std::optional<std::string> get_env(std::string_view name);

/// Sets `name` to `value`, replacing any value it had. Errors: EINVAL for an empty name, a name
/// containing '=' or a NUL, or a value containing a NUL (the environment is then unchanged);
/// ENOMEM.
KIN_API result<void> set_env(std::string_view name, std::string_view value) noexcept;

/// Removes `name` from the environment; a name that is not set is no error. Errors: EINVAL for
/// an empty name or one containing '=' or a NUL (the environment is then unchanged); ENOMEM.
KIN_API result<void> unset_env(std::string_view name) noexcept;

/// A snapshot of the whole environment, taken at one instant (no change made through set_env
/// or unset_env is half in it): one (name, value) pair per entry of environ, in environ's
/// order, split at the first '='. An entry without '=' (only code bypassing kin, or whoever
/// exec'd this program, can make one) has an empty value. Throws std::bad_alloc.
KIN_API std::vector<std::pair<std::string, std::string>> environment();

// ---- Time and resources ----------------------------------------------------------------------

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC) from an arbitrary origin: for measuring
/// intervals, never for the time of day. Never decreases within the process; on Linux it does
/// not count time the system spent suspended.
KIN_API std::uint64_t hrtime() noexcept;

/// CPU time a process has used, in microseconds.
struct cpu_times {
  std::uint64_t user_us = 0;    ///< running its own code
  std::uint64_t system_us = 0;  ///< in the kernel on its behalf
};

/// The CPU time used by every thread of this process so far (getrusage RUSAGE_SELF; children
/// are not counted). Both zero if it cannot be read.
KIN_API cpu_times cpu_usage() noexcept;

/// The process's resident set size in bytes: the memory of it that is in RAM now. On Linux the
/// current size (/proc/self/statm); elsewhere the largest it has been (getrusage's ru_maxrss),
/// which never shrinks. 0 if it cannot be read.
KIN_API std::size_t memory_usage() noexcept;

/// Seconds since this process started. On Linux measured on CLOCK_BOOTTIME (suspended time
/// included) from the start time the kernel keeps (/proc/self/stat, to a clock tick: 10 ms on
/// most systems), which is when the process was forked: time spent before an exec into this
/// program counts. Elsewhere, or if /proc cannot be read, measured on CLOCK_MONOTONIC from when
/// kin was loaded. Never negative.
KIN_API double uptime() noexcept;

}  // namespace kin::this_process
