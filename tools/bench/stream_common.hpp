// What the stream benchmarks (stream_oneway, stream_pingpong, stream_fdpass) share: a parent and
// a forked child over an AF_UNIX socketpair, length-prefixed frames and their parsers, the raw
// blocking and raw epoll connections, CPU pinning, and the driver that alternates the
// implementations run by run and prints the BENCH lines with the CPU time of both processes.
//
// Every implementation runs on both sides: a kin parent talks to a kin child, a libuv parent to
// a libuv child. Each side builds its loop after fork(). A child never returns into main(): it
// leaves with _exit(), and the parent reaps it before the run ends.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"

namespace kin_bench::stream {

// ---- implementations ------------------------------------------------------------------------

/// The implementations, in the order the runs alternate; kin is compared with each of the others.
enum class impl { kin, raw_block, raw_epoll, libuv };

inline const char* name_of(impl i) noexcept {
  switch (i) {
    case impl::kin:
      return "kin";
    case impl::raw_block:
      return "raw_block";
    case impl::raw_epoll:
      return "raw_epoll";
    case impl::libuv:
      return "libuv";
  }
  return "?";
}

// ---- frames ---------------------------------------------------------------------------------

/// A frame is a u32 payload length (host order) and the payload, whose first 8 bytes are a
/// sequence number the receiver checks (acks carry the child's CPU time there instead).
constexpr std::size_t header_size = 4;
constexpr std::size_t seq_size = 8;
constexpr std::size_t ack_frame_size = header_size + seq_size;
/// Frames at least this large are completed with reads of exactly the missing bytes (raw and
/// libuv receivers), so they are never moved inside the receive buffer.
constexpr std::size_t large_frame = 16 * 1024;

inline std::uint32_t load_u32(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline std::uint64_t load_u64(const std::byte* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Writes the header and the sequence number; the rest of the payload is left as it is.
inline void put_frame(std::byte* frame, std::uint32_t payload, std::uint64_t seq) noexcept {
  std::memcpy(frame, &payload, sizeof payload);
  std::memcpy(frame + header_size, &seq, sizeof seq);
}

/// A frame buffer of `header_size + payload` bytes, pre-filled with non-zero bytes (so no copy
/// reads the zero page).
inline std::vector<std::byte> make_frame(std::size_t payload) {
  return std::vector<std::byte>(header_size + payload, std::byte{0x5a});
}

/// The receive buffer of the raw and libuv receivers, which read into memory they choose: frames
/// are parsed where they lie, a partial frame is moved to the front, and the bytes still missing
/// from a large frame are read exactly.
class frame_buffer {
 public:
  explicit frame_buffer(std::size_t capacity) : buf_(capacity) {}

  /// Where the next read puts its bytes.
  std::span<std::byte> free_space() {
    std::size_t space = buf_.size() - len_;
    if (len_ >= header_size) {
      const std::size_t frame = header_size + load_u32(buf_.data());
      if (frame - header_size >= large_frame && frame > len_ && frame - len_ < space) {
        space = frame - len_;
      }
    }
    if (space == 0) die("receive buffer full");
    return {buf_.data() + len_, space};
  }

  /// Takes `n` bytes read into free_space() and calls on_frame(payload, length) for every
  /// complete frame. Returns the number of frames.
  template <class F>
  std::size_t commit(std::size_t n, F&& on_frame) {
    len_ += n;
    std::size_t off = 0, frames = 0;
    while (len_ - off >= header_size) {
      const std::uint32_t l = load_u32(buf_.data() + off);
      if (len_ - off - header_size < l) break;
      on_frame(static_cast<const std::byte*>(buf_.data() + off + header_size), l);
      off += header_size + l;
      ++frames;
    }
    if (off != 0) {
      if (off < len_) std::memmove(buf_.data(), buf_.data() + off, len_ - off);
      len_ -= off;
    }
    return frames;
  }

 private:
  std::vector<std::byte> buf_;
  std::size_t len_ = 0;
};

/// The parser of the kin receivers, whose read callback lends a chunk of kin's own buffer:
/// frames that lie whole in the chunk are parsed in place; a frame cut by a chunk boundary is
/// copied into `carry_` until it is complete (the one copy kin's read API adds, since the
/// receiver cannot choose where kin reads to).
class chunk_parser {
 public:
  explicit chunk_parser(std::size_t capacity) { carry_.reserve(capacity); }

  /// Calls on_frame(payload, length) for every frame the chunk completes.
  template <class F>
  void feed(std::span<const std::byte> chunk, F&& on_frame) {
    const std::byte* p = chunk.data();
    std::size_t n = chunk.size();
    if (!carry_.empty()) {
      if (carry_.size() < header_size) {
        const std::size_t take = std::min(header_size - carry_.size(), n);
        carry_.insert(carry_.end(), p, p + take);
        p += take;
        n -= take;
        if (carry_.size() < header_size) return;
      }
      const std::size_t need = header_size + load_u32(carry_.data()) - carry_.size();
      const std::size_t take = std::min(need, n);
      carry_.insert(carry_.end(), p, p + take);
      p += take;
      n -= take;
      if (take < need) return;
      on_frame(static_cast<const std::byte*>(carry_.data() + header_size), load_u32(carry_.data()));
      carry_.clear();
    }
    while (n >= header_size) {
      const std::uint32_t l = load_u32(p);
      if (n - header_size < l) break;
      on_frame(p + header_size, l);
      p += header_size + l;
      n -= header_size + l;
    }
    carry_.insert(carry_.end(), p, p + n);
  }

 private:
  std::vector<std::byte> carry_;
};

// ---- the raw peers --------------------------------------------------------------------------

/// Closes `fd` (the raw peers own their descriptors by hand, as C code would).
inline void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

/// A close-on-exec duplicate of `fd`, the descriptor every fd-passing sender sends.
inline int dup_fd(int fd) {
  const int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) die("F_DUPFD_CLOEXEC failed");
  return d;
}

/// One end of the socketpair driven by hand, in one of two disciplines:
/// - blocking read/write/sendmsg/recvmsg (`raw_block`, the kernel's limit);
/// - non-blocking with a level-triggered epoll loop written the way libuv's is (`raw_epoll`):
///   optimistic writes, EPOLLOUT armed only after EAGAIN, up to 32 reads per readiness event,
///   a short read taken as "drained" except after a read that carried descriptors (a stream
///   recvmsg stops after a message with descriptors, and more may follow).
class raw_conn {
 public:
  raw_conn(int fd, bool nonblocking) : fd_(fd), nonblocking_(nonblocking) {
    if (!nonblocking_) return;
    const int fl = ::fcntl(fd_, F_GETFL);
    if (fl < 0 || ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl O_NONBLOCK failed");
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) die("epoll_create1 failed");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd_;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd_, &ev) != 0) die("epoll_ctl ADD failed");
  }
  raw_conn(const raw_conn&) = delete;
  raw_conn& operator=(const raw_conn&) = delete;
  ~raw_conn() {
    close_fd(epfd_);
    close_fd(fd_);
  }

