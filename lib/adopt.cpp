// adopt(): a received descriptor rebuilt as the handle its kind calls for.
#include <kin/handle.hpp>

#include "posix/sys.hpp"
#include "stream_opener.hpp"

#include <memory>
#include <utility>

namespace kin {

namespace {

template <class H>
result<any_handle> open_new(loop& l, unique_fd fd) {
  auto h = std::make_unique<H>(l);
  if (auto r = h->open(std::move(fd)); !r) return fail(r.error());
  return any_handle(std::move(h));
}

// A stream whose kind was just detected: opened without classifying it again.
template <class H>
result<any_handle> open_stream(loop& l, unique_fd fd, fd_kind kind) {
  auto h = std::make_unique<H>(l);
  if (auto r = detail::stream_opener::open_known(*h, std::move(fd), kind); !r) {
    return fail(r.error());
  }
  return any_handle(std::move(h));
}

}  // namespace

result<any_handle> adopt(loop& l, unique_fd fd) {
  auto kind = detect_fd_kind(fd.get());
  if (!kind) return fail(kind.error());
  switch (*kind) {
    case fd_kind::tcp_server:
      return open_new<tcp_server>(l, std::move(fd));
    case fd_kind::tcp_socket:
      return open_stream<tcp_socket>(l, std::move(fd), *kind);
    case fd_kind::unix_server:
      // A listening SOCK_SEQPACKET socket is a unix_server by kind but not a stream server.
      if (!sys::is_stream_socket(fd.get())) return any_handle(raw_descriptor{std::move(fd), *kind});
      return open_new<unix_server>(l, std::move(fd));
    case fd_kind::unix_stream_socket:
      return open_stream<unix_socket>(l, std::move(fd), *kind);
    case fd_kind::udp_socket:
      return open_new<udp_socket>(l, std::move(fd));
    case fd_kind::pipe:
      return open_stream<pipe>(l, std::move(fd), *kind);
    case fd_kind::file:
      return open_new<file>(l, std::move(fd));
    default:
      return any_handle(raw_descriptor{std::move(fd), *kind});
  }
}

fd_kind kind_of(const any_handle& h) noexcept {
  struct visitor {
    fd_kind operator()(const raw_descriptor& r) const noexcept { return r.kind; }
    fd_kind operator()(const std::unique_ptr<tcp_server>&) const noexcept {
      return fd_kind::tcp_server;
    }
    fd_kind operator()(const std::unique_ptr<tcp_socket>&) const noexcept {
      return fd_kind::tcp_socket;
    }
    fd_kind operator()(const std::unique_ptr<unix_server>&) const noexcept {
      return fd_kind::unix_server;
    }
    fd_kind operator()(const std::unique_ptr<unix_socket>&) const noexcept {
      return fd_kind::unix_stream_socket;
    }
    fd_kind operator()(const std::unique_ptr<udp_socket>&) const noexcept {
      return fd_kind::udp_socket;
    }
    fd_kind operator()(const std::unique_ptr<pipe>&) const noexcept { return fd_kind::pipe; }
    fd_kind operator()(const std::unique_ptr<file>&) const noexcept { return fd_kind::file; }
  };
  return std::visit(visitor{}, h);
}

}  // namespace kin
