// Benchmark: passing accepted TCP connections from a parent to its child over an AF_UNIX
// socketpair, one per message, in handles per second: kin::channel with the native codec and
// with the Node codec, against a raw blocking loop and a raw epoll loop (sendmsg/recvmsg with
// SCM_RIGHTS), libuv 1.44 (uv_write2 of a uv_tcp_t) and Node 20 (child.send({i, p}, socket),
// channel_node.js).
//
// As perf-ipc's `tcp` source: before each run (after the fork, so no child inherits them) the
// parent makes N fresh loopback connections (connect + accept4, tcp_connections) and then sends
// each accepted end once, giving up its own copy (kin's send takes ownership and closes it once
// sent; the raw loops close it after sendmsg; libuv closes the uv_tcp_t in the write callback;
// Node destroys it after sending). The receiver takes each descriptor as its library hands it
// over and closes it: kin rebuilds a kin::tcp_socket (adopt()) and destroys it, libuv
// accepts it into a uv_tcp_t and closes that, the raw loops close() it, Node gets a net.Socket
// and destroys it. Each message carries a sequence number and the connection's client port;
// the receiver checks that every message came with exactly one descriptor (a TCP socket, for
// kin and libuv), the sequence, and for every 256th that getpeername finds that port.
#include <kin/channel.hpp>
#include <kin/fd_kind.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/socket.hpp>

#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
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
using kin_bench::stream::seq_size;

/// A message's payload (native, raw, libuv): the sequence number, then the client port.
constexpr std::size_t payload = 16;
constexpr std::size_t frame_size = header_size + payload;
constexpr std::size_t receive_capacity = 64 * 1024;
/// libuv keeps at most this many uv_write2 requests in flight.
constexpr long uv_max_inflight = 1024;

long warmup_handles(long n) { return kin_bench::stream::warmup_of(n, 100); }

/// The receivers' check and acks, the same for every implementation but Node's: message `got`
/// must carry sequence number `got`; every 256th, its descriptor's peer port must be the one
/// the message names. Returns the ack to send after it, if any (1 after the warm-up phase, 2
/// after the last message).
struct handle_check {
  long warm;
  long total;
  long got = 0;
  std::uint64_t cpu0 = 0;

  [[nodiscard]] bool sample() const { return got % 256 == 0; }
  int on_message(std::uint64_t seq, std::uint64_t port, std::uint64_t peer_port) {
    if (seq != static_cast<std::uint64_t>(got)) die("handles: a message out of order");
    if (sample() && port != peer_port) die("handles: a descriptor with the wrong peer port");
    ++got;
    if (got == warm) {
      cpu0 = cpu_ns();
      return 1;
    }
    return got == total ? 2 : 0;
  }
  [[nodiscard]] std::uint64_t ack_value(int which) const {
    return which == 1 ? 0 : cpu_ns() - cpu0;
  }
};

// ---- kin ------------------------------------------------------------------------------------

void make_ack(std::string& out, bool node, int which, std::uint64_t cpu) {
  if (node) {
    if (which == 1) {
      json_object(out, {{"ack", 0}});
    } else {
      json_object(out, {{"ack", 1}, {"cpu", cpu}});
    }
  } else {
    out.assign(8, '\0');
    put_u64(out, which == 1 ? 0 : cpu);
  }
}

