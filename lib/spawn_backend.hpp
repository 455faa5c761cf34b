// How a child is created and signalled on this platform: one interface, implemented by
// lib/linux/spawn_linux.cpp (clone with CLONE_VM|CLONE_VFORK and a pidfd) and
// lib/bsd/spawn_bsd.cpp (vfork), selected by Meson.
#pragma once

#include <kin/fd.hpp>
#include <kin/result.hpp>

#include "async_safe/child_plan.hpp"

#include <sys/types.h>

namespace kin::detail::spawn_backend {

struct started {
  pid_t pid;
  unique_fd pidfd;  // invalid where the platform (or the kernel) has none
};

/// Creates a child that runs async_safe::run_child(plan), with every signal blocked in the
/// calling thread while it is created. Returns once the child has called execve or _exit (the
/// child shares the parent's memory until then, so its time does not grow with the parent's
/// size). Errors: EAGAIN, ENOMEM (spawn_step::fork).
result<started> start_child(const async_safe::child_plan& plan) noexcept;

/// True where start_child honours child_plan::unshare_below (the child shares the parent's
/// descriptor table until it takes a copy of the low part).
bool can_share_fd_table() noexcept;

/// Moves a child's pidfd to a high descriptor number, out of the range that children copy (see
/// child_plan::unshare_below); returns it unchanged where there is no room up there.
unique_fd move_out_of_the_way(unique_fd pidfd) noexcept;

/// Sends `sig` to the child: through its pidfd when it has one, else kill(2) (the caller
/// guarantees the child is not reaped yet, so the pid is still its own).
result<void> signal_child(pid_t pid, int pidfd, int sig) noexcept;

}  // namespace kin::detail::spawn_backend
