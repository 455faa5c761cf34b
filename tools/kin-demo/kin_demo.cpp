// kin-demo, the README's demo: a parent listens on 127.0.0.1, starts workers with channels and
// hands every accepted connection to the next worker, which answers with a minimal HTTP/1.1
// response naming its pid. A worker is this program again (kin's native codec) or Node.js
// running worker.js (Node's own IPC protocol).
#include "../common/http_responder.hpp"

#include <kin/channel.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/server.hpp>
#include <kin/signal.hpp>
#include <kin/socket.hpp>

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include <unistd.h>

#ifndef KIN_DEMO_SOURCE_DIR
#define KIN_DEMO_SOURCE_DIR "."
#endif
#ifndef KIN_DEMO_DATA_DIR
#define KIN_DEMO_DATA_DIR "."
#endif

namespace {

using namespace std::chrono_literals;

constexpr const char* usage_text =
    R"(usage: kin-demo [--port PORT] [--workers N] [--worker native|node]

Listens on 127.0.0.1:PORT, starts N worker processes, each with a channel to this one, and
hands every accepted connection to the next worker in turn. The worker reads the request's
headers, answers "HTTP/1.1 200 OK" with the body "Child <pid> handled it." and closes.

  --port PORT      the TCP port, 0 to 65535 (default 1337; 0: a free port the kernel picks)
  --workers N      how many workers, 1 to 64 (default 2)
  --worker KIND    native: this program, over kin's own channel codec (the default);
                   node: `node worker.js`, over Node's IPC protocol (needs Node.js)
  -h, --help       show this help

Once it listens it prints one line on stdout:
  kin-demo: listening on http://127.0.0.1:PORT/ with N workers (pids PID PID ...)

SIGINT or SIGTERM stops it: it stops accepting and closes the channels, each worker finishes
the connections it holds and exits (one still running after 5 seconds is killed), and kin-demo
exits 0. A second signal kills the workers at once. A worker that dies is reported on stderr;
when none is left, kin-demo stops and exits 1.

Exit status: 0 after SIGINT or SIGTERM; 1 when it cannot listen or start its workers, or every
worker is gone; 2 for a usage error.
)";

// argv[1] of a native worker: the parent starts this program again with it.
constexpr std::string_view worker_flag = "--kin-demo-worker";

constexpr int max_workers = 64;
constexpr int backlog = 511;
// The message that carries each connection. Node's codec needs JSON; the native one takes it
// as is.
constexpr std::string_view connection_message = R"({"type":"connection"})";
// Connections handed to one worker and not yet written to its channel (native) or acknowledged
// (node). When every worker has this many, the parent stops accepting: connections wait in the
// kernel's backlog instead of as descriptors in this process.
constexpr std::size_t max_in_flight = 64;
// How long workers get to finish after their channel closed before they are killed.
constexpr std::chrono::seconds stop_grace = 5s;

template <class... Args>
void say(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "kin-demo: {}\n", fmt::format(format, std::forward<Args>(args)...));
}

// ---- the worker ------------------------------------------------------------------------------

int run_worker() {
  // Ctrl-C in a terminal reaches the whole process group; the parent decides when its workers
  // stop (by closing their channels).
  std::signal(SIGINT, SIG_IGN);
  kin::loop l;
  auto opened = kin::channel::from_environment(l);
  if (!opened) {
    if (opened.error() == kin::errc::no_channel) {
      say("{} is for the workers kin-demo starts itself", worker_flag);
      return 2;
    }
    say("worker {}: no channel to the parent: {}", ::getpid(), opened.error().message());
    return 1;
  }
  kin::channel& to_parent = **opened;
  kin_tools::http_responder<> http(l, fmt::format("Child {} handled it.\n", ::getpid()));
  int status = 0;
  to_parent.on_message([&](std::string, std::vector<kin::any_handle> handles) {
    for (kin::any_handle& h : handles) http.take(std::move(h));
  });
  to_parent.on_error([&](std::error_code ec) {
    say("worker {}: channel to the parent: {}", ::getpid(), ec.message());
    status = 1;
  });
  to_parent.on_disconnect([&] { http.stop(); });
  // SIGTERM sent to a worker alone: it leaves the parent's rotation and finishes what it has.
  kin::signal_watcher term(l, [&](int) {
    to_parent.close();
    http.stop();
  });
  (void)term.start(SIGTERM);
  term.unref();
  l.run();
  return status;
}

// ---- the parent ------------------------------------------------------------------------------

struct options {
  std::uint16_t port = 1337;
  int workers = 2;
  bool node = false;
};

struct worker {
  explicit worker(kin::forked f)
      : child(std::move(f.child)), channel(std::move(f.channel)), pid(child.pid()) {}
  kin::process child;
  std::unique_ptr<kin::channel> channel;
  pid_t pid = 0;
  std::size_t in_flight = 0;
  bool exited = false;
  bool killed = false;  // by the parent, after stop_grace or a second signal
};

