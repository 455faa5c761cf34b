// Listening sockets of a cluster master: addresses as operators write them, and the sockets a
// socket-activation manager passed (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
#include <kin/cluster.hpp>
#include <kin/fd_kind.hpp>
#include <kin/this_process.hpp>

#include "cluster/cluster_internal.hpp"
#include "posix/sys.hpp"

#include <climits>
#include <cstdint>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kin {

namespace {

std::vector<std::string> split_names(std::string_view text) {
  std::vector<std::string> names;
  while (true) {
    const auto colon = text.find(':');
    names.emplace_back(text.substr(0, colon));
    if (colon == std::string_view::npos) break;
    text.remove_prefix(colon + 1);
  }
  return names;
}

}  // namespace

result<socket_address> parse_listen_address(std::string_view text) {
  if (text.empty()) return fail(errno_code(EINVAL));
  if (text.front() == '/' || text.front() == '.') return socket_address::unix_path(text);
  auto parsed = socket_address::parse(text);
  if (!parsed) return fail(errno_code(EINVAL));
  if (parsed->family() == address_family::unix_unnamed) return fail(errno_code(EINVAL));
  return parsed;
}

result<std::vector<cluster_listener>> listeners_from_environment() {
  std::vector<cluster_listener> out;
  const auto fds_text = this_process::get_env("LISTEN_FDS");
  if (!fds_text) return out;
  const auto pid_text = this_process::get_env("LISTEN_PID");
  if (!pid_text) return out;
  // Decimal, without sign or spaces, as systemd's parser takes them.
  const auto pid_number = detail::number_of(*pid_text);
  const auto count_number = detail::number_of(*fds_text);
  if (!pid_number || !count_number || *count_number > INT_MAX - 3) {
    return fail(errno_code(EINVAL));
  }
  if (*pid_number != static_cast<std::uint64_t>(::getpid())) return out;
  const int count = static_cast<int>(*count_number);
  std::vector<std::string> names;
  if (auto names_text = this_process::get_env("LISTEN_FDNAMES")) names = split_names(*names_text);

  // Checked whole before any descriptor is taken.
  for (int fd = 3; fd < 3 + count; ++fd) {
    auto kind = detect_fd_kind(fd);
    if (!kind) return fail(kind.error());
    if (*kind != fd_kind::tcp_server && *kind != fd_kind::unix_server) {
      const bool socket = *kind == fd_kind::tcp_socket || *kind == fd_kind::unix_stream_socket ||
                          *kind == fd_kind::unix_seqpacket_socket ||
                          *kind == fd_kind::unix_datagram_socket || *kind == fd_kind::udp_socket ||
                          *kind == fd_kind::socket_other;
      return fail(errno_code(socket ? EINVAL : ENOTSOCK));
    }
    if (*kind == fd_kind::unix_server && !sys::is_stream_socket(fd)) {
      return fail(errno_code(EINVAL));
    }
  }
  for (int fd = 3; fd < 3 + count; ++fd) {
    (void)::fcntl(fd, F_SETFD, FD_CLOEXEC);
    cluster_listener l;
    l.fd = unique_fd(fd);
    if (auto a = socket_address::local_of(fd)) l.address = *a;
    const auto i = static_cast<std::size_t>(fd - 3);
    l.name = i < names.size() && !names[i].empty() ? names[i] : l.address.to_string();
    out.push_back(std::move(l));
  }
  (void)this_process::unset_env("LISTEN_FDS");
  (void)this_process::unset_env("LISTEN_PID");
  (void)this_process::unset_env("LISTEN_FDNAMES");
  return out;
}

namespace detail {

result<listener_socket> open_listener(loop& l, const socket_address& address) {
  if (address.is_ip()) {
    auto s = std::make_unique<tcp_server>(l);
    if (auto bound = s->bind(address); !bound) return fail(bound.error());
    return listener_socket(std::move(s));
  }
  auto s = std::make_unique<unix_server>(l);
  if (auto bound = s->bind(address); !bound) return fail(bound.error());
  return listener_socket(std::move(s));
}

result<listener_socket> adopt_listener(loop& l, unique_fd fd) {
  auto kind = detect_fd_kind(fd.get());
  if (!kind) return fail(kind.error());
  if (*kind == fd_kind::tcp_server) {
    auto s = std::make_unique<tcp_server>(l);
    if (auto opened = s->open(std::move(fd)); !opened) return fail(opened.error());
    return listener_socket(std::move(s));
  }
  if (*kind == fd_kind::unix_server) {
    auto s = std::make_unique<unix_server>(l);
    if (auto opened = s->open(std::move(fd)); !opened) return fail(opened.error());
    return listener_socket(std::move(s));
  }
  return fail(errno_code(EINVAL));
}

}  // namespace detail
}  // namespace kin
