// Tests of the cluster module: listen addresses, socket-activation input (LISTEN_FDS) and the
// pid a spawned child finds in its environment, and kin::cluster_master with kin workers (the
// helper child's cluster-worker): both modes serve clients on threads with every connection
// answered, connection counts exact while connections are held in several workers, a connection
// handed to a worker that dies before taking it goes to another, backoff and the crash-loop
// guard, a reload under a client loop refuses nothing, start errors leave nothing behind. The
// kin-cluster command (Node.js and socket-activated workers included) is tested end to end by
// tools/kin-cluster/cluster_test.py.
#include "catch.hpp"

#include <kin/cluster.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/server.hpp>

#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

using namespace std::chrono_literals;
using kin_test::child_path;
using kin_test::leak_guard;

namespace {

// Runs the loop until `done()` holds (checked every 5 ms) or `limit` passes; true if it held.
bool run_until(kin::loop& l, const std::function<bool()>& done,
               std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool held = done();
  kin::timer poll(l, [&] {
    if (done()) {
      held = true;
      l.stop();
    } else if (std::chrono::steady_clock::now() > deadline) {
      l.stop();
    }
  });
  (void)poll.start(5ms, 5ms);
  if (!held) l.run();
  return held || done();
}

// A connection to `to` with a 10 s receive timeout; empty if connect failed.
kin::unique_fd dial(const kin::socket_address& to) {
  kin::unique_fd fd = kin_test::raw_connect(to);
  if (!fd.is_open()) return fd;
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// The worker's first line ("pid N"), or "" if it did not come.
std::string read_line(int fd) {
  std::string line;
  char c = 0;
  while (line.size() < 64) {
    // SO_RCVTIMEO makes the read fail with EINTR, never restarted, when a signal (the loop's
    // SIGCHLD) is handled on this thread meanwhile: signal(7).
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return "";
    if (c == '\n') return line;
    line += c;
  }
  return "";
}

// Connects, reads the worker's line, closes: the pid that served it, or 0 on any failure.
int one_request(const kin::socket_address& to) {
  kin::unique_fd fd = dial(to);
  if (!fd.is_open()) return 0;
  const std::string line = read_line(fd.get());
  if (line.rfind("pid ", 0) != 0) return 0;
  return std::atoi(line.c_str() + 4);
}

kin::cluster_options worker_options(kin::cluster_mode mode, int workers = 2) {
  kin::cluster_options o;
  o.program = child_path();
  o.args = {"cluster-worker"};
  o.mode = mode;
  o.workers = workers;
  o.listen = {"127.0.0.1:0"};
  o.grace = 5s;
  return o;
}

// Closes the master and runs the loop until every worker is gone.
void close_all(kin::loop& l, kin::cluster_master& m) {
  bool closed = false;
  m.close([&] { closed = true; });
  REQUIRE(run_until(l, [&] { return closed; }));
  CHECK(m.workers().empty());
}

bool all_ready(const kin::cluster_master& m, std::size_t n) {
  const auto ws = m.workers();
  if (ws.size() != n) return false;
  for (const auto& w : ws) {
    if (w.state != kin::cluster_worker_state::ready) return false;
  }
  return true;
}

// `clients` threads making `total` connections between them; the pids that answered, and the
// number of connections that failed.
struct client_run {
  std::atomic<int> failures{0};
  std::atomic<int> done_threads{0};
  std::mutex mutex;
  std::multiset<int> pids;
};

void make_requests(const kin::socket_address& to, int clients, int total, client_run& run,
                   std::vector<std::thread>& threads) {
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&to, &run, c, clients, total] {
      for (int i = c; i < total; i += clients) {
        const int pid = one_request(to);
        if (pid == 0) {
          ++run.failures;
        } else {
          std::lock_guard lock(run.mutex);
          run.pids.insert(pid);
        }
      }
      ++run.done_threads;
    });
  }
}

}  // namespace

