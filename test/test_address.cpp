// Tests of socket_address: building, parsing and printing addresses, and reading them back from
// real sockets (127.0.0.1, ::1 and Unix sockets only).
#include "catch.hpp"

#include "helpers/temp_dir.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>

#include "posix/sys.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::literals;

namespace {

constexpr std::size_t sun_path_size = sizeof(sockaddr_un::sun_path);

int bind_to(int fd, const kin::socket_address& a) {
  return ::bind(fd, static_cast<const sockaddr*>(a.data()), a.size());
}

int connect_to(int fd, const kin::socket_address& a) {
  return ::connect(fd, static_cast<const sockaddr*>(a.data()), a.size());
}

// ::1 is usable when an AF_INET6 socket can be created and bound to it.
bool ipv6_loopback_available() {
  auto s = kin::sys::socket(AF_INET6, SOCK_STREAM, 0);
  if (!s) return false;
  auto a = kin::socket_address::ip("::1", 0);
  return a && bind_to(s->get(), *a) == 0;
}

bool abstract_names_supported() {
  auto a = kin::socket_address::unix_abstract("kin");
  return a || a.error() != std::errc::address_family_not_supported;
}

}  // namespace

TEST_CASE("every text form parses and prints back as the same text and an equal address",
          "[address]") {
  auto [text, family] = GENERATE(table<std::string, kin::address_family>({
      {"127.0.0.1:8080", kin::address_family::ipv4},
      {"0.0.0.0:0", kin::address_family::ipv4},
      {"255.255.255.255:65535", kin::address_family::ipv4},
      {"[::1]:8080", kin::address_family::ipv6},
      {"[::]:0", kin::address_family::ipv6},
      {"[2001:db8::1]:443", kin::address_family::ipv6},
      {"[::ffff:192.0.2.1]:80", kin::address_family::ipv6},
      {"[fe80::1%1]:80", kin::address_family::ipv6},
      {"unix:/tmp/kin.sock", kin::address_family::unix_path},
      {"unix:relative/kin.sock", kin::address_family::unix_path},
      {"unix:./@at-sign", kin::address_family::unix_path},
      {"unix:@kin-abstract", kin::address_family::unix_abstract},
      {"unix:@", kin::address_family::unix_abstract},
      {"unix:", kin::address_family::unix_unnamed},
  }));
  CAPTURE(text);
  auto a = kin::socket_address::parse(text);
  if (family == kin::address_family::unix_abstract && !abstract_names_supported()) {
    REQUIRE_FALSE(a);
    CHECK(a.error() == std::errc::address_family_not_supported);
    return;
  }
  REQUIRE(a);
  CHECK(a->family() == family);
  CHECK(a->to_string() == text);
  auto again = kin::socket_address::parse(a->to_string());
  REQUIRE(again);
  CHECK(*again == *a);
  auto copy = *a;
  CHECK(copy == *a);
}

TEST_CASE("ip accepts IPv4 and IPv6 literals, with or without brackets, and reports them",
          "[address]") {
  auto v4 = kin::socket_address::ip("127.0.0.1", 8080);
  REQUIRE(v4);
  CHECK(v4->family() == kin::address_family::ipv4);
  CHECK(v4->is_ip());
  CHECK(v4->host() == "127.0.0.1");
  CHECK(v4->port() == 8080);
  CHECK(v4->path().empty());
  CHECK(v4->size() == sizeof(sockaddr_in));

  auto v6 = kin::socket_address::ip("::1", 443);
  REQUIRE(v6);
  CHECK(v6->family() == kin::address_family::ipv6);
  CHECK(v6->host() == "::1");
  CHECK(v6->port() == 443);
  CHECK(v6->scope_id() == 0);
  CHECK(v6->size() == sizeof(sockaddr_in6));

  auto bracketed = kin::socket_address::ip("[::1]", 443);
  REQUIRE(bracketed);
  CHECK(*bracketed == *v6);

  // The bytes are the kernel's own sockaddr_in, in network byte order.
  sockaddr_in in{};
  std::memcpy(&in, v4->data(), sizeof in);
  CHECK(in.sin_family == AF_INET);
  CHECK(in.sin_port == htons(8080));
  CHECK(in.sin_addr.s_addr == htonl(INADDR_LOOPBACK));
}

