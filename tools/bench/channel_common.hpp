// What the channel benchmarks (channel_pingpong, channel_oneway, channel_handles) share: the six
// implementations and the driver that alternates them run by run and prints the BENCH lines,
// starting the kin children (this executable run again with --child), running the Node peer
// (channel_node.js), reading the few JSON fields the messages carry, and the accepted TCP
// connections whose descriptors the handle benchmark passes.
//
// Every implementation runs on both sides: kin native talks to kin native, kin in Node mode to
// kin in Node mode, Node to Node. The raw and libuv peers fork without exec (stream_common's
// fork_peer); kin forks with kin::fork (spawn and exec of this executable, which finds its
// channel with channel::from_environment), Node with child_process.fork. Starting a child is
// never timed.
#pragma once

#include <kin/channel.hpp>
#include <kin/fd.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "bench.hpp"
#include "stream_common.hpp"

#ifndef KIN_BENCH_SOURCE_DIR
#define KIN_BENCH_SOURCE_DIR "tools/bench"
#endif

namespace kin_bench::channel {

using kin_bench::cpu_ns;
using kin_bench::die;
using kin_bench::wall_ns;
using stream::run_result;

// ---- implementations ------------------------------------------------------------------------

/// The implementations, in the order the runs alternate.
enum class impl { kin, kin_node, raw_block, raw_epoll, raw_epoll_1, libuv, node };

inline const char* name_of(impl i) noexcept {
  switch (i) {
    case impl::kin:
      return "kin";
    case impl::kin_node:
      return "kin_node";
    case impl::raw_block:
      return "raw_block";
    case impl::raw_epoll:
      return "raw_epoll";
    case impl::raw_epoll_1:
      return "raw_epoll_1";
    case impl::libuv:
      return "libuv";
    case impl::node:
      return "node";
  }
  return "?";
}

inline const char* codec_name(kin::channel_codec c) noexcept {
  return c == kin::channel_codec::node ? "node" : "native";
}

// ---- kin children ---------------------------------------------------------------------------

/// This executable's path: the kin children are this program run again with --child.
inline const std::string& self_path() {
  static const std::string path = [] {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) die("readlink /proc/self/exe failed");
    return std::string(buf, static_cast<std::size_t>(n));
  }();
  return path;
}

/// How the kin parents start their child: kin::fork (the default), or, with --spawn fork (for
/// valgrind, which cannot follow the clone that kin::spawn makes), socketpair + fork + execv by
/// hand, with the child's end at descriptor 3 and the variables kin::fork sets, the parent's end
/// opened with channel::open. The channel is the same either way; only the start differs.
inline bool spawn_by_hand = false;

/// A kin child and the parent's end of its channel.
struct kin_peer {
  std::optional<kin::process> child;  // started by kin::fork: reaped by the loop
  pid_t pid = -1;                     // started by hand: reaped by reap()
  std::unique_ptr<kin::channel> channel;

  /// After the loop has run: waits for a child started by hand, which must exit with status 0.
  void reap() {
    if (pid > 0) stream::reap(pid);
    pid = -1;
  }
};

