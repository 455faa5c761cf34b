// kin-cluster: runs N workers of a program behind listening sockets it owns, with shared or
// round-robin scheduling, respawn with backoff, zero-downtime reload on SIGHUP, a graceful stop
// on SIGTERM/SIGINT and a status on SIGUSR1. The workers are kin cluster workers, any
// socket-activated program (--activation), or an unmodified Node.js cluster app (--node).
#include <kin/cluster.hpp>
#include <kin/loop.hpp>
#include <kin/signal.hpp>

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace {

constexpr const char* usage_text =
    R"usage(usage: kin-cluster [OPTIONS] -- PROGRAM [ARGS...]

Owns listening sockets and runs N worker processes of PROGRAM behind them.

  --workers N           how many workers, 1 to 256 (default 2)
  --mode MODE           round-robin: kin-cluster accepts and hands each connection to the
                        next ready worker (the default); shared: every worker accepts on the
                        listening sockets itself
  --listen ADDR         a socket to listen on, repeatable: HOST:PORT (IPv4), [IPV6]:PORT,
                        unix:PATH, or a path starting with / or .
  --node                PROGRAM is a Node.js app using the cluster module (for example
                        `node app.js`): kin-cluster is its cluster primary. Listeners its
                        workers ask for are bound on demand, as Node's primary does; --listen
                        is optional
  --activation          PROGRAM is any socket-activated server: it gets the listening sockets
                        as descriptors 3, 4, ... with LISTEN_FDS, LISTEN_PID and
                        LISTEN_FDNAMES set, as systemd sets them (shared mode only; the
                        names are the --listen addresses with ':' replaced by '_')
  --grace SECONDS       how long stopping workers get to finish their connections before
                        they are killed (default 30)
  --ready-timeout SECONDS   how long new workers get to become ready in a reload (default 30)
  --backoff-max SECONDS     the longest delay before a dead worker is started again; the
                        delay starts at 0.1 s and doubles with each death in a row (default 10)
  --crash-limit N       more than N unasked deaths within --crash-window stop respawning
                        (default 5)
  --crash-window SECONDS    (default 10)
  -h, --help            show this help

SECONDS may have a fraction (0.5).

Without --node or --activation, PROGRAM is a kin cluster worker (kin::cluster_worker, as
kin-cluster-hello is): it gets its listeners or its connections over a kin channel and reports
its connection count. When kin-cluster was itself started with sockets (LISTEN_FDS and
LISTEN_PID naming it), those are listeners too.

Output: on stdout, "kin-cluster: listening on ADDR" for each listener once bound, then
"kin-cluster: started N workers (pids ...)". On stderr, one line per event.

Signals: SIGHUP starts a new generation of workers and, once all are ready, stops the old ones
(no connection is refused meanwhile). SIGUSR1 writes the status (workers, pids, generations,
connection counts) to stderr. SIGTERM or SIGINT stops accepting, lets the workers finish (up
to --grace), kills what is left and exits 0; a second one kills the workers at once.

Exit status: 0 after SIGTERM or SIGINT; 1 when it cannot listen or start its workers, or when a
crash loop leaves no worker running; 2 for a usage error.
)usage";

template <class... Args>
void say(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "kin-cluster: {}\n", fmt::format(format, std::forward<Args>(args)...));
}

std::optional<long> number(std::string_view text, long low, long high) {
  long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < low || value > high) {
    return std::nullopt;
  }
  return value;
}

