// Placeholder: replaced by the this_process implementation.
#include "environment_lock.hpp"

namespace kin::detail {
std::shared_mutex& environment_mutex() noexcept {
  static std::shared_mutex m;
  return m;
}
}  // namespace kin::detail
