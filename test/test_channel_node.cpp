// Tests of the Node codec: its line decoder (lines cut anywhere, every JSON type, Node's internal
// messages, NODE_HANDLE with its descriptor, the retransmission envelope, numbers and bytes Node
// accepts, every bad input with every descriptor closed), kin::channel in node mode against a
// raw peer on a socketpair (the exact lines and descriptors on the wire, the handle protocol's
// acknowledgements, holding and retransmission, refusals, bad input, water marks), and the
// Node variables of from_environment() and kin::fork.
#include "catch.hpp"

#include <kin/channel.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/this_process.hpp>

#include "channel/node_frame.hpp"
#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"
#include "helpers/process_state.hpp"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using kin::detail::node_decoder;
using kin::detail::node_message;
using kin_test::leak_guard;
using message_kind = node_message::kind;
using namespace std::chrono_literals;

namespace {

// ---- descriptors --------------------------------------------------------------------------

// A descriptor that can be told apart from every other: the read end of a fresh pipe,
// identified by its inode.
kin::unique_fd marked_fd() {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  ::close(p[1]);
  return kin::unique_fd(p[0]);
}

ino_t inode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

bool is_closed(int fd) { return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF; }

// Whether every read end of the pipe whose write end is `write_end` is closed, in this process
// and in flight (poll reports POLLERR on the write end).
bool readers_gone(int write_end) {
  pollfd p{write_end, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLERR) != 0;
}

std::vector<kin::unique_fd> one_fd(kin::unique_fd fd) {
  std::vector<kin::unique_fd> v;
  v.push_back(std::move(fd));
  return v;
}

sockaddr_in loopback4() {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A TCP listening socket on 127.0.0.1, and its address.
kin::unique_fd tcp_listener(sockaddr_in* bound = nullptr) {
  kin::unique_fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s.is_open());
  sockaddr_in a = loopback4();
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(s.get(), 4) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
  if (bound != nullptr) *bound = a;
  return s;
}

// Both ends of a TCP connection over 127.0.0.1.
struct tcp_connection {
  kin::unique_fd client;
  kin::unique_fd accepted;
};

tcp_connection tcp_connect() {
  sockaddr_in a{};
  kin::unique_fd listener = tcp_listener(&a);
  tcp_connection c;
  c.client = kin::unique_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(c.client.is_open());
  REQUIRE(::connect(c.client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  c.accepted = kin::unique_fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(c.accepted.is_open());
  return c;
}

kin::unique_fd udp4_socket() {
  kin::unique_fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  REQUIRE(s.is_open());
  sockaddr_in a = loopback4();
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return s;
}

// A UDP socket bound to ::1, or nothing where the host has no IPv6 loopback.
kin::unique_fd udp6_socket() {
  kin::unique_fd s(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s.is_open()) return {};
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
  return s;
}

// A listening AF_UNIX socket of `type` on an abstract address of its own.
kin::unique_fd unix_listener(int type) {
  kin::unique_fd s(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  REQUIRE(s.is_open());
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  // An abstract name (leading NUL), unique to this process and socket.
  const std::string name = "kin-test-channel-node-" + std::to_string(::getpid()) + "-" +
                           std::to_string(s.get()) + "-" + std::to_string(type);
  std::memcpy(a.sun_path + 1, name.data(), name.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), len) == 0);
  REQUIRE(::listen(s.get(), 4) == 0);
  return s;
}

// ---- the decoder --------------------------------------------------------------------------

kin::result<void> feed(node_decoder& d, std::string_view text,
                       std::vector<kin::unique_fd> fds = {}) {
  return d.feed(kin_test::bytes_of(text), fds);
}

// A decoded message as the tests compare it: its descriptor by inode (0 for none).
struct decoded {
  message_kind type = message_kind::user;
  std::string text;
  bool handle = false;
  ino_t inode = 0;
  bool operator==(const decoded&) const = default;
};

std::ostream& operator<<(std::ostream& os, const decoded& m) {
  static constexpr const char* names[] = {"user", "internal", "handle_ack", "handle_nack"};
  return os << "{" << names[static_cast<int>(m.type)] << " " << m.text
            << (m.handle ? " handle" : "") << " inode " << m.inode << "}";
}

decoded user(std::string text) { return {message_kind::user, std::move(text), false, 0}; }
decoded internal(std::string text) { return {message_kind::internal, std::move(text), false, 0}; }

std::vector<decoded> drain(node_decoder& d) {
  std::vector<decoded> out;
  while (auto m = d.next()) {
    decoded x{m->type, m->text, m->handle, m->fd ? inode_of(m->fd.get()) : 0};
    if (m->handle) CHECK(m->fd.is_open());
    out.push_back(std::move(x));
  }
  return out;
}

// The messages of `text` fed whole, with no descriptor.
std::vector<decoded> decode_all(std::string_view text, std::size_t max_line = 1 << 20) {
  node_decoder d(max_line);
  REQUIRE(feed(d, text));
  REQUIRE(d.finish());
  return drain(d);
}

// Feeds `text` whole and returns the error it caused.
std::error_code decode_error(std::string_view text, std::size_t max_line = 1 << 20) {
  node_decoder d(max_line);
  auto r = feed(d, text);
  REQUIRE_FALSE(r);
  return r.error();
}

}  // namespace

TEST_CASE("node decoder: lines cut at any byte boundaries give the same messages",
          "[channel_node]") {
  leak_guard leaks;
  const std::string before_handle =
      "{\"a\":1,\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}\n"
      "  [1, \"two\", {\"three\": null}]\t\r\n"
      "\"quotes \\\" and a \\n break\"\n"
      "42\n-0.5e-3\ntrue\r\nfalse\nnull\n"
      "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}\n";
  const std::string handle_line =
      "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"k\":\"\xf0\x9f\x98\x80\"}}\r\n";
  const std::string after_handle = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n {\"last\":[]} \n";
  const std::string stream = before_handle + handle_line + after_handle;
  const std::size_t handle_at = before_handle.size();

  auto expected = [](ino_t inode) {
    return std::vector<decoded>{
        user("{\"a\":1,\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}"),
        user("[1, \"two\", {\"three\": null}]"),
        user("\"quotes \\\" and a \\n break\""),
        user("42"),
        user("-0.5e-3"),
        user("true"),
        user("false"),
        user("null"),
        internal("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}"),
        {message_kind::user, "{\"k\":\"\xf0\x9f\x98\x80\"}", true, inode},
        {message_kind::handle_ack, "", false, 0},
        user("{\"last\":[]}"),
    };
  };

  // Feeds the pieces [cuts[i], cuts[i+1]), the descriptor with the piece holding the
  // NODE_HANDLE line's first byte.
  auto decode_cut = [&](const std::vector<std::size_t>& cuts) {
    node_decoder d(1 << 20);
    kin::unique_fd fd = marked_fd();
    const ino_t inode = inode_of(fd.get());
    std::vector<decoded> got;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      std::vector<kin::unique_fd> fds;
      if (cuts[i] <= handle_at && handle_at < cuts[i + 1]) fds.push_back(std::move(fd));
      auto r =
          feed(d, std::string_view(stream).substr(cuts[i], cuts[i + 1] - cuts[i]), std::move(fds));
      INFO("pieces cut at " << cuts[i] << ".." << cuts[i + 1]);
      REQUIRE(r);
      auto part = drain(d);
      got.insert(got.end(), part.begin(), part.end());
    }
    CHECK(d.buffered() == 0);
    REQUIRE(d.finish());
    CHECK(got == expected(inode));
  };

  SECTION("whole") { decode_cut({0, stream.size()}); }
  SECTION("in two, at every boundary") {
    for (std::size_t i = 0; i <= stream.size(); ++i) decode_cut({0, i, stream.size()});
  }
  SECTION("in three, at every pair of boundaries") {
    for (std::size_t i = 1; i < stream.size(); ++i) {
      for (std::size_t j = i + 1; j < stream.size(); ++j) decode_cut({0, i, j, stream.size()});
    }
  }
  SECTION("byte by byte") {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 0; i <= stream.size(); ++i) cuts.push_back(i);
    decode_cut(cuts);
  }
}

TEST_CASE("node decoder: every JSON type is a message, without its whitespace or CR",
          "[channel_node]") {
  leak_guard leaks;
  CHECK(decode_all("{\"a\":[1,{}]}\n") == std::vector{user("{\"a\":[1,{}]}")});
  CHECK(decode_all("[]\n") == std::vector{user("[]")});
  CHECK(decode_all("{}\n") == std::vector{user("{}")});
  CHECK(decode_all("\"text\"\n") == std::vector{user("\"text\"")});
  CHECK(decode_all("0\n") == std::vector{user("0")});
  CHECK(decode_all("-12.5E+2\n") == std::vector{user("-12.5E+2")});
  CHECK(decode_all("true\n") == std::vector{user("true")});
  CHECK(decode_all("false\n") == std::vector{user("false")});
  CHECK(decode_all("null\n") == std::vector{user("null")});
  CHECK(decode_all("{\"a\":1}\r\n") == std::vector{user("{\"a\":1}")});
  CHECK(decode_all(" \t {\"a\": 1} \t\r\n") == std::vector{user("{\"a\": 1}")});
  CHECK(decode_all("\t7\r\r\n") == std::vector{user("7")});
  // The end of the stream after whitespace is no cut-off line.
  CHECK(decode_all("1\n \t\r") == std::vector{user("1")});
}

TEST_CASE("node decoder: only a string cmd longer than NODE_ that starts with it is internal",
          "[channel_node]") {
  leak_guard leaks;
  CHECK(decode_all("{\"cmd\":\"NODE_\"}\n") == std::vector{user("{\"cmd\":\"NODE_\"}")});
  CHECK(decode_all("{\"cmd\":\"node_foo\"}\n") == std::vector{user("{\"cmd\":\"node_foo\"}")});
  CHECK(decode_all("{\"cmd\":\"XNODE_FOO\"}\n") == std::vector{user("{\"cmd\":\"XNODE_FOO\"}")});
  CHECK(decode_all("{\"cmd\":5}\n") == std::vector{user("{\"cmd\":5}")});
  CHECK(decode_all("{\"c\":\"NODE_FOO\"}\n") == std::vector{user("{\"c\":\"NODE_FOO\"}")});
  CHECK(decode_all("[\"NODE_FOO\"]\n") == std::vector{user("[\"NODE_FOO\"]")});
  CHECK(decode_all("\"NODE_FOO\"\n") == std::vector{user("\"NODE_FOO\"")});
  CHECK(decode_all("{\"x\":{\"cmd\":\"NODE_FOO\"}}\n") ==
        std::vector{user("{\"x\":{\"cmd\":\"NODE_FOO\"}}")});
  CHECK(decode_all("{\"cmd\":\"NODE_FOO\"}\n") == std::vector{internal("{\"cmd\":\"NODE_FOO\"}")});
  CHECK(decode_all("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}\n") ==
        std::vector{internal("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}")});
  // As JSON.parse reads it: escapes undone, the last of duplicate keys.
  CHECK(decode_all("{\"cmd\":\"NODE\\u005fFOO\"}\n") ==
        std::vector{internal("{\"cmd\":\"NODE\\u005fFOO\"}")});
  CHECK(decode_all("{\"c\\u006dd\":\"NODE_FOO\"}\n") ==
        std::vector{internal("{\"c\\u006dd\":\"NODE_FOO\"}")});
  CHECK(decode_all("{\"cmd\":\"NODE_FOO\",\"cmd\":\"x\"}\n") ==
        std::vector{user("{\"cmd\":\"NODE_FOO\",\"cmd\":\"x\"}")});
  CHECK(decode_all("{\"cmd\":\"x\",\"cmd\":\"NODE_FOO\"}\n") ==
        std::vector{internal("{\"cmd\":\"x\",\"cmd\":\"NODE_FOO\"}")});
  CHECK(decode_all("{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_NACK\"}\n") ==
        std::vector<decoded>{{message_kind::handle_ack, "", false, 0},
                             {message_kind::handle_nack, "", false, 0}});
}

