// kin-channel-flood: a stress test of kin::channel's native codec between processes. A parent
// and K children it started with kin::fork() send each other messages of random sizes, each
// with up to 16 descriptors of every kind (pipes, Unix stream and datagram sockets, TCP
// connections and listeners on 127.0.0.1, UDP sockets, files), in both directions for S
// seconds. Every message is derived from (seed, child, direction, number), so the receiver
// checks each byte, the order, and each descriptor — the handle it was rebuilt as and the token
// its sender wrote into it — exactly once (DESIGN.md's invariants 7 and 8). The same program
// is the child (a hidden --child mode). Exits 0 only if nothing was violated.
#include <kin/channel.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

// How long past --seconds the exchange may take before it is declared stuck (a sanitized
// build on two CPUs drains its queues slowly, but not this slowly).
constexpr auto stuck_after = 60s;
// How long a receiver waits for a token its sender wrote before sending the descriptor: it is
// there at once, but loopback TCP gives no promise.
constexpr int token_wait_ms = 5000;
// Problems printed in full; the rest are only counted.
constexpr int problems_shown = 50;
constexpr std::uint32_t max_fds_per_message = 16;
// Messages one turn of a sender queues before it lets the loop serve the other channels.
constexpr int messages_per_turn = 64;

struct config {
  double seconds = 10;
  int children = 4;
  std::uint64_t seed = 0;
  std::size_t max_size = 256 * 1024;
  // Descriptors a sender may have sent and not seen acknowledged, per direction of a channel.
  std::uint32_t window = 0;  // 0: chosen from RLIMIT_NOFILE
  bool verbose = false;
  int child = -1;  // run as child number `child` (the hidden mode the parent starts)
};

// This process's problems: the first ones printed, all counted.
class problem_log {
 public:
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }
  void add(const std::string& what) {
    if (++count_ <= problems_shown) {
      std::fprintf(stderr, "%s: %s\n", prefix_.c_str(), what.c_str());
    } else if (count_ == problems_shown + 1) {
      std::fprintf(stderr, "%s: (more problems are counted, not shown)\n", prefix_.c_str());
    }
  }
  [[nodiscard]] int count() const { return count_; }

 private:
  std::string prefix_ = "kin-channel-flood";
  int count_ = 0;
};

problem_log problems;

std::string errno_text(int err) { return std::error_code(err, std::system_category()).message(); }

// ---- /proc
// ---------------------------------------------------------------------------------------

std::set<int> numbers_in(const char* dir_path) {
  std::set<int> out;
  DIR* d = ::opendir(dir_path);
  if (d == nullptr) return out;
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int n = std::atoi(e->d_name);
    if (n != own) out.insert(n);
  }
  ::closedir(d);
  return out;
}

std::set<int> open_fds() { return numbers_in("/proc/self/fd"); }

std::set<int> all_children() {
  std::set<int> pids;
  for (int task : numbers_in("/proc/self/task")) {
    const std::string path = "/proc/self/task/" + std::to_string(task) + "/children";
    if (FILE* f = std::fopen(path.c_str(), "re")) {
      int pid = 0;
      while (std::fscanf(f, "%d", &pid) == 1) pids.insert(pid);
      std::fclose(f);
    }
  }
  return pids;
}

std::string fd_target(int fd) {
  char buf[512];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  if (n < 0) return "?";
  return std::string(buf, static_cast<std::size_t>(n));
}

// What differs between two descriptor sets, with what the new ones point to.
std::string fd_difference(const std::set<int>& before, const std::set<int>& after) {
  std::string out;
  for (int fd : after) {
    if (before.count(fd) == 0) out += " +" + std::to_string(fd) + " (" + fd_target(fd) + ")";
  }
  for (int fd : before) {
    if (after.count(fd) == 0) out += " -" + std::to_string(fd);
  }
  return out;
}

// ---- the messages
// --------------------------------------------------------------------------------

// splitmix64: small, fast, and the same everywhere, so both processes derive the same messages.
class generator {
 public:
  explicit generator(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + next() % (hi - lo + 1); }

 private:
  std::uint64_t state_;
};

// One direction of one channel.
struct stream_key {
  std::uint64_t seed = 0;
  std::uint32_t child = 0;
  std::uint32_t direction = 0;  // 0: parent to child, 1: child to parent
};

const char* direction_name(std::uint32_t direction) {
  return direction == 0 ? "parent->child" : "child->parent";
}

// The kinds of descriptor the messages carry.
enum class carried : std::uint8_t {
  pipe,           // a pipe's read end; the token waits in the pipe
  unix_stream,    // one end of a Unix stream socketpair; the token waits in it
  unix_datagram,  // one end of a Unix datagram socketpair; the token is one datagram
  tcp_socket,     // either end of a TCP connection over 127.0.0.1
  tcp_server,     // a listening TCP socket with one connection waiting that carries the token
  udp,            // a UDP socket on 127.0.0.1 that sent itself the token
  file,           // an unlinked temporary file holding the token
  count
};

constexpr std::size_t carried_count = static_cast<std::size_t>(carried::count);
constexpr unsigned carried_weights[carried_count] = {30, 20, 10, 12, 5, 8, 15};

const char* name_of(carried c) {
  static constexpr const char* names[carried_count] = {
      "pipe", "unix-stream", "unix-datagram", "tcp-socket", "tcp-server", "udp", "file"};
  return names[static_cast<std::size_t>(c)];
}