TEST_CASE("parse_listen_address reads the forms operators write", "[cluster]") {
  auto v4 = kin::parse_listen_address("127.0.0.1:8080");
  REQUIRE(v4);
  CHECK(v4->family() == kin::address_family::ipv4);
  CHECK(v4->port() == 8080);
  auto v6 = kin::parse_listen_address("[::1]:0");
  REQUIRE(v6);
  CHECK(v6->family() == kin::address_family::ipv6);
  auto path = kin::parse_listen_address("/tmp/kin.sock");
  REQUIRE(path);
  CHECK(path->family() == kin::address_family::unix_path);
  CHECK(path->path() == "/tmp/kin.sock");
  auto relative = kin::parse_listen_address("./kin.sock");
  REQUIRE(relative);
  CHECK(relative->path() == "./kin.sock");
  auto prefixed = kin::parse_listen_address("unix:/run/kin.sock");
  REQUIRE(prefixed);
  CHECK(prefixed->path() == "/run/kin.sock");
  for (const char* bad : {"", "localhost:80", "127.0.0.1", "127.0.0.1:99999", "unix:", "8080",
                          "[::1]", "1.2.3.4:-1"}) {
    INFO(bad);
    auto r = kin::parse_listen_address(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
}

TEST_CASE("spawn's pid_variable gives the child its own pid", "[cluster]") {
  leak_guard guard;
  kin::spawn_sync_options o;
  o.file = "/bin/sh";
  o.args = {"sh", "-c", "echo \"$KIN_TEST_PID $$\""};
  o.pid_variable = "KIN_TEST_PID";
  o.env = {{"KIN_TEST_PID", "stale"}};  // replaced, not duplicated
  auto r = kin::spawn_sync(o);
  REQUIRE_FALSE(r.error);
  const std::string expected = std::to_string(r.pid) + " " + std::to_string(r.pid) + "\n";
  CHECK(r.out() == expected);

  o.pid_variable = "BAD=NAME";
  auto bad = kin::spawn_sync(o);
  CHECK(bad.error == std::errc::invalid_argument);
}

TEST_CASE("listeners_from_environment takes the sockets a manager passed", "[cluster]") {
  leak_guard guard;
  kin::loop l;
  kin::tcp_server listener(l);
  REQUIRE(listener.bind(kin_test::ip("127.0.0.1")));
  REQUIRE(listener.listen(8, [](std::error_code, kin::unique_fd) {}));
  listener.stop_accepting();
  const std::string address = listener.local_address()->to_string();

  auto run = [&](kin::stdio fd3, std::vector<std::pair<std::string, std::string>> env,
                 bool own_pid) {
    kin::spawn_sync_options o;
    o.file = child_path();
    o.args = {child_path(), "cluster-listeners"};
    o.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::inherit(), fd3};
    o.env = std::move(env);
    if (own_pid) o.pid_variable = "LISTEN_PID";
    auto r = kin::spawn_sync(o);
    REQUIRE_FALSE(r.error);
    return r.out();
  };
  SECTION("a listening socket at 3, named, taken close-on-exec, variables removed") {
    CHECK(run(kin::stdio::fd(listener.fd()), {{"LISTEN_FDS", "1"}, {"LISTEN_FDNAMES", "web"}},
              true) == "1 web " + address + " removed\n");
  }
  SECTION("without a name: the address") {
    CHECK(run(kin::stdio::fd(listener.fd()), {{"LISTEN_FDS", "1"}}, true) ==
          "1 " + address + " " + address + " removed\n");
  }
  SECTION("LISTEN_PID of another process: nothing taken, variables left") {
    CHECK(run(kin::stdio::fd(listener.fd()), {{"LISTEN_FDS", "1"}, {"LISTEN_PID", "1"}}, false) ==
          "0 still-set\n");
  }
  SECTION("no LISTEN_FDS: nothing") {
    CHECK(run(kin::stdio::fd(listener.fd()), {}, true) == "0 removed\n");
  }
  SECTION("a malformed count is EINVAL") {
    CHECK(run(kin::stdio::fd(listener.fd()), {{"LISTEN_FDS", "1x"}}, true) ==
          "error " + std::to_string(EINVAL) + "\n");
  }
  SECTION("a descriptor that is not a socket is ENOTSOCK") {
    CHECK(run(kin::stdio::ignore(), {{"LISTEN_FDS", "1"}}, true) ==
          "error " + std::to_string(ENOTSOCK) + "\n");
  }
  SECTION("a descriptor that is not there is EBADF") {
    CHECK(run(kin::stdio::closed(), {{"LISTEN_FDS", "1"}}, true) ==
          "error " + std::to_string(EBADF) + "\n");
  }
  listener.close();
  REQUIRE(kin_test::run_all(l));
}

TEST_CASE("cluster start refuses options that do not fit, leaving nothing", "[cluster]") {
  leak_guard guard;
  kin::loop l;
  auto expect = [&](kin::cluster_options o, std::errc e) {
    kin::cluster_master m(l, std::move(o));
    auto r = m.start();
    REQUIRE_FALSE(r);
    CHECK(r.error() == e);
    CHECK(m.workers().empty());
  };
  auto o = worker_options(kin::cluster_mode::round_robin);
  o.program.clear();
  expect(std::move(o), std::errc::invalid_argument);
  o = worker_options(kin::cluster_mode::round_robin);
  o.workers = 0;
  expect(std::move(o), std::errc::invalid_argument);
  o = worker_options(kin::cluster_mode::round_robin);
  o.kind = kin::cluster_worker_kind::activation;
  expect(std::move(o), std::errc::invalid_argument);
  o = worker_options(kin::cluster_mode::round_robin);
  o.listen.clear();
  expect(std::move(o), std::errc::invalid_argument);
  o = worker_options(kin::cluster_mode::round_robin);
  o.listen = {"127.0.0.1:0", "no-such-address"};
  expect(std::move(o), std::errc::invalid_argument);

  kin::tcp_server taken(l);
  REQUIRE(taken.bind(kin_test::ip("127.0.0.1")));
  REQUIRE(taken.listen(8, [](std::error_code, kin::unique_fd) {}));
  o = worker_options(kin::cluster_mode::round_robin);
  o.listen = {"127.0.0.1:0", taken.local_address()->to_string()};
  expect(std::move(o), std::errc::address_in_use);

  o = worker_options(kin::cluster_mode::round_robin);
  o.program = "/nonexistent/kin-worker";
  expect(std::move(o), std::errc::no_such_file_or_directory);
  taken.close();
  REQUIRE(kin_test::run_all(l));
}

TEST_CASE("both modes answer every connection of 8 client threads, over all workers", "[cluster]") {
  leak_guard guard;
  const auto mode = GENERATE(kin::cluster_mode::round_robin, kin::cluster_mode::shared);
  INFO((mode == kin::cluster_mode::shared ? "shared" : "round-robin"));
  kin::loop l;
  kin::cluster_master m(l, worker_options(mode, 3));
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 3); }));
  std::set<int> worker_pids;
  for (const auto& w : m.workers()) worker_pids.insert(w.pid);
  const auto to = m.addresses().at(0);

  constexpr int total = 2000;
  client_run run;
  std::vector<std::thread> threads;
  make_requests(to, 8, total, run, threads);
  const bool finished = run_until(
      l, [&] { return run.done_threads == 8; }, 120s);
  for (auto& t : threads) t.join();
  REQUIRE(finished);
  CHECK(run.failures == 0);
  CHECK(run.pids.size() == total);
  std::set<int> served(run.pids.begin(), run.pids.end());
  for (int pid : served) CHECK(worker_pids.count(pid) == 1);
  if (mode == kin::cluster_mode::round_robin) {
    // The master hands them in turn: every worker served, and the master counted each.
    CHECK(served.size() == 3);
    CHECK(m.handed() == total);
  } else {
    CHECK(m.handed() == 0);
  }
  close_all(l, m);
}

