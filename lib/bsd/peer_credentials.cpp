// Peer credentials on the BSDs and macOS: getpeereid(3), which gives the effective uid and gid
// but no pid. Not compiled on the Linux machines kin is developed on; written from getpeereid(3).
#include "peer_credentials.hpp"

#include "posix/sys.hpp"

#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

namespace kin::detail {

result<peer_credentials> read_peer_credentials(int fd) noexcept {
  uid_t uid = 0;
  gid_t gid = 0;
  if (::getpeereid(fd, &uid, &gid) != 0) return fail(sys::last_error());
  return peer_credentials{-1, uid, gid};
}

}  // namespace kin::detail
