// A write of two pieces — a small header and a body — queued as one write without first
// joining them: sent with one writev/sendmsg when it goes out at once, and copied straight from
// both pieces (aligned to the body's address, see stream::enqueue) when it is queued.
#pragma once

#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/stream.hpp>

#include <cstddef>
#include <span>
#include <vector>

namespace kin::detail {

// Exported for the tests, which exercise it on a pipe (the channel, its user, needs a socket).
struct KIN_API stream_gather {
  /// Queues `head` followed by `body` as one write, with `fds` (none, or up to
  /// max_fds_per_write on a Unix-domain socket) riding on the first byte of `head`, which must
  /// not be empty when there are descriptors. Returns and fails as stream::write does.
  static bool write(stream& s, std::span<const std::byte> head, std::span<const std::byte> body,
                    std::vector<unique_fd> fds, stream::write_callback cb = {});
};

}  // namespace kin::detail
