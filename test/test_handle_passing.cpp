// Tests of handles passed between processes: every kind of handle sent through a socketpair to
// the helper child, rebuilt there with kin::adopt and used; control messages the receiver cannot
// take whole (MSG_CTRUNC); backpressure against a slow reader; a reader that dies mid-write.
//
// The child (test/helpers/child_handles.cpp) has one end of a socketpair at its fd 3 and reads
// one command per line, `<name> <descriptor count> [argument]`, with the descriptors on the
// line's first byte; it answers one line per command, "ok ..." or "fail ...".
#include "catch.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>

#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"

#include <spawn.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

using namespace std::chrono_literals;

namespace {

std::span<const std::byte> bytes_of(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// The stream pattern and checksum the child uses too (see child_handles.cpp).
std::uint8_t pattern_byte(std::uint64_t index) {
  return static_cast<std::uint8_t>((index * 0x9E3779B97F4A7C15ull) >> 56);
}

constexpr std::uint64_t fnv_offset = 14695981039346656037ull;
constexpr std::uint64_t fnv_prime = 1099511628211ull;

std::uint64_t fnv_add(std::uint64_t h, std::uint8_t v) { return (h ^ v) * fnv_prime; }

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Fills `buf` with the pattern from `offset` on, adding each byte to `hash`.
void fill_pattern(std::vector<std::byte>& buf, std::uint64_t offset, std::uint64_t& hash) {
  for (std::size_t i = 0; i < buf.size(); ++i) {
    const std::uint8_t v = pattern_byte(offset + i);
    buf[i] = static_cast<std::byte>(v);
    hash = fnv_add(hash, v);
  }
}

// Runs `l` until `done()` holds or `limit` passes; returns done(). (run_once() would not do: an
// iteration that makes `done()` true may still sleep in its poll.)
template <class Pred>
bool run_until(kin::loop& l, Pred done, std::chrono::milliseconds limit = 15s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  kin::timer check(l, [&] {
    if (done() || std::chrono::steady_clock::now() > deadline) l.stop();
  });
  REQUIRE(check.start(0ms, 1ms));
  if (!done()) l.run();
  check.stop();
  return done();
}

std::vector<kin::unique_fd> one_fd(kin::unique_fd fd) {
  std::vector<kin::unique_fd> v;
  v.push_back(std::move(fd));
  return v;
}

// `n` close-on-exec duplicates of `fd`.
std::vector<kin::unique_fd> dups_of(int fd, std::size_t n) {
  std::vector<kin::unique_fd> v;
  for (std::size_t i = 0; i < n; ++i) {
    kin::unique_fd d(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    REQUIRE(d);
    v.push_back(std::move(d));
  }
  return v;
}

// True when every write end of the pipe whose read end is `read_end` is closed, in this process
// and every other: the read end reports EOF (within `limit`).
bool sees_eof(int read_end, std::chrono::milliseconds limit = 10s) {
  pollfd p{read_end, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return false;
  char c;
  return ::read(read_end, &c, 1) == 0;
}

// A process started with posix_spawn, killed and reaped when it is dropped unwaited.
class child_process {
 public:
  child_process() = default;
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t& pid() { return pid_; }

  // Waits (at most `limit`) for the child to end: "exit N" or "signal N"; "timeout" (after
  // which it is killed and reaped).
  std::string wait(std::chrono::milliseconds limit = 15s) {
    int status = 0;
    const bool ended =
        kin_test::wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, limit);
    if (!ended) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
    if (!ended) return "timeout";
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    return "signal " + std::to_string(WTERMSIG(status));
  }

 private:
  pid_t pid_ = -1;
};

// The helper child running `behaviour`, with the other end of the channel at its fd 3. The
// parent's end is a kin::unix_socket on `l` that collects the child's lines.
class child_session {
 public:
  child_session(kin::loop& l, const std::string& behaviour) : loop_(l), channel_(l) {
    const char* path = std::getenv("KIN_TEST_CHILD");
    REQUIRE(path != nullptr);
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    // Kept away from 3, so that the dup2 onto 3 really copies it (and clears close-on-exec).
    kin::unique_fd child_end(::fcntl(pair->second.get(), F_DUPFD_CLOEXEC, 10));
    REQUIRE(child_end);
    pair->second.reset();
    std::string program = path, what = behaviour;
    char* argv[] = {program.data(), what.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, child_end.get(), 3);
    const int rc = ::posix_spawn(&child_.pid(), path, &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    REQUIRE(channel_.open(std::move(pair->first)));
    REQUIRE(channel_.read_start(
        [this](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
          if (ec) {
            end_ = ec;
            return;
          }
          partial_.append(reinterpret_cast<const char*>(data.data()), data.size());
          std::size_t nl;
          while ((nl = partial_.find('\n')) != std::string::npos) {
            lines_.push_back(partial_.substr(0, nl));
            partial_.erase(0, nl + 1);
          }
        }));
  }
  child_session(const child_session&) = delete;
  child_session& operator=(const child_session&) = delete;

  kin::unix_socket& channel() { return channel_; }
  pid_t pid() { return child_.pid(); }

  // Sends `line` (with `fds` on its first byte) and runs the loop until it is written.
  void send(const std::string& line, std::vector<kin::unique_fd> fds = {}) {
    std::optional<std::error_code> done;
    auto cb = [&done](std::error_code ec) { done = ec; };
    if (fds.empty()) {
      channel_.write(line, cb);
    } else {
      channel_.write(bytes_of(line), std::move(fds), cb);
    }
    REQUIRE(run_until(loop_, [&] { return done.has_value(); }));
    INFO("sending " << line << ": " << done->message());
    REQUIRE_FALSE(*done);
  }

  // The child's next line; empty if the channel ended or nothing came within `limit`.
  std::string next_line(std::chrono::milliseconds limit = 15s) {
    run_until(
        loop_, [&] { return !lines_.empty() || end_; }, limit);
    if (lines_.empty()) return {};
    std::string line = std::move(lines_.front());
    lines_.pop_front();
    return line;
  }

  // Closes the channel (the child exits when it sees EOF) and waits for the child's end.
  std::string finish() {
    channel_.close();
    return child_.wait();
  }

 private:
  kin::loop& loop_;
  kin::unix_socket channel_;
  child_process child_;
  std::string partial_;
  std::deque<std::string> lines_;
  std::error_code end_;
};

// Connects a blocking socket to `to`, sends `text`, half-closes, and reads the reply to EOF
// (each call bounded by a 10 s socket timeout).
std::string raw_echo(const kin::socket_address& to, const std::string& text) {
  const int family = to.family() == kin::address_family::ipv4   ? AF_INET
                     : to.family() == kin::address_family::ipv6 ? AF_INET6
                                                                : AF_UNIX;
  kin::unique_fd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s);
  const timeval ten_seconds{10, 0};
  REQUIRE(::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &ten_seconds, sizeof ten_seconds) == 0);
  REQUIRE(::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &ten_seconds, sizeof ten_seconds) == 0);
  REQUIRE(::connect(s.get(), static_cast<const sockaddr*>(to.data()), to.size()) == 0);
  REQUIRE(::write(s.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  REQUIRE(::shutdown(s.get(), SHUT_WR) == 0);
  std::string got;
  char buf[256];
  ssize_t n;
  while ((n = ::read(s.get(), buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  REQUIRE(n == 0);  // EOF, not a timeout
  return got;
}

kin::socket_address loopback(std::uint16_t port = 0) {
  auto a = kin::socket_address::ip("127.0.0.1", port);
  REQUIRE(a);
  return *a;
}

// Reads a pipe end to EOF with a kin::pipe on `l`.
std::string read_pipe_to_eof(kin::loop& l, kin::unique_fd read_end) {
  kin::pipe reader(l);
  REQUIRE(reader.open(std::move(read_end)));
  std::string got;
  std::error_code end;
  REQUIRE(reader.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (ec) {
          end = ec;
          return;
        }
        got.append(reinterpret_cast<const char*>(data.data()), data.size());
      }));
  CHECK(run_until(l, [&] { return bool(end); }));
  CHECK(end == kin::errc::eof);
  reader.close();
  return got;
}

// SIGPIPE at its default action (terminate) while it lives, so a write that raised it would
// kill the test process instead of passing unnoticed.
class sigpipe_default {
 public:
  sigpipe_default() {
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    REQUIRE(::sigaction(SIGPIPE, &dfl, &previous_) == 0);
  }
  sigpipe_default(const sigpipe_default&) = delete;
  sigpipe_default& operator=(const sigpipe_default&) = delete;
  ~sigpipe_default() { ::sigaction(SIGPIPE, &previous_, nullptr); }

 private:
  struct sigaction previous_ = {};
};

bool sigpipe_pending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGPIPE) == 1;
}

// Writes 64 KiB chunks to `w` for as long as the queue takes them, and again on each drain,
// until a write fails (or `max_writes` were queued), recording the first error.
struct endless_writer {
  explicit endless_writer(kin::stream& w) : stream(w) {
    stream.on_drain([this] { pump(); });
  }
  endless_writer(const endless_writer&) = delete;
  endless_writer& operator=(const endless_writer&) = delete;
  ~endless_writer() { stream.on_drain({}); }

  void pump() {
    while (!error && queued < max_writes) {
      ++queued;
      const bool more = stream.write(std::vector<std::byte>(64 * 1024, std::byte{'w'}),
                                     [this](std::error_code ec) {
                                       if (!ec) {
                                         ++written;
                                       } else if (!error) {
                                         error = ec;
                                       }
                                     });
      if (!more) return;
    }
  }

  kin::stream& stream;
  static constexpr std::size_t max_writes = 16 * 1024;  // 1 GiB: far more than any buffer
  std::size_t queued = 0, written = 0;
  std::error_code error;
};

}  // namespace

TEST_CASE("a TCP server passed to a child accepts there the connection the parent makes",
          "[handle_passing]") {
  kin::loop l;
  child_session child(l, "handles");
  kin::tcp_server server(l);
  REQUIRE(server.bind(loopback()));
  bool accepted_here = false;
  REQUIRE(server.listen(8, [&](std::error_code, kin::unique_fd) { accepted_here = true; }));
  auto address = server.local_address();
  REQUIRE(address);
  auto fd = server.release();
  REQUIRE(fd);
  child.send("tcp_server 1\n", one_fd(std::move(*fd)));
  // The parent holds no copy: only the child's server can accept this connection.
  CHECK(raw_echo(*address, "hello") == "hello");
  CHECK(child.next_line() == "ok tcp_server accepted 5 bytes: hello");
  CHECK_FALSE(accepted_here);
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a Unix server passed to a child accepts there the connection the parent makes",
          "[handle_passing]") {
  kin_test::temp_dir dir;
  kin::loop l;
  child_session child(l, "handles");
  kin::unix_server server(l);
  auto address = kin::socket_address::unix_path((dir.path() / "s").string());
  REQUIRE(address);
  REQUIRE(server.bind(*address));
  REQUIRE(server.listen(8, [](std::error_code, kin::unique_fd) {}));
  auto fd = server.release();
  REQUIRE(fd);
  child.send("unix_server 1\n", one_fd(std::move(*fd)));
  CHECK(raw_echo(*address, "hello") == "hello");
  CHECK(child.next_line() == "ok unix_server accepted 5 bytes: hello");
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a TCP connection handed over mid-stream keeps its byte order across the processes",
          "[handle_passing]") {
  constexpr std::size_t total = 1 << 20, piece = 16 * 1024, parent_share = 100 * 1024;
  kin::loop l;
  child_session child(l, "handles");

  // A connected pair on 127.0.0.1: `client` writes, the parent's `conn` reads.
  kin::tcp_server server(l);
  REQUIRE(server.bind(loopback()));
  kin::unique_fd accepted;
  REQUIRE(server.listen(8, [&](std::error_code ec, kin::unique_fd c) {
    CHECK_FALSE(ec);
    accepted = std::move(c);
  }));
  auto address = server.local_address();
  REQUIRE(address);
  kin::tcp_socket client(l);
  std::optional<std::error_code> connected;
  REQUIRE(client.connect(*address, [&](std::error_code ec) { connected = ec; }));
  REQUIRE(run_until(l, [&] { return accepted.is_open() && connected.has_value(); }));
  REQUIRE_FALSE(*connected);
  server.close();
  kin::tcp_socket conn(l);
  REQUIRE(conn.open(std::move(accepted)));

  // The client writes the pattern in pieces, one per millisecond, then half-closes.
  std::size_t sent = 0;
  std::uint64_t unused_hash = fnv_offset;
  kin::timer pace(l);
  pace.set_callback([&] {
    std::vector<std::byte> buf(piece);
    fill_pattern(buf, sent, unused_hash);
    client.write(std::move(buf));
    sent += piece;
    if (sent == total) {
      pace.stop();
      client.shutdown();
    }
  });
  REQUIRE(pace.start(0ms, 1ms));

  // The parent reads until it has at least `parent_share` bytes, then releases the connection
  // from inside its read callback: what it read is its own, the rest is still in the kernel.
  std::string parent_got;
  kin::unique_fd handed;
  REQUIRE(conn.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        CHECK_FALSE(ec);
        if (ec) return;
        parent_got.append(reinterpret_cast<const char*>(data.data()), data.size());
        if (parent_got.size() < parent_share) return;
        auto fd = conn.release();
        CHECK(fd);
        if (fd) handed = std::move(*fd);
      }));
  REQUIRE(run_until(l, [&] { return handed.is_open(); }));
  CHECK_FALSE(conn.is_open());
  const std::size_t offset = parent_got.size();
  INFO("the parent read " << offset << " bytes; the client had queued " << sent);
  CHECK(sent < total);  // handed over mid-stream
  child.send("tcp_socket 1 " + std::to_string(offset) + "\n", one_fd(std::move(handed)));

  // The child reads the rest to EOF.
  std::uint64_t rest_hash = fnv_offset;
  for (std::size_t i = offset; i < total; ++i) rest_hash = fnv_add(rest_hash, pattern_byte(i));
  CHECK(child.next_line() ==
        "ok tcp_socket " + std::to_string(total - offset) + " " + hex(rest_hash) + " mismatches 0");
  std::size_t parent_mismatches = 0;
  for (std::size_t i = 0; i < offset; ++i) {
    if (static_cast<std::uint8_t>(parent_got[i]) != pattern_byte(i)) ++parent_mismatches;
  }
  CHECK(parent_mismatches == 0);
  CHECK(sent == total);
  client.close();
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a UDP socket passed to a child receives a datagram there, with its sender",
          "[handle_passing]") {
  kin::loop l;
  child_session child(l, "handles");
  kin::udp_socket receiver(l);
  REQUIRE(receiver.bind(loopback()));
  auto address = receiver.local_address();
  REQUIRE(address);
  auto fd = receiver.release();
  REQUIRE(fd);
  child.send("udp 1\n", one_fd(std::move(*fd)));

  kin::udp_socket sender(l);
  REQUIRE(sender.bind(loopback()));
  auto from = sender.local_address();
  REQUIRE(from);
  std::optional<std::error_code> sent;
  sender.send_to(bytes_of("datagram"), *address, [&](std::error_code ec) { sent = ec; });
  CHECK(child.next_line() == "ok udp datagram from " + from->to_string());
  REQUIRE(sent);
  CHECK_FALSE(*sent);
  sender.close();
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a file passed to a child shares its offset with the sender's copy", "[handle_passing]") {
  kin_test::temp_dir dir;
  const std::string path = (dir.path() / "shared.txt").string();
  kin::loop l;
  child_session child(l, "handles");
  kin::file f(l);
  REQUIRE(f.open(path, O_RDWR | O_CREAT | O_TRUNC, 0600));
  REQUIRE(f.write(bytes_of("abc")));
  kin::unique_fd copy(::fcntl(f.fd(), F_DUPFD_CLOEXEC, 0));
  REQUIRE(copy);
  child.send("file 1 def\n", one_fd(std::move(copy)));
  CHECK(child.next_line() == "ok file offset 3 -> 6");
  // The child's write moved the offset of the parent's descriptor too.
  REQUIRE(f.write(bytes_of("ghi")));
  auto offset = f.seek(0, SEEK_CUR);
  REQUIRE(offset);
  CHECK(*offset == 9);
  std::string content(16, '\0');
  auto n = f.read_at(std::as_writable_bytes(std::span(content.data(), content.size())), 0);
  REQUIRE(n);
  content.resize(*n);
  CHECK(content == "abcdefghi");
  f.close();
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a pipe's write end passed to a child carries its bytes and its EOF back",
          "[handle_passing]") {
  kin::loop l;
  child_session child(l, "handles");
  auto p = kin::make_pipe();
  REQUIRE(p);
  child.send("pipe 1 through-the-pipe\n", one_fd(std::move(p->write)));
  // The only write end is the child's: EOF comes when it shuts it down.
  CHECK(read_pipe_to_eof(l, std::move(p->read)) == "through-the-pipe");
  CHECK(child.next_line() == "ok pipe wrote 16 bytes");
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a Unix socket passed to a child keeps the bytes already in it and carries more",
          "[handle_passing]") {
  kin::loop l;
  child_session child(l, "handles");
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::unix_socket mine(l);
  REQUIRE(mine.open(std::move(pair->first)));
  // "ping" waits in the other end's receive queue, and travels with it.
  mine.write(std::string_view("ping"));
  REQUIRE(run_until(l, [&] { return mine.write_queue_size() == 0; }));
  child.send("unix_socket 1\n", one_fd(std::move(pair->second)));
  std::string got;
  std::error_code end;
  REQUIRE(mine.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (ec) {
          end = ec;
          return;
        }
        got.append(reinterpret_cast<const char*>(data.data()), data.size());
      }));
  CHECK(run_until(l, [&] { return bool(end); }));
  CHECK(end == kin::errc::eof);
  CHECK(got == "pong");
  CHECK(child.next_line() == "ok unix_socket got ping, can pass fds: yes");
  mine.close();
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a receiver at its descriptor limit gets message_truncated, keeps nothing, and reads on",
          "[handle_passing]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    child_session child(l, "handles");
    // The child can install at most 2 more descriptors; 8 come.
    child.send("limit 0 2\n");
    const std::string limited = child.next_line();
    REQUIRE(limited.rfind("ok limit fds ", 0) == 0);
    const std::string open_in_child = limited.substr(std::strlen("ok limit fds "));

    auto p = kin::make_pipe();
    REQUIRE(p);
    child.send("count 8\n", dups_of(p->write.get(), 8));
    p->write.reset();
    // The read callback saw kin::errc::message_truncated and no descriptor at all (kin closed
    // those the kernel did install).
    CHECK(child.next_line() == "ok count 0 of 8 truncated 1 kinds none");
    // No copy of the eight write ends is left anywhere: not in the child, not in flight.
    CHECK(sees_eof(p->read.get()));

    child.send("unlimit 0\n");
    CHECK(child.next_line() == "ok unlimit fds " + open_in_child);

    // The same stream carries a later message with a descriptor.
    auto q = kin::make_pipe();
    REQUIRE(q);
    child.send("pipe 1 later\n", one_fd(std::move(q->write)));
    CHECK(child.next_line() == "ok pipe wrote 5 bytes");
    CHECK(read_pipe_to_eof(l, std::move(q->read)) == "later");
    CHECK(child.finish() == "exit 0");
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("a message with the most descriptors allowed arrives whole; one more is refused",
          "[handle_passing]") {
  // kin's receiver has control room for max_fds_per_write (the kernel's SCM_MAX_FD, 253), the
  // most a sender can attach, so a kin receiver is never short of room.
  REQUIRE(kin::max_fds_per_write == 253);
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    child_session child(l, "handles");
    auto p = kin::make_pipe();
    REQUIRE(p);
    child.send("count 253\n", dups_of(p->write.get(), 253));
    CHECK(child.next_line() == "ok count 253 of 253 truncated 0 kinds pipe");
    // The child closed all 253 (and only it had them).
    p->write.reset();
    CHECK(sees_eof(p->read.get()));

    // 254 are refused by kin before anything is sent, and closed.
    auto q = kin::make_pipe();
    REQUIRE(q);
    std::optional<std::error_code> refused;
    child.channel().write(bytes_of("count 254\n"), dups_of(q->write.get(), 254),
                          [&](std::error_code ec) { refused = ec; });
    REQUIRE(run_until(l, [&] { return refused.has_value(); }));
    CHECK(*refused == std::errc::invalid_argument);
    q->write.reset();
    CHECK(sees_eof(q->read.get()));

    // The refused write left nothing in the stream: the next command is read as sent.
    auto r = kin::make_pipe();
    REQUIRE(r);
    child.send("count 1\n", one_fd(std::move(r->write)));
    CHECK(child.next_line() == "ok count 1 of 1 truncated 0 kinds pipe");
    CHECK(child.finish() == "exit 0");
  }
  CHECK(kin_test::open_fds() == fds_before);

  // The kernel itself refuses a 254th descriptor in one message: kin's limit is the kernel's.
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  std::vector<int> same(254, pair->first.get());
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 254)] = {};
  char byte = 'x';
  iovec iov{&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * 254);
  std::memcpy(CMSG_DATA(c), same.data(), sizeof(int) * 254);
  errno = 0;
  CHECK(::sendmsg(pair->first.get(), &msg, MSG_NOSIGNAL) == -1);
  CHECK(errno == EINVAL);
}