TEST_CASE("connection counts are exact while connections are held in several workers",
          "[cluster]") {
  leak_guard guard;
  const auto mode = GENERATE(kin::cluster_mode::round_robin, kin::cluster_mode::shared);
  INFO((mode == kin::cluster_mode::shared ? "shared" : "round-robin"));
  kin::loop l;
  kin::cluster_master m(l, worker_options(mode, 3));
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 3); }));
  const auto to = m.addresses().at(0);

  // Opened from a thread (connect blocks until accepted in round-robin mode: the loop must
  // run); each is open once its worker wrote its pid.
  constexpr int held = 12;
  std::vector<kin::unique_fd> open;
  std::atomic<bool> opened{false};
  std::thread opener([&] {
    for (int i = 0; i < held; ++i) {
      kin::unique_fd fd = dial(to);
      if (fd.is_open() && read_line(fd.get()).rfind("pid ", 0) == 0) open.push_back(std::move(fd));
    }
    opened = true;
  });
  const bool all_opened = run_until(l, [&] { return opened.load(); });
  opener.join();
  REQUIRE(all_opened);
  REQUIRE(open.size() == held);
  CHECK(run_until(l, [&] { return m.connections() == held; }));
  CHECK(m.connections() == held);
  long sum = 0;
  int holding = 0;
  for (const auto& w : m.workers()) {
    sum += w.connections;
    if (w.connections > 0) ++holding;
  }
  CHECK(sum == held);
  if (mode == kin::cluster_mode::round_robin) CHECK(holding == 3);

  open.erase(open.begin(), open.begin() + 5);
  CHECK(run_until(l, [&] { return m.connections() == held - 5; }));
  CHECK(m.connections() == held - 5);
  // And it stays there: nothing counted twice.
  run_until(
      l, [] { return false; }, 100ms);
  CHECK(m.connections() == held - 5);

  // close() waits for the connections still held: it completes once they are closed.
  bool closed = false;
  m.close([&] { closed = true; });
  run_until(
      l, [] { return false; }, 200ms);
  CHECK_FALSE(closed);
  // Workers that hold none are gone; those that hold some are still there.
  int still = 0;
  for (const auto& w : m.workers()) {
    CHECK(w.state == kin::cluster_worker_state::stopping);
    ++still;
  }
  CHECK(still >= 1);
  if (mode == kin::cluster_mode::round_robin) CHECK(still == 3);
  open.clear();
  REQUIRE(run_until(l, [&] { return closed; }));
  CHECK(m.workers().empty());
}