TEST_CASE("an IPv6 scope is a numeric index or the name of an existing interface", "[address]") {
  auto numeric = kin::socket_address::ip("fe80::1%7", 80);
  REQUIRE(numeric);
  CHECK(numeric->scope_id() == 7);
  CHECK(numeric->host() == "fe80::1%7");
  CHECK(numeric->to_string() == "[fe80::1%7]:80");

  struct if_nameindex* interfaces = ::if_nameindex();
  REQUIRE(interfaces != nullptr);
  REQUIRE(interfaces[0].if_name != nullptr);
  const std::string name = interfaces[0].if_name;
  const unsigned index = interfaces[0].if_index;
  ::if_freenameindex(interfaces);
  CAPTURE(name);
  auto named = kin::socket_address::ip("[fe80::1%" + name + "]", 80);
  REQUIRE(named);
  CHECK(named->scope_id() == index);
  // Printed with the index, which parses back to the same address.
  CHECK(named->host() == "fe80::1%" + std::to_string(index));
  auto back = kin::socket_address::parse(named->to_string());
  REQUIRE(back);
  CHECK(*back == *named);
}

TEST_CASE("ip refuses host names and malformed literals with EINVAL", "[address]") {
  const std::string host =
      GENERATE(as<std::string>{}, "", "localhost", "example.com", "1.2.3", "1.2.3.4.5", "256.0.0.1",
               "127.0.0.1 ", " 127.0.0.1", "[127.0.0.1]", "127.0.0.1%1", "[::1", "::1]", "[]",
               "[[::1]]", ":::1", "fe80::1%", "fe80::1%no-such-if0", "fe80::1%99999999999",
               "::1%1%1", "127.0.0.1\0junk"s, std::string(200, '1'));
  CAPTURE(host);
  auto a = kin::socket_address::ip(host, 80);
  REQUIRE_FALSE(a);
  CHECK(a.error() == std::errc::invalid_argument);
}

TEST_CASE("parse refuses missing or out-of-range ports and malformed text with EINVAL",
          "[address]") {
  const std::string text = GENERATE(
      as<std::string>{}, "", "garbage", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
      "127.0.0.1:99999999999999999999", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1:80x",
      "127.0.0.1:0x50", "127.0.0.1: 80", " 127.0.0.1:80", "127.0.0.1:80 ", ":80", "localhost:80",
      "256.1.1.1:80", "::1:80", "::1", "[::1]", "[::1]:", "[::1]80", "[::1:80", "::1]:80",
      "[::1]:65536", "[127.0.0.1]:80", "[fe80::1%]:80", "[fe80::1%no-such-if0]:80",
      "tcp://127.0.0.1:80", "127.0.0.1:80\0"s, "unix", "UNIX:/tmp/x", "unix:/a\0b"s);
  CAPTURE(text);
  auto a = kin::socket_address::parse(text);
  REQUIRE_FALSE(a);
  CHECK(a.error() == std::errc::invalid_argument);
}

TEST_CASE("unix_path takes paths that fit sun_path with their NUL and refuses longer ones",
          "[address]") {
  const std::string longest(sun_path_size - 1, 'p');
  auto fits = kin::socket_address::unix_path(longest);
  REQUIRE(fits);
  CHECK(fits->family() == kin::address_family::unix_path);
  CHECK(fits->path() == longest);
  CHECK(fits->port() == 0);
  CHECK(fits->host().empty());
  CHECK(fits->is_unix());

  auto too_long = kin::socket_address::unix_path(std::string(sun_path_size, 'p'));
  REQUIRE_FALSE(too_long);
  CHECK(too_long.error() == std::errc::filename_too_long);
  auto parsed = kin::socket_address::parse("unix:/" + std::string(sun_path_size, 'p'));
  REQUIRE_FALSE(parsed);
  CHECK(parsed.error() == std::errc::filename_too_long);

  for (std::string_view bad : {""sv, "a\0b"sv}) {
    auto a = kin::socket_address::unix_path(bad);
    REQUIRE_FALSE(a);
    CHECK(a.error() == std::errc::invalid_argument);
  }
}

TEST_CASE("unix_abstract names may hold any bytes and must fit sun_path after the NUL",
          "[address]") {
  if (!abstract_names_supported()) {
    auto a = kin::socket_address::parse("unix:@kin");
    REQUIRE_FALSE(a);
    CHECK(a.error() == std::errc::address_family_not_supported);
    WARN("abstract Unix names are Linux-only; checked that they are refused");
    return;
  }
  const std::string longest(sun_path_size - 1, 'n');
  auto fits = kin::socket_address::unix_abstract(longest);
  REQUIRE(fits);
  CHECK(fits->family() == kin::address_family::unix_abstract);
  CHECK(fits->path() == longest);
  CHECK(fits->size() == offsetof(sockaddr_un, sun_path) + sun_path_size);

  auto too_long = kin::socket_address::unix_abstract(std::string(sun_path_size, 'n'));
  REQUIRE_FALSE(too_long);
  CHECK(too_long.error() == std::errc::filename_too_long);

  const std::string_view with_nul = "a\0b"sv;
  auto binary = kin::socket_address::unix_abstract(with_nul);
  REQUIRE(binary);
  CHECK(binary->path() == with_nul);
  auto back = kin::socket_address::parse(binary->to_string());
  REQUIRE(back);
  CHECK(*back == *binary);
}