int usage_error(const std::string& why) {
  say("{}", why);
  fmt::print(stderr, "Try 'kin-cluster --help'.\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  kin::cluster_options o;
  bool node = false;
  bool activation = false;
  bool mode_given = false;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (arg == "--node") {
      node = true;
      continue;
    }
    if (arg == "--activation") {
      activation = true;
      continue;
    }
    if (arg.empty() || arg[0] != '-') break;  // the program, without "--"
    if (i + 1 >= argc) return usage_error(fmt::format("{} needs a value", arg));
    const std::string_view value = argv[++i];
    // Seconds, with a fraction if need be ("0.5"), to the millisecond.
    auto seconds = [&](long high) -> std::optional<std::chrono::milliseconds> {
      double s = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), s);
      if (ec != std::errc() || end != value.data() + value.size() || !(s >= 0) || s > high) {
        return std::nullopt;
      }
      return std::chrono::milliseconds(static_cast<long long>(s * 1000 + 0.5));
    };
    if (arg == "--workers") {
      auto n = number(value, 1, 256);
      if (!n) return usage_error("--workers takes 1 to 256");
      o.workers = static_cast<int>(*n);
    } else if (arg == "--mode") {
      mode_given = true;
      if (value == "shared") {
        o.mode = kin::cluster_mode::shared;
      } else if (value == "round-robin") {
        o.mode = kin::cluster_mode::round_robin;
      } else {
        return usage_error("--mode takes shared or round-robin");
      }
    } else if (arg == "--listen") {
      if (!kin::parse_listen_address(value)) {
        return usage_error(fmt::format("--listen: cannot read the address '{}'", value));
      }
      o.listen.emplace_back(value);
    } else if (arg == "--grace") {
      auto s = seconds(86400);
      if (!s) return usage_error("--grace takes 0 to 86400 seconds");
      o.grace = *s;
    } else if (arg == "--ready-timeout") {
      auto s = seconds(86400);
      if (!s || s->count() == 0) return usage_error("--ready-timeout takes 1 to 86400 seconds");
      o.ready_timeout = *s;
    } else if (arg == "--backoff-max") {
      auto s = seconds(86400);
      if (!s) return usage_error("--backoff-max takes 0 to 86400 seconds");
      o.backoff_max = *s;
      o.backoff_initial = std::min(o.backoff_initial, o.backoff_max);
    } else if (arg == "--crash-limit") {
      auto n = number(value, 0, 1000000);
      if (!n) return usage_error("--crash-limit takes 0 to 1000000");
      o.crash_limit = static_cast<int>(*n);
    } else if (arg == "--crash-window") {
      auto s = seconds(86400);
      if (!s || s->count() == 0) return usage_error("--crash-window takes 1 to 86400 seconds");
      o.crash_window = *s;
    } else {
      return usage_error(fmt::format("unknown option '{}'", arg));
    }
  }
  if (i >= argc) return usage_error("no PROGRAM to run");
  if (node && activation) return usage_error("--node and --activation exclude each other");
  if (activation) {
    if (mode_given && o.mode == kin::cluster_mode::round_robin) {
      return usage_error("--activation workers accept for themselves: use --mode shared");
    }
    o.mode = kin::cluster_mode::shared;
  }
  o.kind = node         ? kin::cluster_worker_kind::node
           : activation ? kin::cluster_worker_kind::activation
                        : kin::cluster_worker_kind::kin;
  o.program = argv[i];
  for (int k = i + 1; k < argc; ++k) o.args.emplace_back(argv[k]);

  auto inherited = kin::listeners_from_environment();
  if (!inherited) {
    say("the sockets passed with LISTEN_FDS are not usable: {}", inherited.error().message());
    return 1;
  }
  o.listeners = std::move(*inherited);
  if (!node && o.listen.empty() && o.listeners.empty()) {
    return usage_error("nothing to listen on: give --listen (or run it socket-activated)");
  }
  const int workers = o.workers;
  // Each worker leads its own process group: Ctrl-C in a terminal reaches kin-cluster alone,
  // which then stops the workers in order (they would otherwise die of it at once).
  o.spawn.process_group = 0;
#if defined(__linux__) || defined(__FreeBSD__)
  // An activation worker has no channel whose end would tell it that kin-cluster died (kin
  // and Node workers have, and a kin worker then finishes its connections): the kernel sends
  // it SIGTERM instead.
  if (activation) o.spawn.parent_death_signal = SIGTERM;
#endif
  // A closed stdout (kin-cluster | head) must not kill the supervisor.
  std::signal(SIGPIPE, SIG_IGN);

  kin::loop l;
  kin::cluster_master master(l, std::move(o));
  int status = 0;
  bool stopping = false;
  bool started = false;
  master.on_event([&](const kin::cluster_event& e) {
    using kind = kin::cluster_event::kind;
    if (e.what == kind::listening) {
      fmt::print("kin-cluster: listening on {}\n", e.text);
      std::fflush(stdout);
      return;
    }
    say("{}", e.text);
    if ((e.what == kind::worker_exited || e.what == kind::crash_loop) && started &&
        master.crash_looping() && master.workers().empty() && !stopping) {
      say("no worker left: stopping");
      stopping = true;
      status = 1;
      master.close([&] { l.stop(); });
    }
  });

  auto stop = [&](int signo) {
    if (stopping) {
      say("{} again: killing the workers", signo == SIGINT ? "SIGINT" : "SIGTERM");
      master.kill_workers();
      return;
    }
    stopping = true;
    say("{}: stopping", signo == SIGINT ? "SIGINT" : "SIGTERM");
    master.close([&] { l.stop(); });
  };
  kin::signal_watcher term(l, stop);
  kin::signal_watcher interrupt(l, stop);
  kin::signal_watcher hangup(l, [&](int) {
    if (stopping) return;
    say("SIGHUP: reloading");
    master.reload([](std::error_code ec) {
      if (ec == std::errc::connection_already_in_progress) say("a reload is already running");
    });
  });
  kin::signal_watcher user1(l, [&](int) {
    std::string text = master.status();
    std::string out;
    std::string_view rest = text;
    while (!rest.empty()) {
      const auto nl = rest.find('\n');
      out += fmt::format("kin-cluster: {}\n", rest.substr(0, nl));
      if (nl == std::string_view::npos) break;
      rest.remove_prefix(nl + 1);
    }
    std::fputs(out.c_str(), stderr);
  });
  (void)term.start(SIGTERM);
  (void)interrupt.start(SIGINT);
  (void)hangup.start(SIGHUP);
  (void)user1.start(SIGUSR1);
  for (kin::signal_watcher* w : {&term, &interrupt, &hangup, &user1}) w->unref();

  if (auto r = master.start(); !r) {
    say("cannot start: {}", r.error().message());
    return 1;
  }
  started = true;
  std::string pids;
  for (const auto& w : master.workers())
    pids += fmt::format("{}{}", pids.empty() ? "" : " ", w.pid);
  fmt::print("kin-cluster: started {} worker{} (pids {})\n", workers, workers == 1 ? "" : "s",
             pids);
  std::fflush(stdout);
  l.run();
  return status;
}
