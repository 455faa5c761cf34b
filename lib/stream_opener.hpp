// Opening a stream on a descriptor whose kind is known: no fstat, no getsockopt (spawn's pipe
// ends, whose flags are known too; adopt()'s received descriptors, just classified).
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
  /// Opens `s` on `fd`, of `kind` as detect_fd_kind() just said, and makes it non-blocking.
  static result<void> open_known(stream& s, unique_fd fd, fd_kind kind) noexcept;
};

}  // namespace kin::detail
