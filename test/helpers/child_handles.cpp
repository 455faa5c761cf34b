// The helper child's handle-passing behaviours: it reads commands from the Unix-domain socket at
// its fd 3, rebuilds the descriptors that come with them with kin::adopt, uses the handles and
// reports one line per command back on the same socket.
//
// A command is one text line, `<name> <descriptor count> [arguments...]`; its descriptors ride
// on the line's first byte. They are queued in arrival order and each line takes the number it
// declares, so nothing depends on where the kernel ends a read. Reports start with "ok" or
// "fail". The child exits when the parent closes its end (status 0, or 1 if a command failed),
// and by itself after a watchdog period if the parent never does (status 3).
#include <kin/kin.hpp>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kin_test_child {

namespace {

using namespace std::chrono_literals;

constexpr int channel_fd = 3;
constexpr auto watchdog_period = 20s;

// The byte at `index` of the pattern the tests stream through sockets (a Weyl sequence's top
// byte: consecutive bytes differ and a shifted copy does not match).
std::uint8_t pattern_byte(std::uint64_t index) {
  return static_cast<std::uint8_t>((index * 0x9E3779B97F4A7C15ull) >> 56);
}

constexpr std::uint64_t fnv_offset = 14695981039346656037ull;
constexpr std::uint64_t fnv_prime = 1099511628211ull;

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// The descriptors open in this process, /proc/self/fd's own excluded.
int count_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  const int own = ::dirfd(d);
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.' && std::atoi(e->d_name) != own) ++n;
  }
  ::closedir(d);
  return n;
}

std::string text_of(std::span<const std::byte> data) {
  return std::string(reinterpret_cast<const char*>(data.data()), data.size());
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> words;
  std::istringstream in(line);
  std::string w;
  while (in >> w) words.push_back(w);
  return words;
}

class agent {
 public:
  explicit agent(kin::loop& l) : loop_(l), channel_(l), watchdog_(l) {
    watchdog_.set_callback([] {
      std::fprintf(stderr, "kin-test-child: watchdog: the parent never finished\n");
      std::_Exit(3);
    });
  }
  agent(const agent&) = delete;
  agent& operator=(const agent&) = delete;

  // Opens the channel at fd 3 and serves commands until the parent closes it.
  int run(std::optional<std::string> first_report = std::nullopt) {
    if (auto r = channel_.open(kin::unique_fd(channel_fd)); !r) {
      std::fprintf(stderr, "kin-test-child: fd %d is no Unix stream socket: %s\n", channel_fd,
                   r.error().message().c_str());
      return 2;
    }
    if (auto r = watchdog_.start(watchdog_period); !r) return 2;
    if (first_report) report(*first_report);
    auto reading =
        channel_.read_start([this](std::error_code ec, std::span<const std::byte> data,
                                   std::span<kin::unique_fd> fds) { on_chunk(ec, data, fds); });
    if (!reading) return 2;
    loop_.run();
    return failed_ ? 1 : 0;
  }

 private:
  void report(const std::string& line) { channel_.write(line + "\n"); }

  void fail(const std::string& what) {
    failed_ = true;
    report("fail " + what);
  }