kin::fd_kind kind_of(carried c) {
  switch (c) {
    case carried::pipe:
      return kin::fd_kind::pipe;
    case carried::unix_stream:
      return kin::fd_kind::unix_stream_socket;
    case carried::unix_datagram:
      return kin::fd_kind::unix_datagram_socket;
    case carried::tcp_socket:
      return kin::fd_kind::tcp_socket;
    case carried::tcp_server:
      return kin::fd_kind::tcp_server;
    case carried::udp:
      return kin::fd_kind::udp_socket;
    default:
      return kin::fd_kind::file;
  }
}

// True when `h` is the handle type adopt() must rebuild a `c` as.
bool holds_expected(const kin::any_handle& h, carried c) {
  switch (c) {
    case carried::pipe:
      return std::holds_alternative<std::unique_ptr<kin::pipe>>(h);
    case carried::unix_stream:
      return std::holds_alternative<std::unique_ptr<kin::unix_socket>>(h);
    case carried::unix_datagram:
      return std::holds_alternative<kin::raw_descriptor>(h);
    case carried::tcp_socket:
      return std::holds_alternative<std::unique_ptr<kin::tcp_socket>>(h);
    case carried::tcp_server:
      return std::holds_alternative<std::unique_ptr<kin::tcp_server>>(h);
    case carried::udp:
      return std::holds_alternative<std::unique_ptr<kin::udp_socket>>(h);
    default:
      return std::holds_alternative<std::unique_ptr<kin::file>>(h);
  }
}

int fd_of(const kin::any_handle& h) {
  return std::visit(
      [](const auto& held) -> int {
        if constexpr (std::is_same_v<std::decay_t<decltype(held)>, kin::raw_descriptor>) {
          return held.fd.get();
        } else {
          return held ? held->fd() : -1;
        }
      },
      h);
}

struct message_plan {
  std::size_t size = 0;
  std::uint32_t fd_count = 0;
  std::array<carried, max_fds_per_message> fds{};
};

void put_le64(char* at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) at[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

std::uint64_t get_le64(const char* at) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<unsigned char>(at[i])} << (8 * i);
  return v;
}

// Message `seq` of `key`: its size (mostly small, now and then up to max_size, sometimes
// empty), the kinds of its descriptors, and, into `payload` when given, its bytes — the number
// itself in the first 8 (little-endian) when there is room, then bytes of the generator.
message_plan make_message(const stream_key& key, std::uint64_t seq, std::size_t max_size,
                          std::string* payload) {
  generator g(key.seed ^ (std::uint64_t{key.child} << 40) ^ (std::uint64_t{key.direction} << 63) ^
              (seq * 0xd1342543de82ef95ULL));
  message_plan p;
  const std::uint64_t r = g.next() % 100;
  if (r < 5) {
    p.size = 0;
  } else if (r < 45) {
    p.size = g.between(1, 64);
  } else if (r < 75) {
    p.size = g.between(65, 2048);
  } else if (r < 93) {
    p.size = g.between(2049, 32 * 1024);
  } else if (r < 99) {
    p.size = g.between(32 * 1024 + 1, 128 * 1024);
  } else {
    p.size = g.between(128 * 1024 + 1, std::max<std::size_t>(max_size, 128 * 1024 + 1));
  }
  p.size = std::min(p.size, max_size);
  const std::uint64_t f = g.next() % 100;
  p.fd_count = f < 50   ? 0
               : f < 85 ? static_cast<std::uint32_t>(g.between(1, 4))
                        : static_cast<std::uint32_t>(g.between(5, max_fds_per_message));
  unsigned total = 0;
  for (unsigned w : carried_weights) total += w;
  for (std::uint32_t i = 0; i < p.fd_count; ++i) {
    unsigned pick = static_cast<unsigned>(g.next() % total);
    std::size_t k = 0;
    while (pick >= carried_weights[k]) pick -= carried_weights[k++];
    p.fds[i] = static_cast<carried>(k);
  }
  if (payload != nullptr) {
    payload->resize(p.size);
    char* at = payload->data();
    std::size_t i = 0;
    if (p.size >= 8) {
      put_le64(at, seq);
      i = 8;
    }
    for (; i + 8 <= p.size; i += 8) put_le64(at + i, g.next());
    if (i < p.size) {
      char tail[8];
      put_le64(tail, g.next());
      std::memcpy(at + i, tail, p.size - i);
    }
  }
  return p;
}

// What a sender writes into (or behind) descriptor `index` of message `seq`, for the receiver
// to read back: which message, which descriptor, which direction of which channel, what kind.
using token = std::array<char, 16>;

token token_for(const stream_key& key, std::uint64_t seq, std::uint32_t index, carried c) {
  token t{};
  put_le64(t.data(), seq);
  t[8] = static_cast<char>(index);
  t[9] = static_cast<char>(key.direction);
  t[10] = static_cast<char>(c);
  t[11] = 'k';
  const std::uint32_t tag = key.child ^ static_cast<std::uint32_t>(key.seed);
  for (int i = 0; i < 4; ++i) t[12 + i] = static_cast<char>((tag >> (8 * i)) & 0xff);
  return t;
}

std::string describe(const token& t) {
  return "message " + std::to_string(get_le64(t.data())) + " descriptor " +
         std::to_string(static_cast<unsigned char>(t[8])) + " " +
         direction_name(static_cast<unsigned char>(t[9])) + " kind " +
         std::to_string(static_cast<unsigned char>(t[10]));
}

// ---- descriptors: made by the sender, checked by the receiver --------------------------------

// Retries a system call interrupted by a signal (SIGCHLD reaches the parent all the time).
template <class F>
auto retry(F f) {
  for (;;) {
    auto r = f();
    if (r != -1 || errno != EINTR) return r;
  }
}

