// Tests of detect_fd_kind: one real descriptor of every kind, and a closed one.
#include "catch.hpp"

#include "helpers/temp_dir.hpp"

#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>

#include "posix/sys.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/netlink.h>
#include "linux/sys_linux.hpp"
#endif

namespace {

// The kind of `fd`, or a test failure naming the error.
kin::fd_kind kind_of(int fd) {
  auto kind = kin::detect_fd_kind(fd);
  INFO("detect_fd_kind(" << fd << ")");
  REQUIRE(kind);
  return *kind;
}

// A socket of `domain` bound to the loopback address on an ephemeral port; an empty unique_fd
// when the domain or the address is unavailable (IPv6 disabled).
kin::unique_fd bound_loopback(int domain, int type) {
  auto s = kin::sys::socket(domain, type, 0);
  if (!s) return {};
  int rc;
  if (domain == AF_INET) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = ::bind(s->get(), reinterpret_cast<const sockaddr*>(&in), sizeof in);
  } else {
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_addr = in6addr_loopback;
    rc = ::bind(s->get(), reinterpret_cast<const sockaddr*>(&in6), sizeof in6);
  }
  if (rc != 0) return {};
  return std::move(*s);
}

// A Unix socket of `type` bound to `path`.
kin::unique_fd bound_unix(int type, const std::filesystem::path& path) {
  auto s = kin::sys::socket(AF_UNIX, type, 0);
  REQUIRE(s);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  const std::string p = path.string();
  REQUIRE(p.size() < sizeof un.sun_path);
  std::memcpy(un.sun_path, p.data(), p.size());
  REQUIRE(::bind(s->get(), reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0);
  return std::move(*s);
}

}  // namespace

TEST_CASE("a listening TCP socket is a tcp_server and both ends of a connection are tcp_sockets",
          "[fd_kind]") {
  const int domain = GENERATE(AF_INET, AF_INET6);
  kin::unique_fd listener = bound_loopback(domain, SOCK_STREAM);
  if (!listener) {
    REQUIRE(domain == AF_INET6);
    WARN("IPv6 is unavailable here (no AF_INET6 socket or no ::1); skipping the ::1 case");
    return;
  }
  CHECK(kind_of(listener.get()) == kin::fd_kind::tcp_socket);  // bound, not yet listening
  REQUIRE(::listen(listener.get(), 4) == 0);
  CHECK(kind_of(listener.get()) == kin::fd_kind::tcp_server);

  sockaddr_storage address{};
  socklen_t len = sizeof address;
  REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &len) == 0);
  auto client = kin::sys::socket(domain, SOCK_STREAM, 0);
  REQUIRE(client);
  REQUIRE(::connect(client->get(), reinterpret_cast<const sockaddr*>(&address), len) == 0);
  kin::unique_fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(server);
  CHECK(kind_of(client->get()) == kin::fd_kind::tcp_socket);
  CHECK(kind_of(server.get()) == kin::fd_kind::tcp_socket);
}

TEST_CASE("a UDP socket bound on the loopback address is a udp_socket", "[fd_kind]") {
  const int domain = GENERATE(AF_INET, AF_INET6);
  kin::unique_fd s = bound_loopback(domain, SOCK_DGRAM);
  if (!s) {
    REQUIRE(domain == AF_INET6);
    WARN("IPv6 is unavailable here (no AF_INET6 socket or no ::1); skipping the ::1 case");
    return;
  }
  CHECK(kind_of(s.get()) == kin::fd_kind::udp_socket);
}

