// Benchmark: message ping-pong between a parent and its child over an AF_UNIX socketpair, as
// the mean round trip time (lower is better): kin::channel with the native codec (64-byte
// messages) and with the Node codec ({"i":N}), against a raw blocking loop, a raw epoll loop
// and libuv 1.44 (68-byte frames: a u32 length and 64 bytes), and Node 20's process.send
// ({i}, channel_node.js).
//
// The parent sends message i, the child sends it back, the parent checks it and sends i+1.
// After max(2000, N/10) warm-up round trips, N are timed (wall clock, divided by N). Then the
// parent says it is done (a "done" message, or a half-close for the raw and libuv peers), and
// the child answers with the CPU time it spent since the first timed ping.
#include <kin/channel.hpp>
#include <kin/loop.hpp>

#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "bench.hpp"
#include "channel_common.hpp"
#include "stream_common.hpp"
#include "stream_uv.hpp"

namespace {

using namespace kin_bench::channel;
using kin_bench::stream::ack_frame;
using kin_bench::stream::frame_buffer;
using kin_bench::stream::header_size;
using kin_bench::stream::load_u64;
using kin_bench::stream::peer;
using kin_bench::stream::put_frame;
using kin_bench::stream::raw_conn;
using kin_bench::stream::warmup_of;

constexpr std::size_t payload = 64;
constexpr std::size_t receive_capacity = 256 * 1024;
constexpr char filler = 'Z';

/// Checks a native ping or pong: 64 bytes, the sequence number first, and (every 256th) the
/// filler in the other 56.
void check_native(std::string_view m, std::uint64_t seq) {
  if (m.size() != payload || get_u64(m) != seq) die("ping-pong: a wrong native message");
  if (seq % 256 == 0 && m.find_first_not_of(filler, 8) != std::string_view::npos) {
    die("ping-pong: a native message with the wrong content");
  }
}

// ---- kin ------------------------------------------------------------------------------------

/// The kin child: sends every message back; on "done", sends the CPU time it spent since the
/// first timed ping. Its loop ends when the parent closes the channel.
int kin_child(std::string_view codec, long warm) {
  kin::loop loop;
  auto ch = open_child_channel(loop, codec);
  const bool node = codec == "node";
  long got = 0;
  std::uint64_t cpu0 = 0;
  std::string reply(8, '\0');
  ch->on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (!handles.empty()) die("kin echo: a message with handles");
    const bool done = node ? json_uint(m, "done") == 1 : m == "done";
    if (done) {
      if (node) {
        json_object(reply, {{"cpu", cpu_ns() - cpu0}});
      } else {
        put_u64(reply, cpu_ns() - cpu0);
      }
      ch->send(reply);
      return;
    }
    if (node) {
      if (json_uint(m, "i") != got) die("kin echo: a wrong ping");
    } else {
      check_native(m, static_cast<std::uint64_t>(got));
    }
    if (got++ == warm) cpu0 = cpu_ns();
    ch->send(m);
  });
  loop.run();
  return 0;
}

run_result run_kin(kin::channel_codec codec, long n) {
  const long warm = warmup_of(n, 2000);
  const bool node = codec == kin::channel_codec::node;
  run_result res;
  {
    kin::loop loop;
    kin_peer f = fork_kin_child(loop, codec, {"pingpong", std::to_string(warm)});
    kin::channel& ch = *f.channel;
    std::string msg(payload, filler);
    long seq = 0;
    bool done = false;
    bool finished = false;
    std::uint64_t t0 = 0, c0 = 0;
    auto ping = [&] {
      if (seq == warm) {
        t0 = wall_ns();
        c0 = cpu_ns();
      }
      if (node) {
        json_object(msg, {{"i", static_cast<std::uint64_t>(seq)}});
      } else {
        put_u64(msg, static_cast<std::uint64_t>(seq));
      }
      ch.send(msg);
    };
    watch_kin_channel(ch, finished);
    ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
      if (!handles.empty()) die("kin ping: a message with handles");
      if (done) {
        const long long cpu = node ? json_uint(m, "cpu") : static_cast<long long>(get_u64(m));
        if (cpu < 0) die("kin ping: no CPU time in the child's last message");
        res.child_cpu_ns = static_cast<std::uint64_t>(cpu);
        finished = true;
        ch.close();
        return;
      }
      if (node) {
        if (json_uint(m, "i") != seq) die("kin ping: a wrong pong");
      } else {
        check_native(m, static_cast<std::uint64_t>(seq));
      }
      if (++seq == warm + n) {
        res.wall_ns = wall_ns() - t0;
        res.parent_cpu_ns = cpu_ns() - c0;
        done = true;
        ch.send(node ? std::string_view(R"({"done":1})") : std::string_view("done"));
        return;
      }
      ping();
    });
    ping();
    loop.run();
    f.reap();
    if (!finished) die("kin ping: the loop ended early");
  }
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