TEST_CASE("a path that begins with @ is printed as unix:./@ so it is not read as abstract",
          "[address]") {
  auto a = kin::socket_address::unix_path("@file");
  REQUIRE(a);
  CHECK(a->path() == "@file");
  CHECK(a->to_string() == "unix:./@file");
  auto back = kin::socket_address::parse(a->to_string());
  REQUIRE(back);
  CHECK(back->family() == kin::address_family::unix_path);
  CHECK(back->path() == "./@file");
}

TEST_CASE("a default socket_address is the unnamed Unix address", "[address]") {
  const kin::socket_address a;
  CHECK(a.family() == kin::address_family::unix_unnamed);
  CHECK(a.to_string() == "unix:");
  CHECK(a.path().empty());
  CHECK(a.size() == offsetof(sockaddr_un, sun_path));
  auto parsed = kin::socket_address::parse("unix:");
  REQUIRE(parsed);
  CHECK(*parsed == a);
}

TEST_CASE("addresses are equal only when family, address, port, scope and path all match",
          "[address]") {
  auto parse = [](std::string_view text) { return kin::socket_address::parse(text).value(); };
  CHECK(parse("127.0.0.1:80") == parse("127.0.0.1:80"));
  CHECK(parse("127.0.0.1:80") != parse("127.0.0.1:81"));
  CHECK(parse("127.0.0.1:80") != parse("127.0.0.2:80"));
  CHECK(parse("127.0.0.1:80") != parse("[::ffff:127.0.0.1]:80"));
  CHECK(parse("[::1]:80") == parse("[0:0:0:0:0:0:0:1]:80"));
  CHECK(parse("[fe80::1%1]:80") != parse("[fe80::1%2]:80"));
  CHECK(parse("unix:/a") == parse("unix:/a"));
  CHECK(parse("unix:/a") != parse("unix:/b"));
  CHECK(parse("unix:/a") != parse("unix:"));
  if (abstract_names_supported()) CHECK(parse("unix:/a") != parse("unix:@/a"));
}

TEST_CASE("from_native checks the family and the length of the bytes it is given", "[address]") {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(9);
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto good = kin::socket_address::from_native(&in, sizeof in);
  REQUIRE(good);
  CHECK(good->to_string() == "127.0.0.1:9");

  SECTION("a null pointer, a short buffer or an oversized length is EINVAL") {
    for (auto r :
         {kin::socket_address::from_native(nullptr, sizeof in),
          kin::socket_address::from_native(&in, sizeof in - 1),
          kin::socket_address::from_native(&in, 1), kin::socket_address::from_native(&in, 0)}) {
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::invalid_argument);
    }
    sockaddr_storage big{};
    big.ss_family = AF_UNIX;
    auto r = kin::socket_address::from_native(&big, sizeof big + 1);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    r = kin::socket_address::from_native(&in6, sizeof in6 - 1);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
  SECTION("a family other than IPv4, IPv6 and Unix is EAFNOSUPPORT") {
    sockaddr_storage other{};
    other.ss_family = AF_UNSPEC;
    auto r = kin::socket_address::from_native(&other, sizeof other);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_family_not_supported);
  }
  SECTION("a Unix path is read up to its NUL whatever length the kernel reported") {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, "/x", 2);
    auto r = kin::socket_address::from_native(&un, sizeof un);
    REQUIRE(r);
    CHECK(*r == kin::socket_address::unix_path("/x").value());
  }
  SECTION("a Unix path that fills sun_path without a NUL is kept whole") {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memset(un.sun_path, 'p', sizeof un.sun_path);
    auto r = kin::socket_address::from_native(&un, sizeof un);
    REQUIRE(r);
    CHECK(r->path() == std::string(sun_path_size, 'p'));
    CHECK(r->size() == sizeof un);
    auto reparsed = kin::socket_address::parse(r->to_string());
    REQUIRE_FALSE(reparsed);
    CHECK(reparsed.error() == std::errc::filename_too_long);
  }
  SECTION("a Unix address with no path bytes is unnamed") {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    auto r = kin::socket_address::from_native(&un, offsetof(sockaddr_un, sun_path));
    REQUIRE(r);
    CHECK(r->family() == kin::address_family::unix_unnamed);
  }
}