TEST_CASE("a listening Unix stream or seqpacket socket is a unix_server", "[fd_kind]") {
  const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET);
  const kin_test::temp_dir dir("kin-fd-kind");
  const auto path = dir.path() / "server.sock";
  kin::unique_fd s = bound_unix(type, path);
  REQUIRE(::listen(s.get(), 4) == 0);
  CHECK(kind_of(s.get()) == kin::fd_kind::unix_server);

  SECTION("and the sockets of a connection to it are not servers") {
    auto client = kin::sys::socket(AF_UNIX, type, 0);
    REQUIRE(client);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.c_str(), path.string().size());
    REQUIRE(::connect(client->get(), reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0);
    kin::unique_fd accepted(::accept4(s.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(accepted);
    const auto expected = type == SOCK_STREAM ? kin::fd_kind::unix_stream_socket
                                              : kin::fd_kind::unix_seqpacket_socket;
    CHECK(kind_of(client->get()) == expected);
    CHECK(kind_of(accepted.get()) == expected);
  }
}

TEST_CASE("Unix stream, seqpacket and datagram sockets are told apart", "[fd_kind]") {
  auto [type, expected] = GENERATE(table<kin::socket_type, kin::fd_kind>({
      {kin::socket_type::stream, kin::fd_kind::unix_stream_socket},
      {kin::socket_type::seqpacket, kin::fd_kind::unix_seqpacket_socket},
      {kin::socket_type::datagram, kin::fd_kind::unix_datagram_socket},
  }));
  auto pair = kin::make_socketpair(type);
  REQUIRE(pair);
  CHECK(kind_of(pair->first.get()) == expected);
  CHECK(kind_of(pair->second.get()) == expected);
}

TEST_CASE("a bound Unix datagram socket is a unix_datagram_socket", "[fd_kind]") {
  const kin_test::temp_dir dir("kin-fd-kind");
  kin::unique_fd s = bound_unix(SOCK_DGRAM, dir.path() / "dgram.sock");
  CHECK(kind_of(s.get()) == kin::fd_kind::unix_datagram_socket);
}

TEST_CASE("both ends of a pipe are pipes", "[fd_kind]") {
  auto p = kin::make_pipe();
  REQUIRE(p);
  CHECK(kind_of(p->read.get()) == kin::fd_kind::pipe);
  CHECK(kind_of(p->write.get()) == kin::fd_kind::pipe);
}

TEST_CASE("a FIFO made with mkfifo is a pipe", "[fd_kind]") {
  const kin_test::temp_dir dir("kin-fd-kind");
  const auto path = dir.path() / "fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  // O_NONBLOCK: opening the read end must not wait for a writer.
  auto reader = kin::sys::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(reader);
  auto writer = kin::sys::open(path.c_str(), O_WRONLY | O_NONBLOCK);
  REQUIRE(writer);
  CHECK(kind_of(reader->get()) == kin::fd_kind::pipe);
  CHECK(kind_of(writer->get()) == kin::fd_kind::pipe);
}

TEST_CASE("a regular file is a file", "[fd_kind]") {
  const kin_test::temp_dir dir("kin-fd-kind");
  auto f = kin::sys::open((dir.path() / "file").c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  REQUIRE(f);
  CHECK(kind_of(f->get()) == kin::fd_kind::file);
}

TEST_CASE("/dev/null is a character_device", "[fd_kind]") {
  auto f = kin::sys::open("/dev/null", O_RDONLY);
  REQUIRE(f);
  CHECK(kind_of(f->get()) == kin::fd_kind::character_device);
}

TEST_CASE("a directory opened with O_DIRECTORY is a directory", "[fd_kind]") {
  const kin_test::temp_dir dir("kin-fd-kind");
  auto d = kin::sys::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(d);
  CHECK(kind_of(d->get()) == kin::fd_kind::directory);
}

TEST_CASE("a socket of another family is socket_other, not an error", "[fd_kind]") {
#if defined(__linux__)
  auto s = kin::sys::socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
#else
  auto s = kin::sys::socket(AF_ROUTE, SOCK_RAW, 0);
#endif
  REQUIRE(s);
  CHECK(kind_of(s->get()) == kin::fd_kind::socket_other);
}

#if defined(__linux__)
TEST_CASE("a descriptor that is neither socket, pipe, file, device nor directory is other",
          "[fd_kind]") {
  auto efd = kin::sys::make_eventfd(0, kin::fd_mode::blocking);
  REQUIRE(efd);
  CHECK(kind_of(efd->get()) == kin::fd_kind::other);
}
#endif

TEST_CASE("a closed or negative descriptor is EBADF", "[fd_kind]") {
  int number;
  {
    auto f = kin::sys::open("/dev/null", O_RDONLY);
    REQUIRE(f);
    number = f->get();
  }
  for (int fd : {number, -1}) {
    auto kind = kin::detect_fd_kind(fd);
    REQUIRE_FALSE(kind);
    CHECK(kind.error() == std::errc::bad_file_descriptor);
  }
}

TEST_CASE("every fd_kind has its own name", "[fd_kind]") {
  std::set<std::string_view> names;
  for (int i = 0; i <= static_cast<int>(kin::fd_kind::other); ++i) {
    const std::string_view name = kin::to_string(static_cast<kin::fd_kind>(i));
    CHECK_FALSE(name.empty());
    CHECK(name != "unknown");
    names.insert(name);
  }
  CHECK(names.size() == static_cast<std::size_t>(kin::fd_kind::other) + 1);
  CHECK(kin::to_string(kin::fd_kind::tcp_server) == "tcp_server");
  CHECK(kin::to_string(kin::fd_kind::other) == "other");
}