TEST_CASE("node decoder: numbers JSON.parse takes pass through as written", "[channel_node]") {
  leak_guard leaks;
  for (const char* n : {"123456789012345680000", "1e400", "-1e-400", "-0",
                        "123456789012345678901234567890.5e-7", "1E+99999"}) {
    INFO(n);
    CHECK(decode_all(std::string(n) + "\n") == std::vector{user(n)});
    const std::string in_array = std::string("[") + n + ",{\"n\":" + n + "}]";
    CHECK(decode_all(in_array + "\n") == std::vector{user(in_array)});
  }
  CHECK(decode_all("{\"cmd\":\"NODE_FOO\",\"n\":1e400}\n") ==
        std::vector{internal("{\"cmd\":\"NODE_FOO\",\"n\":1e400}")});
  // What JSON.parse refuses stays refused.
  for (const char* bad : {"01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "NaN",
                          "Infinity", "[1-2]", "[123456789012345678901234567890-]"}) {
    INFO(bad);
    CHECK(decode_error(std::string(bad) + "\n") == kin::errc::malformed_message);
  }
}

TEST_CASE("node decoder: texts JSON.parse takes are messages, those it refuses are errors",
          "[channel_node]") {
  leak_guard leaks;
  // JSON.stringify writes a lone surrogate as an escape, and JSON.parse reads it back.
  CHECK(decode_all("\"\\ud800\"\n") == std::vector{user("\"\\ud800\"")});
  CHECK(decode_all("[\"\\udc00x\",\"a\\ud83d\"]\n") ==
        std::vector{user("[\"\\udc00x\",\"a\\ud83d\"]")});
  CHECK(decode_all("{\"cmd\":\"NODE_FOO\",\"s\":\"\\ud800\"}\n") ==
        std::vector{internal("{\"cmd\":\"NODE_FOO\",\"s\":\"\\ud800\"}")});
  // JSON.parse has no depth limit short of memory; Node sends what JSON.stringify makes of
  // 3000 nested arrays.
  const std::string deep = std::string(3000, '[') + std::string(3000, ']');
  CHECK(decode_all(deep + "\n") == std::vector{user(deep)});
  // A byte order mark is not JSON whitespace (Node's decoder keeps it; JSON.parse throws), nor
  // is a raw control character inside a string.
  CHECK(decode_error("\xef\xbb\xbf{\"a\":1}\n") == kin::errc::malformed_message);
  CHECK(decode_error("\"a\tb\"\n") == kin::errc::malformed_message);
  CHECK(decode_error(std::string("\"a\0b\"\n", 6)) == kin::errc::malformed_message);
}

TEST_CASE("node decoder: invalid UTF-8 becomes U+FFFD per maximal subsequence, as in Node",
          "[channel_node]") {
  leak_guard leaks;
  // Each expected text is what node v20's StringDecoder made of the same bytes.
  const std::string fffd = "\xef\xbf\xbd";
  struct sample {
    std::string in;
    std::string out;
  };
  const std::vector<sample> samples = {
      {"\xff", fffd},
      {"\xc3", fffd},
      {"\xe2\x82", fffd},
      {"\xf0\x9f\x98", fffd},
      {"\xed\xa0\x80", fffd + fffd + fffd},
      {"\xc0\xaf", fffd + fffd},
      {"\xf4\x90\x80\x80", fffd + fffd + fffd + fffd},
      {"\xe0\x80\x80", fffd + fffd + fffd},
      {"\xf8\x88\x80\x80\x80", fffd + fffd + fffd + fffd + fffd},
      {"a\x80"
       "b",
       "a" + fffd + "b"},
      {"\xe2\x82"
       "a",
       fffd + "a"},
      {"\xf0\x9f\x98\xf0\x9f\x98\x80", fffd + "\xf0\x9f\x98\x80"},
      {"\xc3\xa9\xff\xfe", "\xc3\xa9" + fffd + fffd},
  };
  for (const auto& s : samples) {
    INFO("bytes " << s.in);
    CHECK(decode_all("\"" + s.in + "\"\n") == std::vector{user("\"" + s.out + "\"")});
    CHECK(decode_all("{\"k\":\"" + s.in + "\"}\n") ==
          std::vector{user("{\"k\":\"" + s.out + "\"}")});
  }
  // The replaced text is then parsed: a replacement outside a string is not JSON.
  CHECK(decode_error("\xff\n") == kin::errc::malformed_message);
  CHECK(decode_error("{\"a\":1}\xff\n") == kin::errc::malformed_message);
  // In a NODE_HANDLE's message too.
  node_decoder d(1 << 20);
  auto fd = marked_fd();
  const ino_t inode = inode_of(fd.get());
  REQUIRE(feed(d, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":\"\xff\"}\n",
               one_fd(std::move(fd))));
  CHECK(drain(d) == std::vector<decoded>{{message_kind::user, "\"" + fffd + "\"", true, inode}});
}

TEST_CASE("node decoder: a NODE_HANDLE gets its descriptor, sent with its line or before it",
          "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  auto fd = marked_fd();
  const ino_t inode = inode_of(fd.get());
  const std::string line =
      "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"from\":\"peer\"}}\n";
  SECTION("whole, with the line") {
    REQUIRE(feed(d, line, one_fd(std::move(fd))));
    CHECK(drain(d) ==
          std::vector<decoded>{{message_kind::user, "{\"from\":\"peer\"}", true, inode}});
  }
  SECTION("with the piece holding the line's first byte") {
    REQUIRE(feed(d, "{\"x\":0}\n" + line.substr(0, 1), one_fd(std::move(fd))));
    CHECK(drain(d) == std::vector{user("{\"x\":0}")});
    REQUIRE(feed(d, line.substr(1, 20)));
    REQUIRE(feed(d, line.substr(21)));
    CHECK(drain(d) ==
          std::vector<decoded>{{message_kind::user, "{\"from\":\"peer\"}", true, inode}});
  }
  SECTION("with an earlier message's line") {
    REQUIRE(feed(d, "{\"pre\":1}\n", one_fd(std::move(fd))));
    CHECK(drain(d) == std::vector{user("{\"pre\":1}")});
    REQUIRE(feed(d, line));
    CHECK(drain(d) ==
          std::vector<decoded>{{message_kind::user, "{\"from\":\"peer\"}", true, inode}});
  }
  SECTION("with an earlier message cut in two") {
    REQUIRE(feed(d, "{\"pre\":", one_fd(std::move(fd))));
    REQUIRE(feed(d, "1}\n" + line));
    CHECK(drain(d) == std::vector<decoded>{
                          user("{\"pre\":1}"),
                          {message_kind::user, "{\"from\":\"peer\"}", true, inode},
                      });
  }
  REQUIRE(d.finish());
}

TEST_CASE("node decoder: descriptors go to NODE_HANDLE lines in arrival order", "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  std::vector<kin::unique_fd> fds;
  std::vector<ino_t> inodes;
  for (int i = 0; i < 3; ++i) {
    fds.push_back(marked_fd());
    inodes.push_back(inode_of(fds.back().get()));
  }
  REQUIRE(feed(d,
               "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Server\",\"msg\":1}\n"
               "{\"plain\":true}\n"
               "{\"cmd\":\"NODE_HANDLE\",\"type\":\"dgram.Socket\",\"msg\":2,"
               "\"dgramType\":\"udp4\"}\n"
               "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":3}\n",
               std::move(fds)));
  CHECK(drain(d) == std::vector<decoded>{
                        {message_kind::user, "1", true, inodes[0]},
                        user("{\"plain\":true}"),
                        {message_kind::user, "2", true, inodes[1]},
                        {message_kind::user, "3", true, inodes[2]},
                    });
  REQUIRE(d.finish());
}

TEST_CASE("node decoder: a NODE_HANDLE's msg is handed up exactly as written", "[channel_node]") {
  leak_guard leaks;
  auto handle_msg = [](const std::string& line) {
    node_decoder d(1 << 20);
    REQUIRE(feed(d, line + "\n", one_fd(marked_fd())));
    REQUIRE(d.finish());
    auto got = drain(d);
    REQUIRE(got.size() == 1);
    CHECK(got[0].handle);
    CHECK(got[0].inode != 0);
    return got[0].text;
  };
  const std::string head = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",";
  CHECK(handle_msg(head + "\"msg\":{\"a\":1}}") == "{\"a\":1}");
  CHECK(handle_msg(head + "\"msg\" :  { \"a\" : [ 1 , 2 ] }  }") == "{ \"a\" : [ 1 , 2 ] }");
  CHECK(handle_msg(head + "\"msg\":\"a}\\\"b]\"}") == "\"a}\\\"b]\"");
  CHECK(handle_msg(head + "\"msg\":{\"s\":\"]}\",\"t\":[\"{\"]},\"key\":\"4:127.0.0.1:0\"}") ==
        "{\"s\":\"]}\",\"t\":[\"{\"]}");
  CHECK(handle_msg(head + "\"msg\":123456789012345680000}") == "123456789012345680000");
  CHECK(handle_msg(head + "\"msg\":-1e-400}") == "-1e-400");
  CHECK(handle_msg(head + "\"msg\":true}") == "true");
  CHECK(handle_msg(head + "\"msg\":null}") == "null");
  CHECK(handle_msg(head + "\"msg\":1,\"msg\":2}") == "2");
  CHECK(handle_msg(head + "\"m\\u0073g\":[3]}") == "[3]");
  CHECK(handle_msg("{\"msg\":\"first\",\"type\":\"net.Server\",\"cmd\":\"NODE_HANDLE\"}") ==
        "\"first\"");
}

