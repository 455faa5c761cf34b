// Random traffic over a native channel between two kin processes: frames of random sizes (empty
// and above 64 KiB included) with 0-16 descriptors of mixed kinds each go to the helper child's
// "channel-echo", which sends every frame back with the descriptors it received; each echo must
// come back in order, byte-exact, with the same open files rebuilt as the right handles.
#include "catch.hpp"

#include <kin/channel.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>

#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"
#include "helpers/temp_dir.hpp"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <type_traits>
#include <variant>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using kin_test::child_path;
using kin_test::leak_guard;

namespace {

// The kinds of descriptor the frames carry, and what each must be rebuilt as.
enum class carried {
  pipe_read,
  pipe_write,
  unix_stream,
  unix_datagram,
  unix_seqpacket,
  unix_server,
  tcp_socket,
  tcp_server,
  udp,
  file,
  count
};

constexpr int carried_count = static_cast<int>(carried::count);

kin::fd_kind kind_of(carried c) {
  switch (c) {
    case carried::pipe_read:
    case carried::pipe_write:
      return kin::fd_kind::pipe;
    case carried::unix_stream:
      return kin::fd_kind::unix_stream_socket;
    case carried::unix_datagram:
      return kin::fd_kind::unix_datagram_socket;
    case carried::unix_seqpacket:
      return kin::fd_kind::unix_seqpacket_socket;
    case carried::unix_server:
      return kin::fd_kind::unix_server;
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

bool holds_expected(const kin::any_handle& h, carried c) {
  switch (c) {
    case carried::pipe_read:
    case carried::pipe_write:
      return std::holds_alternative<std::unique_ptr<kin::pipe>>(h);
    case carried::unix_stream:
      return std::holds_alternative<std::unique_ptr<kin::unix_socket>>(h);
    case carried::unix_datagram:
    case carried::unix_seqpacket:
      return std::holds_alternative<kin::raw_descriptor>(h);
    case carried::unix_server:
      return std::holds_alternative<std::unique_ptr<kin::unix_server>>(h);
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

// Which open file a descriptor refers to: every pipe, socket and (unlinked) file here has an
// inode of its own.
struct identity {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const identity&) const = default;
};

bool identify(int fd, identity& out) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  out = {st.st_dev, st.st_ino};
  return true;
}

// Frame `index`: its size, its descriptors' kinds and (into `payload`) its bytes, all from
// (seed, index), so the echo can be checked without keeping what was sent.
struct frame_plan {
  std::size_t size = 0;
  std::vector<carried> fds;
};

frame_plan plan_frame(std::uint64_t seed, std::uint64_t index, std::string* payload) {
  std::mt19937_64 rng(seed ^ (index * 0x9E3779B97F4A7C15ull));
  frame_plan p;
  const auto r = rng() % 100;
  if (r < 8) {
    p.size = 0;
  } else if (r < 60) {
    p.size = 1 + rng() % 256;
  } else if (r < 82) {
    p.size = 257 + rng() % 16384;
  } else if (r < 93) {
    p.size = 16641 + rng() % (64 * 1024 - 16641 + 1);
  } else if (r < 95) {
    p.size = 64 * 1024 + rng() % 2;  // at the 64 KiB mark and one past it
  } else {
    p.size = 64 * 1024 + 2 + rng() % (256 * 1024);
  }
  const std::size_t nfds = rng() % 3 == 0 ? 0 : 1 + rng() % 16;
  for (std::size_t i = 0; i < nfds; ++i)
    p.fds.push_back(static_cast<carried>(rng() % carried_count));
  if (payload != nullptr) {
    payload->resize(p.size);
    for (std::size_t i = 0; i < p.size; i += 8) {
      const std::uint64_t v = rng();
      std::memcpy(payload->data() + i, &v, std::min<std::size_t>(8, p.size - i));
    }
  }
  return p;
}

// Makes the descriptors the frames carry. Never throws: it runs in loop callbacks.
class descriptor_maker {
 public:
  explicit descriptor_maker(const kin_test::temp_dir& dir) : dir_(dir.path().string()) {
    listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    address_.sin_family = AF_INET;
    address_.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof address_;
    if (!listener_ || ::bind(listener_.get(), as_sockaddr(address_), len) != 0 ||
        ::listen(listener_.get(), 16) != 0 ||
        ::getsockname(listener_.get(), as_sockaddr(address_), &len) != 0) {
      listener_.reset();
    }
  }

  [[nodiscard]] bool is_ready() const { return listener_.is_open(); }

  // A fresh descriptor of kind `c`, or an empty one (errno says why).
  kin::unique_fd make(carried c) {
    switch (c) {
      case carried::pipe_read:
      case carried::pipe_write: {
        auto p = kin::make_pipe();
        if (!p) return {};
        return c == carried::pipe_read ? std::move(p->read) : std::move(p->write);
      }
      case carried::unix_stream:
      case carried::unix_datagram:
      case carried::unix_seqpacket: {
        auto s = kin::make_socketpair(c == carried::unix_stream     ? kin::socket_type::stream
                                      : c == carried::unix_datagram ? kin::socket_type::datagram
                                                                    : kin::socket_type::seqpacket);
        if (!s) return {};
        return std::move(s->first);
      }
      case carried::unix_server: {
        kin::unique_fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un at{};
        at.sun_family = AF_UNIX;
        const std::string path = dir_ + "/s" + std::to_string(++made_);
        std::memcpy(at.sun_path, path.c_str(), path.size() + 1);
        if (!s || ::bind(s.get(), reinterpret_cast<sockaddr*>(&at), sizeof at) != 0 ||
            ::listen(s.get(), 4) != 0) {
          return {};
        }
        ::unlink(path.c_str());  // it keeps listening, nameless
        return s;
      }
      case carried::tcp_socket: {
        kin::unique_fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!client || ::connect(client.get(), as_sockaddr(address_), sizeof address_) != 0) {
          return {};
        }
        kin::unique_fd accepted(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!accepted) return {};
        // Either end travels; the other is reset, which leaves no TIME_WAIT behind.
        kin::unique_fd& kept = made_++ % 2 == 0 ? accepted : client;
        linger l{1, 0};
        (void)::setsockopt(kept.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
        kept.reset();
        return client ? std::move(client) : std::move(accepted);
      }
      case carried::tcp_server:
      case carried::udp: {
        const bool server = c == carried::tcp_server;
        kin::unique_fd s(::socket(AF_INET, (server ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0));
        sockaddr_in at{};
        at.sin_family = AF_INET;
        at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (!s || ::bind(s.get(), as_sockaddr(at), sizeof at) != 0 ||
            (server && ::listen(s.get(), 4) != 0)) {
          return {};
        }
        return s;
      }
      default: {
        std::string path = dir_ + "/f" + std::to_string(++made_) + "-XXXXXX";
        kin::unique_fd f(::mkostemp(path.data(), O_CLOEXEC));
        if (f) ::unlink(path.c_str());
        return f;
      }
    }
  }

 private:
  static sockaddr* as_sockaddr(sockaddr_in& a) { return reinterpret_cast<sockaddr*>(&a); }

  std::string dir_;
  kin::unique_fd listener_;
  sockaddr_in address_{};
  std::uint64_t made_ = 0;
};

struct outstanding_frame {
  std::uint64_t index = 0;
  std::vector<identity> ids;
};

}  // namespace

TEST_CASE(
    "random frames with 0-16 descriptors of mixed kinds come back from a kin child in order, "
    "byte-exact, each descriptor the open file that was sent",
    "[channel]") {
  leak_guard leaks;
  REQUIRE_FALSE(child_path().empty());
  const std::uint64_t seed = 20261124;
  CAPTURE(seed);
  constexpr std::uint64_t frames = 3000;
  // Bounds on what is in flight (in our queue, in the kernel, in the child): descriptors well
  // below any RLIMIT_NOFILE, and frames.
  constexpr std::size_t max_fds_out = 128;
  constexpr std::size_t max_frames_out = 64;

  kin_test::temp_dir dir("kin-channel-random");
  descriptor_maker maker(dir);
  REQUIRE(maker.is_ready());

  kin::loop l;
  kin::fork_options o;
  o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
  auto f = kin::fork(l, child_path(), {"channel-echo"}, o);
  REQUIRE(f);
  kin::channel& ch = *f->channel;
  int status = -1;
  f->child.on_exit([&](std::error_code, int st, int) { status = st; });

  std::vector<std::string> problems;  // what went wrong, each once
  auto problem = [&](std::string what) {
    if (problems.size() < 20) problems.push_back(std::move(what));
  };
  std::deque<outstanding_frame> out;
  std::size_t fds_out = 0;
  std::uint64_t next = 0;
  std::uint64_t echoed = 0;
  std::uint64_t descriptors_echoed = 0;
  std::size_t largest_queue = 0;
  int send_errors = 0;
  int channel_errors = 0;
  int disconnects = 0;
  bool waiting_drain = false;
  bool stopped = false;  // a problem that makes going on pointless
  std::string payload;
  std::string expected;

  auto pump = [&] {
    while (!stopped && !waiting_drain && next < frames) {
      const frame_plan p = plan_frame(seed, next, &payload);
      if (out.size() >= max_frames_out || fds_out + p.fds.size() > max_fds_out) return;
      outstanding_frame record{next, {}};
      std::vector<kin::unique_fd> fds;
      for (carried c : p.fds) {
        kin::unique_fd fd = maker.make(c);
        identity id;
        if (!fd || !identify(fd.get(), id)) {
          problem("frame " + std::to_string(next) + ": making descriptor kind " +
                  std::to_string(static_cast<int>(c)) + ": " + std::strerror(errno));
          stopped = true;
          ch.close();
          return;
        }
        record.ids.push_back(id);
        fds.push_back(std::move(fd));
      }
      const bool below =
          ch.send(payload, std::move(fds), [&](std::error_code ec) { send_errors += ec ? 1 : 0; });
      largest_queue = std::max(largest_queue, ch.queued_bytes());
      fds_out += p.fds.size();
      out.push_back(std::move(record));
      ++next;
      waiting_drain = !below;
    }
  };

  ch.on_drain([&] {
    waiting_drain = false;
    pump();
  });
  ch.on_error([&](std::error_code ec) {
    ++channel_errors;
    problem("channel error: " + ec.message());
  });
  ch.on_disconnect([&] { ++disconnects; });
  ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (out.empty()) {
      problem("an echo nobody sent, of " + std::to_string(m.size()) + " bytes");
      stopped = true;
      ch.close();
      return;
    }
    const outstanding_frame record = std::move(out.front());
    out.pop_front();
    const std::string where = "frame " + std::to_string(record.index);
    const frame_plan p = plan_frame(seed, record.index, &expected);
    if (m.size() != expected.size()) {
      problem(where + ": " + std::to_string(m.size()) + " bytes came back, " +
              std::to_string(expected.size()) + " were sent");
    } else if (m != expected) {
      std::size_t at = 0;
      while (m[at] == expected[at]) ++at;
      problem(where + ": byte " + std::to_string(at) + " differs");
    }
    if (handles.size() != p.fds.size()) {
      problem(where + ": " + std::to_string(handles.size()) + " descriptors came back, " +
              std::to_string(p.fds.size()) + " were sent");
    }
    for (std::size_t i = 0; i < std::min(handles.size(), p.fds.size()); ++i) {
      const std::string which = where + " descriptor " + std::to_string(i);
      if (kin::kind_of(handles[i]) != kind_of(p.fds[i]) || !holds_expected(handles[i], p.fds[i])) {
        problem(which + ": came back as " + std::string(kin::to_string(kin::kind_of(handles[i]))) +
                ", sent as " + std::string(kin::to_string(kind_of(p.fds[i]))));
        continue;
      }
      const int fd = fd_of(handles[i]);
      identity id;
      if (!identify(fd, id) || !(id == record.ids[i])) {
        problem(which + ": not the open file that was sent");
      }
      const int flags = ::fcntl(fd, F_GETFD);
      if (flags == -1 || (flags & FD_CLOEXEC) == 0) problem(which + ": not close-on-exec");
    }
    descriptors_echoed += handles.size();
    handles.clear();  // closed before more are made
    fds_out -= record.ids.size();
    ++echoed;
    if (next == frames && out.empty()) {
      ch.disconnect();  // the child exits when its channel closes
      return;
    }
    pump();
  });

  pump();
  REQUIRE(kin_test::run_all(l, std::chrono::seconds(90)));
  std::string listed;
  for (const auto& p : problems) listed += "\n  " + p;
  INFO("first problems:" << listed);
  CHECK(problems.empty());
  CHECK(echoed == frames);
  CHECK(out.empty());
  CHECK(send_errors == 0);
  CHECK(channel_errors == 0);
  CHECK(disconnects == 1);
  CHECK(status == 0);
  CHECK(descriptors_echoed > frames * 4);  // the mix really carried descriptors
  // Bounded: the queue never held much more than the high-water mark and one frame.
  CHECK(largest_queue <= kin::channel_options{}.high_water + 8 + 64 * 1024 + 2 + 256 * 1024);
}