/// Starts this program as a kin child with a channel of `codec`: `--child <codec> args...`. The
/// child must exit with status 0 (the benchmark dies otherwise, from the loop's exit callback
/// or from reap()).
inline kin_peer fork_kin_child(kin::loop& l, kin::channel_codec codec,
                               std::vector<std::string> args) {
  args.insert(args.begin(), {"--child", codec_name(codec)});
  kin_peer p;
  if (!spawn_by_hand) {
    kin::fork_options o;
    o.channel.codec = codec;
    auto f = kin::fork(l, self_path(), args, o);
    if (!f) die("kin::fork of the benchmark's child failed");
    f->child.on_exit([](std::error_code ec, int status, int) {
      if (ec || status != 0) die("a kin child failed");
    });
    p.child.emplace(std::move(f->child));
    p.channel = std::move(f->channel);
    return p;
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair failed");
  std::vector<char*> argv;
  std::string path = self_path();
  argv.push_back(path.data());
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  p.pid = ::fork();
  if (p.pid < 0) die("fork failed");
  if (p.pid == 0) {
    // dup2 clears close-on-exec on descriptor 3, unless the end is already there.
    if (sv[1] == 3 ? ::fcntl(3, F_SETFD, 0) != 0 : ::dup2(sv[1], 3) != 3) ::_exit(127);
    if (codec == kin::channel_codec::node) {
      ::setenv("NODE_CHANNEL_FD", "3", 1);
      ::setenv("NODE_CHANNEL_SERIALIZATION_MODE", "json", 1);
    } else {
      ::setenv("KIN_CHANNEL_FD", "3", 1);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(sv[1]);
  kin::channel_options o;
  o.codec = codec;
  p.channel = std::make_unique<kin::channel>(l, o);
  if (!p.channel->open(kin::unique_fd(sv[0]))) die("channel::open failed");
  return p;
}

/// The parent's side of a kin run: an error, or the child's end closing before the run is
/// over, is fatal.
inline void watch_kin_channel(kin::channel& ch, const bool& done) {
  ch.on_error([](std::error_code) { die("kin parent: channel error"); });
  ch.on_disconnect([&done] {
    if (!done) die("kin parent: the child closed its channel before the run ended");
  });
}

/// In a kin child: the channel to the parent, which must have the codec the parent asked for
/// (a kin without the Node codec would hand a node-mode child a native channel, and the
/// figures would be labelled wrongly).
inline std::unique_ptr<kin::channel> open_child_channel(kin::loop& l, std::string_view codec) {
  auto ch = kin::channel::from_environment(l);
  if (!ch) die("kin child: channel::from_environment failed");
  if (codec != codec_name((*ch)->codec())) {
    die("kin child: the channel's codec is not the one asked for (is the Node codec built?)");
  }
  (*ch)->on_error([](std::error_code) { die("kin child: channel error"); });
  return std::move(*ch);
}

// ---- JSON fields ----------------------------------------------------------------------------

/// The unsigned integer that follows the first `"<key>":` in `text`, or -1 when there is none.
/// (The messages are the benchmark's own: `{"i":12}`, `{"ack":1,"cpu":345}`, ...)
inline long long json_uint(std::string_view text, std::string_view key) {
  char needle[32];
  if (key.size() + 3 > sizeof needle) return -1;
  needle[0] = '"';
  std::memcpy(needle + 1, key.data(), key.size());
  needle[key.size() + 1] = '"';
  needle[key.size() + 2] = ':';
  const std::size_t at = text.find(std::string_view(needle, key.size() + 3));
  if (at == std::string_view::npos) return -1;
  const char* first = text.data() + at + key.size() + 3;
  unsigned long long v = 0;
  auto [end, ec] = std::from_chars(first, text.data() + text.size(), v);
  if (ec != std::errc() || end == first) return -1;
  return static_cast<long long>(v);
}

/// Writes `{"<key>":<value>,...}` into `out` (short keys only).
inline void json_object(std::string& out,
                        std::initializer_list<std::pair<std::string_view, std::uint64_t>> kv) {
  char buf[256];
  std::size_t n = 0;
  buf[n++] = '{';
  for (const auto& [k, v] : kv) {
    if (k.size() > 32 || n + k.size() + 26 > sizeof buf) die("json_object: too much");
    if (n > 1) buf[n++] = ',';
    buf[n++] = '"';
    std::memcpy(buf + n, k.data(), k.size());
    n += k.size();
    buf[n++] = '"';
    buf[n++] = ':';
    n = static_cast<std::size_t>(std::to_chars(buf + n, buf + sizeof buf, v).ptr - buf);
  }
  buf[n++] = '}';
  out.assign(buf, n);
}

/// A native message: the u64 `value` (a sequence number, or a CPU time in an ack) in the first
/// 8 bytes of `msg`, whose other bytes are left as they are.
inline void put_u64(std::string& msg, std::uint64_t value) {
  std::memcpy(msg.data(), &value, sizeof value);
}
inline std::uint64_t get_u64(std::string_view msg) {
  std::uint64_t v;
  if (msg.size() < sizeof v) die("a native message shorter than its 8-byte number");
  std::memcpy(&v, msg.data(), sizeof v);
  return v;
}

// ---- Node -----------------------------------------------------------------------------------

/// Runs `node channel_node.js args...` (from the source directory) to completion and returns
/// what its RESULT line says. Node times itself: its clocks run in the Node parent, which forks
/// its own child, as every other implementation does.
inline run_result run_node(const std::vector<std::string>& args) {
  kin::spawn_sync_options o;
  o.file = "node";
  o.args = {"node", std::string(KIN_BENCH_SOURCE_DIR) + "/channel_node.js"};
  o.args.insert(o.args.end(), args.begin(), args.end());
  o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::inherit()};
  o.timeout = std::chrono::minutes(5);
  o.kill_grace = std::chrono::seconds(5);
  const kin::spawn_sync_result r = kin::spawn_sync(o);
  if (r.error || !r.exit_status || *r.exit_status != 0) die("node channel_node.js failed");
  const std::string& out = r.out();
  const std::size_t at = out.find("RESULT ");
  if (at == std::string::npos) die("node channel_node.js printed no RESULT line");
  const std::string_view line(out.data() + at, out.find('\n', at) - at);
  auto field = [&](std::string_view key) {
    std::string k(1, ' ');
    k.append(key).push_back('=');
    const std::size_t p = line.find(k);
    if (p == std::string_view::npos) die("channel_node.js: a RESULT field is missing");
    unsigned long long v = 0;
    const char* first = line.data() + p + k.size();
    auto [end, ec] = std::from_chars(first, line.data() + line.size(), v);
    if (ec != std::errc() || end == first) die("channel_node.js: a RESULT field is not a number");
    return v;
  };
  run_result res;
  res.wall_ns = field("wall_ns");
  res.parent_cpu_ns = field("parent_cpu_ns");
  res.child_cpu_ns = field("child_cpu_ns");
  res.ops = static_cast<long>(field("ops"));
  res.ops_total = static_cast<long>(field("ops_total"));
  return res;
}

// ---- accepted TCP connections ---------------------------------------------------------------

/// N loopback TCP connections, made before a handle benchmark's run: a listener on
/// 127.0.0.1:0, then for each a blocking connect and an accept4 (all close-on-exec), as
/// perf-ipc's `tcp` source does. The sender passes the accepted ends, one per message, and gives
/// up its copy (release()); the receiver closes its copy, which is the last one, so the
/// connection closes then (FIN). The clients are aborted at the end (SO_LINGER 0, then close:
/// a reset), which frees both ends without leaving thousands of TIME_WAIT sockets behind.
class tcp_connections {
 public:
  explicit tcp_connections(long n) {
    const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("socket failed");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 1024) != 0 ||
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      die("listen on 127.0.0.1 failed");
    }
    accepted_.reserve(static_cast<std::size_t>(n));
    clients_.reserve(static_cast<std::size_t>(n));
    ports_.reserve(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) {
      const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (c < 0) die("socket failed (too few descriptors allowed?)");
      if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect failed");
      sockaddr_in peer{};
      socklen_t plen = sizeof peer;
      const int s = ::accept4(l, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC);
      if (s < 0) die("accept4 failed");
      clients_.push_back(c);
      accepted_.push_back(s);
      ports_.push_back(ntohs(peer.sin_port));
    }
    ::close(l);
  }
  tcp_connections(const tcp_connections&) = delete;
  tcp_connections& operator=(const tcp_connections&) = delete;
  ~tcp_connections() {
    for (int& s : accepted_) stream::close_fd(s);
    const linger abort_on_close{1, 0};
    for (int c : clients_) {
      ::setsockopt(c, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
      ::close(c);
    }
  }

  /// The accepted end of connection `i`, which the caller now owns.
  int release(long i) {
    const int s = accepted_.at(static_cast<std::size_t>(i));
    if (s < 0) die("a connection was passed twice");
    accepted_[static_cast<std::size_t>(i)] = -1;
    return s;
  }
  /// The client's port of connection `i` (what the receiver's getpeername must find).
  [[nodiscard]] std::uint16_t port(long i) const { return ports_.at(static_cast<std::size_t>(i)); }

 private:
  std::vector<int> accepted_;
  std::vector<int> clients_;
  std::vector<std::uint16_t> ports_;
};

/// The peer port of a connected TCP socket (the receiver's sample check).
inline std::uint16_t peer_port_of(int fd) {
  sockaddr_in peer{};
  socklen_t len = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0 ||
      peer.sin_family != AF_INET || peer.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) {
    die("a received descriptor is not a TCP connection from 127.0.0.1");
  }
  return ntohs(peer.sin_port);
}