// This program's own file, to start it again as a worker.
std::string self_path(const char* argv0) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf);
  if (n > 0 && static_cast<std::size_t>(n) < sizeof buf) return std::string(buf, n);
  return argv0;  // no /proc: the name it was started by, looked up in PATH again if need be
}

// worker.js beside the sources (a build tree) or where `meson install` put it.
std::optional<std::string> node_worker_script() {
  for (std::string_view dir : {KIN_DEMO_SOURCE_DIR, KIN_DEMO_DATA_DIR}) {
    std::string path = fmt::format("{}/worker.js", dir);
    if (::access(path.c_str(), R_OK) == 0) return path;
  }
  return std::nullopt;
}

class parent {
 public:
  parent(kin::loop& l, const options& o, std::string self)
      : loop_(l),
        options_(o),
        self_(std::move(self)),
        server_(l),
        grace_(l,
               [this] {
                 kill_workers(fmt::format("did not stop within {} s: killed", stop_grace.count()));
               }),
        sigint_(l, [this](int) { signalled("SIGINT"); }),
        sigterm_(l, [this](int) { signalled("SIGTERM"); }) {}
  parent(const parent&) = delete;
  parent& operator=(const parent&) = delete;

  // Listens and starts the workers; on failure, says why and stops what had started. Then
  // the loop runs until everything has ended.
  void start() {
    // Watched from the start, so a signal during start-up still stops the workers. Unref'd:
    // the server and the workers are what keeps the loop running.
    for (kin::signal_watcher* w : {&sigint_, &sigterm_}) {
      (void)w->start(w == &sigint_ ? SIGINT : SIGTERM);
      w->unref();
    }
    auto address = kin::socket_address::ip("127.0.0.1", options_.port);
    if (auto bound = server_.bind(*address); !bound) {
      say("cannot listen on 127.0.0.1:{}: {}", options_.port, bound.error().message());
      status_ = 1;
      return;
    }
    // Listening before the workers start: connections made meanwhile wait in the backlog.
    if (!start_accepting()) return;
    const std::uint16_t port = server_.local_address()->port();

    std::string script;
    if (options_.node) {
      auto found = node_worker_script();
      if (!found) {
        say("worker.js is neither in {} nor in {}", KIN_DEMO_SOURCE_DIR, KIN_DEMO_DATA_DIR);
        return stop(1);
      }
      script = std::move(*found);
    }
    std::string pids;
    for (int i = 0; i < options_.workers; ++i) {
      if (!start_worker(script)) return stop(1);
      pids += fmt::format("{}{}", i == 0 ? "" : " ", workers_.back()->pid);
    }
    fmt::print("kin-demo: listening on http://127.0.0.1:{}/ with {} worker{} (pids {})\n", port,
               options_.workers, options_.workers == 1 ? "" : "s", pids);
    std::fflush(stdout);
  }

  [[nodiscard]] int exit_status() const noexcept { return status_; }

 private:
  bool start_accepting() {
    auto listening = server_.listen(
        backlog, [this](std::error_code ec, kin::unique_fd fd) { connected(ec, std::move(fd)); });
    if (!listening) {
      say("cannot listen on 127.0.0.1:{}: {}", options_.port, listening.error().message());
      stop(1);
      return false;
    }
    paused_ = false;
    return true;
  }

  bool start_worker(const std::string& node_script) {
    kin::fork_options o;
    // No terminal input for workers; their output and errors go where the parent's do.
    o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
    std::string program = self_;
    std::vector<std::string> args{std::string(worker_flag)};
    if (options_.node) {
      o.channel.codec = kin::channel_codec::node;
      program = "node";
      args = {node_script};
    }
    auto forked = kin::fork(loop_, program, args, o);
    if (!forked) {
      say("cannot start a worker: {}", forked.error().message());
      if (options_.node && forked.error().code == std::errc::no_such_file_or_directory) {
        say("--worker node needs Node.js (`node` in PATH)");
      }
      return false;
    }
    auto w = std::make_unique<worker>(std::move(*forked));
    worker& me = *w;
    workers_.push_back(std::move(w));
    me.channel->on_error(
        [&me](std::error_code ec) { say("channel to worker {}: {}", me.pid, ec.message()); });
    me.channel->on_disconnect([this] { channel_closed(); });
    me.child.on_exit([this, &me](std::error_code ec, int status, int signal) {
      exited(me, ec, status, signal);
    });
    return true;
  }