/// The raw child: echoes every frame until EOF, then sends its CPU time.
int raw_echo(int fd, bool nonblocking, long warm) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity);
  long got = 0;
  std::uint64_t cpu0 = 0;
  while (!c.at_eof()) {
    c.receive(buf, [&](const std::byte* p, std::uint32_t len) {
      if (len != payload || load_u64(p) != static_cast<std::uint64_t>(got)) {
        die("raw echo: a wrong ping");
      }
      if (got++ == warm) cpu0 = cpu_ns();
      c.send(p - header_size, header_size + len);
    });
  }
  const ack_frame a(cpu_ns() - cpu0);
  c.send(a.bytes, sizeof a.bytes);
  return 0;
}

run_result run_raw(bool nonblocking, long n) {
  const long warm = warmup_of(n, 2000);
  const peer p =
      kin_bench::stream::fork_peer([&](int fd) { return raw_echo(fd, nonblocking, warm); });
  run_result res;
  {
    raw_conn c(p.fd, nonblocking);
    frame_buffer buf(receive_capacity);
    std::vector<std::byte> frame(header_size + payload, std::byte{filler});
    std::uint64_t t0 = 0, c0 = 0;
    for (long seq = 0; seq < warm + n; ++seq) {
      if (seq == warm) {
        t0 = wall_ns();
        c0 = cpu_ns();
      }
      put_frame(frame.data(), payload, static_cast<std::uint64_t>(seq));
      c.send(frame.data(), frame.size());
      bool answered = false;
      while (!answered) {
        c.receive(buf, [&](const std::byte* pp, std::uint32_t len) {
          if (answered || len != payload || load_u64(pp) != static_cast<std::uint64_t>(seq)) {
            die("raw ping: a wrong pong");
          }
          answered = true;
        });
        if (!answered && c.at_eof()) die("raw ping: early EOF");
      }
    }
    res.wall_ns = wall_ns() - t0;
    res.parent_cpu_ns = cpu_ns() - c0;
    c.shutdown_write();
    res.child_cpu_ns = c.read_ack(buf);
  }
  kin_bench::stream::reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- libuv ----------------------------------------------------------------------------------

using kin_bench::stream::as_handle;
using kin_bench::stream::as_stream;
using kin_bench::stream::buf_of;
using kin_bench::stream::check_uv;
using kin_bench::stream::uv_send_copy;

/// Both sides of the libuv run: one uv_write per frame, each with its own copy (a libuv user
/// whose message does not outlive the call copies it), reads through alloc_cb/read_cb.
struct uv_side {
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_shutdown_t shutdown_req;
  frame_buffer buf{receive_capacity};
  long warm = 0;
  long n = 0;
  long seq = 0;
  bool done = false;
  std::uint64_t t0 = 0, c0 = 0;
  std::vector<std::byte> frame = std::vector<std::byte>(header_size + payload, std::byte{filler});
  run_result* res = nullptr;
};

void uv_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_side*>(h->data)->buf.free_space());
}

void uv_echo_shut(uv_shutdown_t* req, int status) {
  if (status != 0) die("libuv echo: shutdown failed");
  uv_close(reinterpret_cast<uv_handle_t*>(req->handle), nullptr);
}

void uv_echo_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_side*>(s->data);
  if (nread == UV_EOF) {
    uv_send_copy(&u->pipe, ack_frame(cpu_ns() - u->c0).span());
    check_uv(uv_shutdown(&u->shutdown_req, as_stream(&u->pipe), uv_echo_shut), "uv_shutdown");
    return;
  }
  if (nread < 0) die("libuv echo: read failed");
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (len != payload || load_u64(p) != static_cast<std::uint64_t>(u->seq)) {
      die("libuv echo: a wrong ping");
    }
    if (u->seq++ == u->warm) u->c0 = cpu_ns();
    uv_send_copy(&u->pipe, {p - header_size, header_size + len});
  });
}

int uv_echo_main(int fd, long warm) {
  uv_side u;
  u.warm = warm;
  check_uv(uv_loop_init(&u.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&u.pipe, fd), "uv_pipe_open");
  u.pipe.data = &u;
  check_uv(uv_read_start(as_stream(&u.pipe), uv_alloc, uv_echo_read), "uv_read_start");
  uv_run(&u.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&u.loop), "uv_loop_close");
  return 0;
}