  void on_chunk(std::error_code ec, std::span<const std::byte> data,
                std::span<kin::unique_fd> fds) {
    if (ec == kin::errc::message_truncated) {
      ++truncations_;
    } else if (ec) {
      // The parent closed its end (or died): nothing more to do.
      if (ec != kin::errc::eof) std::fprintf(stderr, "kin-test-child: %s\n", ec.message().c_str());
      loop_.stop();
      return;
    }
    for (auto& fd : fds) queued_fds_.push_back(std::move(fd));
    while (!data.empty() && channel_.is_reading()) {
      if (bulk_left_ > 0) {
        const std::size_t take = static_cast<std::size_t>(
            std::min<std::uint64_t>(bulk_left_, static_cast<std::uint64_t>(data.size())));
        for (std::size_t i = 0; i < take; ++i) {
          const auto v = std::to_integer<std::uint8_t>(data[i]);
          if (v != pattern_byte(bulk_count_ + i) && bulk_mismatches_++ == 0) {
            bulk_first_mismatch_ = bulk_count_ + i;
          }
          bulk_hash_ = (bulk_hash_ ^ v) * fnv_prime;
        }
        bulk_count_ += take;
        bulk_left_ -= take;
        data = data.subspan(take);
        if (bulk_left_ == 0) {
          report("ok bulk " + std::to_string(bulk_count_) + " " + hex(bulk_hash_) + " mismatches " +
                 std::to_string(bulk_mismatches_) +
                 (bulk_mismatches_ == 0 ? "" : " from " + std::to_string(bulk_first_mismatch_)));
        } else {
          ::usleep(500);  // a slow reader: the sender's queue must stay bounded meanwhile
        }
        continue;
      }
      if (stall_left_ > 0) {
        const std::size_t take = static_cast<std::size_t>(
            std::min<std::uint64_t>(stall_left_, static_cast<std::uint64_t>(data.size())));
        stall_left_ -= take;
        data = data.subspan(take);
        if (stall_left_ == 0) {
          // Read no more: the parent's writes pile up until it kills this process.
          channel_.read_stop();
          report("ok stalled");
        }
        continue;
      }
      const auto* begin = reinterpret_cast<const char*>(data.data());
      const void* nl = std::memchr(begin, '\n', data.size());
      const std::size_t take =
          nl == nullptr ? data.size()
                        : static_cast<std::size_t>(static_cast<const char*>(nl) - begin) + 1;
      line_.append(begin, take);
      data = data.subspan(take);
      if (nl != nullptr) {
        std::string line = std::move(line_);
        line_.clear();
        line.pop_back();
        on_line(line);
      }
    }
  }

  void on_line(const std::string& line) {
    const auto words = split(line);
    if (words.size() < 2) return fail("malformed command: " + line);
    const std::string& name = words[0];
    const std::size_t declared = std::strtoul(words[1].c_str(), nullptr, 10);
    // The line's descriptors, as many as it declares and as have arrived (fewer only when the
    // kernel cut the control message).
    std::vector<kin::unique_fd> fds;
    while (fds.size() < declared && !queued_fds_.empty()) {
      fds.push_back(std::move(queued_fds_.front()));
      queued_fds_.pop_front();
    }
    const std::string arg = words.size() > 2 ? words[2] : std::string();
    if (name == "tcp_server") return serve_echo(std::move(fds), kin::fd_kind::tcp_server, name);
    if (name == "unix_server") return serve_echo(std::move(fds), kin::fd_kind::unix_server, name);
    if (name == "tcp_socket")
      return read_tcp(std::move(fds), std::strtoull(arg.c_str(), nullptr, 10));
    if (name == "udp") return receive_datagram(std::move(fds));
    if (name == "file") return write_file(std::move(fds), arg);
    if (name == "pipe") return write_pipe(std::move(fds), arg);
    if (name == "unix_socket") return answer_ping(std::move(fds));
    if (name == "drain_pipe")
      return drain_pipe(std::move(fds), std::strtoull(arg.c_str(), nullptr, 10));
    if (name == "count") return count(std::move(fds), declared);
    if (name == "limit") return limit(std::atoi(arg.c_str()));
    if (name == "unlimit") return unlimit();
    if (name == "fds") return report("ok fds " + std::to_string(count_fds()));
    if (name == "sockopt") return set_option(arg);
    if (name == "bulk") {
      bulk_left_ = std::strtoull(arg.c_str(), nullptr, 10);
      bulk_count_ = 0;
      bulk_hash_ = fnv_offset;
      bulk_mismatches_ = 0;
      return;
    }
    if (name == "stall") {
      stall_left_ = std::strtoull(arg.c_str(), nullptr, 10);
      return;
    }
    fail("unknown command: " + line);
  }

