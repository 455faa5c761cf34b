// The handle module: every typed handle, and adopt(), which rebuilds a descriptor received from
// another process as the handle its kind calls for.
#pragma once

#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/file.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>
#include <kin/server.hpp>
#include <kin/socket.hpp>
#include <kin/stream.hpp>
#include <kin/udp.hpp>

#include <memory>
#include <variant>

namespace kin {

/// A descriptor kin has no handle for (a Unix datagram or seqpacket socket, a character
/// device, a directory, ...), handed up as it came, with its kind.
struct raw_descriptor {
  unique_fd fd;
  fd_kind kind = fd_kind::other;
};

/// One received descriptor, rebuilt: the handle for its kind, open on the loop given to
/// adopt(), or a raw_descriptor.
using any_handle =
    std::variant<raw_descriptor, std::unique_ptr<tcp_server>, std::unique_ptr<tcp_socket>,
                 std::unique_ptr<unix_server>, std::unique_ptr<unix_socket>,
                 std::unique_ptr<udp_socket>, std::unique_ptr<pipe>, std::unique_ptr<file>>;

/// Finds what `fd` is from the kernel (detect_fd_kind: fstat, SO_TYPE, SO_DOMAIN,
/// SO_ACCEPTCONN) — never from what a sender claims — and opens the matching handle on `l`:
/// tcp_server, tcp_socket, unix_server, unix_socket (stream), udp_socket, pipe (pipes and
/// FIFOs) or file (regular files). Every other kind — a listening SOCK_SEQPACKET socket
/// included, though detect_fd_kind calls it unix_server — comes back as a raw_descriptor, open
/// and unchanged. Sockets and pipes are made non-blocking, which the sender's copy shares (it is
/// one open file). Errors: EBADF when `fd` is not open; the handle's open() error in the
/// unlikely case it refuses a descriptor of its kind (fcntl failing), and then `fd` is closed.
/// Throws only std::bad_alloc.
KIN_API result<any_handle> adopt(loop& l, unique_fd fd);

/// The kind of the handle or descriptor `h` holds.
KIN_API fd_kind kind_of(const any_handle& h) noexcept;

}  // namespace kin
