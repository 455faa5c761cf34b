// Helpers for the tests of the typed handles: running a loop with a deadline, bytes as text, a
// stream reader that collects what arrives, and raw (blocking) sockets to test against.
#pragma once

#include "catch.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/stream.hpp>

#include "posix/sys.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace kin_test {

/// Runs `l` until `pred()` holds or `limit` passes, and returns `pred()`. A 1 ms timer checks
/// `pred()` and stops the loop: checking only between iterations would miss a condition met by
/// the deferred work that opens an iteration, whose poll may then sleep until something else
/// happens. The timer also keeps every wait bounded when nothing else is active.
template <class Pred>
bool run_until(kin::loop& l, Pred pred,
               std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
  if (pred()) return true;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  kin::timer check(l, [&] {
    if (pred() || std::chrono::steady_clock::now() >= deadline) l.stop();
  });
  (void)check.start(std::chrono::milliseconds(1), std::chrono::milliseconds(1));
  l.run();
  return pred();
}

/// A numeric IP address the test needs (fails the test if it does not parse).
inline kin::socket_address ip(const char* host, std::uint16_t port = 0) {
  auto a = kin::socket_address::ip(host, port);
  REQUIRE(a);
  return *a;
}

/// A Unix-domain address for a path (fails the test if the path is too long).
inline kin::socket_address unix_path(const std::filesystem::path& path) {
  auto a = kin::socket_address::unix_path(path.string());
  REQUIRE(a);
  return *a;
}

/// Runs `l` until it has no referenced work left. Returns false if that took longer than
/// `limit` (the loop is then stopped by an unreferenced timer, so a loop that would never end
/// fails the test instead of hanging it).
inline bool run_all(kin::loop& l,
                    std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
  bool expired = false;
  kin::timer deadline(l, [&] {
    expired = true;
    l.stop();
  });
  deadline.unref();
  (void)deadline.start(limit);
  l.run();
  return !expired;
}

inline std::span<const std::byte> bytes_of(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

inline std::string text_of(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

/// Collects the bytes a stream reads, and how it ended (EOF or an error).
struct stream_reader {
  std::string data;
  std::error_code end;

  kin::stream::read_callback callback() {
    return [this](std::error_code ec, std::span<const std::byte> bytes, std::span<kin::unique_fd>) {
      if (ec) {
        end = ec;
        return;
      }
      data += text_of(bytes);
    };
  }
};

/// A blocking TCP or Unix socket connected to `to` with connect(2), or an empty unique_fd and
/// errno set. Blocking, so that once it returns the connection waits in the server's backlog.
inline kin::unique_fd raw_connect(const kin::socket_address& to) {
  const int domain = to.family() == kin::address_family::ipv4   ? AF_INET
                     : to.family() == kin::address_family::ipv6 ? AF_INET6
                                                                : AF_UNIX;
  auto s = kin::sys::socket(domain, SOCK_STREAM, 0);
  if (!s) return {};
  if (::connect(s->get(), static_cast<const sockaddr*>(to.data()), to.size()) != 0) return {};
  return std::move(*s);
}

/// The number of connections waiting in a listening TCP socket's accept queue (Linux reports
/// it as tcpi_unacked for a socket in the LISTEN state); -1 if it cannot be read.
inline int accept_queue_length(int listening_fd) {
#if defined(__linux__)
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(listening_fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
  return static_cast<int>(info.tcpi_unacked);
#else
  (void)listening_fd;
  return -1;
#endif
}

/// An integer socket option of `fd`, or -1 if getsockopt fails.
inline int int_option(int fd, int level, int name) {
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(fd, level, name, &value, &len) != 0) return -1;
  return value;
}

}  // namespace kin_test