  // Adopts the one descriptor of `fds`, which must be of kind `expected`, and keeps the handle.
  template <class H>
  H* adopt_one(std::vector<kin::unique_fd> fds, kin::fd_kind expected, const std::string& what) {
    if (fds.size() != 1) {
      fail(what + ": expected 1 descriptor, got " + std::to_string(fds.size()));
      return nullptr;
    }
    auto h = kin::adopt(loop_, std::move(fds[0]));
    if (!h) {
      fail(what + ": adopt: " + h.error().message());
      return nullptr;
    }
    const kin::fd_kind kind = kin::kind_of(*h);
    auto* typed = std::get_if<std::unique_ptr<H>>(&*h);
    if (kind != expected || typed == nullptr) {
      fail(what + ": adopted as " + std::string(kin::to_string(kind)));
      return nullptr;
    }
    H* raw = typed->get();
    handles_.push_back(std::move(*h));
    return raw;
  }

  // A received listening socket: accept one connection, echo what it sends until EOF.
  void serve_echo(std::vector<kin::unique_fd> fds, kin::fd_kind kind, const std::string& name) {
    kin::server* srv =
        kind == kin::fd_kind::tcp_server
            ? static_cast<kin::server*>(adopt_one<kin::tcp_server>(std::move(fds), kind, name))
            : adopt_one<kin::unix_server>(std::move(fds), kind, name);
    if (srv == nullptr) return;
    auto listening = srv->listen(8, [this, srv, name](std::error_code ec, kin::unique_fd c) {
      if (ec) return fail(name + ": accept: " + ec.message());
      srv->close();
      auto conn = std::make_unique<kin::stream>(loop_);
      if (auto r = conn->open(std::move(c)); !r)
        return fail(name + ": open: " + r.error().message());
      kin::stream* s = conn.get();
      connections_.push_back(std::move(conn));
      auto got = std::make_shared<std::string>();
      auto r = s->read_start([this, s, got, name](std::error_code rec,
                                                  std::span<const std::byte> data,
                                                  std::span<kin::unique_fd>) {
        if (rec == kin::errc::eof) {
          s->shutdown([this, got, name](std::error_code sec) {
            if (sec) return fail(name + ": shutdown: " + sec.message());
            report("ok " + name + " accepted " + std::to_string(got->size()) + " bytes: " + *got);
          });
          return;
        }
        if (rec) return fail(name + ": read: " + rec.message());
        got->append(text_of(data));
        s->write(data);
      });
      if (!r) fail(name + ": read_start: " + r.error().message());
    });
    if (!listening) fail(name + ": listen: " + listening.error().message());
  }

  // A received TCP connection handed over mid-stream: read it to EOF, checking every byte
  // against the pattern from `offset` on (the bytes before it were the sender's).
  void read_tcp(std::vector<kin::unique_fd> fds, std::uint64_t offset) {
    auto* s = adopt_one<kin::tcp_socket>(std::move(fds), kin::fd_kind::tcp_socket, "tcp_socket");
    if (s == nullptr) return;
    struct tally {
      std::uint64_t count = 0, mismatches = 0, hash = fnv_offset;
    };
    auto t = std::make_shared<tally>();
    auto r = s->read_start([this, s, t, offset](std::error_code ec, std::span<const std::byte> data,
                                                std::span<kin::unique_fd>) {
      if (ec == kin::errc::eof) {
        report("ok tcp_socket " + std::to_string(t->count) + " " + hex(t->hash) + " mismatches " +
               std::to_string(t->mismatches));
        s->close();
        return;
      }
      if (ec) return fail("tcp_socket: read: " + ec.message());
      for (std::byte b : data) {
        const auto v = std::to_integer<std::uint8_t>(b);
        if (v != pattern_byte(offset + t->count)) ++t->mismatches;
        t->hash = (t->hash ^ v) * fnv_prime;
        ++t->count;
      }
    });
    if (!r) fail("tcp_socket: read_start: " + r.error().message());
  }

  // A received UDP socket: report the first datagram and who sent it.
  void receive_datagram(std::vector<kin::unique_fd> fds) {
    auto* u = adopt_one<kin::udp_socket>(std::move(fds), kin::fd_kind::udp_socket, "udp");
    if (u == nullptr) return;
    auto r = u->receive_start([this, u](std::error_code ec, std::span<const std::byte> data,
                                        const kin::socket_address& sender, bool) {
      if (ec) return fail("udp: receive: " + ec.message());
      report("ok udp " + text_of(data) + " from " + sender.to_string());
      u->close();
    });
    if (!r) fail("udp: receive_start: " + r.error().message());
  }

