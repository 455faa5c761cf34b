// A kin parent and a Node.js child on Node's own IPC channel: kin::fork with the node codec
// starts `node test/node_interop/child.js`, whose process.send and process.on('message') see a
// normal channel. Messages come back exactly; a TCP socket and a TCP server passed by kin are
// used by Node. Without node on PATH the tests say so and pass without running.
#include "catch.hpp"

#include <kin/channel.hpp>
#include <kin/loop.hpp>
#include <kin/this_process.hpp>

#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

namespace {

using kin_test::leak_guard;

std::optional<std::string> find_node() {
  const auto path = kin::this_process::get_env("PATH");
  if (!path) return std::nullopt;
  std::size_t start = 0;
  while (start <= path->size()) {
    std::size_t end = path->find(':', start);
    if (end == std::string::npos) end = path->size();
    const std::string candidate = path->substr(start, end - start) + "/node";
    if (end > start && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return std::nullopt;
}

std::string child_script() {
  const char* dir = std::getenv("KIN_NODE_INTEROP_DIR");
  return dir == nullptr ? std::string() : std::string(dir) + "/child.js";
}

// A Node child with the node codec, its messages collected in order.
struct node_child {
  explicit node_child(kin::loop& l, const std::string& node) {
    kin::fork_options o;
    o.channel.codec = kin::channel_codec::node;
    o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
    auto f = kin::fork(l, node, {child_script()}, o);
    REQUIRE(f);
    forked.emplace(std::move(*f));
    forked->channel->on_message([this](std::string m, std::vector<kin::any_handle> handles) {
      if (m.find("\"warning\"") != std::string::npos) warnings.push_back(m);
      handle_count += handles.size();
      got.push_back(std::move(m));
    });
    forked->channel->on_error([this](std::error_code ec) { errors.push_back(ec); });
    forked->child.on_exit([this](std::error_code, int status, int) { exit_status = status; });
  }
  kin::channel& channel() { return *forked->channel; }

  std::optional<kin::forked> forked;
  std::vector<std::string> got;
  std::vector<std::string> warnings;
  std::vector<std::error_code> errors;
  std::size_t handle_count = 0;
  int exit_status = -1;
};

// A blocking IPv4 listening socket on 127.0.0.1 and its port.
kin::unique_fd raw_listener(std::uint16_t& port) {
  kin::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd.get(), 8) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
  port = ntohs(a.sin_port);
  return fd;
}

// Everything `fd` sends until it closes (a receive timeout bounds the wait).
std::string read_to_end(int fd) {
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[256];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace

TEST_CASE("a Node child echoes what a kin parent sends on Node's channel, exactly and in order",
          "[node_interop]") {
  const auto node = find_node();
  if (!node || child_script().empty()) {
    WARN("node not found on PATH (or KIN_NODE_INTEROP_DIR not set): skipped");
    return;
  }
  leak_guard leaks;
  kin::loop l;
  node_child c(l, *node);
  // Texts as JSON.stringify writes them, so Node's echo is the same text.
  std::vector<std::string> sent = {
      R"({"hello":"world","n":1,"arr":[1,2,3],"nested":{"a":null,"b":[true,false]}})",
      R"("a string")",
      R"("")",
      "42",
      "-0.5",
      "1e+21",
      "123456789012345680000",
      "true",
      "null",
      "[]",
      "{}",
      R"("é€😀 \u0000 \n\" \\")",
      R"("\ud800 lone")",
      R"({"cmd":"NODE_"})",
      R"({"cmd":"node_foo"})"};
  sent.push_back("\"" + std::string(1 << 20, 'x') + "é\"");
  for (int i = 0; i < 1000; ++i) sent.push_back(R"({"i":)" + std::to_string(i) + "}");
  for (const auto& m : sent) c.channel().send(m);
  REQUIRE(kin_test::run_until(
      l, [&] { return c.got.size() >= sent.size(); }, std::chrono::seconds(60)));
  REQUIRE(c.got.size() == sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i) {
    INFO("message " << i);
    CHECK(c.got[i] == sent[i]);
  }
  CHECK(c.warnings.empty());
  CHECK(c.errors.empty());
  c.channel().disconnect();
  REQUIRE(kin_test::run_until(
      l, [&] { return c.exit_status >= 0; }, std::chrono::seconds(10)));
  CHECK(c.exit_status == 0);
}

TEST_CASE("a TCP socket and a TCP server passed by kin are used by Node's process.on('message')",
          "[node_interop]") {
  const auto node = find_node();
  if (!node || child_script().empty()) {
    WARN("node not found on PATH (or KIN_NODE_INTEROP_DIR not set): skipped");
    return;
  }
  leak_guard leaks;
  kin::loop l;
  node_child c(l, *node);
  const std::string expected = "echo " + std::to_string(c.forked->child.pid()) + "\n";

  // A connection kin accepted: Node writes on it and ends it.
  std::uint16_t port = 0;
  kin::unique_fd listener = raw_listener(port);
  kin::unique_fd client = kin_test::raw_connect(kin_test::ip("127.0.0.1", port));
  REQUIRE(client);
  kin::unique_fd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(accepted);
  std::vector<kin::unique_fd> fds;
  fds.push_back(std::move(accepted));
  std::error_code socket_sent{kin::errc::eof};
  c.channel().send(R"({"with":"socket"})", std::move(fds),
                   [&](std::error_code ec) { socket_sent = ec; });
  REQUIRE(kin_test::run_until(
      l, [&] { return c.got.size() == 1; }, std::chrono::seconds(20)));
  CHECK(c.got[0] == R"({"with":"socket"})");
  CHECK_FALSE(socket_sent);  // acknowledged
  CHECK(read_to_end(client.get()) == expected);

  // The listening socket: Node accepts one connection on it.
  fds.clear();
  fds.push_back(std::move(listener));
  c.channel().send(R"({"with":"server"})", std::move(fds));
  // The message after it waits for Node's acknowledgement, then comes back after it.
  c.channel().send(R"("after")");
  kin::unique_fd client2 = kin_test::raw_connect(kin_test::ip("127.0.0.1", port));
  REQUIRE(client2);
  REQUIRE(kin_test::run_until(
      l, [&] { return c.got.size() == 3; }, std::chrono::seconds(20)));
  CHECK(c.got[1] == R"({"with":"server"})");
  CHECK(c.got[2] == R"("after")");
  CHECK(read_to_end(client2.get()) == expected);
  CHECK(c.handle_count == 0);
  CHECK(c.warnings.empty());
  CHECK(c.errors.empty());
  c.channel().disconnect();
  REQUIRE(kin_test::run_until(
      l, [&] { return c.exit_status >= 0; }, std::chrono::seconds(10)));
  CHECK(c.exit_status == 0);
}