TEST_CASE("a connection handed to a worker that dies before taking it goes to another",
          "[cluster]") {
  leak_guard guard;
  kin_test::temp_dir dir;
  kin::loop l;
  auto o = worker_options(kin::cluster_mode::round_robin, 2);
  o.args = {"cluster-die-once", dir.path().string()};
  std::vector<kin::cluster_event> events;
  kin::cluster_master m(l, std::move(o));
  m.on_event([&](const kin::cluster_event& e) { events.push_back(e); });
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 2); }));
  const auto to = m.addresses().at(0);

  constexpr int total = 20;
  client_run run;
  std::vector<std::thread> threads;
  make_requests(to, 1, total, run, threads);
  const bool finished = run_until(
      l, [&] { return run.done_threads == 1; }, 60s);
  for (auto& t : threads) t.join();
  REQUIRE(finished);
  CHECK(std::filesystem::exists(dir.path() / "died"));  // one worker did die holding one
  CHECK(run.failures == 0);                             // and every connection was answered
  CHECK(run.pids.size() == total);
  const bool respawned = std::any_of(events.begin(), events.end(), [](const auto& e) {
    return e.what == kin::cluster_event::kind::respawn_scheduled;
  });
  CHECK(respawned);
  close_all(l, m);
}

TEST_CASE(
    "a worker that exits at once is respawned with growing delays, then a crash loop stops it",
    "[cluster]") {
  leak_guard guard;
  kin::loop l;
  kin::cluster_options o;
  o.program = "/bin/false";
  o.workers = 1;
  o.listen = {"127.0.0.1:0"};
  o.backoff_initial = 25ms;
  o.backoff_max = 400ms;
  o.crash_limit = 5;
  o.crash_window = 10s;
  std::vector<kin::cluster_event> events;
  kin::cluster_master m(l, std::move(o));
  m.on_event([&](const kin::cluster_event& e) { events.push_back(e); });
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return m.crash_looping() && m.workers().empty(); }));
  std::vector<std::string> delays;
  int exits = 0;
  for (const auto& e : events) {
    if (e.what == kin::cluster_event::kind::respawn_scheduled) delays.push_back(e.text);
    if (e.what == kin::cluster_event::kind::worker_exited) ++exits;
  }
  // Five deaths are allowed, with respawns after 25, 50, 100, 200 and 400 ms (the cap); the
  // sixth stops it.
  CHECK(delays == std::vector<std::string>{"respawn in 25 ms", "respawn in 50 ms",
                                           "respawn in 100 ms", "respawn in 200 ms",
                                           "respawn in 400 ms"});
  CHECK(exits == 6);
  CHECK(events.back().what == kin::cluster_event::kind::crash_loop);
  // No respawn is pending any more.
  run_until(
      l, [] { return false; }, 200ms);
  CHECK(m.workers().empty());
  close_all(l, m);
}