  // The next worker in turn that has room; or, if none has, the next one still connected.
  worker* next_worker() {
    const std::size_t n = workers_.size();
    worker* fallback = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t k = (next_ + i) % n;
      worker& w = *workers_[k];
      if (!w.channel->is_open()) continue;
      if (fallback == nullptr) fallback = &w;
      if (w.in_flight < max_in_flight) {
        next_ = (k + 1) % n;
        return &w;
      }
    }
    if (fallback != nullptr) next_ = (next_ + 1) % n;
    return fallback;
  }

  [[nodiscard]] bool has_room() const {
    for (const auto& w : workers_) {
      if (w->channel->is_open() && w->in_flight < max_in_flight) return true;
    }
    return false;
  }

  void connected(std::error_code ec, kin::unique_fd fd) {
    if (ec) {
      // Out of descriptors: the server retries by itself; this is said once per episode.
      say("accepting connections: {}", ec.message());
      return;
    }
    worker* w = next_worker();
    if (w == nullptr) return;  // every channel is closed: stop() is under way; fd closes
    ++w->in_flight;
    std::vector<kin::unique_fd> fds;
    fds.push_back(std::move(fd));
    w->channel->send(connection_message, std::move(fds),
                     [this, w](std::error_code sent_ec) { handed(*w, sent_ec); });
    if (!has_room()) {
      server_.stop_accepting();
      paused_ = true;
    }
  }

  void handed(worker& w, std::error_code ec) {
    --w.in_flight;
    // ECANCELED, EPIPE, ECONNRESET, ENOTCONN: the worker went away with the connection, which
    // closes; its exit is reported.
    if (ec && !stopping_ && ec != std::errc::operation_canceled && ec != std::errc::broken_pipe &&
        ec != std::errc::connection_reset && ec != std::errc::not_connected) {
      say("handing a connection to worker {}: {}", w.pid, ec.message());
    }
    if (paused_ && !stopping_ && has_room()) (void)start_accepting();
  }

  void channel_closed() {
    if (stopping_) return;
    for (const auto& w : workers_) {
      if (w->channel->is_open()) return;
    }
    say("no worker left");
    stop(1);
  }

  void exited(worker& w, std::error_code ec, int status, int signal) {
    w.exited = true;
    if (ec) {
      say("worker {} ended: {}", w.pid, ec.message());
    } else if (signal != 0) {
      if (!w.killed)
        say("worker {} was ended by signal {} ({})", w.pid, signal, ::strsignal(signal));
    } else if (status != 0 || !stopping_) {
      say("worker {} exited with status {}", w.pid, status);
    }
    // The channel may outlive the process for a moment (a grandchild holding its end): it is
    // of no use any more.
    if (w.channel->is_open()) {
      w.channel->close();
      channel_closed();
    }
    for (const auto& other : workers_) {
      if (!other->exited) return;
    }
    grace_.stop();
  }

  void signalled(const char* name) {
    if (stopping_) {
      kill_workers(fmt::format("killed ({} again)", name));
      return;
    }
    say("{}: stopping", name);
    stop(0);
  }

  // Stops accepting and closes every channel; each worker then finishes and exits, or is
  // killed after stop_grace.
  void stop(int status) {
    if (stopping_) return;
    stopping_ = true;
    status_ = status;
    server_.close();
    bool running = false;
    for (const auto& w : workers_) {
      if (w->channel->is_open()) w->channel->disconnect();
      running = running || !w->exited;
    }
    if (running) (void)grace_.start(stop_grace);
  }

  void kill_workers(const std::string& reason) {
    for (const auto& w : workers_) {
      if (w->exited || w->killed) continue;
      w->killed = true;
      if (w->child.kill(SIGKILL)) say("worker {} {}", w->pid, reason);
    }
  }

  kin::loop& loop_;
  options options_;
  std::string self_;
  kin::tcp_server server_;
  kin::timer grace_;
  kin::signal_watcher sigint_;
  kin::signal_watcher sigterm_;
  std::vector<std::unique_ptr<worker>> workers_;
  std::size_t next_ = 0;
  bool paused_ = false;
  bool stopping_ = false;
  int status_ = 0;
};

// ---- the command line ------------------------------------------------------------------------

[[noreturn]] void usage_error(const std::string& what) {
  say("{}\n(kin-demo --help shows the usage)", what);
  std::exit(2);
}

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_text, stdout);
      std::exit(0);
    }
    // --name value or --name=value.
    std::string_view name = arg;
    std::optional<std::string_view> value;
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    const auto take_value = [&]() -> std::string_view {
      if (value) return *value;
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", name));
      return argv[++i];
    };
    if (name == "--port") {
      const std::string_view v = take_value();
      const auto port = parse_number<unsigned>(v);
      if (!port || *port > 65535) {
        usage_error(fmt::format("--port takes a number from 0 to 65535, not '{}'", v));
      }
      o.port = static_cast<std::uint16_t>(*port);
    } else if (name == "--workers") {
      const std::string_view v = take_value();
      const auto n = parse_number<int>(v);
      if (!n || *n < 1 || *n > max_workers) {
        usage_error(fmt::format("--workers takes a number from 1 to {}, not '{}'", max_workers, v));
      }
      o.workers = *n;
    } else if (name == "--worker") {
      const std::string_view v = take_value();
      if (v != "native" && v != "node") {
        usage_error(fmt::format("--worker is native or node, not '{}'", v));
      }
      o.node = v == "node";
    } else {
      usage_error(fmt::format("unknown argument '{}'", arg));
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && argv[1] == worker_flag) return run_worker();
  const options o = parse(argc, argv);
  kin::loop l;
  parent p(l, o, self_path(argv[0]));
  p.start();
  l.run();
  return p.exit_status();
}