  // A received file: write `text` at the offset it shares with the sender's copy.
  void write_file(std::vector<kin::unique_fd> fds, const std::string& text) {
    auto* f = adopt_one<kin::file>(std::move(fds), kin::fd_kind::file, "file");
    if (f == nullptr) return;
    auto before = f->seek(0, SEEK_CUR);
    auto written = f->write(std::as_bytes(std::span(text.data(), text.size())));
    auto after = f->seek(0, SEEK_CUR);
    if (!before || !written || !after) return fail("file: seek or write failed");
    report("ok file offset " + std::to_string(*before) + " -> " + std::to_string(*after));
    f->close();
  }

  // A received pipe write end: write `text`, then close it (the reader sees EOF).
  void write_pipe(std::vector<kin::unique_fd> fds, const std::string& text) {
    auto* p = adopt_one<kin::pipe>(std::move(fds), kin::fd_kind::pipe, "pipe");
    if (p == nullptr) return;
    p->write(text);
    p->shutdown([this, n = text.size()](std::error_code ec) {
      if (ec) return fail("pipe: write: " + ec.message());
      report("ok pipe wrote " + std::to_string(n) + " bytes");
    });
  }

  // A received socketpair end: read the "ping" already waiting in it, answer "pong", half-close.
  void answer_ping(std::vector<kin::unique_fd> fds) {
    auto* s = adopt_one<kin::unix_socket>(std::move(fds), kin::fd_kind::unix_stream_socket,
                                          "unix_socket");
    if (s == nullptr) return;
    auto got = std::make_shared<std::string>();
    auto r = s->read_start([this, s, got](std::error_code ec, std::span<const std::byte> data,
                                          std::span<kin::unique_fd>) {
      if (ec) return fail("unix_socket: read: " + ec.message());
      got->append(text_of(data));
      if (got->size() < 4) return;
      s->read_stop();
      s->write(std::string_view("pong"));
      s->shutdown([this, s, got](std::error_code sec) {
        if (sec) return fail("unix_socket: write: " + sec.message());
        report("ok unix_socket got " + *got +
               ", can pass fds: " + (s->can_pass_fds() ? "yes" : "no"));
      });
    });
    if (!r) fail("unix_socket: read_start: " + r.error().message());
  }

  // A received pipe read end: read at least `n` bytes, report, and exit at once (the writer
  // loses its reader mid-write).
  void drain_pipe(std::vector<kin::unique_fd> fds, std::uint64_t n) {
    auto* p = adopt_one<kin::pipe>(std::move(fds), kin::fd_kind::pipe, "drain_pipe");
    if (p == nullptr) return;
    auto got = std::make_shared<std::uint64_t>(0);
    auto r = p->read_start([this, p, got, n](std::error_code ec, std::span<const std::byte> data,
                                             std::span<kin::unique_fd>) {
      if (ec) return fail("drain_pipe: read: " + ec.message());
      *got += data.size();
      if (*got < n) return;
      p->read_stop();
      channel_.write(std::string_view("ok pipe reader exits\n"),
                     [](std::error_code) { std::_Exit(0); });
    });
    if (!r) fail("drain_pipe: read_start: " + r.error().message());
  }

  // Reports how many of the `declared` descriptors arrived, how many reads were cut short
  // (MSG_CTRUNC) since the last count, the kinds kin::adopt rebuilt them as, and whether every
  // one arrived close-on-exec; then closes them.
  void count(std::vector<kin::unique_fd> fds, std::size_t declared) {
    const std::size_t received = fds.size();
    std::set<std::string> kinds;
    bool all_cloexec = true;
    for (auto& fd : fds) {
      if ((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) == 0) all_cloexec = false;
      auto h = kin::adopt(loop_, std::move(fd));
      kinds.insert(h ? std::string(kin::to_string(kin::kind_of(*h))) : "error");
    }
    std::string names;
    for (const auto& k : kinds) names += (names.empty() ? "" : ",") + k;
    report("ok count " + std::to_string(received) + " of " + std::to_string(declared) +
           " truncated " + std::to_string(truncations_) + " kinds " +
           (names.empty() ? "none" : names) + (all_cloexec ? "" : " not-cloexec"));
    truncations_ = 0;
  }