int kin_child(std::string_view codec, long warm, long total) {
  kin::loop loop;
  auto ch = open_child_channel(loop, codec);
  const bool node = codec == "node";
  handle_check check{warm, total};
  std::string ack;
  ch->on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (handles.size() != 1 || kin::kind_of(handles[0]) != kin::fd_kind::tcp_socket) {
      die("kin receiver: a message without its TCP socket");
    }
    long long seq, port;
    if (node) {
      seq = json_uint(m, "i");
      port = json_uint(m, "p");
    } else {
      if (m.size() != payload) die("kin receiver: a message of the wrong length");
      seq = static_cast<long long>(get_u64(m));
      port = static_cast<long long>(get_u64(std::string_view(m).substr(8)));
    }
    std::uint64_t peer_port = 0;
    if (check.sample()) {
      auto& s = std::get<std::unique_ptr<kin::tcp_socket>>(handles[0]);
      auto a = s->peer_address();
      if (!a) die("kin receiver: getpeername failed");
      peer_port = a->port();
    }
    if (seq < 0 || port < 0) die("kin receiver: a message without its numbers");
    const int which = check.on_message(static_cast<std::uint64_t>(seq),
                                       static_cast<std::uint64_t>(port), peer_port);
    if (which != 0) {
      make_ack(ack, node, which, check.ack_value(which));
      ch->send(ack);
    }
    // The handles go out of scope here: each kin::tcp_socket closes its descriptor.
  });
  loop.run();
  if (check.got != total) die("kin receiver: wrong message count");
  return 0;
}

run_result run_kin(kin::channel_codec codec, long n) {
  const long warm = warmup_handles(n);
  const bool node = codec == kin::channel_codec::node;
  run_result res;
  {
    kin::loop loop;
    kin_peer f =
        fork_kin_child(loop, codec, {"handles", std::to_string(warm), std::to_string(warm + n)});
    tcp_connections conns(warm + n);
    kin::channel& ch = *f.channel;
    std::string msg(payload, '\0');
    long seq = 0;
    long target = warm;
    auto sent = [](std::error_code ec) {
      if (ec) die("kin sender: a send failed");
    };
    // One send per connection until send() says the queue is above its high-water mark (the
    // default, 128 KiB; in Node mode the messages waiting for an acknowledgement count too);
    // on_drain resumes.
    auto pump = [&] {
      while (seq < target) {
        const auto s = static_cast<std::uint64_t>(seq);
        if (node) {
          json_object(msg, {{"i", s}, {"p", conns.port(seq)}});
        } else {
          msg.resize(payload);
          put_u64(msg, s);
          const std::uint64_t port = conns.port(seq);
          std::memcpy(msg.data() + 8, &port, sizeof port);
        }
        std::vector<kin::unique_fd> fds;
        fds.emplace_back(conns.release(seq++));
        if (!ch.send(msg, std::move(fds), sent)) return;
      }
    };
    ch.on_drain(pump);
    int acks = 0;
    bool finished = false;
    std::uint64_t t0 = 0, c0 = 0;
    watch_kin_channel(ch, finished);
    ch.on_message([&](std::string m, std::vector<kin::any_handle>) {
      if (++acks == 1) {
        t0 = wall_ns();
        c0 = cpu_ns();
        target += n;
        pump();
        return;
      }
      res.wall_ns = wall_ns() - t0;
      res.parent_cpu_ns = cpu_ns() - c0;
      const long long cpu = node ? json_uint(m, "cpu") : static_cast<long long>(get_u64(m));
      if (cpu < 0 || seq != target) die("kin sender: a wrong last ack");
      res.child_cpu_ns = static_cast<std::uint64_t>(cpu);
      finished = true;
      ch.close();
    });
    pump();
    loop.run();
    f.reap();
    if (!finished) die("kin sender: the loop ended before the last ack");
  }
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

// ---- raw blocking and raw epoll -------------------------------------------------------------

int raw_receiver(int fd, bool nonblocking, long warm, long n) {
  raw_conn c(fd, nonblocking);
  frame_buffer buf(receive_capacity);
  handle_check check{warm, warm + n};
  // Descriptors in arrival order: a frame's descriptor comes with the read that holds its first
  // byte, so when a frame is complete its descriptor is the oldest one not yet taken.
  std::vector<int> fds;
  std::size_t next = 0;
  int pending_ack = 0;
  while (!c.at_eof()) {
    c.receive(
        buf,
        [&](const std::byte* p, std::uint32_t len) {
          if (len != payload) die("raw receiver: a frame of the wrong length");
          if (next >= fds.size()) die("raw receiver: a frame without its descriptor");
          const int s = fds[next++];
          const std::uint64_t peer_port = check.sample() ? peer_port_of(s) : 0;
          ::close(s);
          if (const int a = check.on_message(load_u64(p), load_u64(p + 8), peer_port); a != 0) {
            pending_ack = a;
          }
        },
        &fds);
    fds.erase(fds.begin(), fds.begin() + static_cast<std::ptrdiff_t>(next));
    next = 0;
    if (pending_ack != 0) {
      const ack_frame a(check.ack_value(pending_ack));
      c.send(a.bytes, sizeof a.bytes);
      pending_ack = 0;
    }
  }
  if (check.got != warm + n || !fds.empty()) die("raw receiver: wrong message or fd count");
  return 0;
}

run_result run_raw(bool nonblocking, long n) {
  const long warm = warmup_handles(n);
  const peer p =
      kin_bench::stream::fork_peer([&](int fd) { return raw_receiver(fd, nonblocking, warm, n); });
  run_result res;
  {
    tcp_connections conns(warm + n);
    raw_conn c(p.fd, nonblocking);
    frame_buffer acks(4096);
    std::byte frame[frame_size];
    long seq = 0;
    // One sendmsg per message, its descriptor on it; the sender's copy closed at once.
    auto send_phase = [&](long count) {
      for (long i = 0; i < count; ++i, ++seq) {
        const std::uint64_t port = conns.port(seq);
        put_frame(frame, payload, static_cast<std::uint64_t>(seq));
        std::memcpy(frame + header_size + 8, &port, sizeof port);
        const int s = conns.release(seq);
        c.send(frame, frame_size, &s, 1);
        ::close(s);
      }
    };
    send_phase(warm);
    (void)c.read_ack(acks);
    const std::uint64_t t0 = wall_ns();
    const std::uint64_t c0 = cpu_ns();
    send_phase(n);
    res.child_cpu_ns = c.read_ack(acks);
    res.wall_ns = wall_ns() - t0;
    res.parent_cpu_ns = cpu_ns() - c0;
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

uv_handle_t* as_handle(uv_tcp_t* t) { return reinterpret_cast<uv_handle_t*>(t); }
uv_stream_t* as_stream(uv_tcp_t* t) { return reinterpret_cast<uv_stream_t*>(t); }
void uv_free_tcp(uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); }

struct uv_receiver {
  uv_loop_t loop;
  uv_pipe_t pipe;
  frame_buffer buf{receive_capacity};
  handle_check check{0, 0};
  std::deque<uv_tcp_t*> accepted;  // in arrival order, each taken by its frame
};

void uv_receiver_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_receiver*>(h->data)->buf.free_space());
}

