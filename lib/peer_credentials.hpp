// Reading a Unix-domain socket's peer credentials: one function, one file per platform
// (linux/peer_credentials.cpp: SO_PEERCRED; bsd/peer_credentials.cpp: getpeereid).
#pragma once

#include <kin/result.hpp>
#include <kin/socket.hpp>

namespace kin::detail {

result<peer_credentials> read_peer_credentials(int fd) noexcept;

}  // namespace kin::detail