TEST_CASE("a reload while clients keep connecting refuses nothing", "[cluster]") {
  leak_guard guard;
  const auto mode = GENERATE(kin::cluster_mode::round_robin, kin::cluster_mode::shared);
  INFO((mode == kin::cluster_mode::shared ? "shared" : "round-robin"));
  kin::loop l;
  kin::cluster_master m(l, worker_options(mode, 2));
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 2); }));
  std::set<int> first;
  for (const auto& w : m.workers()) first.insert(w.pid);
  const auto to = m.addresses().at(0);

  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> answered{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      while (!stop) {
        if (one_request(to) == 0) {
          ++failures;
        } else {
          ++answered;
        }
      }
    });
  }
  for (int round = 0; round < 3; ++round) {
    const int before = answered;
    REQUIRE(run_until(
        l, [&] { return answered > before + 50; }, 30s));
    std::optional<std::error_code> result;
    m.reload([&](std::error_code ec) { result = ec; });
    REQUIRE(run_until(
        l, [&] { return result.has_value(); }, 30s));
    CHECK_FALSE(*result);
  }
  // The old generations finish and go; clients keep being answered meanwhile.
  const bool settled = run_until(
      l, [&] { return m.workers().size() == 2; }, 30s);
  const int before = answered;
  run_until(
      l, [&] { return answered > before + 50; }, 30s);
  stop = true;
  bool joined = false;
  std::thread joiner([&] {
    for (auto& t : clients) t.join();
    joined = true;
  });
  run_until(
      l, [&] { return joined; }, 30s);
  joiner.join();
  CHECK(settled);
  CHECK(failures == 0);
  CHECK(answered > 150);
  for (const auto& w : m.workers()) {
    CHECK(w.generation == 4);
    CHECK(first.count(w.pid) == 0);
  }
  close_all(l, m);
}

TEST_CASE("a second reload while one runs is EALREADY; close cancels one", "[cluster]") {
  leak_guard guard;
  kin::loop l;
  kin::cluster_master m(l, worker_options(kin::cluster_mode::round_robin, 1));
  REQUIRE(m.start());
  std::optional<std::error_code> first;
  std::optional<std::error_code> second;
  m.reload([&](std::error_code ec) { first = ec; });
  m.reload([&](std::error_code ec) { second = ec; });
  bool closed = false;
  m.close([&] { closed = true; });
  REQUIRE(run_until(l, [&] { return closed && first && second; }));
  CHECK(*second == std::errc::connection_already_in_progress);
  CHECK(*first == std::errc::operation_canceled);
  std::optional<std::error_code> late;
  m.reload([&](std::error_code ec) { late = ec; });
  REQUIRE(run_until(l, [&] { return late.has_value(); }));
  CHECK(*late == std::errc::operation_canceled);
  CHECK(m.workers().empty());
}