void uv_receiver_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_receiver*>(s->data);
  if (nread < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    return;
  }
  // What a libuv user does with a received TCP handle: accept it into a uv_tcp_t.
  while (uv_pipe_pending_count(&u->pipe) > 0) {
    if (uv_pipe_pending_type(&u->pipe) != UV_TCP) die("libuv receiver: not a TCP handle");
    auto* t = new uv_tcp_t;
    check_uv(uv_tcp_init(&u->loop, t), "uv_tcp_init");
    check_uv(uv_accept(as_stream(&u->pipe), as_stream(t)), "uv_accept");
    u->accepted.push_back(t);
  }
  u->buf.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (len != payload) die("libuv receiver: a frame of the wrong length");
    if (u->accepted.empty()) die("libuv receiver: a frame without its handle");
    uv_tcp_t* t = u->accepted.front();
    u->accepted.pop_front();
    std::uint64_t peer_port = 0;
    if (u->check.sample()) {
      sockaddr_in a{};
      int len_a = sizeof a;
      check_uv(uv_tcp_getpeername(t, reinterpret_cast<sockaddr*>(&a), &len_a),
               "uv_tcp_getpeername");
      peer_port = ntohs(a.sin_port);
    }
    uv_close(as_handle(t), uv_free_tcp);
    if (const int w = u->check.on_message(load_u64(p), load_u64(p + 8), peer_port); w != 0) {
      uv_send_copy(&u->pipe, ack_frame(u->check.ack_value(w)).span());
    }
  });
}

