// Peer credentials on Linux: SO_PEERCRED, recorded by the kernel at connect() or socketpair().
#include "peer_credentials.hpp"

#include "posix/sys.hpp"

#include <sys/socket.h>

namespace kin::detail {

result<peer_credentials> read_peer_credentials(int fd) noexcept {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return fail(sys::last_error());
  // An unconnected socket reports pid 0 and the overflow ids; say so as the kernel would for
  // getpeername.
  if (cred.pid == 0) return fail(errno_code(ENOTCONN));
  return peer_credentials{cred.pid, cred.uid, cred.gid};
}

}  // namespace kin::detail