TEST_CASE("node decoder: Node's retransmission envelope gives its message once", "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  auto fd = marked_fd();
  const ino_t inode = inode_of(fd.get());
  REQUIRE(feed(d,
               "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_HANDLE\","
               "\"type\":\"net.Socket\",\"msg\":{\"nacked\":true}}}\n",
               one_fd(std::move(fd))));
  CHECK(drain(d) == std::vector<decoded>{{message_kind::user, "{\"nacked\":true}", true, inode}});
  REQUIRE(d.finish());
}

TEST_CASE("node decoder: a NODE_HANDLE carrying an internal message is internal",
          "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  std::vector<kin::unique_fd> fds;
  fds.push_back(marked_fd());
  fds.push_back(marked_fd());
  const ino_t first = inode_of(fds[0].get());
  const ino_t second = inode_of(fds[1].get());
  const std::string newconn = "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"newconn\",\"key\":\"k\"}";
  REQUIRE(
      feed(d,
           "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":" + newconn +
               "}\n"
               "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"cmd\":\"NODE_\"}}\n",
           std::move(fds)));
  CHECK(drain(d) ==
        std::vector<decoded>{{message_kind::internal, newconn, true, first},
                             {message_kind::user, "{\"cmd\":\"NODE_\"}", true, second}});
  REQUIRE(d.finish());
}

TEST_CASE("node decoder: bad lines are errors, after which every descriptor is closed",
          "[channel_node]") {
  leak_guard leaks;
  node_decoder d(64);
  std::error_code want;
  // A message before the bad line keeps its descriptor; one held for a later line is closed.
  auto kept = marked_fd();
  const ino_t kept_inode = inode_of(kept.get());
  const std::string good = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":0}\n";
  REQUIRE(feed(d, good, one_fd(std::move(kept))));
  auto held = marked_fd();
  const int held_raw = held.get();
  REQUIRE(feed(d, "{\"held\":", one_fd(std::move(held))));
  auto with_bad = marked_fd();
  const int with_bad_raw = with_bad.get();
  std::vector<kin::unique_fd> fds = one_fd(std::move(with_bad));
  kin::result<void> r;
  SECTION("not JSON") {
    r = feed(d, "1}\n{not json}\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  SECTION("an empty line") {
    r = feed(d, "1}\n\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  SECTION("a line of whitespace") {
    r = feed(d, "1}\n \t\r\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  SECTION("two JSON texts on one line") {
    r = feed(d, "1}\n{\"a\":1} {\"b\":2}\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  SECTION("a line one byte over max_line") {
    r = feed(d, "1}\n\"" + std::string(64, 'x') + "\n", std::move(fds));
    want = kin::errc::frame_too_large;
  }
  SECTION("over max_line without a line break, in pieces") {
    REQUIRE(feed(d, "1}\n\"" + std::string(40, 'x')));
    CHECK(d.buffered() == 41);
    REQUIRE(feed(d, std::string(23, 'x')));
    CHECK(d.buffered() == 64);
    r = feed(d, "x", std::move(fds));
    want = kin::errc::frame_too_large;
  }
  SECTION("an unknown handle type") {
    r = feed(d, "1}\n{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Bogus\",\"msg\":0}\n", std::move(fds));
    want = kin::errc::unknown_handle_type;
  }
  SECTION("a NODE_HANDLE whose type is not a string") {
    r = feed(d, "1}\n{\"cmd\":\"NODE_HANDLE\",\"type\":7,\"msg\":0}\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  SECTION("a NODE_HANDLE without msg") {
    r = feed(d, "1}\n{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\"}\n", std::move(fds));
    want = kin::errc::malformed_message;
  }
  REQUIRE_FALSE(r);
  CHECK(r.error() == want);
  CHECK_FALSE(d.nack_owed());
  CHECK(is_closed(held_raw));
  CHECK(is_closed(with_bad_raw));
  auto got = drain(d);
  REQUIRE_FALSE(got.empty());
  CHECK(got[0] == decoded{message_kind::user, "0", true, kept_inode});
  // Spent: later input fails the same way and its descriptors are closed.
  auto later = marked_fd();
  const int later_raw = later.get();
  auto again = feed(d, "{\"ok\":1}\n", one_fd(std::move(later)));
  REQUIRE_FALSE(again);
  CHECK(again.error() == want);
  CHECK(is_closed(later_raw));
  CHECK(drain(d).empty());
  auto end = d.finish();
  REQUIRE_FALSE(end);
  CHECK(end.error() == want);
}

TEST_CASE("node decoder: a line exactly max_line long is taken, whole or in pieces",
          "[channel_node]") {
  leak_guard leaks;
  const std::string text = "\"" + std::string(14, 'y') + "\"";  // 16 bytes
  CHECK(decode_all(text + "\n", 16) == std::vector{user(text)});
  node_decoder d(16);
  REQUIRE(feed(d, text.substr(0, 9)));
  REQUIRE(feed(d, text.substr(9)));
  CHECK(d.buffered() == 16);
  REQUIRE(feed(d, "\n"));
  CHECK(drain(d) == std::vector{user(text)});
  CHECK(decode_error(text + " \n", 16) == kin::errc::frame_too_large);
  CHECK(decode_error(text + "\r\n", 16) == kin::errc::frame_too_large);
}

TEST_CASE("node decoder: a NODE_HANDLE without its descriptor is owed a NACK", "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  REQUIRE(feed(d, "{\"before\":1}\n"));
  CHECK_FALSE(d.nack_owed());
  auto r = feed(d, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"lost\":1}}\n");
  REQUIRE_FALSE(r);
  CHECK(r.error() == kin::errc::message_truncated);
  CHECK(d.nack_owed());
  CHECK(drain(d) == std::vector{user("{\"before\":1}")});
  // A descriptor arriving after its line does not repair it.
  auto late = marked_fd();
  const int late_raw = late.get();
  auto again = feed(d, "", one_fd(std::move(late)));
  REQUIRE_FALSE(again);
  CHECK(again.error() == kin::errc::message_truncated);
  CHECK(is_closed(late_raw));
}

TEST_CASE("node decoder: a descriptor no line claims is stray, at the next read or the end",
          "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  auto fd = marked_fd();
  const int raw = fd.get();
  SECTION("on a plain line, then another read") {
    REQUIRE(feed(d, "{\"a\":1}\n", one_fd(std::move(fd))));
    CHECK(drain(d) == std::vector{user("{\"a\":1}")});
    CHECK_FALSE(is_closed(raw));
    auto r = feed(d, "{\"b\":2}\n");
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::stray_descriptor);
    CHECK(is_closed(raw));
    auto end = d.finish();
    REQUIRE_FALSE(end);
    CHECK(end.error() == kin::errc::stray_descriptor);
  }
  SECTION("on a plain line, then a read that ends mid-line, then the line's end") {
    REQUIRE(feed(d, "{\"a\":1}\n", one_fd(std::move(fd))));
    REQUIRE(feed(d, "{\"b\""));
    auto r = feed(d, ":2}\n");
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::stray_descriptor);
    CHECK(is_closed(raw));
  }
  SECTION("on a plain line, then the end") {
    REQUIRE(feed(d, "{\"a\":1}\n", one_fd(std::move(fd))));
    auto end = d.finish();
    REQUIRE_FALSE(end);
    CHECK(end.error() == kin::errc::stray_descriptor);
    CHECK(is_closed(raw));
  }
  SECTION("a second descriptor with one NODE_HANDLE, then another read") {
    auto extra = marked_fd();
    const int extra_raw = extra.get();
    std::vector<kin::unique_fd> fds;
    fds.push_back(std::move(fd));
    fds.push_back(std::move(extra));
    REQUIRE(
        feed(d, "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":0}\n", std::move(fds)));
    auto got = drain(d);
    REQUIRE(got.size() == 1);
    auto r = feed(d, "{\"b\":2}\n");
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::stray_descriptor);
    CHECK(is_closed(extra_raw));
  }
  SECTION("alone, with no bytes at all") {
    REQUIRE(feed(d, "", one_fd(std::move(fd))));
    auto r = feed(d, "1\n");
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::stray_descriptor);
    CHECK(is_closed(raw));
  }
}

TEST_CASE("node decoder: a line cut off by the end of the stream is truncated, fds closed",
          "[channel_node]") {
  leak_guard leaks;
  node_decoder d(1 << 20);
  auto fd = marked_fd();
  const int raw = fd.get();
  REQUIRE(feed(d, "{\"ok\":1}\n{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":",
               one_fd(std::move(fd))));
  CHECK(drain(d) == std::vector{user("{\"ok\":1}")});
  auto end = d.finish();
  REQUIRE_FALSE(end);
  CHECK(end.error() == kin::errc::message_truncated);
  CHECK(is_closed(raw));
  // Without a line break, even a complete JSON text is cut off.
  node_decoder e(1 << 20);
  REQUIRE(feed(e, "{\"a\":1}"));
  auto cut = e.finish();
  REQUIRE_FALSE(cut);
  CHECK(cut.error() == kin::errc::message_truncated);
}

// ---- kin::channel in node mode against a raw peer ---------------------------------------------

namespace {

constexpr std::string_view ack_line = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n";
constexpr std::string_view nack_line = "{\"cmd\":\"NODE_HANDLE_NACK\"}\n";

kin::channel_options node_options() {
  kin::channel_options o;
  o.codec = kin::channel_codec::node;
  return o;
}

// What one recvmsg of the raw peer returned.
struct wire_read {
  std::string bytes;
  std::vector<kin::unique_fd> fds;
};

// The other end of a channel, read and written with plain recvmsg and sendmsg.
struct raw_peer {
  kin::unique_fd fd;
  std::vector<wire_read> reads;
  std::string data;  // every byte read so far
  bool eof = false;

  // Reads whatever has arrived, without blocking.
  void poll() {
    while (!eof && fd.is_open()) {
      char buf[65536];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
      iovec iov{buf, sizeof buf};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(fd.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n < 0 && errno == ECONNRESET) {
        // The channel closed with bytes of ours unread: the end, as EOF is.
        eof = true;
        return;
      }
      REQUIRE(n >= 0);
      CHECK((msg.msg_flags & MSG_CTRUNC) == 0);
      wire_read r;
      r.bytes.assign(buf, static_cast<std::size_t>(n));
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t k = 0; k < count; ++k) {
          int raw;
          std::memcpy(&raw, CMSG_DATA(c) + k * sizeof raw, sizeof raw);
          r.fds.emplace_back(raw);
        }
      }
      if (n == 0 && r.fds.empty()) {
        eof = true;
        return;
      }
      data += r.bytes;
      reads.push_back(std::move(r));
    }
  }

  // Writes `bytes` with `fds` in SCM_RIGHTS on one sendmsg.
  void send(std::string_view bytes, const std::vector<int>& fds = {}) {
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    if (!fds.empty()) {
      REQUIRE(fds.size() <= 16);
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      REQUIRE(c != nullptr);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    REQUIRE(::sendmsg(fd.get(), &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
  }

  // The number of descriptors received so far.
  std::size_t fd_count() const {
    std::size_t n = 0;
    for (const auto& r : reads) n += r.fds.size();
    return n;
  }
};

// A received handle's descriptor.
int fd_of(const kin::any_handle& h) {
  return std::visit(
      [](const auto& held) -> int {
        if constexpr (std::is_same_v<std::decay_t<decltype(held)>, kin::raw_descriptor>) {
          return held.fd.get();
        } else {
          return held->fd();
        }
      },
      h);
}

struct got_message {
  std::string text;
  std::vector<kin::fd_kind> kinds;
  std::vector<ino_t> inodes;
};

// A node-codec channel whose messages, internal messages, errors and disconnects are recorded,
// with a raw peer on the other end of its socketpair.
struct wired {
  explicit wired(kin::loop& l, kin::channel_options o = node_options()) : loop(l), ch(l, o) {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    REQUIRE(ch.open(std::move(pair->first)));
    peer.fd = std::move(pair->second);
    ch.on_message([this](std::string m, std::vector<kin::any_handle> handles) {
      messages.push_back(record(std::move(m), handles));
    });
    ch.on_internal_message([this](std::string m, std::vector<kin::any_handle> handles) {
      internals.push_back(record(std::move(m), handles));
    });
    ch.on_error([this](std::error_code ec) { errors.push_back(ec); });
    ch.on_disconnect([this] { ++disconnects; });
  }

  static got_message record(std::string m, const std::vector<kin::any_handle>& handles) {
    got_message g{std::move(m), {}, {}};
    for (const auto& h : handles) {
      g.kinds.push_back(kin::kind_of(h));
      g.inodes.push_back(inode_of(fd_of(h)));
    }
    return g;
  }

  // Runs the loop, reading the peer, until `pred` holds (at most `limit`).
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds limit = 5000ms) {
    return kin_test::run_until(
        loop,
        [&] {
          peer.poll();
          return pred();
        },
        limit);
  }
  // Runs the loop for a while, reading the peer: for what must not happen.
  void settle(std::chrono::milliseconds d = 50ms) {
    (void)run_until([] { return false; }, d);
  }
  bool wait_bytes(std::size_t n) {
    return run_until([&] { return peer.data.size() >= n; });
  }

  kin::loop& loop;
  kin::channel ch;
  raw_peer peer;
  std::vector<got_message> messages;
  std::vector<got_message> internals;
  std::vector<std::error_code> errors;
  int disconnects = 0;
};

std::string envelope(std::string_view type, std::string_view msg, std::string_view extra = "") {
  return "{\"cmd\":\"NODE_HANDLE\",\"type\":\"" + std::string(type) +
         "\",\"msg\":" + std::string(msg) + std::string(extra) + "}\n";
}

// Records the outcome of each send, in the order the callbacks run.
struct outcomes {
  std::vector<std::pair<std::string, std::error_code>> got;
  kin::channel::send_callback operator()(std::string name) {
    return [this, name](std::error_code ec) { got.emplace_back(name, ec); };
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& g : got) out.push_back(g.first);
    return out;
  }
};

}  // namespace

