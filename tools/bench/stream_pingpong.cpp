// Benchmark: 64 B ping-pong between a parent and a forked child over an AF_UNIX socketpair,
// kin::stream against a raw blocking loop, a raw epoll loop and libuv 1.44, as the mean round
// trip time (lower is better).
//
// The parent sends a frame (u32 length, 64 B payload starting with a sequence number), the child
// echoes it, the parent checks the number and sends the next. After max(2000, N/10) warm-up round
// trips, N are timed (wall clock, divided by N). At the end the parent half-closes; the child
// answers with the CPU time it spent since the first timed ping, and exits.
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/stream.hpp>

#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

#include "bench.hpp"
#include "stream_common.hpp"
#include "stream_uv.hpp"

namespace {

using kin_bench::cpu_ns;
using kin_bench::die;
using kin_bench::wall_ns;
using namespace kin_bench::stream;

constexpr std::uint32_t payload = 64;
constexpr std::size_t receive_capacity = 256 * 1024;

/// The child's bookkeeping, the same for every implementation: start the CPU clock at the
/// first timed ping.
struct echo_state {
  long warm;
  long got = 0;
  std::uint64_t cpu0 = 0;
  void on_ping(std::uint32_t len) {
    if (len != payload) die("ping-pong: the child got a frame of the wrong length");
    if (got++ == warm) cpu0 = cpu_ns();
  }
};

/// The parent's bookkeeping: round trip `i` (from -warm) expects its own sequence number back.
struct ping_state {
  long warm;
  long n;
  long i;
  std::uint64_t t0 = 0, c0 = 0;
  run_result* res;

  ping_state(long w, long count, run_result* r) : warm(w), n(count), i(-w), res(r) {}
  std::uint64_t seq() const { return static_cast<std::uint64_t>(i + warm); }
  /// Called before each ping; starts the clocks before the first timed one.
  void before_ping() {
    if (i == 0) {
      t0 = wall_ns();
      c0 = cpu_ns();
    }
  }
  /// Checks a pong; returns true when the last round trip is done (and stops the clocks).
  bool on_pong(const std::byte* p, std::uint32_t len) {
    if (len != payload || load_u64(p) != seq()) die("ping-pong: wrong pong");
    if (++i < n) return false;
    res->wall_ns = wall_ns() - t0;
    res->parent_cpu_ns = cpu_ns() - c0;
    return true;
  }
};

// ---- kin ------------------------------------------------------------------------------------

int kin_echo(int fd, long warm) {
  kin::loop loop;
  kin::stream s(loop);
  if (!s.open(kin::unique_fd(fd))) die("kin echo: open failed");
  chunk_parser parser(receive_capacity);
  echo_state st{warm};
  auto r = s.read_start(
      [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
        if (ec == kin::errc::eof) {
          // The parent is done: report the CPU time; the loop ends once it is sent.
          s.write(ack_frame(cpu_ns() - st.cpu0).span());
          return;
        }
        if (ec) die("kin echo: read failed");
        parser.feed(data, [&](const std::byte* p, std::uint32_t len) {
          st.on_ping(len);
          s.write(std::span<const std::byte>(p - header_size, header_size + len));
        });
      });
  if (!r) die("kin echo: read_start failed");
  loop.run();
  return 0;
}

run_result run_kin(long n) {
  const long warm = warmup_of(n, 2000);
  const peer p = fork_peer([&](int fd) { return kin_echo(fd, warm); });
  run_result res;
  {
    kin::loop loop;
    kin::stream s(loop);
    if (!s.open(kin::unique_fd(p.fd))) die("kin ping: open failed");
    std::vector<std::byte> frame = make_frame(payload);
    ping_state st(warm, n, &res);
    auto ping = [&] {
      st.before_ping();
      put_frame(frame.data(), payload, st.seq());
      s.write(std::span<const std::byte>(frame));
    };
    chunk_parser parser(receive_capacity);
    bool done = false;
    auto r = s.read_start(
        [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
          if (ec) die("kin ping: read failed or early EOF");
          parser.feed(data, [&](const std::byte* pp, std::uint32_t len) {
            if (done) {  // the child's CPU time, after the half-close
              res.child_cpu_ns = load_u64(pp);
              s.close();
            } else if (st.on_pong(pp, len)) {
              done = true;
              s.shutdown();
            } else {
              ping();
            }
          });
        });
    if (!r) die("kin ping: read_start failed");
    ping();
    loop.run();
    if (!done) die("kin ping: the loop ended early");
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

int raw_echo(int fd, bool nonblocking, long warm) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity);
  echo_state st{warm};
  while (!c.at_eof()) {
    c.receive(buf, [&](const std::byte* p, std::uint32_t len) {
      st.on_ping(len);
      c.send(p - header_size, header_size + len);
    });
  }
  const ack_frame a(cpu_ns() - st.cpu0);
  c.send(a.bytes, sizeof a.bytes);
  return 0;
}

run_result run_raw(bool nonblocking, long n) {
  const long warm = warmup_of(n, 2000);
  const peer p = fork_peer([&](int fd) { return raw_echo(fd, nonblocking, warm); });
  run_result res;
  {
    raw_conn c(p.fd, nonblocking);
    frame_buffer buf(receive_capacity);
    std::vector<std::byte> frame = make_frame(payload);
    ping_state st(warm, n, &res);
    bool done = false;
    while (!done) {
      st.before_ping();
      put_frame(frame.data(), payload, st.seq());
      c.send(frame.data(), frame.size());
      bool answered = false;
      while (!answered) {
        c.receive(buf, [&](const std::byte* pp, std::uint32_t len) {
          if (answered) die("raw ping: two pongs for one ping");
          answered = true;
          done = st.on_pong(pp, len);
        });
        if (!answered && c.at_eof()) die("raw ping: early EOF");
      }
    }
    c.shutdown_write();
    res.child_cpu_ns = c.read_ack(buf);
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

struct uv_echo {
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_shutdown_t shutdown_req;
  frame_buffer buf{receive_capacity};
  echo_state st{0};
};

void uv_echo_shut(uv_shutdown_t* req, int status) {
  if (status != 0) die("libuv echo: shutdown failed");
  uv_close(reinterpret_cast<uv_handle_t*>(req->handle), nullptr);
}

void uv_echo_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_echo*>(h->data)->buf.free_space());
}

void uv_echo_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* e = static_cast<uv_echo*>(s->data);
  if (nread == UV_EOF) {
    uv_send_copy(&e->pipe, ack_frame(cpu_ns() - e->st.cpu0).span());
    check_uv(uv_shutdown(&e->shutdown_req, as_stream(&e->pipe), uv_echo_shut), "uv_shutdown");
    return;
  }
  if (nread < 0) die("libuv echo: read failed");
  e->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    e->st.on_ping(len);
    uv_send_copy(&e->pipe, {p - header_size, header_size + len});
  });
}

