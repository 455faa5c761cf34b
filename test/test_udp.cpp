// Tests of kin::udp_socket: binding, datagrams and their boundaries, the sender's address, the
// send queue and its errors, close, release and open.
#include "catch.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/udp.hpp>

#include "helpers/handles.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using kin_test::bytes_of;
using kin_test::ip;
using kin_test::run_all;
using kin_test::run_until;

namespace {

bool is_open_fd(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// One datagram as the receive callback saw it.
struct datagram {
  std::string data;
  kin::socket_address sender;
  bool truncated = false;
};

// Collects datagrams and receive errors.
struct inbox {
  std::vector<datagram> got;
  std::vector<std::error_code> errors;

  kin::udp_socket::receive_callback callback() {
    return [this](std::error_code ec, std::span<const std::byte> data,
                  const kin::socket_address& sender, bool truncated) {
      if (ec) {
        errors.push_back(ec);
        return;
      }
      got.push_back({kin_test::text_of(data), sender, truncated});
    };
  }
};

std::string pattern(std::size_t n, std::size_t seed = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

}  // namespace

TEST_CASE("a datagram between two sockets on 127.0.0.1 arrives whole with its sender's address",
          "[udp]") {
  kin::loop l;
  kin::udp_socket a(l), b(l);
  REQUIRE(a.bind(ip("127.0.0.1")));
  REQUIRE(b.bind(ip("127.0.0.1")));
  const auto a_address = *a.local_address();
  const auto b_address = *b.local_address();
  CHECK(a_address.port() != 0);
  CHECK(b_address.port() != 0);
  CHECK(a_address.port() != b_address.port());
  CHECK((::fcntl(a.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(a.fd(), F_GETFL) & O_NONBLOCK) != 0);

  inbox at_b, at_a;
  REQUIRE(b.receive_start(at_b.callback()));
  REQUIRE(a.receive_start(at_a.callback()));
  CHECK(b.is_receiving());
  std::optional<std::error_code> sent;
  a.send_to(bytes_of("hello, b"), b_address, [&](std::error_code ec) { sent = ec; });
  CHECK_FALSE(sent);  // never from inside send_to()
  CHECK(a.send_queue_size() == 8);
  REQUIRE(run_until(l, [&] { return at_b.got.size() == 1; }));
  REQUIRE(sent);
  CHECK_FALSE(*sent);
  CHECK(a.send_queue_size() == 0);
  CHECK(at_b.got[0].data == "hello, b");
  CHECK(at_b.got[0].sender == a_address);
  CHECK_FALSE(at_b.got[0].truncated);

  // And back to the address the datagram came from.
  b.send_to(bytes_of("hello, a"), at_b.got[0].sender);
  REQUIRE(run_until(l, [&] { return at_a.got.size() == 1; }));
  CHECK(at_a.got[0].data == "hello, a");
  CHECK(at_a.got[0].sender == b_address);
  CHECK(at_a.errors.empty());
  CHECK(at_b.errors.empty());
}

TEST_CASE("two hundred datagrams arrive in order with their boundaries kept", "[udp]") {
  kin::loop l;
  kin::udp_socket sender(l), receiver(l);
  REQUIRE(sender.bind(ip("127.0.0.1")));
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  inbox in;
  REQUIRE(receiver.receive_start(in.callback()));
  std::vector<std::string> expected;
  int sent_ok = 0;
  // Batches of 20, each sent when the previous one has arrived, stay far below the receive
  // buffer: nothing is dropped, so every datagram must arrive.
  constexpr int total = 200, batch = 20;
  for (int start = 0; start < total; start += batch) {
    for (int i = start; i < start + batch; ++i) {
      // Sizes from 1 to 1500 bytes, each with its own content: a merged or split datagram shows.
      expected.push_back(
          pattern(static_cast<std::size_t>(i * 37 % 1500 + 1), static_cast<std::size_t>(i)));
      sender.send_to(bytes_of(expected.back()), *receiver.local_address(), [&](std::error_code ec) {
        CHECK_FALSE(ec);
        ++sent_ok;
      });
    }
    REQUIRE(run_until(l, [&] { return in.got.size() == expected.size(); }));
  }
  CHECK(sent_ok == total);
  REQUIRE(in.got.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("datagram " << i);
    CHECK(in.got[i].data == expected[i]);
    CHECK_FALSE(in.got[i].truncated);
  }
}

TEST_CASE("send_to on a socket never bound creates it, and the datagram arrives", "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), sender(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  inbox in;
  REQUIRE(receiver.receive_start(in.callback()));
  CHECK_FALSE(sender.is_open());
  auto unbound = sender.local_address();
  REQUIRE_FALSE(unbound);
  CHECK(unbound.error() == std::errc::bad_file_descriptor);

  std::optional<std::error_code> sent;
  sender.send_to(bytes_of("from nowhere"), *receiver.local_address(),
                 [&](std::error_code ec) { sent = ec; });
  CHECK(sender.is_open());
  CHECK((::fcntl(sender.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  REQUIRE(run_until(l, [&] { return in.got.size() == 1; }));
  REQUIRE(sent);
  CHECK_FALSE(*sent);
  CHECK(in.got[0].data == "from nowhere");
  // The kernel gave the socket an ephemeral port, which is what the receiver saw.
  auto local = sender.local_address();
  REQUIRE(local);
  CHECK(local->family() == kin::address_family::ipv4);
  CHECK(local->port() != 0);
  CHECK(in.got[0].sender.port() == local->port());
}

TEST_CASE("the largest IPv4 datagram arrives whole; a larger one fails with EMSGSIZE alone",
          "[udp]") {
  kin::loop l;
  kin::udp_socket sender(l), receiver(l);
  REQUIRE(sender.bind(ip("127.0.0.1")));
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  inbox in;
  REQUIRE(receiver.receive_start(in.callback()));
  const std::string largest = pattern(65507);  // 65535 - 20 (IPv4 header) - 8 (UDP header)
  const std::string too_large = pattern(70000);
  std::vector<std::error_code> results;
  auto record = [&](std::error_code ec) { results.push_back(ec); };
  const auto to = *receiver.local_address();
  sender.send_to(bytes_of(largest), to, record);
  sender.send_to(bytes_of(too_large), to, record);
  sender.send_to(bytes_of("after"), to, record);  // one failed datagram does not fail the next
  REQUIRE(run_until(l, [&] { return in.got.size() == 2 && results.size() == 3; }));
  CHECK_FALSE(results[0]);
  CHECK(results[1] == std::errc::message_size);
  CHECK_FALSE(results[2]);
  CHECK(in.got[0].data.size() == largest.size());
  CHECK(in.got[0].data == largest);
  CHECK_FALSE(in.got[0].truncated);
  CHECK(in.got[1].data == "after");
  CHECK(sender.send_queue_size() == 0);
}

TEST_CASE("send_to a Unix address fails with EAFNOSUPPORT on a later iteration", "[udp]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-udp");
  auto unix_address = kin::socket_address::unix_path((dir.path() / "x").string());
  REQUIRE(unix_address);
  kin::udp_socket s(l);
  const bool bound = GENERATE(true, false);
  if (bound) REQUIRE(s.bind(ip("127.0.0.1")));
  const auto before = kin_test::open_fds();
  std::optional<std::error_code> result;
  s.send_to(bytes_of("nope"), *unix_address, [&](std::error_code ec) { result = ec; });
  CHECK_FALSE(result);
  CHECK(s.send_queue_size() == 0);
  CHECK(s.is_open() == bound);  // an unbound socket is not created for an address it cannot use
  CHECK(run_all(l));
  REQUIRE(result);
  CHECK(*result == std::errc::address_family_not_supported);
  CHECK(kin_test::open_fds() == before);
  auto direct = s.try_send_to(bytes_of("nope"), *unix_address);
  REQUIRE_FALSE(direct);
  CHECK(direct.error() ==
        (bound ? std::errc::address_family_not_supported : std::errc::bad_file_descriptor));
}

TEST_CASE("close cancels queued datagrams with ECANCELED before its own callback", "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), s(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  REQUIRE(s.bind(ip("127.0.0.1")));
  const int fd = s.fd();
  std::vector<std::string> events;
  for (const char* name : {"one", "two"}) {
    s.send_to(bytes_of(name), *receiver.local_address(), [&events, name](std::error_code ec) {
      events.push_back(std::string(name) +
                       (ec == std::errc::operation_canceled ? " cancelled" : " sent"));
    });
  }
  s.close([&] { events.push_back("closed"); });
  CHECK(events.empty());
  CHECK_FALSE(s.is_open());
  CHECK_FALSE(is_open_fd(fd));
  CHECK(s.send_queue_size() == 0);
  CHECK(run_all(l));
  CHECK(events == std::vector<std::string>{"one cancelled", "two cancelled", "closed"});
  // Nothing was sent.
  char buf[8];
  CHECK(::recv(receiver.fd(), buf, sizeof buf, MSG_DONTWAIT) == -1);
  CHECK(errno == EAGAIN);
}

TEST_CASE("try_send_to sends at once, and refuses while datagrams are queued", "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), s(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  auto closed = s.try_send_to(bytes_of("x"), *receiver.local_address());
  REQUIRE_FALSE(closed);
  CHECK(closed.error() == std::errc::bad_file_descriptor);

  REQUIRE(s.bind(ip("127.0.0.1")));
  REQUIRE(s.try_send_to(bytes_of("direct"), *receiver.local_address()));
  char buf[16];
  // Sent before the loop ever ran.
  CHECK(::recv(receiver.fd(), buf, sizeof buf, MSG_DONTWAIT) == 6);

  s.send_to(bytes_of("queued"), *receiver.local_address());
  auto busy = s.try_send_to(bytes_of("jump the queue"), *receiver.local_address());
  REQUIRE_FALSE(busy);
  CHECK(busy.error() == std::errc::resource_unavailable_try_again);
  inbox in;
  REQUIRE(receiver.receive_start(in.callback()));
  REQUIRE(run_until(l, [&] { return in.got.size() == 1; }));
  CHECK(in.got[0].data == "queued");

  auto too_large = s.try_send_to(bytes_of(pattern(70000)), *receiver.local_address());
  REQUIRE_FALSE(too_large);
  CHECK(too_large.error() == std::errc::message_size);
}

TEST_CASE("release hands the socket back; EBUSY with datagrams queued, EBADF when closed",
          "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), s(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  REQUIRE(s.bind(ip("127.0.0.1")));
  const int number = s.fd();
  inbox in;
  REQUIRE(receiver.receive_start(in.callback()));
  REQUIRE(s.receive_start(in.callback()));

  std::optional<std::error_code> sent;
  s.send_to(bytes_of("pending"), *receiver.local_address(), [&](std::error_code ec) { sent = ec; });
  auto busy = s.release();
  REQUIRE_FALSE(busy);
  CHECK(busy.error() == std::errc::device_or_resource_busy);
  CHECK(s.is_open());
  REQUIRE(run_until(l, [&] { return in.got.size() == 1; }));
  REQUIRE(sent);
  CHECK_FALSE(*sent);

  auto fd = s.release();
  REQUIRE(fd);
  CHECK(fd->get() == number);
  CHECK_FALSE(s.is_open());
  CHECK_FALSE(s.is_receiving());
  // Still bound, and nothing reads it any more: a datagram sent to it waits for a raw recv.
  receiver.send_to(bytes_of("to raw"), *kin::socket_address::local_of(fd->get()));
  REQUIRE(run_until(l, [&] { return receiver.send_queue_size() == 0; }));
  char buf[16];
  ssize_t n = -1;
  REQUIRE(kin_test::wait_until([&] {
    n = ::recv(fd->get(), buf, sizeof buf, MSG_DONTWAIT);
    return n >= 0;
  }));
  CHECK(std::string(buf, static_cast<std::size_t>(n)) == "to raw");
  CHECK(in.got.size() == 1);

  auto closed = s.release();
  REQUIRE_FALSE(closed);
  CHECK(closed.error() == std::errc::bad_file_descriptor);
}

TEST_CASE("open takes a UDP socket and refuses other kinds, closing them", "[udp]") {
  kin::loop l;
  SECTION("a UDP socket, made non-blocking, then a second open is EISCONN") {
    auto raw = kin::sys::socket(AF_INET, SOCK_DGRAM, 0);
    REQUIRE(raw);
    const auto a = ip("127.0.0.1");
    REQUIRE(::bind(raw->get(), static_cast<const sockaddr*>(a.data()), a.size()) == 0);
    const auto address = *kin::socket_address::local_of(raw->get());
    kin::udp_socket s(l);
    REQUIRE(s.open(std::move(*raw)));
    CHECK((::fcntl(s.fd(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(*s.local_address() == address);
    auto other = kin::sys::socket(AF_INET, SOCK_DGRAM, 0);
    REQUIRE(other);
    auto twice = s.open(std::move(*other));
    REQUIRE_FALSE(twice);
    CHECK(twice.error() == std::errc::already_connected);
  }
  SECTION("other kinds") {
    const auto before = kin_test::open_fds();
    kin::udp_socket s(l);
    std::vector<kin::unique_fd> wrong;
    wrong.push_back(kin::sys::socket(AF_INET, SOCK_STREAM, 0).value());
    wrong.push_back(std::move(kin::make_socketpair(kin::socket_type::datagram).value().first));
    wrong.push_back(std::move(kin::make_pipe().value().read));
    for (auto& fd : wrong) {
      const int number = fd.get();
      auto r = s.open(std::move(fd));
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::invalid_argument);
      CHECK_FALSE(is_open_fd(number));
    }
    auto none = s.open(kin::unique_fd());
    REQUIRE_FALSE(none);
    CHECK(none.error() == std::errc::bad_file_descriptor);
    CHECK_FALSE(s.is_open());
    CHECK(kin_test::open_fds() == before);
  }
}

TEST_CASE("a bind that fails says why and leaves nothing open", "[udp]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-udp");
  kin::udp_socket taken(l);
  REQUIRE(taken.bind(ip("127.0.0.1")));
  const auto port = taken.local_address()->port();
  const auto before = kin_test::open_fds();
  kin::udp_socket s(l);
  SECTION("EADDRINUSE") {
    auto r = s.bind(ip("127.0.0.1", port));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
  }
  SECTION("EAFNOSUPPORT for a Unix address") {
    auto r = s.bind(kin::socket_address::unix_path((dir.path() / "u").string()).value());
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_family_not_supported);
    CHECK(std::filesystem::is_empty(dir.path()));
  }
  SECTION("EISCONN when already bound") {
    auto r = taken.bind(ip("127.0.0.1"));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::already_connected);
    CHECK(taken.local_address()->port() == port);
  }
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("reuse_port lets two UDP sockets bind one port", "[udp]") {
  kin::loop l;
  kin::udp_options options;
  options.reuse_port = true;
  kin::udp_socket a(l), b(l);
  REQUIRE(a.bind(ip("127.0.0.1"), options));
  CHECK(kin_test::int_option(a.fd(), SOL_SOCKET, SO_REUSEPORT) != 0);
  REQUIRE(b.bind(ip("127.0.0.1", a.local_address()->port()), options));
  CHECK(a.local_address()->port() == b.local_address()->port());
  options.reuse_port = false;
  options.reuse_addr = true;
  kin::udp_socket c(l);
  REQUIRE(c.bind(ip("127.0.0.1"), options));
  CHECK(kin_test::int_option(c.fd(), SOL_SOCKET, SO_REUSEADDR) != 0);
  CHECK(kin_test::int_option(c.fd(), SOL_SOCKET, SO_REUSEPORT) == 0);
}

TEST_CASE("a datagram round trip over ::1", "[udp]") {
  kin::loop l;
  kin::udp_socket a(l), b(l);
  auto bound = a.bind(ip("::1"));
  if (!bound && (bound.error() == std::errc::address_not_available ||
                 bound.error() == std::errc::address_family_not_supported)) {
    WARN("IPv6 loopback unavailable here (" << bound.error().message() << "); skipping");
    return;
  }
  REQUIRE(bound);
  kin::udp_options v6only;
  v6only.ipv6_only = true;
  REQUIRE(b.bind(ip("::1"), v6only));
  CHECK(a.local_address()->family() == kin::address_family::ipv6);
  inbox at_a, at_b;
  REQUIRE(a.receive_start(at_a.callback()));
  REQUIRE(b.receive_start(at_b.callback()));
  a.send_to(bytes_of("ping6"), *b.local_address());
  REQUIRE(run_until(l, [&] { return at_b.got.size() == 1; }));
  CHECK(at_b.got[0].data == "ping6");
  CHECK(at_b.got[0].sender == *a.local_address());
  b.send_to(bytes_of("pong6"), at_b.got[0].sender);
  REQUIRE(run_until(l, [&] { return at_a.got.size() == 1; }));
  CHECK(at_a.got[0].data == "pong6");
  CHECK(at_a.got[0].sender == *b.local_address());

  // An IPv6 destination for an IPv4 socket: the kernel's refusal comes through the callback.
  kin::udp_socket v4(l);
  REQUIRE(v4.bind(ip("127.0.0.1")));
  std::optional<std::error_code> result;
  v4.send_to(bytes_of("wrong family"), *b.local_address(),
             [&](std::error_code ec) { result = ec; });
  REQUIRE(run_until(l, [&] { return bool(result); }));
  CHECK(*result == std::errc::address_family_not_supported);
  // And an IPv4 destination for an IPv6-only socket.
  result.reset();
  b.send_to(bytes_of("wrong family"), *v4.local_address(),
            [&](std::error_code ec) { result = ec; });
  REQUIRE(run_until(l, [&] { return bool(result); }));
  CHECK(*result == std::errc::network_unreachable);
}

TEST_CASE("a receive callback may stop receiving; the socket is active only while it works",
          "[udp]") {
  kin::loop l;
  kin::udp_socket sender(l), receiver(l);
  REQUIRE(sender.bind(ip("127.0.0.1")));
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  CHECK_FALSE(l.is_alive());  // bound, idle: nothing to wait for
  std::vector<std::string> got;
  auto stop_after_one = [&](std::error_code ec, std::span<const std::byte> data,
                            const kin::socket_address&, bool) {
    REQUIRE_FALSE(ec);
    got.push_back(kin_test::text_of(data));
    receiver.receive_stop();
  };
  REQUIRE(receiver.receive_start(stop_after_one));
  CHECK(l.is_alive());
  for (const char* d : {"1", "2", "3"}) sender.send_to(bytes_of(d), *receiver.local_address());
  REQUIRE(run_until(l, [&] { return sender.send_queue_size() == 0 && !got.empty(); }));
  // All three are in the receive buffer, yet the callback stopped after the first.
  for (int i = 0; i < 3; ++i) l.run_nowait();
  CHECK(got == std::vector<std::string>{"1"});
  CHECK_FALSE(receiver.is_receiving());
  CHECK_FALSE(l.is_alive());
  inbox rest;
  REQUIRE(receiver.receive_start(rest.callback()));
  REQUIRE(run_until(l, [&] { return rest.got.size() == 2; }));
  CHECK(rest.got[0].data == "2");
  CHECK(rest.got[1].data == "3");

  SECTION("and the socket can be destroyed from its receive callback") {
    auto doomed = std::make_unique<kin::udp_socket>(l);
    REQUIRE(doomed->bind(ip("127.0.0.1")));
    int calls = 0;
    REQUIRE(doomed->receive_start(
        [&](std::error_code, std::span<const std::byte>, const kin::socket_address&, bool) {
          ++calls;
          doomed.reset();
        }));
    for (const char* d : {"a", "b"}) sender.send_to(bytes_of(d), *doomed->local_address());
    REQUIRE(run_until(l, [&] { return doomed == nullptr; }));
    CHECK(calls == 1);
  }
}

TEST_CASE("a send callback that closes the socket loses no other datagram's callback", "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), s(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  REQUIRE(s.bind(ip("127.0.0.1")));
  std::vector<std::string> events;
  const auto to = *receiver.local_address();
  // Both leave in one flush; the first one's callback closes the socket while the second one's
  // outcome (sent) is still to be reported.
  s.send_to(bytes_of("one"), to, [&](std::error_code ec) {
    CHECK_FALSE(ec);
    events.push_back("one");
    s.close([&] { events.push_back("closed"); });
  });
  s.send_to(bytes_of("two"), to, [&](std::error_code ec) {
    CHECK_FALSE(ec);
    events.push_back("two");
  });
  CHECK(run_all(l));
  CHECK(events == std::vector<std::string>{"one", "two", "closed"});
  CHECK_FALSE(s.is_open());
  CHECK(s.send_queue_size() == 0);
  // Both datagrams did leave.
  char buf[8];
  CHECK(::recv(receiver.fd(), buf, sizeof buf, MSG_DONTWAIT) == 3);
  CHECK(::recv(receiver.fd(), buf, sizeof buf, MSG_DONTWAIT) == 3);

  SECTION("and the closed socket can be bound again") {
    REQUIRE(s.bind(ip("127.0.0.1")));
    inbox in;
    REQUIRE(receiver.receive_start(in.callback()));
    s.send_to(bytes_of("again"), to);
    REQUIRE(run_until(l, [&] { return in.got.size() == 1; }));
    CHECK(in.got[0].data == "again");
    receiver.receive_stop();
  }
}

TEST_CASE("a receive error is reported once and reception goes on", "[udp]") {
  kin::loop l;
  // A socket connect()ed to a port nobody holds: the ICMP port-unreachable that answers a
  // datagram becomes ECONNREFUSED on the next receive.
  kin::unique_fd gone = kin::sys::socket(AF_INET, SOCK_DGRAM, 0).value();
  const auto any = ip("127.0.0.1");
  REQUIRE(::bind(gone.get(), static_cast<const sockaddr*>(any.data()), any.size()) == 0);
  const auto dead = *kin::socket_address::local_of(gone.get());
  gone.reset();
  kin::unique_fd raw = kin::sys::socket(AF_INET, SOCK_DGRAM, 0).value();
  REQUIRE(::bind(raw.get(), static_cast<const sockaddr*>(any.data()), any.size()) == 0);
  REQUIRE(::connect(raw.get(), static_cast<const sockaddr*>(dead.data()), dead.size()) == 0);
  kin::udp_socket s(l);
  REQUIRE(s.open(std::move(raw)));
  inbox in;
  REQUIRE(s.receive_start(in.callback()));
  std::optional<std::error_code> sent;
  s.send_to(bytes_of("anyone?"), dead, [&](std::error_code ec) { sent = ec; });
  REQUIRE(run_until(l, [&] { return !in.errors.empty(); }));
  REQUIRE(sent);
  CHECK_FALSE(*sent);
  REQUIRE(in.errors.size() == 1);
  CHECK(in.errors[0] == std::errc::connection_refused);
  CHECK(in.got.empty());
  CHECK(s.is_receiving());
  // Someone takes the port and answers: the datagram arrives.
  kin::udp_socket peer(l);
  REQUIRE(peer.bind(dead));
  peer.send_to(bytes_of("here"), *s.local_address());
  REQUIRE(run_until(l, [&] { return in.got.size() == 1; }));
  CHECK(in.got[0].data == "here");
  CHECK(in.got[0].sender == dead);
  CHECK(in.errors.size() == 1);
}

TEST_CASE("an empty datagram arrives as one, with its sender", "[udp]") {
  kin::loop l;
  kin::udp_socket a(l), b(l);
  REQUIRE(a.bind(ip("127.0.0.1")));
  REQUIRE(b.bind(ip("127.0.0.1")));
  inbox in;
  REQUIRE(b.receive_start(in.callback()));
  std::optional<std::error_code> sent;
  a.send_to({}, *b.local_address(), [&](std::error_code ec) { sent = ec; });
  a.send_to(bytes_of("next"), *b.local_address());
  REQUIRE(run_until(l, [&] { return in.got.size() == 2; }));
  REQUIRE(sent);
  CHECK_FALSE(*sent);
  CHECK(in.got[0].data.empty());
  CHECK(in.got[0].sender == *a.local_address());
  CHECK(in.got[1].data == "next");
  CHECK(in.errors.empty());
}

TEST_CASE("send_to on an unbound socket at the descriptor limit fails through its callback",
          "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), s(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  const auto before = kin_test::open_fds();
  std::optional<std::error_code> result;
  {
    kin_test::fd_limit none(0);
    s.send_to(bytes_of("x"), *receiver.local_address(), [&](std::error_code ec) { result = ec; });
    CHECK_FALSE(result);
    auto r = s.bind(ip("127.0.0.1"));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::too_many_files_open);
  }
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
  CHECK(run_all(l));
  REQUIRE(result);
  CHECK(*result == std::errc::too_many_files_open);
}

TEST_CASE("a send callback that releases the socket loses no other datagram's callback", "[udp]") {
  kin::loop l;
  kin::udp_socket receiver(l), sender(l);
  REQUIRE(receiver.bind(ip("127.0.0.1")));
  const auto to = receiver.local_address();
  REQUIRE(to);
  int a = 0, b = 0;
  kin::unique_fd kept;
  sender.send_to(bytes_of("x"), *to, [&](std::error_code ec) {
    CHECK(!ec);
    ++a;
    auto r = sender.release();
    REQUIRE(r);
    kept = std::move(*r);
  });
  sender.send_to(bytes_of("y"), *to, [&](std::error_code ec) {
    CHECK(!ec);
    ++b;
  });
  l.run();
  CHECK(a == 1);
  CHECK(b == 1);
}