bool send_all(int fd, const token& t, bool socket) {
  std::size_t done = 0;
  while (done < t.size()) {
    const ssize_t n = retry([&] {
      return socket ? ::send(fd, t.data() + done, t.size() - done, MSG_NOSIGNAL)
                    : ::write(fd, t.data() + done, t.size() - done);
    });
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// Waits until `fd` is readable, at most token_wait_ms.
bool wait_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return retry([&] { return ::poll(&p, 1, token_wait_ms); }) > 0;
}

// Makes the descriptors senders pass, each carrying a token.
class descriptor_factory {
 public:
  descriptor_factory() = default;
  descriptor_factory(const descriptor_factory&) = delete;
  descriptor_factory& operator=(const descriptor_factory&) = delete;
  ~descriptor_factory() {
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }

  // A listening socket on 127.0.0.1 for the TCP connections, and a private directory for the
  // files (each is unlinked as soon as it is made).
  bool open(std::string& why) {
    listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    address_.sin_family = AF_INET;
    address_.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof address_;
    if (!listener_ || ::bind(listener_.get(), as_sockaddr(address_), len) != 0 ||
        ::listen(listener_.get(), 64) != 0 ||
        ::getsockname(listener_.get(), as_sockaddr(address_), &len) != 0) {
      why = "TCP listener on 127.0.0.1: " + errno_text(errno);
      return false;
    }
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/kin-channel-flood-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      why = "temporary directory: " + errno_text(errno);
      return false;
    }
    dir_ = pattern;
    return true;
  }

  // A fresh descriptor of kind `c` carrying `t`, or an empty one and `why`.
  kin::unique_fd make(carried c, const token& t, std::string& why) {
    switch (c) {
      case carried::pipe: {
        auto p = kin::make_pipe();
        if (!p) return fail(why, "pipe", p.error().value());
        if (!send_all(p->write.get(), t, false)) return fail(why, "write to a pipe", errno);
        return std::move(p->read);
      }
      case carried::unix_stream:
      case carried::unix_datagram: {
        const bool stream = c == carried::unix_stream;
        auto s =
            kin::make_socketpair(stream ? kin::socket_type::stream : kin::socket_type::datagram);
        if (!s) return fail(why, "socketpair", s.error().value());
        if (!send_all(s->first.get(), t, true)) return fail(why, "send on a socketpair", errno);
        return std::move(s->second);
      }
      case carried::tcp_socket: {
        kin::unique_fd client = connect_to(address_, why);
        if (!client) return {};
        kin::unique_fd accepted(
            retry([&] { return ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC); }));
        if (!accepted) return fail(why, "accept", errno);
        // Either end may travel; the other one writes the token and closes.
        const bool send_client = (t[0] ^ t[8]) & 1;
        kin::unique_fd& kept = send_client ? accepted : client;
        if (!send_all(kept.get(), t, true)) return fail(why, "send on TCP", errno);
        kept.reset();
        return send_client ? std::move(client) : std::move(accepted);
      }
      case carried::tcp_server: {
        kin::unique_fd server(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in at{};
        at.sin_family = AF_INET;
        at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof at;
        if (!server || ::bind(server.get(), as_sockaddr(at), len) != 0 ||
            ::listen(server.get(), 4) != 0 ||
            ::getsockname(server.get(), as_sockaddr(at), &len) != 0) {
          return fail(why, "TCP server", errno);
        }
        // The connection waits in the backlog, with the token and the end of its stream.
        kin::unique_fd client = connect_to(at, why);
        if (!client) return {};
        if (!send_all(client.get(), t, true)) return fail(why, "send on TCP", errno);
        return server;
      }
      case carried::udp: {
        kin::unique_fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_in at{};
        at.sin_family = AF_INET;
        at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof at;
        if (!s || ::bind(s.get(), as_sockaddr(at), len) != 0 ||
            ::getsockname(s.get(), as_sockaddr(at), &len) != 0 ||
            retry([&] {
              return ::sendto(s.get(), t.data(), t.size(), MSG_NOSIGNAL, as_sockaddr(at), len);
            }) != static_cast<ssize_t>(t.size())) {
          return fail(why, "UDP socket", errno);
        }
        return s;
      }
      default: {
        std::string path = dir_ + "/token-XXXXXX";
        kin::unique_fd f(::mkostemp(path.data(), O_CLOEXEC));
        if (!f) return fail(why, "temporary file", errno);
        ::unlink(path.c_str());
        if (!send_all(f.get(), t, false)) return fail(why, "write to a file", errno);
        return f;
      }
    }
  }

 private:
  static sockaddr* as_sockaddr(sockaddr_in& a) { return reinterpret_cast<sockaddr*>(&a); }

  static kin::unique_fd fail(std::string& why, const char* what, int err) {
    why = std::string(what) + ": " + errno_text(err);
    return {};
  }

  // A blocking connect to 127.0.0.1: it returns once the connection is in the backlog.
  static kin::unique_fd connect_to(sockaddr_in to, std::string& why) {
    kin::unique_fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) return fail(why, "TCP socket", errno);
    if (::connect(s.get(), as_sockaddr(to), sizeof to) != 0) {
      if (errno != EINTR) return fail(why, "connect to 127.0.0.1", errno);
      // Interrupted: the connection goes on; wait for it.
      pollfd p{s.get(), POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      if (retry([&] { return ::poll(&p, 1, token_wait_ms); }) <= 0 ||
          ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        return fail(why, "connect to 127.0.0.1", err != 0 ? err : ETIMEDOUT);
      }
    }
    return s;
  }

  kin::unique_fd listener_;
  sockaddr_in address_{};
  std::string dir_;
};