  /// Sends all `n` bytes; `nfds` descriptors (if any) ride on the first byte (SCM_RIGHTS).
  void send(const std::byte* data, std::size_t n, const int* fds = nullptr, int nfds = 0) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
    std::size_t off = 0;
    while (off < n) {
      ssize_t r;
      if (nfds > 0 && off == 0) {
        iovec iov{const_cast<std::byte*>(data), n};
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        const std::size_t bytes = sizeof(int) * static_cast<std::size_t>(nfds);
        std::memset(control, 0, CMSG_SPACE(bytes));
        m.msg_control = control;
        m.msg_controllen = CMSG_SPACE(bytes);
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(bytes);
        std::memcpy(CMSG_DATA(c), fds, bytes);
        r = ::sendmsg(fd_, &m, MSG_NOSIGNAL);
      } else {
        r = ::write(fd_, data + off, n - off);
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN && nonblocking_) {
          arm_writable(true);
          wait(EPOLLOUT);
          continue;
        }
        die("raw send failed");
      }
      off += static_cast<std::size_t>(r);
    }
    if (out_armed_) arm_writable(false);
  }

  /// One blocking read, or one turn of the epoll loop (wait, then up to 32 reads). Calls
  /// on_frame(payload, length) for every complete frame; received descriptors are appended to
  /// `fds` (which must be given on a socket that may carry some). Returns the bytes read;
  /// at_eof() tells whether the peer has closed.
  template <class F>
  std::size_t receive(frame_buffer& buf, F&& on_frame, std::vector<int>* fds = nullptr) {
    std::size_t total = 0;
    if (nonblocking_) wait(EPOLLIN);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
    for (int turn = 0; turn < 32; ++turn) {
      const std::span<std::byte> space = buf.free_space();
      ssize_t r;
      msghdr m{};
      iovec iov{space.data(), space.size()};
      if (fds != nullptr) {
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = control;
        m.msg_controllen = sizeof control;
        r = ::recvmsg(fd_, &m, MSG_CMSG_CLOEXEC);
      } else {
        r = ::read(fd_, space.data(), space.size());
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN && nonblocking_) break;
        die("raw receive failed");
      }
      if (r == 0) {
        eof_ = true;
        break;
      }
      bool got_fds = false;
      if (fds != nullptr) {
        if ((m.msg_flags & MSG_CTRUNC) != 0) die("raw receive: MSG_CTRUNC");
        for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
          if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
          const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          const std::size_t at = fds->size();
          fds->resize(at + k);
          std::memcpy(fds->data() + at, CMSG_DATA(c), k * sizeof(int));
          got_fds = got_fds || k > 0;
        }
      }
      total += static_cast<std::size_t>(r);
      buf.commit(static_cast<std::size_t>(r), on_frame);
      if (!nonblocking_) break;
      if (static_cast<std::size_t>(r) < space.size() && !got_fds) break;
    }
    return total;
  }

  /// Reads one ack frame (blocking or through the epoll loop) and returns its 8-byte payload.
  std::uint64_t read_ack(frame_buffer& buf) {
    bool got = false;
    std::uint64_t value = 0;
    while (!got) {
      receive(buf, [&](const std::byte* p, std::uint32_t len) {
        if (len != seq_size || got) die("raw: unexpected frame instead of one ack");
        value = load_u64(p);
        got = true;
      });
      if (!got && eof_) die("raw: EOF while waiting for an ack");
    }
    return value;
  }

  /// Half-closes: the peer reads EOF.
  void shutdown_write() {
    if (::shutdown(fd_, SHUT_WR) != 0) die("shutdown failed");
  }
  [[nodiscard]] bool at_eof() const noexcept { return eof_; }

 private:
  void wait(std::uint32_t want) {
    epoll_event ev[4];
    for (;;) {
      const int n = ::epoll_wait(epfd_, ev, 4, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        die("epoll_wait failed");
      }
      for (int i = 0; i < n; ++i) {
        if ((ev[i].events & (want | EPOLLHUP | EPOLLERR)) != 0) return;
      }
    }
  }

  void arm_writable(bool on) {
    epoll_event ev{};
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.fd = fd_;
    if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd_, &ev) != 0) die("epoll_ctl MOD failed");
    out_armed_ = on;
  }

  int fd_;
  int epfd_ = -1;
  bool nonblocking_;
  bool out_armed_ = false;
  bool eof_ = false;
};

