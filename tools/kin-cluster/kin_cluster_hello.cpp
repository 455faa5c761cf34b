// kin-cluster-hello: a kin cluster worker that answers every HTTP request with "hello from
// <pid>". kin-cluster runs it (kin-cluster --listen 127.0.0.1:8080 -- kin-cluster-hello); its
// tests and benchmarks use it.
#include "../common/http_responder.hpp"

#include <kin/cluster.hpp>
#include <kin/loop.hpp>

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string_view>

#include <unistd.h>

namespace {

constexpr const char* usage_text =
    R"(usage: kin-cluster-hello [--idle-timeout SECONDS]

A worker for kin-cluster (it is started by kin-cluster, which passes it its listeners or its
connections): it answers each HTTP request with "HTTP/1.1 200 OK", the body
"hello from <pid>" and Connection: close. A connection that sends nothing is held open until
the client closes it or --idle-timeout (default 30) passes; such connections count in
kin-cluster's status. When kin-cluster tells it to stop, it finishes the connections it holds
(one that has sent nothing gets 2 seconds to send its request) and exits.

Exit status: 0 once stopped; 1 when the channel to kin-cluster fails; 2 for a usage error or
when not started by kin-cluster.
)";

}  // namespace

int main(int argc, char** argv) {
  kin_tools::http_limits limits;
  limits.request_timeout = std::chrono::seconds(30);
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (arg == "--idle-timeout" && i + 1 < argc) {
      const std::string_view value = argv[++i];
      unsigned seconds = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
      if (ec != std::errc() || end != value.data() + value.size() || seconds == 0 ||
          seconds > 86400) {
        fmt::print(stderr, "kin-cluster-hello: --idle-timeout takes 1 to 86400 seconds\n");
        return 2;
      }
      limits.request_timeout = std::chrono::seconds(seconds);
      continue;
    }
    fmt::print(stderr, "kin-cluster-hello: unknown argument '{}'\n{}", arg, usage_text);
    return 2;
  }
  // Ctrl-C in a terminal reaches the whole process group; kin-cluster decides when its
  // workers stop.
  std::signal(SIGINT, SIG_IGN);

  kin::loop l;
  auto opened = kin::cluster_worker::from_environment(l);
  if (!opened) {
    if (opened.error() == kin::errc::no_channel) {
      fmt::print(stderr, "kin-cluster-hello: this is a worker for kin-cluster; see --help\n");
      return 2;
    }
    fmt::print(stderr, "kin-cluster-hello: no channel to kin-cluster: {}\n",
               opened.error().message());
    return 1;
  }
  kin::cluster_worker& worker = **opened;
  kin_tools::http_responder<kin::cluster_ticket> http(l, fmt::format("hello from {}\n", ::getpid()),
                                                      limits);
  worker.on_stop([&] { http.stop(); });
  worker.start([&](kin::any_handle connection, std::size_t, kin::cluster_ticket ticket) {
    http.take(std::move(connection), std::move(ticket));
  });
  l.run();
  return 0;
}