TEST_CASE("node channel: each JSON type goes out as exactly its line", "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  const std::vector<std::string> messages = {"{\"a\":1,\"b\":[true,null]}",
                                             "[1,\"x\"]",
                                             "\"s\"",
                                             "42",
                                             "-0.5e-3",
                                             "true",
                                             "false",
                                             "null",
                                             "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"",
                                             "123456789012345680000",
                                             "1e400",
                                             "{\"cmd\":\"NODE_FOO\"}",
                                             "{\"cmd\":\"NODE_HANDLE_ACK\",\"cmd\":\"x\"}"};
  std::string expected;
  outcomes done;
  for (const auto& m : messages) {
    CHECK(w.ch.send(m, {}, done(m)));
    expected += m + "\n";
  }
  REQUIRE(w.wait_bytes(expected.size()));
  w.settle();
  CHECK(w.peer.data == expected);
  CHECK(w.peer.fd_count() == 0);
  CHECK(done.names() == messages);
  for (const auto& g : done.got) CHECK_FALSE(g.second);
  CHECK(w.ch.queued_bytes() == 0);
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: send() takes what JSON.parse takes and refuses what it refuses",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  outcomes done;
  const std::string deep = std::string(3000, '[') + std::string(3000, ']');
  w.ch.send("\"\\ud800\"", {}, done("lone surrogate"));
  w.ch.send(deep, {}, done("deep"));
  w.ch.send(
      "\xef\xbb\xbf"
      "1",
      {}, done("byte order mark"));
  w.ch.send("\"a\tb\"", {}, done("raw tab"));
  const std::string expected = "\"\\ud800\"\n" + deep + "\n";
  REQUIRE(w.run_until([&] { return done.got.size() == 4; }));
  w.settle();
  CHECK(w.peer.data == expected);
  for (const auto& g : done.got) {
    INFO(g.first);
    if (g.first == "lone surrogate" || g.first == "deep") {
      CHECK_FALSE(g.second);
    } else {
      CHECK(g.second == std::errc::invalid_argument);
    }
  }
}

TEST_CASE("node channel: a pretty-printed message goes out minified on one line",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  w.ch.send("{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ],\n  \"s\": \"x y\\n z\"\n}\n");
  w.ch.send("[\r\n 1e400 ,\r\n \"two  words\"\r\n]");
  const std::string expected = "{\"a\":1,\"b\":[1,2],\"s\":\"x y\\n z\"}\n[1e400,\"two  words\"]\n";
  REQUIRE(w.wait_bytes(expected.size()));
  w.settle();
  CHECK(w.peer.data == expected);
}

TEST_CASE("node channel: what Node cannot read is refused on a later iteration", "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o = node_options();
  o.max_frame = 1000;
  wired w(l, o);
  outcomes done;
  std::vector<std::pair<std::string, std::errc>> want;
  auto refuse = [&](std::string name, std::string_view message, std::errc e) {
    w.ch.send(message, {}, done(name));
    want.emplace_back(std::move(name), e);
  };
  refuse("not json", "{not json}", std::errc::invalid_argument);
  refuse("empty", "", std::errc::invalid_argument);
  refuse("whitespace", " \n\t", std::errc::invalid_argument);
  refuse("two texts", "1 2", std::errc::invalid_argument);
  refuse("bad utf-8", "\"\xff\"", std::errc::invalid_argument);
  refuse("ack", "{\"cmd\":\"NODE_HANDLE_ACK\"}", std::errc::invalid_argument);
  refuse("nack", "{\"cmd\":\"NODE_HANDLE_NACK\"}", std::errc::invalid_argument);
  refuse("handle", "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":1}",
         std::errc::invalid_argument);
  refuse("escaped ack", "{\"cmd\":\"NODE_HANDLE\\u005fACK\"}", std::errc::invalid_argument);
  refuse("last cmd ack", "{\"cmd\":\"x\",\"cmd\":\"NODE_HANDLE_ACK\"}",
         std::errc::invalid_argument);
  refuse("too long", "\"" + std::string(999, 'x') + "\"", std::errc::message_size);
  {
    std::vector<kin::unique_fd> two;
    two.push_back(marked_fd());
    two.push_back(marked_fd());
    const int a = two[0].get();
    const int b = two[1].get();
    w.ch.send("{\"two\":2}", std::move(two), done("two fds"));
    want.emplace_back("two fds", std::errc::message_size);
    CHECK(is_closed(a));
    CHECK(is_closed(b));
  }
  auto refuse_fd = [&](std::string name, kin::unique_fd fd) {
    REQUIRE(fd.is_open());
    const int raw = fd.get();
    w.ch.send("{\"with\":\"" + name + "\"}", one_fd(std::move(fd)), done(name));
    want.emplace_back(std::move(name), std::errc::invalid_argument);
    CHECK(is_closed(raw));
  };
  refuse_fd("regular file", kin::unique_fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC)));
  refuse_fd("/dev/null", kin::unique_fd(::open("/dev/null", O_RDWR | O_CLOEXEC)));
  refuse_fd("directory", kin::unique_fd(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)));
  {
    auto dgram = kin::make_socketpair(kin::socket_type::datagram);
    REQUIRE(dgram);
    refuse_fd("unix datagram", std::move(dgram->first));
  }
  {
    auto seq = kin::make_socketpair(kin::socket_type::seqpacket);
    REQUIRE(seq);
    refuse_fd("unix seqpacket", std::move(seq->first));
  }
  refuse_fd("unix seqpacket listener", unix_listener(SOCK_SEQPACKET));
  // None of them reported from inside send().
  CHECK(done.got.empty());
  // A refused handle leaves nothing waiting: a message after it goes straight out.
  w.ch.send("{\"after\":1}", {}, done("after"));
  REQUIRE(w.run_until([&] { return done.got.size() == want.size() + 1; }));
  w.settle();
  // The refusals come in the order of the sends; the good message's write is not one of them.
  std::vector<std::pair<std::string, std::error_code>> refusals;
  std::error_code after = std::make_error_code(std::errc::io_error);
  for (const auto& g : done.got) {
    if (g.first == "after") {
      after = g.second;
    } else {
      refusals.push_back(g);
    }
  }
  CHECK_FALSE(after);
  REQUIRE(refusals.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i].first);
    CHECK(refusals[i].first == want[i].first);
    CHECK(refusals[i].second == want[i].second);
  }
  CHECK(w.peer.data == "{\"after\":1}\n");
  CHECK(w.peer.fd_count() == 0);
  CHECK(w.ch.is_open());
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: a handle goes out in its envelope with exactly one descriptor",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  kin::unique_fd fd;
  std::string type;
  std::string extra;
  kin::fd_kind kind = kin::fd_kind::other;
  kin::unique_fd keep;  // the other end, kept open while the handle travels
  SECTION("a connected TCP socket") {
    auto c = tcp_connect();
    fd = std::move(c.client);
    keep = std::move(c.accepted);
    type = "net.Socket";
    kind = kin::fd_kind::tcp_socket;
  }
  SECTION("a listening TCP socket") {
    fd = tcp_listener();
    type = "net.Server";
    kind = kin::fd_kind::tcp_server;
  }
  SECTION("a UDP socket") {
    fd = udp4_socket();
    type = "dgram.Socket";
    extra = ",\"dgramType\":\"udp4\"";
    kind = kin::fd_kind::udp_socket;
  }
  SECTION("an IPv6 UDP socket") {
    fd = udp6_socket();
    if (!fd.is_open()) {
      WARN("no IPv6 loopback here: udp6 not tested");
      return;
    }
    type = "dgram.Socket";
    extra = ",\"dgramType\":\"udp6\"";
    kind = kin::fd_kind::udp_socket;
  }
  SECTION("a pipe") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    fd = std::move(p->write);
    keep = std::move(p->read);
    type = "net.Socket";
    kind = kin::fd_kind::pipe;
  }
  SECTION("a connected Unix stream socket") {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    fd = std::move(pair->first);
    keep = std::move(pair->second);
    type = "net.Socket";
    kind = kin::fd_kind::unix_stream_socket;
  }
  SECTION("a listening Unix stream socket") {
    fd = unix_listener(SOCK_STREAM);
    type = "net.Server";
    kind = kin::fd_kind::unix_server;
  }
  const ino_t inode = inode_of(fd.get());
  outcomes done;
  CHECK(w.ch.send("{\n \"k\": 1\n}", one_fd(std::move(fd)), done("handle")));
  const std::string line = envelope(type, "{\"k\":1}", extra);
  REQUIRE(w.wait_bytes(line.size()));
  w.settle();
  REQUIRE(w.peer.reads.size() == 1);
  CHECK(w.peer.reads[0].bytes == line);
  REQUIRE(w.peer.reads[0].fds.size() == 1);
  const int received = w.peer.reads[0].fds[0].get();
  CHECK(inode_of(received) == inode);
  auto got_kind = kin::detect_fd_kind(received);
  REQUIRE(got_kind);
  CHECK(*got_kind == kind);
  // Done only when the peer says so.
  CHECK(done.got.empty());
  w.peer.send(ack_line);
  REQUIRE(w.run_until([&] { return !done.got.empty(); }));
  CHECK_FALSE(done.got[0].second);
  w.settle();
  CHECK(done.got.size() == 1);
  CHECK(w.peer.data == line);
  CHECK(w.errors.empty());
  CHECK(w.ch.is_open());
}

