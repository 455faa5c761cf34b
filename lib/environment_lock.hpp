// The lock around the process environment. kin::this_process changes the environment only
// while holding it exclusively; spawn() holds it shared from reading the environment until the
// child has exec'd, so a child never sees an environment half changed (or freed) by another
// thread that goes through kin.
#pragma once

#include <shared_mutex>

namespace kin::detail {

std::shared_mutex& environment_mutex() noexcept;

}  // namespace kin::detail