/// The 12-byte ack frame whose payload is `value` (0, or the child's CPU time in ns).
struct ack_frame {
  explicit ack_frame(std::uint64_t value) noexcept { put_frame(bytes, seq_size, value); }
  std::span<const std::byte> span() const noexcept { return {bytes, sizeof bytes}; }
  std::byte bytes[ack_frame_size];
};

// ---- processes and CPUs ---------------------------------------------------------------------

/// The CPUs the parent and the child are pinned to (--pin), or -1 to let the scheduler place
/// them.
inline int parent_cpu = -1;
inline int child_cpu = -1;

inline void pin_self(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity failed");
}

/// Applies --pin (none|same|split) to this process and to the children it will fork; returns
/// the suffix of the benchmark names ("", "_same_cpu", "_split_cpu").
inline const char* apply_pin(const std::string& pin) {
  if (pin == "none") return "";
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) die("sched_getaffinity failed");
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  }
  if (pin == "same") {
    parent_cpu = child_cpu = cpus.at(0);
  } else if (pin == "split") {
    if (cpus.size() < 2) die("--pin split needs two CPUs");
    parent_cpu = cpus[0];
    child_cpu = cpus[1];
  } else {
    die("--pin is none, same or split");
  }
  pin_self(parent_cpu);
  return pin == "same" ? "_same_cpu" : "_split_cpu";
}

/// A forked child and the parent's end of the socketpair that joins them.
struct peer {
  pid_t pid;
  int fd;
};