// ---- the driver -----------------------------------------------------------------------------

/// One implementation of a case: the count of operations of each of its runs (the slow peers
/// run fewer, so that a run lasts about as long as the others') and a function that makes one
/// run.
struct impl_entry {
  impl which;
  long count;
  std::function<run_result(long count)> run;
};

/// One comparison, printed as a BENCH line when `left` is kin or kin_node (then named
/// `<case>` or `<case>_node_mode`, with `kin=` the left side) and as a `#` line otherwise
/// (e.g. Node against raw blocking, perf-ipc's own ratios).
struct comparison {
  impl left;
  impl right;
};

struct channel_case {
  std::string name;
  const char* unit;
  std::function<double(const run_result&)> metric;
  std::vector<impl_entry> impls;
  std::vector<comparison> comparisons;
};

/// Which implementations run (--skip, --only) and how often (--runs).
struct common_options {
  long runs = 5;
  std::string only;
  std::string skip;
  std::string pin = "none";
  std::string spawn = "kin";

  [[nodiscard]] bool skipped(impl i) const {
    const std::string n = name_of(i);
    std::size_t from = 0;
    while (from <= skip.size()) {
      const std::size_t to = std::min(skip.find(',', from), skip.size());
      if (skip.compare(from, to - from, n) == 0) return true;
      from = to + 1;
    }
    return false;
  }
};