TEST_CASE("node channel: what send() takes, a peer with the same max_frame accepts",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o = node_options();
  o.max_frame = 100;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel sender(l, o);
  REQUIRE(sender.open(std::move(pair->first)));
  kin::channel receiver(l, o);
  REQUIRE(receiver.open(std::move(pair->second)));
  std::vector<std::string> got;
  std::vector<std::error_code> errors;
  receiver.on_message([&](std::string m, std::vector<kin::any_handle>) { got.push_back(m); });
  receiver.on_error([&](std::error_code ec) { errors.push_back(ec); });
  std::vector<std::error_code> sent;
  auto p = kin::make_pipe();
  REQUIRE(p);
  // 100 bytes: a line of exactly max_frame, then the same message in a NODE_HANDLE envelope.
  const std::string message = "\"" + std::string(98, 'z') + "\"";
  sender.send(message, {}, [&](std::error_code ec) { sent.push_back(ec); });
  sender.send(message, one_fd(std::move(p->read)), [&](std::error_code ec) { sent.push_back(ec); });
  REQUIRE(kin_test::run_until(l, [&] { return sent.size() == 2 || !errors.empty(); }));
  (void)kin_test::run_until(
      l, [] { return false; }, 50ms);
  CHECK(errors.empty());
  REQUIRE_FALSE(got.empty());
  CHECK(got[0] == message);
  // Either the envelope was refused as too long, or it arrived.
  REQUIRE(sent.size() == 2);
  CHECK_FALSE(sent[0]);
  if (sent[1]) {
    CHECK(sent[1] == std::errc::message_size);
  } else {
    CHECK(got.size() == 2);
  }
}

TEST_CASE("node channel: until the ACK every later message is held back, then sent in order",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto first = tcp_connect();
  const ino_t first_inode = inode_of(first.client.get());
  auto pipe = kin::make_pipe();
  REQUIRE(pipe);
  const ino_t second_inode = inode_of(pipe->write.get());
  outcomes done;
  w.ch.send("{\"h\":1}", one_fd(std::move(first.client)), done("h1"));
  const std::string h1 = envelope("net.Socket", "{\"h\":1}");
  REQUIRE(w.wait_bytes(h1.size()));
  w.ch.send("{\"p\":1}", {}, done("p1"));
  w.ch.send("{\"h\":2}", one_fd(std::move(pipe->write)), done("h2"));
  w.ch.send("{\"p\":2}", {}, done("p2"));
  const std::string p1 = "{\"p\":1}\n";
  const std::string h2 = envelope("net.Socket", "{\"h\":2}");
  const std::string p2 = "{\"p\":2}\n";
  CHECK(w.ch.queued_bytes() == p1.size() + h2.size() + p2.size());
  w.settle(100ms);
  CHECK(w.peer.data == h1);
  CHECK(done.got.empty());
  CHECK(w.ch.queued_bytes() == p1.size() + h2.size() + p2.size());

  w.peer.send(ack_line);
  REQUIRE(w.wait_bytes(h1.size() + p1.size() + h2.size()));
  w.settle();
  CHECK(w.peer.data == h1 + p1 + h2);
  CHECK(done.names() == std::vector<std::string>{"h1", "p1"});
  CHECK(w.ch.queued_bytes() == p2.size());
  REQUIRE(w.peer.fd_count() == 2);
  // The second handle's descriptor rides on the read that ends with its line.
  const wire_read& last = w.peer.reads.back();
  REQUIRE(last.fds.size() == 1);
  CHECK(last.bytes.size() >= h2.size());
  CHECK(last.bytes.substr(last.bytes.size() - h2.size()) == h2);
  CHECK(inode_of(last.fds[0].get()) == second_inode);
  CHECK(inode_of(w.peer.reads.front().fds.at(0).get()) == first_inode);

  w.peer.send(ack_line);
  REQUIRE(w.wait_bytes(h1.size() + p1.size() + h2.size() + p2.size()));
  REQUIRE(w.run_until([&] { return done.got.size() == 4; }));
  w.settle();
  CHECK(w.peer.data == h1 + p1 + h2 + p2);
  CHECK(done.names() == std::vector<std::string>{"h1", "p1", "h2", "p2"});
  for (const auto& g : done.got) CHECK_FALSE(g.second);
  CHECK(w.ch.queued_bytes() == 0);
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: a NACK is answered with the same line and a fresh duplicate",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto c = tcp_connect();
  const ino_t inode = inode_of(c.client.get());
  outcomes done;
  w.ch.send("{\"n\":1}", one_fd(std::move(c.client)), done("handle"));
  w.ch.send("\"held\"", {}, done("held"));
  const std::string line = envelope("net.Socket", "{\"n\":1}");
  REQUIRE(w.wait_bytes(line.size()));
  std::size_t transmissions = 0;
  SECTION("refused four times") {
    transmissions = 4;
    for (int nacks = 1; nacks <= 3; ++nacks) {
      w.peer.send(nack_line);
      REQUIRE(w.wait_bytes(line.size() * static_cast<std::size_t>(nacks + 1)));
    }
    w.settle();
    CHECK(done.got.empty());
    w.peer.send(nack_line);
    REQUIRE(w.run_until([&] { return done.got.size() == 2; }));
    w.settle();
    CHECK(done.names() == std::vector<std::string>{"handle", "held"});
    CHECK(done.got[0].second == kin::errc::handle_not_acknowledged);
    CHECK_FALSE(done.got[1].second);
    std::string four;
    for (int i = 0; i < 4; ++i) four += line;
    CHECK(w.peer.data == four + "\"held\"\n");
    CHECK(w.errors.empty());
    CHECK(w.ch.is_open());
  }
  SECTION("refused once, then taken") {
    transmissions = 2;
    w.peer.send(nack_line);
    REQUIRE(w.wait_bytes(line.size() * 2));
    w.settle();
    CHECK(done.got.empty());
    w.peer.send(ack_line);
    REQUIRE(w.run_until([&] { return done.got.size() == 2; }));
    w.settle();
    CHECK(done.names() == std::vector<std::string>{"handle", "held"});
    CHECK_FALSE(done.got[0].second);
    CHECK(w.peer.data == line + line + "\"held\"\n");
  }
  // Each transmission was its own read with one descriptor: a different descriptor each time,
  // all of them the same socket.
  std::vector<int> numbers;
  for (const auto& r : w.peer.reads) {
    if (r.bytes != line) continue;
    REQUIRE(r.fds.size() == 1);
    CHECK(inode_of(r.fds[0].get()) == inode);
    numbers.push_back(r.fds[0].get());
  }
  CHECK(numbers.size() == transmissions);
  for (std::size_t i = 1; i < numbers.size(); ++i) CHECK(numbers[i] != numbers[i - 1]);
  CHECK(w.peer.fd_count() == numbers.size());
}

TEST_CASE("node channel: disconnect() while a handle awaits its ACK waits for it",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto c = tcp_connect();
  auto p = kin::make_pipe();
  REQUIRE(p);
  outcomes done;
  w.ch.send("\"h\"", one_fd(std::move(c.client)), done("h"));
  w.ch.send("\"after\"", {}, done("after"));
  w.ch.send("\"h2\"", one_fd(std::move(p->write)), done("h2"));
  w.ch.send("\"last\"", {}, done("last"));
  const std::string line = envelope("net.Socket", "\"h\"");
  const std::string line2 = envelope("net.Socket", "\"h2\"");
  REQUIRE(w.wait_bytes(line.size()));
  w.ch.disconnect();
  w.ch.send("\"too late\"", {}, done("too late"));
  w.settle(100ms);
  CHECK_FALSE(w.peer.eof);
  CHECK(w.disconnects == 0);
  CHECK(w.ch.is_open());
  CHECK(w.peer.data == line);
  REQUIRE(done.got.size() == 1);
  CHECK(done.got[0].first == "too late");
  CHECK(done.got[0].second == std::errc::not_connected);
  // Messages still arrive meanwhile (Node keeps reading too).
  w.peer.send("{\"meanwhile\":1}\n");
  REQUIRE(w.run_until([&] { return w.messages.size() == 1; }));
  CHECK(w.messages[0].text == "{\"meanwhile\":1}");
  // The first ACK lets out what was held up to the next handle, which waits in turn.
  w.peer.send(ack_line);
  REQUIRE(w.wait_bytes(line.size() + 8 + line2.size()));
  w.settle(100ms);
  CHECK(w.peer.data == line + "\"after\"\n" + line2);
  CHECK_FALSE(w.peer.eof);
  CHECK(w.disconnects == 0);
  CHECK(done.names() == std::vector<std::string>{"too late", "h", "after"});
  w.peer.send(ack_line);
  REQUIRE(w.run_until([&] { return w.peer.eof && w.disconnects == 1; }));
  w.settle();
  CHECK(w.peer.data == line + "\"after\"\n" + line2 + "\"last\"\n");
  CHECK(done.names() == std::vector<std::string>{"too late", "h", "after", "h2", "last"});
  for (std::size_t i = 1; i < done.got.size(); ++i) CHECK_FALSE(done.got[i].second);
  CHECK(w.disconnects == 1);
  CHECK(w.errors.empty());
  CHECK_FALSE(w.ch.is_open());
}

