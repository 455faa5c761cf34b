// Opening a stream on a descriptor kin has just made, whose kind and flags are known: no fstat,
// no F_GETFL (spawn's pipe ends).
#pragma once

#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/result.hpp>
#include <kin/stream.hpp>

namespace kin::detail {

struct stream_opener {
  /// Opens `s` on `fd`, which must be a non-blocking descriptor of `kind` (a pipe end or a
  /// connected stream socket).
  static result<void> open_new(stream& s, unique_fd fd, fd_kind kind) noexcept;
};

}  // namespace kin::detail