  // Lowers RLIMIT_NOFILE so that at most `room` more descriptors fit, and reports how many are
  // open now.
  void limit(int room) {
    const int open_now = count_fds();
    if (::getrlimit(RLIMIT_NOFILE, &saved_limit_) != 0) return fail("limit: getrlimit");
    const int lowest_free = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lowest_free < 0) return fail("limit: open /dev/null");
    ::close(lowest_free);
    rlimit tight = saved_limit_;
    tight.rlim_cur = static_cast<rlim_t>(lowest_free + room);
    if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) return fail("limit: setrlimit");
    report("ok limit fds " + std::to_string(open_now));
  }

  void unlimit() {
    if (::setrlimit(RLIMIT_NOFILE, &saved_limit_) != 0) return fail("unlimit: setrlimit");
    report("ok unlimit fds " + std::to_string(count_fds()));
  }

  // Turns on a socket option that makes the kernel add ancillary data to every read of the
  // channel: "passcred" (SO_PASSCRED: credentials) or "passpidfd" (Linux 6.5's SO_PASSPIDFD: a
  // pidfd of the sender, installed in this process).
  void set_option(const std::string& which) {
    constexpr int so_passpidfd = 76;  // not in older headers
    const int option = which == "passcred" ? SO_PASSCRED : so_passpidfd;
    const int on = 1;
    if (::setsockopt(channel_.fd(), SOL_SOCKET, option, &on, sizeof on) != 0) {
      if (errno == ENOPROTOOPT || errno == EINVAL)
        return report("ok sockopt " + which + " unsupported");
      return fail("sockopt " + which + ": " + std::strerror(errno));
    }
    report("ok sockopt " + which);
  }

  kin::loop& loop_;
  kin::unix_socket channel_;
  kin::timer watchdog_;
  std::string line_;
  std::deque<kin::unique_fd> queued_fds_;
  int truncations_ = 0;
  bool failed_ = false;
  std::uint64_t bulk_left_ = 0, bulk_count_ = 0, bulk_hash_ = fnv_offset;
  std::uint64_t bulk_mismatches_ = 0, bulk_first_mismatch_ = 0;
  std::uint64_t stall_left_ = 0;
  rlimit saved_limit_{};
  std::vector<kin::any_handle> handles_;
  std::vector<std::unique_ptr<kin::stream>> connections_;
};

// Reads the first message on fd 3 with a raw recvmsg whose control buffer has room for one
// descriptor (CMSG_SPACE(sizeof(int)), which the kernel rounds to two on LP64), closes what
// arrived, and describes the result: "raw '<bytes>' ctrunc <0|1> fds <received>".
std::optional<std::string> raw_small_control_read() {
  pollfd p{channel_fd, POLLIN, 0};
  if (::poll(&p, 1, 10000) != 1) return std::nullopt;
  char data[256];
  iovec iov{data, sizeof data};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(channel_fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return std::nullopt;
  int received = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t k = 0; k < count; ++k) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + k * sizeof fd, sizeof fd);
      ::close(fd);
      ++received;
    }
  }
  std::string bytes(data, static_cast<std::size_t>(n));
  if (!bytes.empty() && bytes.back() == '\n') bytes.pop_back();
  return "raw '" + bytes + "' ctrunc " + ((msg.msg_flags & MSG_CTRUNC) != 0 ? "1" : "0") + " fds " +
         std::to_string(received);
}

}  // namespace

// "handles": serve commands on fd 3. "handles-after-raw-read": first read one message with a
// raw recvmsg and too little control room, report it, then serve commands with kin.
int handles_main(std::string_view behaviour) {
  std::optional<std::string> first;
  if (behaviour == "handles-after-raw-read") {
    first = raw_small_control_read();
    if (!first) {
      std::fprintf(stderr, "kin-test-child: raw read on fd %d failed\n", channel_fd);
      return 2;
    }
  } else if (behaviour != "handles") {
    return -1;
  }
  kin::loop l;
  agent a(l);
  return a.run(first);
}

}  // namespace kin_test_child