TEST_CASE("node channel: close() in the iteration of the sends cancels them all in order",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto c = tcp_connect();
  outcomes done;
  w.ch.send("\"p0\"", {}, done("p0"));
  w.ch.send("\"h1\"", one_fd(std::move(c.client)), done("h1"));
  w.ch.send("\"p1\"", {}, done("p1"));
  w.ch.close();
  CHECK(done.got.empty());
  REQUIRE(w.run_until([&] { return w.peer.eof && done.got.size() == 3; }));
  w.settle();
  CHECK(done.names() == std::vector<std::string>{"p0", "h1", "p1"});
  for (const auto& g : done.got) CHECK(g.second == std::errc::operation_canceled);
  CHECK(w.peer.data.empty());
  CHECK(w.peer.fd_count() == 0);
  CHECK(w.disconnects == 0);
}

TEST_CASE("node channel: the handle's callback may close or destroy its channel",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  auto w = std::make_unique<wired>(l);
  auto c = tcp_connect();
  outcomes done;
  bool destroy = false;
  SECTION("close") {}
  SECTION("destroy") { destroy = true; }
  kin::channel::send_callback record = done("h");
  w->ch.send("\"h\"", one_fd(std::move(c.client)), [&](std::error_code ec) {
    record(ec);
    if (destroy) {
      w.reset();
    } else {
      w->ch.close();
    }
  });
  w->ch.send("\"held\"", {}, done("held"));
  const std::string line = envelope("net.Socket", "\"h\"");
  REQUIRE(w->wait_bytes(line.size()));
  raw_peer peer = std::move(w->peer);
  peer.send(ack_line);
  REQUIRE(kin_test::run_until(l, [&] {
    peer.poll();
    return peer.eof && done.got.size() == 2;
  }));
  (void)kin_test::run_until(
      l, [] { return false; }, 50ms);
  CHECK(done.names() == std::vector<std::string>{"h", "held"});
  REQUIRE(done.got.size() == 2);
  CHECK_FALSE(done.got[0].second);
  CHECK(done.got[1].second == std::errc::operation_canceled);
  CHECK(peer.data == line);
  CHECK(destroy == (w == nullptr));
}

TEST_CASE("node channel: a handle received while ours awaits its ACK is acknowledged at once",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto ours = tcp_connect();
  outcomes done;
  w.ch.send("\"ours\"", one_fd(std::move(ours.client)), done("ours"));
  w.ch.send("\"held\"", {}, done("held"));
  const std::string line = envelope("net.Socket", "\"ours\"");
  REQUIRE(w.wait_bytes(line.size()));
  // Both sides wait for an acknowledgement: neither may hold its own back.
  auto theirs = tcp_connect();
  const ino_t inode = inode_of(theirs.client.get());
  w.peer.send(envelope("net.Socket", "\"theirs\""), {theirs.client.get()});
  theirs.client.reset();
  REQUIRE(w.wait_bytes(line.size() + ack_line.size()));
  REQUIRE(w.run_until([&] { return w.messages.size() == 1; }));
  w.settle();
  CHECK(w.peer.data == line + std::string(ack_line));
  CHECK(w.messages[0].text == "\"theirs\"");
  CHECK(w.messages[0].inodes == std::vector{inode});
  CHECK(done.got.empty());
  w.peer.send(ack_line);
  REQUIRE(w.run_until([&] { return done.got.size() == 2; }));
  w.settle();
  CHECK(w.peer.data == line + std::string(ack_line) + "\"held\"\n");
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: disconnect() from on_message still acknowledges the handle",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  w.ch.on_message([&](std::string, std::vector<kin::any_handle>) { w.ch.disconnect(); });
  auto p = kin::make_pipe();
  REQUIRE(p);
  w.peer.send(envelope("net.Socket", "1"), {p->read.get()});
  p->read.reset();
  REQUIRE(w.run_until([&] { return w.peer.eof && w.disconnects == 1; }));
  CHECK(w.peer.data == ack_line);
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: a handle with no message callback is still acknowledged, then closed",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  w.ch.on_message(nullptr);
  auto p = kin::make_pipe();
  REQUIRE(p);
  w.peer.send(envelope("net.Socket", "1"), {p->read.get()});
  p->read.reset();
  REQUIRE(w.wait_bytes(ack_line.size()));
  w.settle();
  CHECK(w.peer.data == ack_line);
  CHECK(readers_gone(p->write.get()));
  CHECK(w.errors.empty());
  CHECK(w.ch.is_open());
}

TEST_CASE("node channel: a NODE_HANDLE without its descriptor is NACKed after earlier ACKs",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto p = kin::make_pipe();
  REQUIRE(p);
  // Both are in the socket before the channel reads: the first read ends after the descriptor,
  // the second holds the line without one.
  w.peer.send(envelope("net.Socket", "1"), {p->read.get()});
  w.peer.send(envelope("net.Socket", "2"));
  p->read.reset();
  REQUIRE(w.run_until([&] { return w.disconnects == 1 && w.peer.eof; }));
  REQUIRE(w.errors.size() == 1);
  CHECK(w.errors[0] == kin::errc::message_truncated);
  REQUIRE(w.messages.size() == 1);
  CHECK(w.messages[0].text == "1");
  // The delivered handle's acknowledgement, then the refusal the documentation promises.
  CHECK(w.peer.data == std::string(ack_line) + std::string(nack_line));
}

TEST_CASE("node channel: close() while a handle awaits its ACK cancels everything in order",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  auto w = std::make_unique<wired>(l);
  auto c = tcp_connect();
  auto p = kin::make_pipe();
  REQUIRE(p);
  outcomes done;
  w->ch.send("\"h1\"", one_fd(std::move(c.client)), done("h1"));
  w->ch.send("\"p1\"", {}, done("p1"));
  w->ch.send("\"h2\"", one_fd(std::move(p->write)), done("h2"));
  w->ch.send("\"p2\"", {}, done("p2"));
  const std::string line = envelope("net.Socket", "\"h1\"");
  REQUIRE(w->wait_bytes(line.size()));
  raw_peer peer = std::move(w->peer);
  SECTION("closed") {
    w->ch.close();
    CHECK(done.got.empty());
    CHECK_FALSE(w->ch.is_open());
    CHECK(w->ch.queued_bytes() == 0);
  }
  SECTION("destroyed") {
    w.reset();
    CHECK(done.got.empty());
  }
  REQUIRE(kin_test::run_until(l, [&] {
    peer.poll();
    return peer.eof && done.got.size() == 4;
  }));
  (void)kin_test::run_until(
      l, [] { return false; }, 50ms);
  CHECK(done.names() == std::vector<std::string>{"h1", "p1", "h2", "p2"});
  for (const auto& g : done.got) CHECK(g.second == std::errc::operation_canceled);
  CHECK(peer.data == line);
  if (w) CHECK(w->disconnects == 0);
}

TEST_CASE("node channel: a peer that closes while a handle awaits its ACK cancels the sends",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto c = tcp_connect();
  outcomes done;
  w.ch.send("\"h\"", one_fd(std::move(c.client)), done("h"));
  w.ch.send("\"held\"", {}, done("held"));
  REQUIRE(w.wait_bytes(envelope("net.Socket", "\"h\"").size()));
  w.peer.reads.clear();  // their descriptors closed before the peer goes
  w.peer.fd.reset();
  REQUIRE(kin_test::run_until(l, [&] { return w.disconnects == 1 && done.got.size() == 2; }));
  CHECK(done.names() == std::vector<std::string>{"h", "held"});
  for (const auto& g : done.got) CHECK(g.second == std::errc::operation_canceled);
  CHECK(w.errors.empty());
  CHECK_FALSE(w.ch.is_open());
}

TEST_CASE("node channel: a received handle is acknowledged once and rebuilt by its real kind",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  kin::unique_fd fd;
  kin::unique_fd keep;
  std::string line;
  std::string text = "{\"from\":\"peer\"}";
  kin::fd_kind kind = kin::fd_kind::other;
  SECTION("a TCP socket") {
    auto c = tcp_connect();
    fd = std::move(c.client);
    keep = std::move(c.accepted);
    line = envelope("net.Socket", text);
    kind = kin::fd_kind::tcp_socket;
  }
  SECTION("a TCP socket labelled as a server") {
    auto c = tcp_connect();
    fd = std::move(c.client);
    keep = std::move(c.accepted);
    line = envelope("net.Server", text);
    kind = kin::fd_kind::tcp_socket;
  }
  SECTION("a TCP server") {
    fd = tcp_listener();
    line = envelope("net.Server", text);
    kind = kin::fd_kind::tcp_server;
  }
  SECTION("a UDP socket") {
    fd = udp4_socket();
    line = envelope("dgram.Socket", text, ",\"dgramType\":\"udp4\"");
    kind = kin::fd_kind::udp_socket;
  }
  SECTION("a pipe") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    fd = std::move(p->read);
    keep = std::move(p->write);
    line = envelope("net.Socket", text);
    kind = kin::fd_kind::pipe;
  }
  SECTION("a Unix stream socket, in the retransmission envelope") {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    fd = std::move(pair->first);
    keep = std::move(pair->second);
    line = envelope("net.Native",
                    "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":" + text + "}");
    kind = kin::fd_kind::unix_stream_socket;
  }
  const ino_t inode = inode_of(fd.get());
  w.peer.send(line, {fd.get()});
  fd.reset();
  REQUIRE(w.run_until([&] { return w.messages.size() == 1; }));
  REQUIRE(w.wait_bytes(ack_line.size()));
  w.settle();
  CHECK(w.peer.data == ack_line);
  CHECK(w.peer.fd_count() == 0);
  CHECK(w.messages[0].text == text);
  CHECK(w.messages[0].kinds == std::vector{kind});
  CHECK(w.messages[0].inodes == std::vector{inode});
  CHECK(w.internals.empty());
  CHECK(w.errors.empty());
  CHECK(w.ch.is_open());
}