// Reads exactly a token from a non-blocking stream descriptor, then its end.
bool read_stream_token(int fd, token& got, std::string& why) {
  std::size_t done = 0;
  while (done < got.size()) {
    const ssize_t n = retry([&] { return ::read(fd, got.data() + done, got.size() - done); });
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n == 0) {
      why = "the stream ended after " + std::to_string(done) + " bytes of the token";
      return false;
    } else if (errno != EAGAIN || !wait_readable(fd)) {
      why = "reading the token: " + errno_text(errno == EAGAIN ? ETIMEDOUT : errno);
      return false;
    }
  }
  for (;;) {
    char extra;
    const ssize_t n = retry([&] { return ::read(fd, &extra, 1); });
    if (n == 0) return true;
    if (n > 0) {
      why = "more bytes than the token";
      return false;
    }
    if (errno != EAGAIN || !wait_readable(fd)) {
      why =
          "waiting for the end after the token: " + errno_text(errno == EAGAIN ? ETIMEDOUT : errno);
      return false;
    }
  }
}

// Receives the one datagram waiting on a non-blocking datagram socket: the token.
bool read_datagram_token(int fd, token& got, std::string& why) {
  char buf[64];
  ssize_t n = -1;
  for (;;) {
    n = retry([&] { return ::recv(fd, buf, sizeof buf, MSG_DONTWAIT); });
    if (n >= 0 || errno != EAGAIN || !wait_readable(fd)) break;
  }
  if (n != static_cast<ssize_t>(got.size())) {
    why = n < 0 ? "receiving the token: " + errno_text(errno)
                : "a datagram of " + std::to_string(n) + " bytes instead of the token";
    return false;
  }
  std::memcpy(got.data(), buf, got.size());
  if (retry([&] { return ::recv(fd, buf, sizeof buf, MSG_DONTWAIT); }) >= 0) {
    why = "a second datagram after the token";
    return false;
  }
  return true;
}

// No TIME_WAIT left behind for each connection of the flood: the token and the end have been
// read, so the reset loses nothing.
void abort_on_close(int fd) {
  linger l{1, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

// Reads the token of a received descriptor of kind `c` (borrowed), and checks nothing else
// came with it.
bool read_token(carried c, int fd, token& got, std::string& why) {
  switch (c) {
    case carried::pipe:
    case carried::unix_stream:
      return read_stream_token(fd, got, why);
    case carried::tcp_socket: {
      const bool ok = read_stream_token(fd, got, why);
      abort_on_close(fd);
      return ok;
    }
    case carried::unix_datagram:
    case carried::udp:
      return read_datagram_token(fd, got, why);
    case carried::tcp_server: {
      kin::unique_fd conn;
      for (;;) {
        conn.reset(
            retry([&] { return ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK); }));
        if (conn || errno != EAGAIN || !wait_readable(fd)) break;
      }
      if (!conn) {
        why =
            "accepting the waiting connection: " + errno_text(errno == EAGAIN ? ETIMEDOUT : errno);
        return false;
      }
      const bool ok = read_stream_token(conn.get(), got, why);
      abort_on_close(conn.get());
      kin::unique_fd second(retry([&] { return ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC); }));
      if (ok && second) {
        why = "a second connection was waiting";
        return false;
      }
      return ok;
    }
    default: {
      char buf[64];
      const ssize_t n = retry([&] { return ::pread(fd, buf, sizeof buf, 0); });
      if (n != static_cast<ssize_t>(got.size())) {
        why = n < 0 ? "pread: " + errno_text(errno)
                    : "a file of " + std::to_string(n) + " bytes instead of the token";
        return false;
      }
      std::memcpy(got.data(), buf, got.size());
      return true;
    }
  }
}

// ---- one end of a channel
// ------------------------------------------------------------------------

struct tally {
  std::uint64_t messages = 0;
  std::uint64_t fds = 0;
  std::uint64_t bytes = 0;
  std::array<std::uint64_t, carried_count> by_kind{};

  void add(const tally& o) {
    messages += o.messages;
    fds += o.fds;
    bytes += o.bytes;
    for (std::size_t i = 0; i < carried_count; ++i) by_kind[i] += o.by_kind[i];
  }
};

// Control messages are exactly 16 bytes: an 8-byte tag, then a number. A data message of 16
// bytes or more starts with its own number (far below 2^56), so it never looks like one.
constexpr std::string_view ack_tag = "FLOODACK";  // descriptors received and closed so far
constexpr std::string_view end_tag = "FLOODEND";  // the sender's last message: how many it sent

std::string control(std::string_view tag, std::uint64_t n) {
  std::string m(tag);
  m.resize(16);
  put_le64(m.data() + 8, n);
  return m;
}

bool is_control(const std::string& m, std::string_view tag) {
  return m.size() == 16 && std::memcmp(m.data(), tag.data(), 8) == 0;
}

// Outcomes of the sends of one endpoint, shared with their callbacks (which may outlive it).
struct send_outcomes {
  std::string label;
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;
};

// One end of a channel: sends its direction's messages while it may (the channel's high-water
// mark and a window of unacknowledged descriptors bound what it queues), and checks every
// message, byte and descriptor of the other direction.
class endpoint {
 public:
  endpoint(kin::loop& l, kin::channel& ch, const config& cfg, std::uint32_t child, bool parent,
           descriptor_factory& factory)
      : ch_(ch),
        cfg_(cfg),
        factory_(factory),
        out_{cfg.seed, child, parent ? 0u : 1u},
        in_{cfg.seed, child, parent ? 1u : 0u},
        label_(parent ? "child " + std::to_string(child) : std::string("channel")),
        outcomes_(std::make_shared<send_outcomes>()),
        resume_(l, [this] { pump(); }) {
    outcomes_->label = label_;
  }
  endpoint(const endpoint&) = delete;
  endpoint& operator=(const endpoint&) = delete;