void uv_ping_send(uv_side* u) {
  if (u->seq == u->warm) {
    u->t0 = wall_ns();
    u->c0 = cpu_ns();
  }
  put_frame(u->frame.data(), payload, static_cast<std::uint64_t>(u->seq));
  uv_send_copy(&u->pipe, u->frame);
}

void uv_ping_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_side*>(s->data);
  if (nread < 0) die("libuv ping: read failed or early EOF");
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (u->done) {
      u->res->child_cpu_ns = load_u64(p);
      uv_close(as_handle(&u->pipe), nullptr);
      return;
    }
    if (len != payload || load_u64(p) != static_cast<std::uint64_t>(u->seq)) {
      die("libuv ping: a wrong pong");
    }
    if (++u->seq == u->warm + u->n) {
      u->res->wall_ns = wall_ns() - u->t0;
      u->res->parent_cpu_ns = cpu_ns() - u->c0;
      u->done = true;
      check_uv(uv_shutdown(&u->shutdown_req, as_stream(&u->pipe), nullptr), "uv_shutdown");
      return;
    }
    uv_ping_send(u);
  });
}

run_result run_libuv(long n) {
  const long warm = warmup_of(n, 2000);
  const peer p = kin_bench::stream::fork_peer([&](int fd) { return uv_echo_main(fd, warm); });
  run_result res;
  {
    uv_side u;
    u.warm = warm;
    u.n = n;
    u.res = &res;
    check_uv(uv_loop_init(&u.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.pipe, p.fd), "uv_pipe_open");
    u.pipe.data = &u;
    check_uv(uv_read_start(as_stream(&u.pipe), uv_alloc, uv_ping_read), "uv_read_start");
    uv_ping_send(&u);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&u.loop), "uv_loop_close");
    if (!u.done) die("libuv ping: the loop ended early");
  }
  kin_bench::stream::reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::string_view(argv[1]) == "--child" &&
      std::string_view(argv[3]) == "pingpong") {
    return kin_child(argv[2], std::stol(argv[4]));
  }
  common_options o;
  long round_trips = 20000;
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--round-trips", &round_trips},
       {"--only", nullptr, &o.only},
       {"--skip", nullptr, &o.skip},
       {"--pin", nullptr, &o.pin},
       {"--spawn", nullptr, &o.spawn}},
      "[--runs N (5)] [--round-trips N (20000)] [--only "
      "kin|kin_node|raw_block|raw_epoll|libuv|node (that one alone, no warm-up run, no BENCH "
      "line)] [--skip impl,impl (e.g. kin_node)] [--pin none|same (none: the scheduler places "
      "parent and child; same: everything on the first allowed CPU)] [--spawn kin|fork (kin: "
      "kin::fork; fork: fork and execv by hand, for valgrind)]");
  const char* suffix = apply_pin(o.pin);
  if (o.spawn != "kin" && o.spawn != "fork") die("--spawn is kin or fork");
  spawn_by_hand = o.spawn == "fork";
  kin_bench::stream::prime_libuv();
  const int fds_before = kin_bench::open_fd_count();
  print_header("channel_pingpong", o);
  std::printf("# libuv %s\n", uv_version_string());

  channel_case c;
  c.name = std::string("channel_pingpong") + suffix;
  c.unit = "us/round_trip";
  c.metric = [](const run_result& r) {
    return static_cast<double>(r.wall_ns) / 1e3 / static_cast<double>(r.ops);
  };
  const long n = round_trips;
  c.impls = {
      {impl::kin, n, [](long k) { return run_kin(kin::channel_codec::native, k); }},
      {impl::kin_node, n, [](long k) { return run_kin(kin::channel_codec::node, k); }},
      {impl::raw_block, n, [](long k) { return run_raw(false, k); }},
      {impl::raw_epoll, n, [](long k) { return run_raw(true, k); }},
      {impl::libuv, n, run_libuv},
      {impl::node, n, [](long k) {
         return run_node({"pingpong", std::to_string(k), std::to_string(warmup_of(k, 2000))});
       }}};
  c.comparisons = {{impl::kin, impl::raw_block},      {impl::kin, impl::raw_epoll},
                   {impl::kin, impl::libuv},          {impl::kin, impl::node},
                   {impl::kin_node, impl::node},      {impl::kin_node, impl::raw_block},
                   {impl::node, impl::raw_block},     {impl::libuv, impl::raw_block},
                   {impl::raw_epoll, impl::raw_block}};
  run_case(c, o);
  if (kin_bench::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