inline void print_run(const channel_case& c, int run, impl which, const run_result& r) {
  const double ops = static_cast<double>(r.ops);
  std::printf(
      "# %s run=%d impl=%s %.1f %s (wall %.1f ms; cpu/op parent %.3f + child %.3f = %.3f us; "
      "ops=%ld ops_total=%ld)\n",
      c.name.c_str(), run, name_of(which), c.metric(r), c.unit,
      static_cast<double>(r.wall_ns) / 1e6, static_cast<double>(r.parent_cpu_ns) / 1e3 / ops,
      static_cast<double>(r.child_cpu_ns) / 1e3 / ops, stream::cpu_us_per_op(r), r.ops,
      r.ops_total);
  std::fflush(stdout);
}

/// One run, under a time limit: a run that hangs (a lost message would leave both sides
/// waiting) is ended by SIGALRM, whose default action ends this process; its children then see
/// their channel close and end too.
inline run_result bounded_run(const impl_entry& e, long count) {
  ::alarm(300);
  run_result r = e.run(count);
  ::alarm(0);
  return r;
}

/// Runs a case: one unreported warm-up run of each implementation (a tenth of its count), then
/// `runs` rounds in which the implementations take turns, then the comparisons, each with a `#`
/// line giving the medians of the CPU time per operation of both processes. With --only, runs
/// that implementation alone, without warm-up run or comparisons (for profilers).
inline void run_case(const channel_case& c, const common_options& o) {
  std::vector<const impl_entry*> active;
  for (const impl_entry& e : c.impls) {
    if (!o.skipped(e.which) && (o.only.empty() || o.only == name_of(e.which))) {
      active.push_back(&e);
    }
  }
  if (!o.only.empty()) {
    for (const impl_entry* e : active) {
      for (int r = 1; r <= o.runs; ++r) print_run(c, r, e->which, bounded_run(*e, e->count));
    }
    return;
  }
  for (const impl_entry* e : active) (void)bounded_run(*e, std::max(1L, e->count / 10));
  std::map<impl, std::vector<double>> metric, cpu;
  for (int r = 1; r <= o.runs; ++r) {
    for (const impl_entry* e : active) {
      const run_result res = bounded_run(*e, e->count);
      print_run(c, r, e->which, res);
      metric[e->which].push_back(c.metric(res));
      cpu[e->which].push_back(stream::cpu_us_per_op(res));
    }
  }
  for (const comparison& cmp : c.comparisons) {
    if (metric.count(cmp.left) == 0 || metric.count(cmp.right) == 0) continue;
    const double k = median(cpu[cmp.left]);
    const double p = median(cpu[cmp.right]);
    if (cmp.left == impl::kin || cmp.left == impl::kin_node) {
      const std::string name = c.name + (cmp.left == impl::kin_node ? "_node_mode" : "");
      report(name.c_str(), c.unit, metric[cmp.left], name_of(cmp.right), metric[cmp.right]);
      std::printf("# %s cpu_us/op (both processes) %s=%.3f %s=%.3f ratio=%.3f\n", name.c_str(),
                  name_of(cmp.left), k, name_of(cmp.right), p, k / p);
    } else {
      const double a = median(metric[cmp.left]);
      const double b = median(metric[cmp.right]);
      std::printf("# %s %s %s=%.1f %s=%.1f ratio=%.3f; cpu_us/op ratio=%.3f\n", c.name.c_str(),
                  c.unit, name_of(cmp.left), a, name_of(cmp.right), b, a / b, k / p);
    }
  }
  std::fflush(stdout);
}

/// Applies --pin: `same` puts this process on its first allowed CPU before anything starts, and
/// every child (forked, spawned, Node's own) inherits it; `none` leaves placement to the
/// scheduler. (A split placement would need every implementation's child to move itself, Node's
/// included, so it is not offered.) Returns the suffix of the benchmark names.
inline const char* apply_pin(const std::string& pin) {
  if (pin == "none") return "";
  if (pin != "same") die("--pin is none or same");
  return stream::apply_pin(pin);
}

/// Prints the header line of a benchmark: its parameters and the load average.
inline void print_header(const char* what, const common_options& o) {
  std::printf("# %s: %ld runs, pin %s, skip '%s', loadavg at start: ", what, o.runs, o.pin.c_str(),
              o.skip.c_str());
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    char line[128] = {};
    if (std::fgets(line, sizeof line, f) != nullptr) std::fputs(line, stdout);
    std::fclose(f);
  }
  std::fflush(stdout);
}

}  // namespace kin_bench::channel