/// Makes a socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC) and forks a child that runs
/// `body(child_end)` and leaves with _exit(body's result), never returning here. The child's
/// end is closed in the parent and the parent's end in the child.
template <class F>
peer fork_peer(F&& body) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    ::close(sv[0]);
    pin_self(child_cpu);
    const int code = body(sv[1]);
    ::_exit(code);
  }
  ::close(sv[1]);
  return {pid, sv[0]};
}

/// Waits for the child; a child that failed makes the benchmark fail.
inline void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) die("waitpid failed");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("the child failed");
}

using kin_bench::open_fd_count;

// ---- the driver -----------------------------------------------------------------------------

/// What one run measured, from the first timed operation to the child's last ack. `ops` counts
/// the timed operations (messages, round trips or descriptors); `ops_total` adds the in-run
/// warm-up phase, for callgrind's per-operation counts.
struct run_result {
  std::uint64_t wall_ns = 0;
  std::uint64_t parent_cpu_ns = 0;
  std::uint64_t child_cpu_ns = 0;
  long ops = 0;
  long ops_total = 0;
};

/// One comparison: a name, a unit, the figure taken from each run, and the implementations
/// (kin first) with a function that makes one run of `count` operations.
struct bench_case {
  std::string name;
  const char* unit;
  std::function<double(const run_result&)> metric;
  long count;
  std::vector<std::pair<impl, std::function<run_result(long count)>>> impls;
};

inline double per_second(const run_result& r) {
  return static_cast<double>(r.ops) * 1e9 / static_cast<double>(r.wall_ns);
}

inline double cpu_us_per_op(const run_result& r) {
  return static_cast<double>(r.parent_cpu_ns + r.child_cpu_ns) / 1e3 / static_cast<double>(r.ops);
}

inline void print_run(const bench_case& c, int run, impl which, const run_result& r) {
  const double ops = static_cast<double>(r.ops);
  std::printf(
      "# %s run=%d impl=%s %.1f %s (wall %.1f ms; cpu/op parent %.3f + child %.3f = %.3f us; "
      "ops=%ld ops_total=%ld)\n",
      c.name.c_str(), run, name_of(which), c.metric(r), c.unit,
      static_cast<double>(r.wall_ns) / 1e6, static_cast<double>(r.parent_cpu_ns) / 1e3 / ops,
      static_cast<double>(r.child_cpu_ns) / 1e3 / ops, cpu_us_per_op(r), r.ops, r.ops_total);
  std::fflush(stdout);
}

/// The figures of every run, per implementation.
struct case_runs {
  std::map<impl, std::vector<double>> metric;
  std::map<impl, std::vector<double>> cpu;
};

/// Runs a case: one unreported warm-up run of each implementation (a tenth of the count), then
/// `runs` rounds in which the implementations take turns, then one BENCH line per peer and a
/// `#` line with the medians of the CPU time per operation. With `only` set, runs that
/// implementation alone `runs` times, with no warm-up run and no BENCH line (for profilers).
inline case_runs run_case(const bench_case& c, long runs, const std::string& only) {
  case_runs out;
  if (!only.empty()) {
    for (const auto& [which, run] : c.impls) {
      if (only != name_of(which)) continue;
      for (int r = 1; r <= runs; ++r) print_run(c, r, which, run(c.count));
    }
    return out;
  }
  for (const auto& [which, run] : c.impls) (void)run(std::max(1L, c.count / 10));
  for (int r = 1; r <= runs; ++r) {
    for (const auto& [which, run] : c.impls) {
      const run_result res = run(c.count);
      print_run(c, r, which, res);
      out.metric[which].push_back(c.metric(res));
      out.cpu[which].push_back(cpu_us_per_op(res));
    }
  }
  for (const auto& [which, run] : c.impls) {
    if (which == impl::kin) continue;
    report(c.name.c_str(), c.unit, out.metric[impl::kin], name_of(which), out.metric[which]);
    const double k = median(out.cpu[impl::kin]);
    const double p = median(out.cpu[which]);
    std::printf("# %s cpu_us/op (both processes) kin=%.3f %s=%.3f ratio=%.3f\n", c.name.c_str(), k,
                name_of(which), p, k / p);
  }
  std::fflush(stdout);
  return out;
}

/// The common options: --runs, --only and --pin.
struct common_options {
  long runs = 5;
  std::string only;
  std::string pin = "none";
};

/// The in-run warm-up: a tenth of the count, at least `minimum`.
inline long warmup_of(long count, long minimum) { return std::max(minimum, count / 10); }

}  // namespace kin_bench::stream