int uv_receiver_main(int fd, long warm, long n) {
  uv_receiver u;
  u.check = handle_check{warm, warm + n};
  check_uv(uv_loop_init(&u.loop), "uv_loop_init");
  check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
  check_uv(uv_pipe_open(&u.pipe, fd), "uv_pipe_open");
  u.pipe.data = &u;
  check_uv(uv_read_start(as_stream(&u.pipe), uv_receiver_alloc, uv_receiver_read), "uv_read_start");
  uv_run(&u.loop, UV_RUN_DEFAULT);
  check_uv(uv_loop_close(&u.loop), "uv_loop_close");
  if (u.check.got != warm + n || !u.accepted.empty()) die("libuv receiver: wrong count");
  return 0;
}

struct uv_sender;

/// One message: its request, its frame and the uv_tcp_t on the connection it passes, closed
/// (with the descriptor) once written.
struct uv_handle_write {
  uv_write_t req;
  uv_tcp_t tcp;
  uv_sender* sender;
  std::byte frame[frame_size];
};

struct uv_sender {
  uv_loop_t loop;
  uv_pipe_t pipe;
  tcp_connections* conns = nullptr;
  long seq = 0;
  long target = 0;
  long inflight = 0;
  bool pumping = false;
  long n = 0;
  frame_buffer acks{4096};
  int acks_seen = 0;
  std::uint64_t t0 = 0, c0 = 0;
  run_result* res = nullptr;
};

void uv_sender_pump(uv_sender* u);

void uv_free_handle_write(uv_handle_t* h) { delete static_cast<uv_handle_write*>(h->data); }

void uv_sender_written(uv_write_t* req, int status) {
  if (status != 0) die("libuv: uv_write2 failed");
  auto* w = reinterpret_cast<uv_handle_write*>(req);
  uv_sender* u = w->sender;
  w->tcp.data = w;
  uv_close(as_handle(&w->tcp), uv_free_handle_write);
  --u->inflight;
  if (!u->pumping) uv_sender_pump(u);
}

void uv_sender_pump(uv_sender* u) {
  u->pumping = true;
  while (u->seq < u->target && u->inflight < uv_max_inflight) {
    auto* w = new uv_handle_write;
    w->sender = u;
    check_uv(uv_tcp_init(&u->loop, &w->tcp), "uv_tcp_init");
    check_uv(uv_tcp_open(&w->tcp, u->conns->release(u->seq)), "uv_tcp_open");
    const std::uint64_t port = u->conns->port(u->seq);
    put_frame(w->frame, payload, static_cast<std::uint64_t>(u->seq++));
    std::memcpy(w->frame + header_size + 8, &port, sizeof port);
    uv_buf_t b = buf_of(w->frame);
    check_uv(uv_write2(&w->req, as_stream(&u->pipe), &b, 1, as_stream(&w->tcp), uv_sender_written),
             "uv_write2");
    ++u->inflight;
  }
  u->pumping = false;
}

void uv_sender_alloc(uv_handle_t* h, std::size_t, uv_buf_t* b) {
  *b = buf_of(static_cast<uv_sender*>(h->data)->acks.free_space());
}

void uv_sender_read(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* u = static_cast<uv_sender*>(s->data);
  if (nread < 0) die("libuv sender: EOF before the last ack");
  u->acks.commit(static_cast<std::size_t>(nread), [&](const std::byte* p, std::uint32_t len) {
    if (len != seq_size) die("libuv sender: bad ack");
    if (++u->acks_seen == 1) {
      u->t0 = wall_ns();
      u->c0 = cpu_ns();
      u->target += u->n;
      uv_sender_pump(u);
      return;
    }
    u->res->wall_ns = wall_ns() - u->t0;
    u->res->parent_cpu_ns = cpu_ns() - u->c0;
    u->res->child_cpu_ns = load_u64(p);
    uv_close(as_handle(&u->pipe), nullptr);
  });
}

