// What kin's own code that runs a child to completion (spawn_sync, exec) needs of a process
// beyond its public interface: its pipes, and a view of its exit that outlives the object.
#pragma once

#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

#include <memory>
#include <vector>

namespace kin::detail {

class loop_impl;

struct process_access {
  /// The state of a process that holds one; it lives while the child runs, even if the
  /// process object is destroyed (the reaper adopts it), and until the process is destroyed
  /// after that.
  static process_state& state(process& p) noexcept;
};

/// Takes the parent's pipe ends (indexed by child descriptor, null where not a pipe): the
/// process no longer has them.
std::vector<std::unique_ptr<stream>> take_streams(process_state& p) noexcept;
/// `cb` runs when the child is reaped, before the process's own exit callback, whether or not
/// the process object still exists.
void observe_exit(process_state& p, process::exit_callback cb);
bool has_exited(const process_state& p) noexcept;
/// True once a signal (not 0) was delivered through signal_child (process::kill included).
bool was_killed(const process_state& p) noexcept;
/// The loop that reaps the child (its implementation: it stays put when a kin::loop moves).
loop_impl& loop_of(const process_state& p) noexcept;
/// process::kill: ESRCH once reaped, EINVAL for an invalid signal.
result<void> signal_child(process_state& p, int sig) noexcept;

}  // namespace kin::detail