  // Called when the peer's last message arrived, checked.
  std::function<void()> on_end;

  void start() {
    ch_.on_message([this](std::string m, std::vector<kin::any_handle> handles) {
      receive(std::move(m), std::move(handles));
    });
    ch_.on_drain([this] {
      waiting_drain_ = false;
      pump();
    });
    ch_.on_error([this](std::error_code ec) {
      problems.add(label_ + ": channel error: " + ec.message());
      closed_ = true;
    });
    ch_.on_disconnect([this] {
      closed_ = true;
      if (!got_end_) problems.add(label_ + ": the channel closed before the peer's last message");
    });
    pump();
  }

  // Sends the last message (no more after it) unless it was sent.
  void finish_sending() {
    if (sent_end_) return;
    sent_end_ = true;
    resume_.stop();
    if (closed_) return;  // reported already
    send_control(end_tag, sent_.messages);
  }

  [[nodiscard]] bool got_end() const { return got_end_; }
  [[nodiscard]] bool sent_end() const { return sent_end_; }
  [[nodiscard]] bool closed() const { return closed_; }
  [[nodiscard]] const tally& sent() const { return sent_; }
  [[nodiscard]] const tally& received() const { return received_; }
  [[nodiscard]] std::size_t max_queued() const { return max_queued_; }
  [[nodiscard]] std::uint64_t max_unacked() const { return max_unacked_; }
  [[nodiscard]] const send_outcomes& outcomes() const { return *outcomes_; }
  // Every send() made: data messages, acknowledgements, the last message.
  [[nodiscard]] std::uint64_t sends() const { return sends_; }

 private:
  void pump() {
    for (int turn = 0; turn < messages_per_turn; ++turn) {
      if (sent_end_ || closed_ || broken_ || waiting_drain_) return;
      const std::uint64_t seq = sent_.messages;
      if (!next_) next_ = make_message(out_, seq, cfg_.max_size, &payload_);
      // Room for its descriptors, or an acknowledgement resumes the turn.
      if (sent_.fds - peer_acked_ + next_->fd_count > cfg_.window) return;
      std::vector<kin::unique_fd> fds;
      fds.reserve(next_->fd_count);
      for (std::uint32_t i = 0; i < next_->fd_count; ++i) {
        std::string why;
        auto fd = factory_.make(next_->fds[i], token_for(out_, seq, i, next_->fds[i]), why);
        if (!fd) {
          problems.add(label_ + ": making a " + name_of(next_->fds[i]) + " to send: " + why);
          broken_ = true;
          return;
        }
        fds.push_back(std::move(fd));
      }
      const bool below = ch_.send(payload_, std::move(fds), completion());
      ++sends_;
      sent_.messages += 1;
      sent_.fds += next_->fd_count;
      sent_.bytes += next_->size;
      for (std::uint32_t i = 0; i < next_->fd_count; ++i) {
        ++sent_.by_kind[static_cast<std::size_t>(next_->fds[i])];
      }
      max_unacked_ = std::max(max_unacked_, sent_.fds - peer_acked_);
      max_queued_ = std::max(max_queued_, ch_.queued_bytes());
      next_.reset();
      if (!below) {
        waiting_drain_ = true;  // on_drain resumes
        return;
      }
    }
    (void)resume_.start(0ns);  // the rest on the next iteration: other channels get a turn
  }

  kin::channel::send_callback completion() {
    return [o = outcomes_](std::error_code ec) {
      if (!ec) {
        ++o->completed;
        return;
      }
      if (++o->failed <= 3) problems.add(o->label + ": send failed: " + ec.message());
    };
  }

  void send_control(std::string_view tag, std::uint64_t n) {
    (void)ch_.send(control(tag, n), {}, completion());
    ++sends_;
    max_queued_ = std::max(max_queued_, ch_.queued_bytes());
  }

  void receive(std::string m, std::vector<kin::any_handle> handles) {
    const bool ack = is_control(m, ack_tag);
    if (ack || is_control(m, end_tag)) {
      const std::uint64_t n = get_le64(m.data() + 8);
      if (!handles.empty()) {
        problems.add(label_ + ": a control message came with " + std::to_string(handles.size()) +
                     " descriptors");
      }
      if (got_end_) problems.add(label_ + ": a message after the peer's last one");
      if (ack) {
        if (n < peer_acked_ || n > sent_.fds) {
          problems.add(label_ + ": acknowledged " + std::to_string(n) + " descriptors of " +
                       std::to_string(sent_.fds) + " sent (" + std::to_string(peer_acked_) +
                       " before)");
        } else {
          peer_acked_ = n;
        }
        pump();
        return;
      }
      got_end_ = true;
      if (n != received_.messages) {
        problems.add(label_ + ": the peer says it sent " + std::to_string(n) + " messages, " +
                     std::to_string(received_.messages) + " arrived");
      }
      if (on_end) on_end();
      return;
    }
    if (got_end_) problems.add(label_ + ": a message after the peer's last one");
    check_data(m, handles);
    // Acknowledged once closed (check_data closed them), so the window bounds what is open.
    if (!sent_end_ && !closed_ && received_.fds - acked_ >= cfg_.window / 4) {
      acked_ = received_.fds;
      send_control(ack_tag, acked_);
    }
  }