TEST_CASE("a receiver whose socket also carries credentials still takes the most descriptors",
          "[handle_passing]") {
  // SO_PASSCRED makes the kernel put the sender's credentials ahead of the descriptors in the
  // control buffer; the option belongs to the socket, so it comes along with a passed socket.
  kin::loop l;
  child_session child(l, "handles");
  child.send("sockopt 0 passcred\n");
  REQUIRE(child.next_line() == "ok sockopt passcred");
  auto p = kin::make_pipe();
  REQUIRE(p);
  child.send("count 253\n", dups_of(p->write.get(), 253));
  CHECK(child.next_line() == "ok count 253 of 253 truncated 0 kinds pipe");
  p->write.reset();
  CHECK(sees_eof(p->read.get()));
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a receiver whose socket has SO_PASSPIDFD on keeps none of the pidfds the kernel adds",
          "[handle_passing]") {
  // With SO_PASSPIDFD (Linux 6.5) every read installs a pidfd of the sender in the receiver, in
  // an SCM_PIDFD control message: it is a descriptor like those of SCM_RIGHTS and must be closed.
  kin::loop l;
  child_session child(l, "handles");
  child.send("fds 0\n");
  const std::string before = child.next_line();
  REQUIRE(before.rfind("ok fds ", 0) == 0);
  child.send("sockopt 0 passpidfd\n");
  const std::string set = child.next_line();
  if (set != "ok sockopt passpidfd unsupported") {
    REQUIRE(set == "ok sockopt passpidfd");
    for (int i = 0; i < 5; ++i) {
      child.send("fds 0\n");
      CHECK(child.next_line() == before);
    }
  }
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a raw receiver short of control room loses descriptors; kin then reads on correctly",
          "[handle_passing]") {
  kin::loop l;
  child_session child(l, "handles-after-raw-read");
  auto p = kin::make_pipe();
  REQUIRE(p);
  // The child reads this with a raw recvmsg and room for one descriptor (two, once the kernel
  // rounds CMSG_SPACE up): the kernel installs what fits, sets MSG_CTRUNC and drops the rest.
  child.send("four 4\n", dups_of(p->write.get(), 4));
  p->write.reset();
  const std::string raw = child.next_line();
  const std::string prefix = "raw 'four 4' ctrunc 1 fds ";
  REQUIRE(raw.rfind(prefix, 0) == 0);
  const int received = std::atoi(raw.c_str() + prefix.size());
  CHECK(received >= 1);
  CHECK(received < 4);
  // The child closed those it received; the ones that did not fit are gone too, not queued.
  CHECK(sees_eof(p->read.get()));

  // kin now reads the same socket: later messages, with descriptors, arrive whole.
  auto q = kin::make_pipe();
  REQUIRE(q);
  child.send("count 2\n", dups_of(q->write.get(), 2));
  CHECK(child.next_line() == "ok count 2 of 2 truncated 0 kinds pipe");
  child.send("pipe 1 after\n", one_fd(std::move(q->write)));
  CHECK(child.next_line() == "ok pipe wrote 5 bytes");
  CHECK(read_pipe_to_eof(l, std::move(q->read)) == "after");
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("64 MB written to a slow reader arrive in order while the queue stays bounded",
          "[handle_passing]") {
  constexpr std::size_t chunk = 64 * 1024, writes = 1024, total = chunk * writes;
  constexpr std::size_t high = 64 * 1024;  // the default high water mark
  kin::loop l;
  child_session child(l, "handles");
  kin::unix_socket& w = child.channel();
  child.send("bulk 0 " + std::to_string(total) + "\n");
  std::size_t issued = 0, completed = 0, failed = 0, drains = 0, largest = 0;
  std::uint64_t hash = fnv_offset;
  auto pump = [&] {
    while (issued < writes) {
      std::vector<std::byte> buf(chunk);
      fill_pattern(buf, issued * chunk, hash);
      ++issued;
      const bool more = w.write(std::move(buf), [&](std::error_code ec) {
        if (ec) {
          ++failed;
        } else {
          ++completed;
        }
      });
      largest = std::max(largest, w.write_queue_size());
      if (!more) return;
    }
  };
  w.on_drain([&] {
    ++drains;
    CHECK(w.write_queue_size() <= 16 * 1024);  // the default low water mark
    pump();
  });
  pump();
  // The child sleeps between reads; it reports once it has all the bytes.
  // (Read first: `hash` is complete only once every write was queued.)
  const std::string report = child.next_line(30s);
  CHECK(report == "ok bulk " + std::to_string(total) + " " + hex(hash) + " mismatches 0");
  w.on_drain({});
  CHECK(issued == writes);
  CHECK(completed == writes);
  CHECK(failed == 0);
  CHECK(drains > 0);
  // Memory stays bounded: at most one write above the high water mark is ever queued.
  CHECK(largest <= high + chunk);
  CHECK(child.finish() == "exit 0");
}

TEST_CASE("a reader that dies mid-write gives EPIPE or ECONNRESET, never SIGPIPE",
          "[handle_passing]") {
  sigpipe_default dfl;
  kin::loop l;
  SECTION("the socketpair to a child that is killed") {
    child_session child(l, "handles");
    child.send("stall 0 65536\n");
    endless_writer writer(child.channel());
    writer.pump();
    // The child reads 64 KiB and stops reading; the parent's queue fills up.
    CHECK(child.next_line() == "ok stalled");
    REQUIRE(::kill(child.pid(), SIGKILL) == 0);
    CHECK(run_until(l, [&] { return bool(writer.error); }));
    INFO(writer.error.message());
    CHECK((writer.error == std::errc::broken_pipe || writer.error == std::errc::connection_reset));
    CHECK(writer.queued < endless_writer::max_writes);
    CHECK(child.finish() == "signal 9");
  }
  SECTION("a pipe whose read end a child had, and exited") {
    child_session child(l, "handles");
    auto p = kin::make_pipe();
    REQUIRE(p);
    kin::pipe w(l);
    REQUIRE(w.open(std::move(p->write)));
    child.send("drain_pipe 1 65536\n", one_fd(std::move(p->read)));
    endless_writer writer(w);
    writer.pump();
    CHECK(child.next_line() == "ok pipe reader exits");
    CHECK(run_until(l, [&] { return bool(writer.error); }));
    INFO(writer.error.message());
    CHECK(writer.error == std::errc::broken_pipe);
    CHECK(writer.written > 0);  // the child read some before it died
    w.close();
    CHECK(child.finish() == "exit 0");
  }
  CHECK_FALSE(sigpipe_pending());
}