int uv_echo_main(int fd, long warm) {
  uv_echo e;
  e.st.warm = warm;
  check_uv(uv_loop_init(&e.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&e.loop, &e.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&e.pipe, fd), "uv_pipe_open");
  e.pipe.data = &e;
  check_uv(uv_read_start(as_stream(&e.pipe), uv_echo_alloc, uv_echo_read), "uv_read_start");
  uv_run(&e.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&e.loop), "uv_loop_close");
  return 0;
}

struct uv_ping {
  uv_ping(long warm, long n, run_result* res) : st(warm, n, res) {}
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_shutdown_t shutdown_req;
  frame_buffer buf{receive_capacity};
  std::vector<std::byte> frame = make_frame(payload);
  ping_state st;
  bool done = false;
};

void uv_ping_send(uv_ping* u) {
  u->st.before_ping();
  put_frame(u->frame.data(), payload, u->st.seq());
  uv_send_copy(&u->pipe, u->frame);
}

void uv_ping_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_ping*>(h->data)->buf.free_space());
}

void uv_ping_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_ping*>(s->data);
  if (nread < 0) die("libuv ping: read failed or early EOF");
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (u->done) {
      u->st.res->child_cpu_ns = load_u64(p);
      uv_close(as_handle(&u->pipe), nullptr);
    } else if (u->st.on_pong(p, len)) {
      u->done = true;
      check_uv(uv_shutdown(&u->shutdown_req, as_stream(&u->pipe), nullptr), "uv_shutdown");
    } else {
      uv_ping_send(u);
    }
  });
}

run_result run_libuv(long n) {
  const long warm = warmup_of(n, 2000);
  const peer p = fork_peer([&](int fd) { return uv_echo_main(fd, warm); });
  run_result res;
  {
    uv_ping u(warm, n, &res);
    check_uv(uv_loop_init(&u.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.pipe, p.fd), "uv_pipe_open");
    u.pipe.data = &u;
    check_uv(uv_read_start(as_stream(&u.pipe), uv_ping_alloc, uv_ping_read), "uv_read_start");
    uv_ping_send(&u);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&u.loop), "uv_loop_close");
    if (!u.done) die("libuv ping: the loop ended early");
  }
  reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  common_options o;
  long round_trips = 50000;
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--round-trips", &round_trips},
       {"--only", nullptr, &o.only},
       {"--pin", nullptr, &o.pin}},
      "[--runs N (5)] [--round-trips N (50000)] [--only kin|raw_block|raw_epoll|libuv (that "
      "one alone, no warm-up run, no BENCH line)] [--pin none|same|split (none: the scheduler "
      "places parent and child; same: both on the first allowed CPU; split: one on each of the "
      "first two)]");
  const char* suffix = apply_pin(o.pin);
  prime_libuv();
  const int fds_before = open_fd_count();
  print_header("stream_pingpong", o.runs, o.pin);

  bench_case c;
  c.name = std::string("stream_pingpong") + suffix;
  c.unit = "us/round_trip";
  c.metric = [](const run_result& r) {
    return static_cast<double>(r.wall_ns) / 1e3 / static_cast<double>(r.ops);
  };
  c.count = round_trips;
  c.impls = {{impl::kin, run_kin},
             {impl::raw_block, [](long n) { return run_raw(false, n); }},
             {impl::raw_epoll, [](long n) { return run_raw(true, n); }},
             {impl::libuv, run_libuv}};
  run_case(c, o.runs, o.only);
  if (open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