  void check_data(const std::string& m, std::vector<kin::any_handle>& handles) {
    const std::uint64_t seq = received_.messages;
    const message_plan p = make_message(in_, seq, cfg_.max_size, &expected_);
    const std::string where =
        label_ + ": " + direction_name(in_.direction) + " message " + std::to_string(seq);
    if (m != expected_) {
      std::string what = where + ": " + std::to_string(m.size()) + " bytes, " +
                         std::to_string(p.size) + " expected";
      if (m.size() >= 8) what += "; it says it is message " + std::to_string(get_le64(m.data()));
      if (m.size() == p.size) {
        std::size_t at = 0;
        while (at < m.size() && m[at] == expected_[at]) ++at;
        what += "; first wrong byte at " + std::to_string(at);
      }
      problems.add(what);
    }
    if (handles.size() != p.fd_count) {
      problems.add(where + ": " + std::to_string(handles.size()) + " descriptors, " +
                   std::to_string(p.fd_count) + " expected");
    }
    const std::size_t n = std::min<std::size_t>(handles.size(), p.fd_count);
    for (std::size_t i = 0; i < n; ++i) {
      const carried c = p.fds[i];
      const std::string which =
          where + " descriptor " + std::to_string(i) + " (" + name_of(c) + ")";
      if (kin::kind_of(handles[i]) != kind_of(c) || !holds_expected(handles[i], c)) {
        problems.add(which + ": arrived as " +
                     std::string(kin::to_string(kin::kind_of(handles[i]))) + " (variant " +
                     std::to_string(handles[i].index()) + ")");
      } else {
        token got{};
        std::string why;
        const token want = token_for(in_, seq, static_cast<std::uint32_t>(i), c);
        if (!read_token(c, fd_of(handles[i]), got, why)) {
          problems.add(which + ": " + why);
        } else if (got != want) {
          problems.add(which + ": carries the token of " + describe(got));
        }
        ++received_.by_kind[static_cast<std::size_t>(c)];
      }
      handles[i] = kin::any_handle();  // closed now, before the acknowledgement
    }
    handles.clear();
    received_.messages += 1;
    received_.fds += n;
    received_.bytes += m.size();
  }

  kin::channel& ch_;
  const config& cfg_;
  descriptor_factory& factory_;
  stream_key out_;
  stream_key in_;
  std::string label_;
  std::shared_ptr<send_outcomes> outcomes_;
  kin::timer resume_;

  tally sent_;
  tally received_;
  std::optional<message_plan> next_;  // made, waiting for room in the window
  std::string payload_;               // next_'s bytes
  std::string expected_;              // what the message being checked must be
  std::uint64_t peer_acked_ = 0;      // descriptors of ours the peer has closed
  std::uint64_t acked_ = 0;           // descriptors of the peer's we told it we closed
  std::uint64_t max_unacked_ = 0;
  std::uint64_t sends_ = 0;
  std::size_t max_queued_ = 0;
  bool waiting_drain_ = false;
  bool sent_end_ = false;
  bool got_end_ = false;
  bool closed_ = false;
  bool broken_ = false;  // could not make a descriptor: sends nothing more
};

// ---- the child
// -----------------------------------------------------------------------------------

int run_child(const config& cfg) {
  problems.set_prefix("kin-channel-flood: child " + std::to_string(cfg.child));
  const char* channel_fd = std::getenv("KIN_CHANNEL_FD");
  const int own_channel = channel_fd != nullptr ? std::atoi(channel_fd) : -1;
  std::set<int> fds_before = open_fds();
  fds_before.erase(own_channel);  // the channel's: closed at the end
  {
    kin::loop l;
    auto ch = kin::channel::from_environment(l);
    if (!ch) {
      problems.add("no channel: " + ch.error().message());
      return 1;
    }
    descriptor_factory factory;
    std::string why;
    if (!factory.open(why)) {
      problems.add(why);
      return 1;
    }
    kin::channel& c = **ch;
    endpoint ep(l, c, cfg, static_cast<std::uint32_t>(cfg.child), false, factory);
    // The parent's last message: ours follows, and then the channel closes.
    ep.on_end = [&] {
      ep.finish_sending();
      c.disconnect();
    };
    // A parent that stops sending without closing: never wait past its own stuck limit.
    kin::timer watchdog(l, [&] {
      problems.add("stuck: the parent's last message never came");
      std::_Exit(1);
    });
    watchdog.unref();
    (void)watchdog.start(std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(cfg.seconds) + stuck_after + 10s));
    ep.start();
    l.run();
    if (!ep.got_end()) problems.add("the parent's last message never came");
    if (!ep.closed()) problems.add("the channel did not close");
    if (ep.outcomes().failed != 0 || ep.outcomes().completed != ep.sends()) {
      problems.add(std::to_string(ep.outcomes().completed) + " sends completed, " +
                   std::to_string(ep.outcomes().failed) + " failed");
    }
    if (cfg.verbose) {
      std::fprintf(stderr,
                   "kin-channel-flood: child %d sent %llu messages, %llu descriptors; received "
                   "%llu, %llu\n",
                   cfg.child, static_cast<unsigned long long>(ep.sent().messages),
                   static_cast<unsigned long long>(ep.sent().fds),
                   static_cast<unsigned long long>(ep.received().messages),
                   static_cast<unsigned long long>(ep.received().fds));
    }
  }
  const std::set<int> fds_after = open_fds();
  if (fds_after != fds_before) {
    problems.add("descriptors at the end differ from the start:" +
                 fd_difference(fds_before, fds_after));
  }
  return problems.count() == 0 ? 0 : 1;
}

// ---- the parent
// ----------------------------------------------------------------------------------

struct peer {
  std::unique_ptr<endpoint> ep;
  std::unique_ptr<kin::channel> ch;  // after ep: destroyed first, so it never calls a gone ep
  std::optional<kin::process> proc;
  bool exited = false;
  int status = -1;
  int signo = 0;
};