TEST_CASE("a master listens on IPv6 and Unix paths too, in both modes", "[cluster]") {
  leak_guard guard;
  const auto mode = GENERATE(kin::cluster_mode::round_robin, kin::cluster_mode::shared);
  INFO((mode == kin::cluster_mode::shared ? "shared" : "round-robin"));
  kin_test::temp_dir dir;
  const std::string path = (dir.path() / "cluster.sock").string();
  kin::loop l;
  auto o = worker_options(mode, 2);
  o.listen = {"[::1]:0", path};
  kin::cluster_master m(l, std::move(o));
  auto started = m.start();
  if (!started && started.error() == std::errc::address_not_available) {
    WARN("no IPv6 loopback here: not tested");
    return;
  }
  REQUIRE(started);
  REQUIRE(run_until(l, [&] { return all_ready(m, 2); }));
  const auto addresses = m.addresses();
  REQUIRE(addresses.size() == 2);
  CHECK(addresses[0].family() == kin::address_family::ipv6);
  CHECK(addresses[0].port() != 0);
  CHECK(addresses[1].path() == path);
  client_run run;
  std::vector<std::thread> threads;
  make_requests(addresses[0], 2, 50, run, threads);
  make_requests(addresses[1], 2, 50, run, threads);
  const bool finished = run_until(
      l, [&] { return run.done_threads == 4; }, 60s);
  for (auto& t : threads) t.join();
  REQUIRE(finished);
  CHECK(run.failures == 0);
  CHECK(run.pids.size() == 100);
  close_all(l, m);
  // The socket file the master bound is removed with it.
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("destroying a master right after start leaves nothing behind", "[cluster]") {
  leak_guard guard;
  kin::loop l;
  for (const auto kind : {kin::cluster_worker_kind::activation, kin::cluster_worker_kind::kin}) {
    auto m = std::make_unique<kin::cluster_master>(l, [&] {
      kin::cluster_options o;
      o.kind = kind;
      o.mode = kin::cluster_mode::shared;
      o.program = kind == kin::cluster_worker_kind::kin ? child_path() : "/bin/sleep";
      o.args = {kind == kin::cluster_worker_kind::kin ? "cluster-worker" : "30"};
      o.listen = {"127.0.0.1:0"};
      return o;
    }());
    REQUIRE(m->start());
    m.reset();  // with work posted for it (activation workers are ready on the next iteration)
  }
  // The workers were killed; the loop reaps them and runs nothing of the master's.
  CHECK(kin_test::run_all(l, 10s));
}

TEST_CASE("a reload that fails drains the new workers that were ready and kills the others",
          "[cluster]") {
  leak_guard guard;
  kin_test::temp_dir dir;
  kin::loop l;
  auto o = worker_options(kin::cluster_mode::round_robin, 2);
  o.args = {"cluster-worker-lazy", dir.path().string()};
  o.ready_timeout = 1500ms;
  std::vector<kin::cluster_event> events;
  kin::cluster_master m(l, std::move(o));
  m.on_event([&](const kin::cluster_event& e) { events.push_back(e); });
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 2); }));
  std::set<int> old_pids;
  for (const auto& w : m.workers()) old_pids.insert(w.pid);
  const auto to = m.addresses().at(0);

  // From now on one new worker never becomes ready: the reload times out.
  {
    std::FILE* arm = std::fopen((dir.path() / "arm").c_str(), "w");
    REQUIRE(arm);
    std::fclose(arm);
  }
  std::optional<std::error_code> result;
  m.reload([&](std::error_code ec) { result = ec; });
  // Wait for the new worker that does become ready, then hold a connection it serves.
  int fresh = 0;
  REQUIRE(run_until(l, [&] {
    for (const auto& w : m.workers()) {
      if (w.generation == 2 && w.state == kin::cluster_worker_state::ready) fresh = w.pid;
    }
    return fresh != 0;
  }));
  kin::unique_fd held;
  std::atomic<bool> got{false};
  std::thread opener([&] {
    for (int i = 0; i < 8 && !held.is_open(); ++i) {
      kin::unique_fd fd = dial(to);
      if (fd.is_open() && read_line(fd.get()) == "pid " + std::to_string(fresh)) {
        held = std::move(fd);
      }
    }
    got = true;
  });
  const bool opened = run_until(l, [&] { return got.load(); });
  opener.join();
  REQUIRE(opened);
  REQUIRE(held.is_open());

  REQUIRE(run_until(
      l, [&] { return result.has_value(); }, 10s));
  CHECK(*result == std::errc::timed_out);
  // The lazy one is killed; the ready one drains: it is still there, holding our connection.
  REQUIRE(run_until(l, [&] { return m.workers().size() == 3; }));
  bool fresh_stopping = false;
  for (const auto& w : m.workers()) {
    if (w.pid == fresh) fresh_stopping = w.state == kin::cluster_worker_state::stopping;
    if (w.pid != fresh) CHECK(old_pids.count(w.pid) == 1);
  }
  CHECK(fresh_stopping);
  pollfd p{held.get(), POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 0);  // neither closed nor reset
  // The old generation serves on.
  std::set<int> answered;  // read only once the thread is done
  std::atomic<bool> asked{false};
  std::thread more([&] {
    for (int i = 0; i < 6; ++i) answered.insert(one_request(to));
    asked = true;
  });
  const bool served = run_until(
      l, [&] { return asked.load(); }, 60s);
  more.join();
  REQUIRE(served);
  CHECK(answered == old_pids);
  held.reset();
  CHECK(run_until(l, [&] { return m.workers().size() == 2; }));
  const bool failed = std::any_of(events.begin(), events.end(), [](const auto& e) {
    return e.what == kin::cluster_event::kind::reload_failed;
  });
  CHECK(failed);
  close_all(l, m);
}