TEST_CASE("node channel: NODE_HANDLE lines find descriptors sent with them or earlier",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto p = kin::make_pipe();
  REQUIRE(p);
  const ino_t inode = inode_of(p->read.get());
  const std::string line = envelope("net.Socket", "{\"split\":true}");
  SECTION("a line written in two, its descriptor on the first part") {
    w.peer.send(line.substr(0, 10), {p->read.get()});
    w.settle();
    CHECK(w.messages.empty());
    w.peer.send(line.substr(10));
  }
  SECTION("the descriptor on the plain message before the line") {
    w.peer.send("{\"pre\":1}\n", {p->read.get()});
    REQUIRE(w.run_until([&] { return w.messages.size() == 1; }));
    w.peer.send(line);
  }
  p->read.reset();
  REQUIRE(
      w.run_until([&] { return !w.messages.empty() && w.messages.back().text != "{\"pre\":1}"; }));
  REQUIRE(w.wait_bytes(ack_line.size()));
  w.settle();
  CHECK(w.peer.data == ack_line);
  CHECK(w.messages.back().text == "{\"split\":true}");
  CHECK(w.messages.back().inodes == std::vector{inode});
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: internal messages go to on_internal_message only", "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto c = tcp_connect();
  const ino_t inode = inode_of(c.client.get());
  const std::string newconn = "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"newconn\",\"key\":\"k\"}";
  w.peer.send("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}\n{\"cmd\":\"NODE_\"}\n");
  w.peer.send(envelope("net.Native", newconn), {c.client.get()});
  c.client.reset();
  w.peer.send("{\"cmd\":\"node_foo\"}\n");
  REQUIRE(w.run_until([&] { return w.messages.size() == 2 && w.internals.size() == 2; }));
  w.settle();
  REQUIRE(w.internals.size() == 2);
  CHECK(w.internals[0].text == "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}");
  CHECK(w.internals[0].inodes.empty());
  CHECK(w.internals[1].text == newconn);
  CHECK(w.internals[1].kinds == std::vector{kin::fd_kind::tcp_socket});
  CHECK(w.internals[1].inodes == std::vector{inode});
  REQUIRE(w.messages.size() == 2);
  CHECK(w.messages[0].text == "{\"cmd\":\"NODE_\"}");
  CHECK(w.messages[1].text == "{\"cmd\":\"node_foo\"}");
  // The handle in the internal message was acknowledged, once.
  CHECK(w.peer.data == ack_line);
  // Without an internal callback they are dropped (with their descriptors), and reading goes on.
  w.ch.on_internal_message(nullptr);
  auto p = kin::make_pipe();
  REQUIRE(p);
  w.peer.send(envelope("net.Native", newconn), {p->read.get()});
  p->read.reset();
  w.peer.send("{\"cmd\":\"NODE_FOO\"}\n\"user\"\n");
  REQUIRE(w.run_until([&] { return w.messages.size() == 3; }));
  CHECK(w.messages[2].text == "\"user\"");
  CHECK(w.internals.size() == 2);
  REQUIRE(w.wait_bytes(2 * ack_line.size()));
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: received lines of every JSON type arrive as their text",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  w.peer.send("{\"a\":1}\n[1,2]\r\n  \"s\"  \n4");
  w.peer.send("2\ntrue\nfalse\nnull\n1e400\n\"\xff\"\n");
  REQUIRE(w.run_until([&] { return w.messages.size() == 9; }));
  std::vector<std::string> texts;
  for (const auto& m : w.messages) texts.push_back(m.text);
  CHECK(texts == std::vector<std::string>{"{\"a\":1}", "[1,2]", "\"s\"", "42", "true", "false",
                                          "null", "1e400", "\"\xef\xbf\xbd\""});
  CHECK(w.peer.data.empty());
  CHECK(w.errors.empty());
}

TEST_CASE("node channel: a peer's bad input is an error, with every descriptor closed",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o = node_options();
  o.max_frame = 100;
  wired w(l, o);
  auto p = kin::make_pipe();
  REQUIRE(p);
  std::error_code want;
  std::string answer;  // what the peer reads before the end
  std::vector<std::string> delivered;
  bool more_may_follow = false;  // complete lines after a stray descriptor may be delivered
  SECTION("not JSON, after a good line in the same read") {
    w.peer.send("{\"ok\":1}\n{not json}\n");
    want = kin::errc::malformed_message;
    delivered = {"{\"ok\":1}"};
  }
  SECTION("an empty line") {
    w.peer.send("\n");
    want = kin::errc::malformed_message;
  }
  SECTION("a NODE_HANDLE without its descriptor") {
    w.peer.send(envelope("net.Socket", "{\"lost\":1}"));
    want = kin::errc::message_truncated;
    answer = nack_line;
  }
  SECTION("an unknown handle type") {
    w.peer.send(envelope("net.Bogus", "1"), {p->read.get()});
    want = kin::errc::unknown_handle_type;
  }
  SECTION("an ACK nothing waits for") {
    w.peer.send(ack_line);
    want = kin::errc::unexpected_acknowledgement;
  }
  SECTION("a NACK nothing waits for") {
    w.peer.send(nack_line);
    want = kin::errc::unexpected_acknowledgement;
  }
  SECTION("a descriptor on a plain line, then another line") {
    w.peer.send("{\"a\":1}\n", {p->read.get()});
    w.peer.send("{\"b\":2}\n");
    want = kin::errc::stray_descriptor;
    delivered = {"{\"a\":1}"};
    more_may_follow = true;
  }
  SECTION("a descriptor on a plain line, then the end") {
    w.peer.send("{\"a\":1}\n", {p->read.get()});
    w.peer.fd.reset();
    want = kin::errc::stray_descriptor;
    delivered = {"{\"a\":1}"};
  }
  SECTION("a line over max_frame") {
    w.peer.send("\"" + std::string(100, 'x') + "\"\n", {p->read.get()});
    want = kin::errc::frame_too_large;
  }
  SECTION("a line over max_frame, without its end") {
    w.peer.send("\"" + std::string(60, 'x'));
    w.settle();
    w.peer.send(std::string(60, 'x'));
    want = kin::errc::frame_too_large;
  }
  SECTION("a line cut off by the end") {
    w.peer.send(envelope("net.Socket", "1").substr(0, 30), {p->read.get()});
    w.peer.fd.reset();
    want = kin::errc::message_truncated;
  }
  p->read.reset();
  REQUIRE(w.run_until([&] { return w.disconnects == 1; }));
  if (w.peer.fd.is_open()) REQUIRE(w.run_until([&] { return w.peer.eof; }));
  w.settle();
  REQUIRE(w.errors.size() == 1);
  CHECK(w.errors[0] == want);
  CHECK(w.disconnects == 1);
  CHECK_FALSE(w.ch.is_open());
  CHECK(w.peer.data == answer);
  std::vector<std::string> texts;
  for (const auto& m : w.messages) texts.push_back(m.text);
  if (more_may_follow && texts.size() > delivered.size()) texts.resize(delivered.size());
  CHECK(texts == delivered);
  // No copy of the pipe's read end is left open anywhere.
  CHECK(readers_gone(p->write.get()));
}

TEST_CASE("node channel: descriptors the kernel had to cut (MSG_CTRUNC) are an error",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  wired w(l);
  auto p = kin::make_pipe();
  REQUIRE(p);
  w.peer.send(envelope("net.Socket", "1"), {p->read.get()});
  p->read.reset();
  {
    // No room for one more descriptor: the kernel cannot install the one that came.
    kin_test::fd_limit full(0);
    for (int i = 0; i < 100 && w.errors.empty(); ++i) l.run_nowait();
  }
  REQUIRE(w.errors.size() == 1);
  CHECK(w.errors[0] == kin::errc::message_truncated);
  CHECK(w.messages.empty());
  CHECK_FALSE(w.ch.is_open());
  REQUIRE(w.run_until([&] { return w.peer.eof; }));
  CHECK(w.disconnects == 1);
  // The descriptor the kernel could not install is gone: the pipe has no reader left.
  CHECK(readers_gone(p->write.get()));
}

TEST_CASE("node channel: held messages count toward the high-water mark; on_drain fires once",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o = node_options();
  o.high_water = 1000;
  wired w(l, o);
  int drains = 0;
  w.ch.on_drain([&] { ++drains; });
  auto c = tcp_connect();
  CHECK(w.ch.send("\"h\"", one_fd(std::move(c.client))));
  const std::string line = envelope("net.Socket", "\"h\"");
  REQUIRE(w.wait_bytes(line.size()));
  const std::string message = "\"" + std::string(97, 'm') + "\"";  // a 100-byte line
  std::size_t held = 0;
  int sent = 0;
  for (; sent < 20; ++sent) {
    const bool below = w.ch.send(message);
    held += message.size() + 1;
    CHECK(w.ch.queued_bytes() == held);
    CHECK(below == (held <= 1000));
    if (!below) break;
  }
  CHECK(sent == 10);  // the 11th takes it to 1100
  w.settle();
  CHECK(drains == 0);
  w.peer.send(ack_line);
  REQUIRE(w.run_until([&] { return drains == 1; }));
  REQUIRE(w.wait_bytes(line.size() + held));
  w.settle();
  CHECK(drains == 1);
  CHECK(w.ch.queued_bytes() == 0);
  // Below the mark again: send() says so, and no drain is owed.
  CHECK(w.ch.send(message));
  w.settle();
  CHECK(drains == 1);
}

// ---- from_environment and kin::fork with Node's variables -------------------------------------

namespace {

constexpr const char* node_fd_var = "NODE_CHANNEL_FD";
constexpr const char* node_mode_var = "NODE_CHANNEL_SERIALIZATION_MODE";
constexpr const char* kin_fd_var = "KIN_CHANNEL_FD";

// Sets (or unsets) the three channel variables for a test, and removes them at its end.
struct channel_vars {
  channel_vars(std::optional<std::string> node_fd, std::optional<std::string> mode,
               std::optional<std::string> kin_fd = std::nullopt) {
    set(node_fd_var, node_fd);
    set(node_mode_var, mode);
    set(kin_fd_var, kin_fd);
  }
  channel_vars(const channel_vars&) = delete;
  channel_vars& operator=(const channel_vars&) = delete;
  ~channel_vars() {
    (void)kin::this_process::unset_env(node_fd_var);
    (void)kin::this_process::unset_env(node_mode_var);
    (void)kin::this_process::unset_env(kin_fd_var);
  }
  static void set(const char* name, const std::optional<std::string>& value) {
    if (value) {
      REQUIRE(kin::this_process::set_env(name, *value));
    } else {
      REQUIRE(kin::this_process::unset_env(name));
    }
  }
};

bool none_left() {
  return !kin::this_process::get_env(node_fd_var) && !kin::this_process::get_env(node_mode_var) &&
         !kin::this_process::get_env(kin_fd_var);
}

}  // namespace