std::string per_second(double n, double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f", seconds > 0 ? n / seconds : 0.0);
  return buf;
}

int run_parent(const config& cfg, const std::string& self) {
  const std::set<int> children_before = all_children();
  std::set<int> fds_before;
  double elapsed = 0;
  tally sent;
  tally received;
  std::size_t max_queued = 0;
  std::uint64_t max_unacked = 0;
  bool stuck = false;
  fds_before = open_fds();
  {
    kin::loop l;
    descriptor_factory factory;
    std::string why;
    if (!factory.open(why)) {
      problems.add(why);
      return 1;
    }
    std::vector<std::unique_ptr<peer>> peers;
    const auto start = clock_type::now();
    for (int k = 0; k < cfg.children; ++k) {
      kin::fork_options o;
      o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
      std::vector<std::string> args = {
          "--child",   std::to_string(k),           "--seed",     std::to_string(cfg.seed),
          "--seconds", std::to_string(cfg.seconds), "--max-size", std::to_string(cfg.max_size),
          "--window",  std::to_string(cfg.window)};
      if (cfg.verbose) args.emplace_back("-v");
      auto f = kin::fork(l, self, args, o);
      if (!f) {
        problems.add("fork of child " + std::to_string(k) + ": " + f.error().message());
        break;
      }
      auto p = std::make_unique<peer>();
      p->ch = std::move(f->channel);
      p->ep =
          std::make_unique<endpoint>(l, *p->ch, cfg, static_cast<std::uint32_t>(k), true, factory);
      p->proc.emplace(std::move(f->child));
      peer* raw = p.get();
      p->proc->on_exit([raw](std::error_code ec, int status, int signo) {
        raw->exited = !ec;
        raw->status = status;
        raw->signo = signo;
      });
      peers.push_back(std::move(p));
    }
    for (auto& p : peers) p->ep->start();
    kin::timer deadline(l, [&] {
      for (auto& p : peers) p->ep->finish_sending();
    });
    (void)deadline.start(std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(cfg.seconds)));
    kin::timer watchdog(l, [&] {
      stuck = true;
      l.stop();
    });
    watchdog.unref();
    (void)watchdog.start(std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(cfg.seconds) + stuck_after));
    l.run();
    elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    if (stuck) {
      problems.add("stuck: the exchange did not end within " + std::to_string(stuck_after.count()) +
                   " s of the deadline; killing the children");
      for (auto& p : peers) {
        if (!p->exited) (void)p->proc->kill(SIGKILL);
        if (p->ch) p->ch->close();
      }
      // Reaped by the loop, which now has nothing else to do; bounded all the same.
      kin::timer limit(l, [&] { l.stop(); });
      (void)limit.start(10s);
      l.run();
    }
    for (std::size_t k = 0; k < peers.size(); ++k) {
      peer& p = *peers[k];
      const std::string who = "child " + std::to_string(k);
      if (!p.exited) {
        problems.add(who + " was not reaped");
      } else if (p.signo != 0) {
        problems.add(who + " was killed by signal " + std::to_string(p.signo));
      } else if (p.status != 0) {
        problems.add(who + " exited with status " + std::to_string(p.status));
      }
      if (!stuck) {
        if (!p.ep->got_end()) problems.add(who + ": its last message never came");
        if (!p.ep->closed()) problems.add(who + ": the channel did not close");
        const auto& o = p.ep->outcomes();
        if (o.failed != 0 || o.completed != p.ep->sends()) {
          problems.add(who + ": " + std::to_string(o.completed) + " sends completed, " +
                       std::to_string(o.failed) + " failed");
        }
      }
      sent.add(p.ep->sent());
      received.add(p.ep->received());
      max_queued = std::max(max_queued, p.ep->max_queued());
      max_unacked = std::max(max_unacked, p.ep->max_unacked());
    }
    peers.clear();
  }
  if (!stuck) {
    const std::set<int> fds_after = open_fds();
    if (fds_after != fds_before) {
      problems.add("descriptors at the end differ from the start:" +
                   fd_difference(fds_before, fds_after));
    }
    if (all_children() != children_before) problems.add("children left behind");
  }

  auto line = [](const char* what, const tally& t) {
    std::printf("  %s: %llu messages, %llu descriptors, %llu bytes\n", what,
                static_cast<unsigned long long>(t.messages), static_cast<unsigned long long>(t.fds),
                static_cast<unsigned long long>(t.bytes));
  };
  line("parent -> children", sent);
  line("children -> parent", received);
  tally both = sent;
  both.add(received);
  std::printf("  descriptors by kind:");
  for (std::size_t i = 0; i < carried_count; ++i) {
    std::printf(" %s %llu%s", name_of(static_cast<carried>(i)),
                static_cast<unsigned long long>(both.by_kind[i]), i + 1 < carried_count ? "," : "");
  }
  std::printf(
      "\n  largest write queue %zu bytes, most descriptors unacknowledged %llu (window %u)\n",
      max_queued, static_cast<unsigned long long>(max_unacked), cfg.window);
  std::printf(
      "channel-flood: %s msgs/s, %s fds/s, %s bytes/s over %.1f s, %d children, %d errors\n",
      per_second(static_cast<double>(both.messages), elapsed).c_str(),
      per_second(static_cast<double>(both.fds), elapsed).c_str(),
      per_second(static_cast<double>(both.bytes), elapsed).c_str(), elapsed, cfg.children,
      problems.count());
  return problems.count() == 0 ? 0 : 1;
}

// ---- main
// ----------------------------------------------------------------------------------------

constexpr const char* usage_line =
    "usage: kin-channel-flood [--seconds S (10)] [--children K (4)] [--seed N] "
    "[--max-size BYTES (262144)] [--window FDS] [-v]\n";