TEST_CASE("a reload after a crash loop resumes respawning", "[cluster]") {
  leak_guard guard;
  kin_test::temp_dir dir;
  const std::string needed = (dir.path() / "ok").string();
  kin::loop l;
  auto o = worker_options(kin::cluster_mode::round_robin, 1);
  o.args = {"cluster-worker-needs", needed};
  o.backoff_initial = 10ms;
  o.backoff_max = 1s;
  o.crash_limit = 2;
  kin::cluster_master m(l, std::move(o));
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return m.crash_looping() && m.workers().empty(); }));
  {
    std::FILE* ok = std::fopen(needed.c_str(), "w");
    REQUIRE(ok);
    std::fclose(ok);
  }
  std::optional<std::error_code> result;
  m.reload([&](std::error_code ec) { result = ec; });
  REQUIRE(run_until(l, [&] { return result.has_value(); }));
  CHECK_FALSE(*result);
  CHECK_FALSE(m.crash_looping());
  REQUIRE(m.workers().size() == 1);
  const pid_t first = m.workers().front().pid;
  ::kill(first, SIGKILL);  // an unasked death: respawned again
  CHECK(run_until(l, [&] {
    const auto ws = m.workers();
    return ws.size() == 1 && ws.front().pid != first &&
           ws.front().state == kin::cluster_worker_state::ready;
  }));
  close_all(l, m);
}

TEST_CASE("shared-mode workers keep the master's backlog", "[cluster]") {
  leak_guard guard;
  kin::loop l;
  // A listener given to the master (as from LISTEN_FDS); the test keeps a duplicate to look at.
  kin::tcp_server given(l);
  REQUIRE(given.bind(kin_test::ip("127.0.0.1")));
  REQUIRE(given.listen(16, [](std::error_code, kin::unique_fd) {}));
  given.stop_accepting();
  auto fd = given.release();
  REQUIRE(fd);
  kin::unique_fd watch(::fcntl(fd->get(), F_DUPFD_CLOEXEC, 0));
  REQUIRE(watch.is_open());
  kin::cluster_options o = worker_options(kin::cluster_mode::shared, 2);
  o.listen.clear();
  o.listeners.push_back({std::move(*fd), {}, "given"});
  o.backlog = 1000;
  kin::cluster_master m(l, std::move(o));
  REQUIRE(m.start());
  REQUIRE(run_until(l, [&] { return all_ready(m, 2); }));
  // Linux reports a listening socket's backlog as tcpi_sacked.
  tcp_info info{};
  socklen_t len = sizeof info;
  REQUIRE(::getsockopt(watch.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0);
  const int somaxconn = [] {
    std::FILE* f = std::fopen("/proc/sys/net/core/somaxconn", "r");
    int v = 4096;
    if (f != nullptr) {
      if (std::fscanf(f, "%d", &v) != 1) v = 4096;
      std::fclose(f);
    }
    return v;
  }();
  CHECK(static_cast<int>(info.tcpi_sacked) == std::min(1000, somaxconn));
  watch.reset();
  close_all(l, m);
  bool again = false;
  m.close([&] { again = true; });  // after completion: called too
  CHECK(run_until(l, [&] { return again; }));
}

TEST_CASE("a worker that took a connection and exited at once does not get it re-handed",
          "[cluster]") {
  leak_guard guard;
  kin::loop l;
  auto o = worker_options(kin::cluster_mode::round_robin, 1);
  o.args = {"cluster-take-and-exit"};
  o.backoff_initial = 1ms;
  o.backoff_max = 1ms;
  o.crash_limit = 1000;
  kin::cluster_master m(l, std::move(o));
  REQUIRE(m.start());
  const auto to = m.addresses().at(0);
  // Each connection is answered by exactly one worker: the one that took it, whose took comes
  // (from a process it forked) after its exit was seen. A connection handed again at the exit
  // would get a second line, from the respawned worker.
  constexpr int total = 10;
  std::vector<std::string> answers;
  std::atomic<bool> done{false};
  std::thread client([&] {
    for (int i = 0; i < total; ++i) {
      kin::unique_fd fd = dial(to);
      std::string all;
      char buf[256];
      for (;;) {
        const ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        all.append(buf, static_cast<std::size_t>(n));
      }
      answers.push_back(all);
    }
    done = true;
  });
  const bool finished = run_until(
      l, [&] { return done.load(); }, 60s);
  client.join();
  REQUIRE(finished);
  REQUIRE(answers.size() == total);
  for (const std::string& a : answers) {
    INFO(a);
    CHECK(a.rfind("pid ", 0) == 0);
    CHECK(std::count(a.begin(), a.end(), '\n') == 1);
  }
  CHECK(m.handed() == total);
  close_all(l, m);
}