TEST_CASE("local_of reports the port the kernel chose, and peer_of on the other end agrees",
          "[address]") {
  const std::string loopback = GENERATE(as<std::string>{}, "127.0.0.1", "::1");
  CAPTURE(loopback);
  const bool v6 = loopback == "::1";
  if (v6 && !ipv6_loopback_available()) {
    WARN("IPv6 is unavailable here (no AF_INET6 socket or no ::1); skipping the ::1 case");
    return;
  }
  const int domain = v6 ? AF_INET6 : AF_INET;
  auto listener = kin::sys::socket(domain, SOCK_STREAM, 0);
  REQUIRE(listener);
  REQUIRE(bind_to(listener->get(), kin::socket_address::ip(loopback, 0).value()) == 0);
  REQUIRE(::listen(listener->get(), 4) == 0);
  auto bound = kin::socket_address::local_of(listener->get());
  REQUIRE(bound);
  CHECK(bound->family() == (v6 ? kin::address_family::ipv6 : kin::address_family::ipv4));
  CHECK(bound->host() == loopback);
  CHECK(bound->port() != 0);

  auto client = kin::sys::socket(domain, SOCK_STREAM, 0);
  REQUIRE(client);
  REQUIRE(connect_to(client->get(), *bound) == 0);
  kin::unique_fd server(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(server);

  auto client_peer = kin::socket_address::peer_of(client->get());
  REQUIRE(client_peer);
  CHECK(*client_peer == *bound);
  auto client_local = kin::socket_address::local_of(client->get());
  auto server_peer = kin::socket_address::peer_of(server.get());
  REQUIRE(client_local);
  REQUIRE(server_peer);
  CHECK(*client_local == *server_peer);
  CHECK(server_peer->port() != bound->port());
  auto server_local = kin::socket_address::local_of(server.get());
  REQUIRE(server_local);
  CHECK(*server_local == *bound);
}

TEST_CASE("a socketpair's ends have unnamed Unix addresses", "[address]") {
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  for (int fd : {pair->first.get(), pair->second.get()}) {
    auto local = kin::socket_address::local_of(fd);
    auto peer = kin::socket_address::peer_of(fd);
    REQUIRE(local);
    REQUIRE(peer);
    CHECK(local->family() == kin::address_family::unix_unnamed);
    CHECK(peer->family() == kin::address_family::unix_unnamed);
    CHECK(local->to_string() == "unix:");
    CHECK(*local == kin::socket_address());
  }
}

TEST_CASE("a Unix socket bound to a path reports that path to itself and to its peer",
          "[address]") {
  const kin_test::temp_dir dir("kin-address");
  const std::string path = (dir.path() / "kin.sock").string();
  auto address = kin::socket_address::unix_path(path);
  REQUIRE(address);
  auto listener = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(listener);
  REQUIRE(bind_to(listener->get(), *address) == 0);
  REQUIRE(::listen(listener->get(), 4) == 0);
  auto local = kin::socket_address::local_of(listener->get());
  REQUIRE(local);
  CHECK(*local == *address);
  CHECK(local->path() == path);
  CHECK(local->to_string() == "unix:" + path);

  auto client = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(client);
  REQUIRE(connect_to(client->get(), *address) == 0);
  auto peer = kin::socket_address::peer_of(client->get());
  REQUIRE(peer);
  CHECK(*peer == *address);
  auto client_local = kin::socket_address::local_of(client->get());
  REQUIRE(client_local);
  CHECK(client_local->family() == kin::address_family::unix_unnamed);
}

TEST_CASE("a socket bound to an abstract name reports that name", "[address]") {
  if (!abstract_names_supported()) {
    WARN("abstract Unix names are Linux-only; skipping");
    return;
  }
  const std::string name = "kin-test-address-" + std::to_string(::getpid());
  auto address = kin::socket_address::unix_abstract(name);
  REQUIRE(address);
  auto s = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(s);
  REQUIRE(bind_to(s->get(), *address) == 0);
  auto local = kin::socket_address::local_of(s->get());
  REQUIRE(local);
  CHECK(local->family() == kin::address_family::unix_abstract);
  CHECK(local->path() == name);
  CHECK(*local == *address);
  CHECK(local->to_string() == "unix:@" + name);
}

TEST_CASE("local_of and peer_of report the errno of a descriptor that has no such address",
          "[address]") {
  auto closed = kin::socket_address::local_of(-1);
  REQUIRE_FALSE(closed);
  CHECK(closed.error() == std::errc::bad_file_descriptor);

  auto pipe = kin::make_pipe();
  REQUIRE(pipe);
  auto not_socket = kin::socket_address::peer_of(pipe->read.get());
  REQUIRE_FALSE(not_socket);
  CHECK(not_socket.error() == std::errc::not_a_socket);

  auto unconnected = kin::sys::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(unconnected);
  auto no_peer = kin::socket_address::peer_of(unconnected->get());
  REQUIRE_FALSE(no_peer);
  CHECK(no_peer.error() == std::errc::not_connected);
}