run_result run_libuv(long n) {
  const long warm = warmup_handles(n);
  const peer p =
      kin_bench::stream::fork_peer([&](int fd) { return uv_receiver_main(fd, warm, n); });
  run_result res;
  {
    tcp_connections conns(warm + n);
    uv_sender u;
    u.conns = &conns;
    u.n = n;
    u.res = &res;
    u.target = warm;
    check_uv(uv_loop_init(&u.loop), "uv_loop_init");
    check_uv(uv_pipe_init(&u.loop, &u.pipe, 1), "uv_pipe_init");
    check_uv(uv_pipe_open(&u.pipe, p.fd), "uv_pipe_open");
    u.pipe.data = &u;
    check_uv(uv_read_start(as_stream(&u.pipe), uv_sender_alloc, uv_sender_read), "uv_read_start");
    uv_sender_pump(&u);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    check_uv(uv_loop_close(&u.loop), "uv_loop_close");
    if (u.acks_seen != 2) die("libuv sender: the loop ended before the last ack");
  }
  kin_bench::stream::reap(p.pid);
  res.ops = n;
  res.ops_total = warm + n;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6 && std::string_view(argv[1]) == "--child" &&
      std::string_view(argv[3]) == "handles") {
    return kin_child(argv[2], std::stol(argv[4]), std::stol(argv[5]));
  }
  common_options o;
  long handles = 5000;
  kin_bench::parse_options(
      argc, argv,
      {{"--runs", &o.runs},
       {"--handles", &handles},
       {"--only", nullptr, &o.only},
       {"--skip", nullptr, &o.skip},
       {"--pin", nullptr, &o.pin},
       {"--spawn", nullptr, &o.spawn}},
      "[--runs N (5)] [--handles N (connections passed per timed run: 5000, plus a tenth of "
      "warm-up; node passes half as many)] [--only "
      "kin|kin_node|raw_block|raw_epoll|libuv|node (that one alone, no warm-up run, no BENCH "
      "line)] [--skip impl,impl (e.g. kin_node)] [--pin none|same (none)] [--spawn kin|fork (kin: "
      "kin::fork; fork: fork and execv by hand, for valgrind)]");
  const char* suffix = apply_pin(o.pin);
  if (o.spawn != "kin" && o.spawn != "fork") die("--spawn is kin or fork");
  spawn_by_hand = o.spawn == "fork";
  kin_bench::stream::prime_libuv();
  const int fds_before = kin_bench::open_fd_count();
  print_header("channel_handles", o);
  std::printf("# libuv %s\n", uv_version_string());

  channel_case c;
  c.name = std::string("channel_handles") + suffix;
  c.unit = "handles/s";
  c.metric = kin_bench::stream::per_second;
  const long n = handles;
  c.impls = {{impl::kin, n, [](long k) { return run_kin(kin::channel_codec::native, k); }},
             {impl::kin_node, n, [](long k) { return run_kin(kin::channel_codec::node, k); }},
             {impl::raw_block, n, [](long k) { return run_raw(false, k); }},
             {impl::raw_epoll, n, [](long k) { return run_raw(true, k); }},
             {impl::libuv, n, run_libuv},
             {impl::node, std::max(1L, n / 2), [](long k) {
                return run_node({"handles", std::to_string(k), std::to_string(warmup_handles(k))});
              }}};
  c.comparisons = {{impl::kin, impl::raw_epoll},      {impl::kin, impl::raw_block},
                   {impl::kin, impl::libuv},          {impl::kin_node, impl::node},
                   {impl::kin_node, impl::raw_epoll}, {impl::node, impl::raw_block},
                   {impl::libuv, impl::raw_epoll},    {impl::raw_epoll, impl::raw_block}};
  run_case(c, o);
  if (kin_bench::open_fd_count() != fds_before) die("a run left a descriptor open");
  return 0;
}