TEST_CASE("from_environment opens NODE_CHANNEL_FD with the node codec", "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  raw_peer peer;
  peer.fd = std::move(pair->second);
  const std::string number = std::to_string(pair->first.get());
  std::optional<channel_vars> vars;
  SECTION("mode unset") { vars.emplace(number, std::nullopt); }
  SECTION("mode json") { vars.emplace(number, "json"); }
  SECTION("mode empty, which Node takes as json") { vars.emplace(number, ""); }
  kin::channel_options o;  // native, as asked: the variable decides
  auto ch = kin::channel::from_environment(l, o);
  REQUIRE(ch);
  (void)pair->first.release();
  CHECK(none_left());
  kin::channel& c = **ch;
  CHECK(c.codec() == kin::channel_codec::node);
  CHECK(c.is_open());
  // Unref'd until a message callback is set, as Node's child channel is.
  CHECK(kin_test::run_all(l, 500ms));
  std::vector<got_message> got;
  c.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    got.push_back(wired::record(std::move(m), handles));
  });
  c.send("{\"hello\":\"node\"}");
  auto p = kin::make_pipe();
  REQUIRE(p);
  peer.send(envelope("net.Socket", "\"fd\""), {p->read.get()});
  p->read.reset();
  const std::string expected = std::string("{\"hello\":\"node\"}\n") + std::string(ack_line);
  REQUIRE(kin_test::run_until(l, [&] {
    peer.poll();
    return got.size() == 1 && peer.data.size() >= expected.size();
  }));
  CHECK(peer.data == expected);
  CHECK(got[0].text == "\"fd\"");
  CHECK(got[0].kinds == std::vector{kin::fd_kind::pipe});
  ch->reset();
}

TEST_CASE("from_environment with NODE_CHANNEL_FD refuses what is not a channel", "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  std::optional<channel_vars> vars;
  std::errc want{};
  kin::unique_fd owned;  // the test's, whatever happens
  bool left_open = false;
  SECTION("serialization mode advanced") {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    owned = std::move(pair->first);
    vars.emplace(std::to_string(owned.get()), "advanced");
    want = std::errc::protocol_not_supported;
  }
  SECTION("an unknown serialization mode") {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    owned = std::move(pair->first);
    vars.emplace(std::to_string(owned.get()), "v8");
    want = std::errc::protocol_not_supported;
  }
  SECTION("a pipe") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    owned = std::move(p->read);
    vars.emplace(std::to_string(owned.get()), "json");
    want = std::errc::not_a_socket;
    left_open = true;
  }
  SECTION("a regular file") {
    owned = kin::unique_fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    REQUIRE(owned.is_open());
    vars.emplace(std::to_string(owned.get()), std::nullopt);
    want = std::errc::not_a_socket;
    left_open = true;
  }
  SECTION("a UDP socket") {
    owned = udp4_socket();
    vars.emplace(std::to_string(owned.get()), std::nullopt);
    want = std::errc::invalid_argument;
    left_open = true;
  }
  SECTION("a closed descriptor") {
    int closed_fd;
    {
      auto m = marked_fd();
      closed_fd = m.get();
    }
    vars.emplace(std::to_string(closed_fd), "json");
    want = std::errc::bad_file_descriptor;
  }
  SECTION("not a number") {
    vars.emplace("abc", "json");
    want = std::errc::invalid_argument;
  }
  SECTION("negative") {
    vars.emplace("-1", std::nullopt);
    want = std::errc::invalid_argument;
  }
  SECTION("empty") {
    vars.emplace("", std::nullopt);
    want = std::errc::invalid_argument;
  }
  SECTION("a number with more after it") {
    vars.emplace("3x", std::nullopt);
    want = std::errc::invalid_argument;
  }
  auto ch = kin::channel::from_environment(l);
  REQUIRE_FALSE(ch);
  CHECK(ch.error() == want);
  CHECK(none_left());
  if (left_open) CHECK_FALSE(is_closed(owned.get()));
}

TEST_CASE("from_environment prefers KIN_CHANNEL_FD to NODE_CHANNEL_FD, and removes both",
          "[channel_node]") {
  leak_guard leaks;
  kin::loop l;
  auto kin_pair = kin::make_socketpair();
  REQUIRE(kin_pair);
  auto node_pair = kin::make_socketpair();
  REQUIRE(node_pair);
  std::optional<std::string> mode;
  SECTION("mode json") { mode = "json"; }
  SECTION("mode advanced, which concerns only Node's channel") { mode = "advanced"; }
  channel_vars vars(std::to_string(node_pair->first.get()), mode,
                    std::to_string(kin_pair->first.get()));
  kin::channel_options o;
  o.codec = kin::channel_codec::node;
  auto ch = kin::channel::from_environment(l, o);
  REQUIRE(ch);
  (void)kin_pair->first.release();
  CHECK(none_left());
  CHECK((*ch)->codec() == kin::channel_codec::native);
  CHECK_FALSE(is_closed(node_pair->first.get()));
  // It is the native channel on KIN_CHANNEL_FD's socket: an 8-byte header, then the payload.
  (*ch)->send("x");
  raw_peer peer;
  peer.fd = std::move(kin_pair->second);
  REQUIRE(kin_test::run_until(l, [&] {
    peer.poll();
    return peer.data.size() >= 9;
  }));
  CHECK(peer.data.size() == 9);
  CHECK(peer.data.back() == 'x');
}

namespace {

// The environment a child of this process printed ("print-environ"), one entry a line.
std::vector<std::string> forked_environment(kin::loop& l, kin::channel_codec codec,
                                            int channel_fd = 3) {
  kin::fork_options o;
  o.channel.codec = codec;
  o.channel_fd = channel_fd;
  o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::inherit()};
  auto f = kin::fork(l, kin_test::child_path(), {"print-environ"}, o);
  REQUIRE(f);
  CHECK(f->channel->codec() == codec);
  std::string out;
  REQUIRE(f->child.stdout_stream()->read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (!ec) out += kin_test::text_of(data);
      }));
  int status = -1;
  f->child.on_exit([&](std::error_code, int st, int) { status = st; });
  REQUIRE(kin_test::run_all(l));
  CHECK(status == 0);
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < out.size()) {
    std::size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    lines.push_back(out.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::vector<std::string> entries_named(const std::vector<std::string>& env, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& e : env) {
    if (e.size() > name.size() && e.compare(0, name.size(), name) == 0 && e[name.size()] == '=') {
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("kin::fork with the node codec gives the child Node's variables and no other",
          "[channel_node]") {
  leak_guard leaks;
  REQUIRE_FALSE(kin_test::child_path().empty());
  kin::loop l;
  SECTION("the parent's environment has none of them") {
    channel_vars vars(std::nullopt, std::nullopt);
    auto env = forked_environment(l, kin::channel_codec::node);
    CHECK(entries_named(env, node_fd_var) == std::vector<std::string>{"NODE_CHANNEL_FD=3"});
    CHECK(entries_named(env, node_mode_var) ==
          std::vector<std::string>{"NODE_CHANNEL_SERIALIZATION_MODE=json"});
    CHECK(entries_named(env, kin_fd_var).empty());
  }
  SECTION("the parent's environment has all of them, otherwise") {
    channel_vars vars("11", "advanced", "12");
    auto env = forked_environment(l, kin::channel_codec::node, 5);
    CHECK(entries_named(env, node_fd_var) == std::vector<std::string>{"NODE_CHANNEL_FD=5"});
    CHECK(entries_named(env, node_mode_var) ==
          std::vector<std::string>{"NODE_CHANNEL_SERIALIZATION_MODE=json"});
    CHECK(entries_named(env, kin_fd_var).empty());
  }
  SECTION("the native codec leaves Node's out") {
    channel_vars vars("11", "json", "12");
    auto env = forked_environment(l, kin::channel_codec::native);
    CHECK(entries_named(env, kin_fd_var) == std::vector<std::string>{"KIN_CHANNEL_FD=3"});
    CHECK(entries_named(env, node_fd_var).empty());
    CHECK(entries_named(env, node_mode_var).empty());
  }
}

TEST_CASE("a kin child forked with the node codec echoes messages and handles", "[channel_node]") {
  leak_guard leaks;
  REQUIRE_FALSE(kin_test::child_path().empty());
  kin::loop l;
  kin::fork_options o;
  o.channel.codec = kin::channel_codec::node;
  o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
  auto f = kin::fork(l, kin_test::child_path(), {"channel-echo"}, o);
  REQUIRE(f);
  kin::channel& ch = *f->channel;
  std::vector<got_message> got;
  std::vector<std::error_code> errors;
  ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    got.push_back(wired::record(std::move(m), handles));
    if (got.size() == 4) ch.disconnect();
  });
  ch.on_error([&](std::error_code ec) { errors.push_back(ec); });
  int status = -1;
  f->child.on_exit([&](std::error_code, int st, int) { status = st; });
  auto p = kin::make_pipe();
  REQUIRE(p);
  const ino_t inode = inode_of(p->read.get());
  auto c = tcp_connect();
  const ino_t tcp_inode = inode_of(c.client.get());
  outcomes done;
  ch.send("{\"n\":1}", {}, done("1"));
  ch.send("{\n \"n\": 2\n}", one_fd(std::move(p->read)), done("2"));
  ch.send("\"three\"", {}, done("3"));
  ch.send("[4]", one_fd(std::move(c.client)), done("4"));
  REQUIRE(kin_test::run_all(l, 10000ms));
  CHECK(status == 0);
  CHECK(errors.empty());
  CHECK(done.names() == std::vector<std::string>{"1", "2", "3", "4"});
  for (const auto& d : done.got) CHECK_FALSE(d.second);
  REQUIRE(got.size() == 4);
  CHECK(got[0].text == "{\"n\":1}");
  CHECK(got[0].inodes.empty());
  CHECK(got[1].text == "{\"n\":2}");
  CHECK(got[1].kinds == std::vector{kin::fd_kind::pipe});
  CHECK(got[1].inodes == std::vector{inode});
  CHECK(got[2].text == "\"three\"");
  CHECK(got[3].text == "[4]");
  CHECK(got[3].kinds == std::vector{kin::fd_kind::tcp_socket});
  CHECK(got[3].inodes == std::vector{tcp_inode});
}

TEST_CASE("a lone surrogate never makes a command one of the handle protocol's", "[channel_node]") {
  // JSON.parse reads these as NODE_H\uD800NDLE_ACK and so on: internal messages, not ACKs.
  kin::detail::node_decoder d(1024);
  const std::string lines =
      "{\"cmd\":\"NODE_H\\uD800NDLE_ACK\"}\n{\"cmd\":\"NODE_H\\udc00NDLE_NACK\"}\n"
      "{\"cmd\":\"NODE_H\\uDBFFNDLE\",\"type\":\"net.Socket\",\"msg\":1}\n";
  REQUIRE(d.feed(std::as_bytes(std::span(lines.data(), lines.size())), {}));
  int internal = 0;
  while (auto m = d.next()) {
    CHECK(m->type == kin::detail::node_message::kind::internal);
    CHECK_FALSE(m->handle);
    ++internal;
  }
  CHECK(internal == 3);
  CHECK_FALSE(d.nack_owed());
  // And they can be sent: they are not the protocol's own.
  CHECK(kin::detail::node_line("{\"cmd\":\"NODE_H\\uD800NDLE_ACK\"}"));
}