[[noreturn]] void bad_usage(const std::string& why) {
  std::fprintf(stderr, "kin-channel-flood: %s\n%s(--help explains)\n", why.c_str(), usage_line);
  std::exit(2);
}

void help() {
  std::printf(
      "%s"
      "\n"
      "Stress test of kin::channel (native codec) between processes. The parent starts K\n"
      "children with kin::fork(); for S seconds both sides of every channel send messages of\n"
      "random sizes (mostly small, some empty, some up to --max-size) with 0-16 descriptors\n"
      "each: pipes, Unix stream and datagram sockets, TCP connections and listeners on\n"
      "127.0.0.1, UDP sockets and files, each carrying a token its sender wrote. Every message\n"
      "follows from (seed, child, direction, number), so the receiver checks every byte, the\n"
      "order, each descriptor's token and the handle it was rebuilt as, exactly once. Senders\n"
      "respect send()'s false return (on_drain) and a window of descriptors not yet\n"
      "acknowledged, so memory and descriptors stay bounded. At the deadline each side sends\n"
      "its count, the children close their channels and exit; no descriptor may be left open\n"
      "in any process.\n"
      "\n"
      "Prints a summary ending with 'channel-flood: N msgs/s, ...'; exits 0 if nothing was\n"
      "violated, 1 otherwise, 2 on bad usage.\n"
      "\n"
      "  --seconds S       how long messages are sent (10)\n"
      "  --children K      children, each with its own channel (4)\n"
      "  --seed N          seed of the messages (default: random; printed)\n"
      "  --max-size BYTES  largest message (262144; at most 16 MiB)\n"
      "  --window FDS      descriptors in flight per direction of a channel (default: from\n"
      "                    RLIMIT_NOFILE, at most 512)\n"
      "  -v, --verbose     each child reports its counts\n"
      "  -h, --help        this text\n",
      usage_line);
}

bool parse_number(const char* text, double& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtod(text, &end);
  return errno == 0 && end != text && *end == '\0';
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool seed_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto number = [&](double lo, double hi) {
      double d = 0;
      if (i + 1 >= argc || !parse_number(argv[i + 1], d) || !(d >= lo) || d > hi) {
        char range[64];
        std::snprintf(range, sizeof range, " needs a number from %g to %g", lo, hi);
        bad_usage(std::string(a) + range);
      }
      ++i;
      return d;
    };
    auto whole = [&](double lo, double hi) {
      const double d = number(lo, hi);
      if (d != static_cast<double>(static_cast<long long>(d))) {
        bad_usage(std::string(a) + " needs a whole number");
      }
      return static_cast<long long>(d);
    };
    if (a == "-h" || a == "--help") {
      help();
      return 0;
    } else if (a == "-v" || a == "--verbose") {
      cfg.verbose = true;
    } else if (a == "--seconds") {
      cfg.seconds = number(0, 86400);
    } else if (a == "--children") {
      cfg.children = static_cast<int>(whole(1, 256));
    } else if (a == "--max-size") {
      cfg.max_size = static_cast<std::size_t>(whole(0, 16 * 1024 * 1024));
    } else if (a == "--window") {
      cfg.window = static_cast<std::uint32_t>(whole(32, 65536));
    } else if (a == "--child") {
      cfg.child = static_cast<int>(whole(0, 255));
    } else if (a == "--seed") {
      char* end = nullptr;
      errno = 0;
      if (i + 1 < argc) cfg.seed = std::strtoull(argv[i + 1], &end, 0);
      if (i + 1 >= argc || end == argv[i + 1] || *end != '\0' || errno != 0) {
        bad_usage("--seed needs a number");
      }
      ++i;
      seed_given = true;
    } else {
      bad_usage("unknown argument " + std::string(a));
    }
  }
  if (cfg.child >= 0) {
    if (cfg.window == 0) bad_usage("--child needs --window");
    return run_child(cfg);
  }
  if (!seed_given) {
    cfg.seed = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }

  // 0-2 must be open, so that nothing the flood makes lands there.
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1) (void)::open("/dev/null", O_RDWR | O_CLOEXEC);
  }
  // Every descriptor in flight counts against the sender's RLIMIT_NOFILE (the kernel's limit
  // on descriptors in flight over Unix sockets is per user, and the children inherit it), and
  // the parent holds, per child, a window it may not have sent yet and one it is checking: 4
  // windows per child, a few descriptors of its own per child (channel, pidfd), and a margin.
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t want = 65536;
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want) {
    lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  ::getrlimit(RLIMIT_NOFILE, &lim);
  const long long soft =
      lim.rlim_cur == RLIM_INFINITY ? 1LL << 20 : static_cast<long long>(lim.rlim_cur);
  const long long room = (soft - 256 - 4LL * cfg.children) / (4LL * cfg.children);
  if (cfg.window == 0) cfg.window = static_cast<std::uint32_t>(std::min<long long>(512, room));
  if (cfg.window < 32 || static_cast<long long>(cfg.window) > room) {
    bad_usage("RLIMIT_NOFILE (" + std::to_string(soft) + ") leaves too little room for " +
              std::to_string(cfg.children) + " children with a window of " +
              std::to_string(cfg.window) + " descriptors (32 at least)");
  }

  std::printf(
      "kin-channel-flood: seed %llu, %d children, %g s, messages up to %zu bytes with 0-%u "
      "descriptors, window %u\n",
      static_cast<unsigned long long>(cfg.seed), cfg.children, cfg.seconds, cfg.max_size,
      max_fds_per_message, cfg.window);
  std::fflush(stdout);
  return run_parent(cfg, argv[0]);
}
